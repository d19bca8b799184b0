"""/outpaint: zoom out or pan any picture (an easel result, an A1111 PNG, a photo). Parses options only;
the work is `bot.actions.plan_upload_outpaint` / `finish_outpaint`, through the one submission path."""

# No `from __future__ import annotations`: discord.py reads the option annotations at runtime.

from typing import Optional

import discord
from discord import app_commands
from discord.ext import commands

from generation.outpainting import DIRECTIONS, ZOOMS
from generation.requests import MAX_SEED

from .. import actions
from ..attachments import DiscordImage
from ..context import AppContext
from ..formatting import MAX_OPTION_CHARS
from ..requesters import requester_of
from .imagine import checkpoint_autocomplete

ZOOM_CHOICES = [app_commands.Choice(name=f"Zoom out {zoom:g}x", value=zoom) for zoom in ZOOMS]
DIRECTION_CHOICES = [app_commands.Choice(name=name, value=name) for name in DIRECTIONS]


def build_outpaint_cog(app: AppContext) -> commands.Cog:
    limits = app.config.limits
    Prompt = app_commands.Range[str, 1, min(limits.max_prompt_chars, MAX_OPTION_CHARS)]
    Negative = app_commands.Range[str, 0, min(limits.max_prompt_chars, MAX_OPTION_CHARS)]
    Seed = app_commands.Range[int, -1, MAX_SEED - 1]

    class Outpaint(commands.Cog, name="Outpaint"):
        @app_commands.command(name="outpaint", description="Zoom out of a picture, or extend it to one side")
        @app_commands.describe(image="The picture to extend (PNG, JPEG or WEBP)",
                               zoom="Zoom out: the picture centred on a canvas 1.5x or 2x as large",
                               direction="Pan: the canvas grows by half the picture on that side",
                               prompt="What to draw around it (default: the picture's own prompt, if it has one)",
                               negative="What to avoid", checkpoint="Model (default: the server's)",
                               seed="Seed (-1: random)")
        @app_commands.choices(zoom=ZOOM_CHOICES, direction=DIRECTION_CHOICES)
        @app_commands.autocomplete(checkpoint=checkpoint_autocomplete)
        async def outpaint(self, interaction: discord.Interaction, image: discord.Attachment,
                           zoom: Optional[float] = None, direction: Optional[str] = None,
                           prompt: Optional[Prompt] = None, negative: Optional[Negative] = None,
                           checkpoint: Optional[str] = None, seed: Optional[Seed] = None):
            upload = DiscordImage(image)
            # Refused before anything is downloaded (an ephemeral reply, through the tree's on_error):
            # both or neither of zoom and direction, the declared type and size, a canvas over the limits.
            actions.check_upload_move(app, upload, direction=direction, zoom=zoom)
            await interaction.response.defer(thinking=True)
            # From here a refusal replaces the "thinking" reply (the tree's on_error edits it).
            plan = await actions.plan_upload_outpaint(
                app, upload, requester_of(interaction), direction=direction, zoom=zoom, prompt=prompt,
                negative_prompt=negative, checkpoint=checkpoint, seed=seed)
            await actions.finish_outpaint(app, plan)

    return Outpaint()
