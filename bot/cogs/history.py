"""/history: the member's own past prompts, newest first, searchable, 10 per page."""

# No `from __future__ import annotations`: discord.py reads the option annotations at runtime.

from typing import Optional

import discord
from discord import app_commands
from discord.ext import commands

from ..context import AppContext
from ..formatting import MAX_EMBED_DESCRIPTION, history_line, join_within, page_count, plural, quoted

PER_PAGE = 10


def build_history_cog(app: AppContext) -> commands.Cog:
    class History(commands.Cog, name="History"):
        @app_commands.command(name="history", description="Your past prompts, newest first")
        @app_commands.describe(search="Only prompts with all these words (word beginnings match)",
                               page="Page number (10 prompts per page)")
        async def history(self, interaction: discord.Interaction,
                          search: Optional[app_commands.Range[str, 1, 200]] = None,
                          page: Optional[app_commands.Range[int, 1, 10000]] = 1):
            user_id = interaction.user.id
            query = search.strip() if search and search.strip() else None
            guild_id = interaction.guild_id  # history is per server (all of it in direct messages)
            total = await app.store.prompt_history.count(user_id, query, guild_id=guild_id)
            what = f"matching {quoted(query, 100)}" if query else "in your history"
            if total == 0:
                text = f"No prompts {what}." if query else "Your history is empty: prompts you /imagine appear here."
                await interaction.response.send_message(text, ephemeral=True)
                return
            pages = page_count(total, PER_PAGE)
            page = page or 1
            if page > pages:
                await interaction.response.send_message(
                    f"There {'is' if pages == 1 else 'are'} only {plural(pages, 'page')} of prompts {what}.",
                    ephemeral=True)
                return
            offset = (page - 1) * PER_PAGE
            entries = await app.service.history(user_id, query, limit=PER_PAGE, offset=offset, guild_id=guild_id)
            lines = [history_line(number=offset + index, prompt=e.prompt, negative_prompt=e.negative_prompt,
                                  job_id=e.job_id, created_at=e.created_at)
                     for index, e in enumerate(entries, start=1)]
            title = f"Prompts matching “{query[:80]}”" if query else "Your prompts"
            embed = discord.Embed(title=title, colour=discord.Colour.blurple(),
                                  description=join_within(lines, MAX_EMBED_DESCRIPTION))
            footer = f"page {page} of {pages} · {plural(total, 'prompt')}"
            if page < pages:
                footer += f" · /history page:{page + 1} for more"
            embed.set_footer(text=footer)
            await interaction.response.send_message(embed=embed, ephemeral=True)

    return History()
