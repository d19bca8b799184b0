"""/checkpoints and /embeddings: what members can use."""

# No `from __future__ import annotations`: discord.py reads the option annotations at runtime.

import discord
from discord import app_commands
from discord.ext import commands

from generation.errors import ModelNotFound
from generation.rules import disabled_checkpoints

from ..context import AppContext
from ..formatting import MAX_EMBED_DESCRIPTION, checkpoint_line, embedding_line, join_within


def build_models_cog(app: AppContext) -> commands.Cog:
    class Models(commands.Cog, name="Models"):
        @app_commands.command(name="checkpoints", description="The models you can pick in /imagine")
        async def checkpoints(self, interaction: discord.Interaction):
            guild = await app.store.guilds.get_settings(interaction.guild_id) if interaction.guild_id else {}
            hidden = disabled_checkpoints(guild)
            records = [r for r in await app.store.checkpoints.list(enabled_only=True) if r.name not in hidden]
            try:
                default = app.registry.default_name()
            except ModelNotFound:
                default = None
            if not records:
                await interaction.response.send_message("No checkpoints are available right now.", ephemeral=True)
                return
            lines = [checkpoint_line(name=r.name, short_hash=r.short_hash, architecture=r.architecture,
                                     default=r.name == default) for r in records]
            embed = discord.Embed(title=f"Checkpoints ({len(records)})", colour=discord.Colour.blurple(),
                                  description=join_within(lines, MAX_EMBED_DESCRIPTION))
            embed.set_footer(text="Pick one with the checkpoint option of /imagine")
            await interaction.response.send_message(embed=embed, ephemeral=True)

        @app_commands.command(name="embeddings", description="Trigger words of the textual-inversion embeddings")
        async def embeddings(self, interaction: discord.Interaction):
            records = await app.store.embeddings.list()
            if not records:
                await interaction.response.send_message("No embeddings are installed.", ephemeral=True)
                return
            usable = [r for r in records if r.status != "skipped"]
            skipped = [r for r in records if r.status == "skipped"]
            lines = [embedding_line(trigger=r.trigger, vectors=r.vectors, skip_reason=None) for r in usable]
            lines += [embedding_line(trigger=r.trigger, vectors=r.vectors, skip_reason=r.skip_reason or "unknown")
                      for r in skipped]
            embed = discord.Embed(title=f"Embeddings ({len(usable)} usable, {len(skipped)} skipped)",
                                  colour=discord.Colour.blurple(),
                                  description=join_within(lines, MAX_EMBED_DESCRIPTION))
            embed.set_footer(text="Write a trigger word in your prompt to use its embedding")
            await interaction.response.send_message(embed=embed, ephemeral=True)

    return Models()
