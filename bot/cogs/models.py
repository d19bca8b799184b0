"""/checkpoints, /embeddings and /loras: what members can use."""

# No `from __future__ import annotations`: discord.py reads the option annotations at runtime.

import discord
from discord import app_commands
from discord.ext import commands

from generation.errors import ModelNotFound
from generation.rules import disabled_checkpoints

from ..context import AppContext
from ..formatting import (
    MAX_EMBED_DESCRIPTION,
    checkpoint_line,
    clip,
    embedding_line,
    join_within,
    lora_line,
    one_line,
    quoted,
)

MAX_SEARCH_CHARS = 100


def lora_matches(lora, search: str) -> bool:
    """Whether `search` is part of the LoRA's name or alias, ignoring case."""
    needle = search.casefold()
    return needle in lora.name.casefold() or (lora.alias is not None and needle in lora.alias.casefold())


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

        @app_commands.command(name="loras", description="The LoRAs you can write in a prompt as <lora:name:1>")
        @app_commands.describe(search="Only LoRAs whose name or alias contains this")
        async def loras(self, interaction: discord.Interaction,
                        search: app_commands.Range[str, 1, MAX_SEARCH_CHARS] | None = None):
            every = app.registry.loras
            if not every:
                await interaction.response.send_message("No LoRAs are installed.", ephemeral=True)
                return
            search = (search or "").strip()
            found = [lora for lora in every if lora_matches(lora, search)] if search else list(every)
            if not found:
                await interaction.response.send_message(f"No LoRA matches “{quoted(search, MAX_SEARCH_CHARS)}”.",
                                                        ephemeral=True)
                return
            usable = [lora for lora in found if lora.usable]
            skipped = [lora for lora in found if not lora.usable]
            lines = [lora_line(name=lora.name, short_hash=lora.short_hash, family=lora.family, alias=lora.alias,
                               skip_reason=lora.skip_reason) for lora in usable + skipped]
            title = f"LoRAs ({len(usable)} usable, {len(skipped)} skipped)"
            if search:
                title = clip(f"LoRAs matching “{one_line(search, MAX_SEARCH_CHARS)}” "
                             f"({len(usable)} usable, {len(skipped)} skipped)", 256)
            embed = discord.Embed(title=title, colour=discord.Colour.blurple(),
                                  description=join_within(lines, MAX_EMBED_DESCRIPTION))
            embed.set_footer(text="Write <lora:name:weight> in your prompt; 1 is full strength")
            await interaction.response.send_message(embed=embed, ephemeral=True)

    return Models()
