"""/imagine, /img2img and /inpaint: parse options into a request and submit it. Nothing else."""

# No `from __future__ import annotations`: discord.py reads the Range bounds (from config) at runtime.

import logging
from typing import Optional

import discord
from discord import app_commands
from discord.ext import commands

from generation.catalog import enabled_checkpoint_names
from generation.errors import EaselError, ModelNotFound
from generation.requests import MAX_SEED, GenerationRequest, default_size
from generation.samplers import SAMPLER_NAMES, SCHEDULE_TYPES
from generation.service import ReplyTarget

from ..attachments import save_attachment
from ..context import AppContext
from ..errors import send_error
from ..rules import check_channel, check_request_rules, resolve_options

log = logging.getLogger(__name__)

SAMPLER_CHOICES = [app_commands.Choice(name=name, value=name) for name in SAMPLER_NAMES]
SCHEDULE_CHOICES = [app_commands.Choice(name=name, value=name) for name in SCHEDULE_TYPES]


async def checkpoint_autocomplete(interaction: discord.Interaction, current: str):
    names = await enabled_checkpoint_names(interaction.client.app.store)
    current = current.lower()
    return [app_commands.Choice(name=name[:100], value=name[:100]) for name in names if current in name.lower()][:25]


OPTION_FIELDS = {"negative": "negative_prompt", "cfg": "cfg_scale"}  # command option -> request field
NOT_FIELDS = ("self", "interaction", "image", "mask")


def options_to_fields(options: dict) -> dict:
    """A command's options (its locals) as GenerationRequest field names."""
    return {OPTION_FIELDS.get(name, name): value for name, value in options.items() if name not in NOT_FIELDS}


async def submit_from_interaction(app: AppContext, interaction: discord.Interaction, given: dict, *, mode: str,
                                  init_image=None, mask=None) -> None:
    """Shared by the three commands: resolve options, check the rules, defer, store, enqueue."""
    guild_settings = await app.store.guilds.get_settings(interaction.guild_id) if interaction.guild_id else {}
    member_settings = await app.store.users.get_settings(interaction.user.id)
    check_channel(guild_settings, interaction.channel_id)
    checkpoint = given.get("checkpoint") or ""
    if (checkpoint or app.registry.default_name()) not in await enabled_checkpoint_names(app.store):
        what = f"checkpoint {checkpoint!r} is" if checkpoint else "the default checkpoint is"
        raise ModelNotFound(f"{what} not available; pick one from the list")
    size = default_size(app.config.defaults, app.config.limits, app.registry.resolve(checkpoint).architecture,
                        max_width=guild_settings.get("max_width"), max_height=guild_settings.get("max_height"))
    options = resolve_options(given, member=member_settings, guild=guild_settings, defaults=app.config.defaults,
                              size=size)
    request = GenerationRequest(prompt=given["prompt"], mode=mode, checkpoint=checkpoint,
                                seed=given.get("seed") if given.get("seed") is not None else -1,
                                init_image="pending" if init_image else None, mask="pending" if mask else None,
                                **options)
    check_request_rules(request, guild_settings)
    app.engine.check_request(request)  # limits, sampler, checkpoint, embeddings, prompt length: before the ack
    await interaction.response.defer(thinking=True)
    limit = app.config.limits.max_pixels * 4
    try:
        if init_image is not None:
            path = await save_attachment(init_image, app.uploads_dir, max_pixels=limit, what="image")
            mask_path = await save_attachment(mask, app.uploads_dir, max_pixels=limit, what="mask") if mask else None
            import dataclasses

            request = dataclasses.replace(request, init_image=str(path), mask=str(mask_path) if mask_path else None)
        await app.service.submit(request, owner_id=interaction.user.id, target=ReplyTarget(
            frontend="discord", guild_id=interaction.guild_id, channel_id=interaction.channel_id,
            application_id=interaction.application_id, interaction_token=interaction.token,
            interaction_created_at=interaction.created_at))
    except EaselError as exc:
        await send_error(interaction, exc)


