"""/upscale and /upscalers: A1111's Extras upscale of a picture, through the fair queue."""

# No `from __future__ import annotations`: discord.py reads the Range bounds (from config) at runtime.

from typing import Optional

import discord
from discord import app_commands
from discord.ext import commands

from generation.hires import LATENT_MODES
from generation.submission import Ask

from ..attachments import DiscordImage
from ..context import AppContext
from ..formatting import MAX_EMBED_DESCRIPTION, join_within
from .imagine import submit_from_interaction
from .settings import upscaler_autocomplete


def upscaler_lines(infos) -> list[str]:
    """One line per upscaler, usable ones first (A1111's order), then the ones that cannot load."""
    lines = []
    for info in infos:
        if not info.usable:
            continue
        detail = "built in" if info.path is None else f"{info.architecture}, {info.scale}x"
        lines.append(f"**{info.name}** ({detail})")
    lines += [f"~~{info.name}~~ (cannot be used: {info.skip_reason})" for info in infos if not info.usable]
    return lines


def build_upscale_cog(app: AppContext) -> commands.Cog:
    limits = app.config.limits
    Scale = app_commands.Range[float, 1.0, limits.max_upscale_by]
    Name = app_commands.Range[str, 1, 100]
    names = upscaler_autocomplete(lambda: [info.name for info in app.registry.upscalers if info.usable])

    class Upscale(commands.Cog, name="Upscale"):
        @app_commands.command(name="upscale", description="Make a picture larger with an upscaler (A1111's Extras)")
        @app_commands.describe(image="The picture (PNG, JPEG or WEBP); its generation parameters are kept",
                               upscaler="Upscaler (default: the server's; /upscalers lists them)",
                               scale="How many times larger")
        @app_commands.autocomplete(upscaler=names)
        async def upscale(self, interaction: discord.Interaction, image: discord.Attachment,
                          upscaler: Optional[Name] = None, scale: Optional[Scale] = None):
            ask = Ask(mode="upscale", prompt="", init_image=DiscordImage(image), upscaler=upscaler, upscale_by=scale)
            await submit_from_interaction(app, interaction, ask)

        @app_commands.command(name="upscalers", description="Upscalers for /upscale and the hires fix")
        async def upscalers(self, interaction: discord.Interaction):
            lines = upscaler_lines(app.registry.upscalers)
            embed = discord.Embed(title="Upscalers", colour=discord.Colour.blurple(),
                                  description=join_within(lines, MAX_EMBED_DESCRIPTION))
            embed.add_field(name="Hires fix also takes", value=", ".join(LATENT_MODES), inline=False)
            embed.set_footer(text=f"Default: {app.config.defaults.upscaler}, {app.config.defaults.upscale_by:g}x. "
                                  "Operators add models to models/upscalers/")
            await interaction.response.send_message(embed=embed, ephemeral=True)

    return Upscale()