def build_imagine_cog(app: AppContext) -> commands.Cog:
    limits = app.config.limits
    Steps = app_commands.Range[int, limits.min_steps, limits.max_steps]
    Width = app_commands.Range[int, limits.min_size, limits.max_width]
    Height = app_commands.Range[int, limits.min_size, limits.max_height]
    Count = app_commands.Range[int, 1, limits.max_count]
    Cfg = app_commands.Range[float, 0.0, limits.max_cfg_scale]
    Seed = app_commands.Range[int, -1, MAX_SEED - 1]
    Strength = app_commands.Range[float, 0.0, 1.0]
    Prompt = app_commands.Range[str, 1, 4000]

    common = dict(prompt="What to draw (A1111 syntax: (word:1.3), [from:to:step], BREAK)",
                  negative="What to avoid", checkpoint="Model (default: the server's)",
                  sampler="Sampler", schedule="Schedule type", steps="Sampling steps", cfg="CFG scale",
                  width="Width in pixels (multiple of 8)", height="Height in pixels (multiple of 8)",
                  seed="Seed (-1: random)", count="Number of images")

    class Imagine(commands.Cog, name="Imagine"):
        @app_commands.command(name="imagine", description="Generate images from a prompt")
        @app_commands.describe(**common)
        @app_commands.choices(sampler=SAMPLER_CHOICES, schedule=SCHEDULE_CHOICES)
        @app_commands.autocomplete(checkpoint=checkpoint_autocomplete)
        async def imagine(self, interaction: discord.Interaction, prompt: Prompt, negative: Optional[str] = None,
                          checkpoint: Optional[str] = None, sampler: Optional[str] = None,
                          schedule: Optional[str] = None, steps: Optional[Steps] = None, cfg: Optional[Cfg] = None,
                          width: Optional[Width] = None, height: Optional[Height] = None,
                          seed: Optional[Seed] = None, count: Optional[Count] = None):
            given = options_to_fields(locals())
            await submit_from_interaction(app, interaction, given, mode="txt2img")

        @app_commands.command(name="img2img", description="Redraw an image guided by a prompt")
        @app_commands.describe(image="The image to start from (PNG, JPEG or WEBP)",
                               strength="How much to change it, 0-1", **common)
        @app_commands.choices(sampler=SAMPLER_CHOICES, schedule=SCHEDULE_CHOICES)
        @app_commands.autocomplete(checkpoint=checkpoint_autocomplete)
        async def img2img(self, interaction: discord.Interaction, image: discord.Attachment, prompt: Prompt,
                          strength: Optional[Strength] = None, negative: Optional[str] = None,
                          checkpoint: Optional[str] = None, sampler: Optional[str] = None,
                          schedule: Optional[str] = None, steps: Optional[Steps] = None, cfg: Optional[Cfg] = None,
                          width: Optional[Width] = None, height: Optional[Height] = None,
                          seed: Optional[Seed] = None, count: Optional[Count] = None):
            given = options_to_fields(locals())
            await submit_from_interaction(app, interaction, given, mode="img2img", init_image=image)

        @app_commands.command(name="inpaint", description="Repaint the white part of a mask")
        @app_commands.describe(image="The image to change", mask="White where to repaint, black to keep",
                               strength="How much to change the masked part, 0-1", **common)
        @app_commands.choices(sampler=SAMPLER_CHOICES, schedule=SCHEDULE_CHOICES)
        @app_commands.autocomplete(checkpoint=checkpoint_autocomplete)
        async def inpaint(self, interaction: discord.Interaction, image: discord.Attachment,
                          mask: discord.Attachment, prompt: Prompt, strength: Optional[Strength] = None,
                          negative: Optional[str] = None, checkpoint: Optional[str] = None,
                          sampler: Optional[str] = None, schedule: Optional[str] = None,
                          steps: Optional[Steps] = None, cfg: Optional[Cfg] = None,
                          width: Optional[Width] = None, height: Optional[Height] = None,
                          seed: Optional[Seed] = None, count: Optional[Count] = None):
            given = options_to_fields(locals())
            await submit_from_interaction(app, interaction, given, mode="inpaint", init_image=image, mask=mask)

    return Imagine()
