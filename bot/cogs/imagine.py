"""/imagine, /img2img and /inpaint: parse options into a request and submit it. Nothing else."""

# No `from __future__ import annotations`: discord.py reads the Range bounds (from config) at runtime.

import logging
from typing import Optional

import discord
from discord import app_commands
from discord.ext import commands

from generation.errors import EaselError
from generation.requests import MASKED_CONTENT, MAX_MASK_BLUR, MAX_ONLY_MASKED_PADDING, MAX_SEED
from generation.rules import disabled_checkpoints
from generation.samplers import SAMPLER_NAMES, SCHEDULE_TYPES
from generation.submission import Ask
from generation.upscalers import hires_upscaler_names

from ..attachments import DiscordImage
from ..context import AppContext
from ..errors import acknowledge_then
from ..formatting import MAX_OPTION_CHARS
from ..requesters import requester_of
from .settings import upscaler_autocomplete

log = logging.getLogger(__name__)

SAMPLER_CHOICES = [app_commands.Choice(name=name, value=name) for name in SAMPLER_NAMES]
SCHEDULE_CHOICES = [app_commands.Choice(name=name, value=name) for name in SCHEDULE_TYPES]


async def checkpoint_autocomplete(interaction: discord.Interaction, current: str):
    app = interaction.client.app
    guild = await app.store.guilds.get_settings(interaction.guild_id) if interaction.guild_id else {}
    hidden = disabled_checkpoints(guild)
    current = str(current or "").lower()
    return [app_commands.Choice(name=r.name[:100], value=r.name[:100])
            for r in await app.store.checkpoints.list(enabled_only=True)
            if r.name not in hidden and current in r.name.lower()][:25]


MASK_MODE_CHOICES = [app_commands.Choice(name="Inpaint masked", value="masked"),
                     app_commands.Choice(name="Inpaint not masked", value="not masked")]
MASKED_CONTENT_CHOICES = [app_commands.Choice(name=name, value=name) for name in MASKED_CONTENT]
AREA_CHOICES = [app_commands.Choice(name="Whole picture", value="whole picture"),
                app_commands.Choice(name="Only masked", value="only masked")]

OPTION_FIELDS = {"negative": "negative_prompt", "cfg": "cfg_scale", "padding": "only_masked_padding",
                 "variation_seed": "subseed", "variation_strength": "subseed_strength", "hires": "enable_hr",
                 "hires_scale": "hr_scale", "hires_upscaler": "hr_upscaler", "hires_steps": "hr_second_pass_steps",
                 "hires_denoise": "strength"}
HIRES_FIELDS = ("hr_scale", "hr_upscaler", "hr_second_pass_steps")
# Not request fields (app: locals() holds the closure too; the two choices map to booleans).
NOT_FIELDS = ("self", "interaction", "image", "mask", "app", "mask_mode", "area")


def options_to_fields(options: dict) -> dict:
    """A command's options (its locals) as GenerationRequest field names. Choosing a hires option
    turns the hires fix on unless the member said `hires: False`."""
    fields = {OPTION_FIELDS.get(name, name): value for name, value in options.items() if name not in NOT_FIELDS}
    if fields.get("enable_hr") is None and any(fields.get(name) is not None for name in HIRES_FIELDS):
        fields["enable_hr"] = True
    return fields


async def submit_from_interaction(app: AppContext, interaction: discord.Interaction, ask: Ask) -> None:
    """Acknowledged first ("thinking", within Discord's 3 s whatever the checks cost), then every
    check, the download and the queue; a refusal reaches the member alone and the public
    placeholder goes away."""
    requester = requester_of(interaction)
    await acknowledge_then(interaction, lambda: app.submissions.submit(ask, requester))


def build_imagine_cog(app: AppContext) -> commands.Cog:
    limits = app.config.limits
    Steps = app_commands.Range[int, limits.min_steps, limits.max_steps]
    Width = app_commands.Range[int, limits.min_size, limits.max_width]
    Height = app_commands.Range[int, limits.min_size, limits.max_height]
    Count = app_commands.Range[int, 1, limits.max_count]
    Cfg = app_commands.Range[float, 0.0, limits.max_cfg_scale]
    Seed = app_commands.Range[int, -1, MAX_SEED - 1]
    Strength = app_commands.Range[float, 0.0, 1.0]
    Prompt = app_commands.Range[str, 1, min(limits.max_prompt_chars, MAX_OPTION_CHARS)]
    Negative = app_commands.Range[str, 0, min(limits.max_prompt_chars, MAX_OPTION_CHARS)]
    MaskBlur = app_commands.Range[int, 0, MAX_MASK_BLUR]
    Padding = app_commands.Range[int, 0, MAX_ONLY_MASKED_PADDING]
    HiresScale = app_commands.Range[float, 1.0, limits.max_hires_scale]
    HiresSteps = app_commands.Range[int, 0, limits.max_steps]
    Name = app_commands.Range[str, 1, 100]
    hires_upscalers = upscaler_autocomplete(lambda: hires_upscaler_names(app.registry.upscalers))

    common = dict(prompt="What to draw (A1111 syntax: (word:1.3), [from:to:step], BREAK)",
                  negative="What to avoid", checkpoint="Model (default: the server's)",
                  sampler="Sampler", schedule="Schedule type", steps="Sampling steps", cfg="CFG scale",
                  width="Width in pixels (multiple of 8)", height="Height in pixels (multiple of 8)",
                  seed="Seed (-1: random)", count="Number of images")

    class Imagine(commands.Cog, name="Imagine"):
        @app_commands.command(name="imagine", description="Generate images from a prompt")
        @app_commands.describe(variation_seed="A1111's variation seed (-1: random)",
                               variation_strength="How far toward the variation seed's image, 0-1",
                               hires="Hires fix: generate, upscale, then refine at the larger size",
                               hires_scale="Hires fix: how many times larger (default 2)",
                               hires_upscaler="Hires fix: a Latent mode or an upscaler (/upscalers)",
                               hires_denoise="Hires fix: how much the refining pass changes, 0-1",
                               hires_steps="Hires fix: steps of the refining pass (0: as many as steps)", **common)
        @app_commands.choices(sampler=SAMPLER_CHOICES, schedule=SCHEDULE_CHOICES)
        @app_commands.autocomplete(checkpoint=checkpoint_autocomplete, hires_upscaler=hires_upscalers)
        async def imagine(self, interaction: discord.Interaction, prompt: Prompt, negative: Optional[Negative] = None,
                          checkpoint: Optional[str] = None, sampler: Optional[str] = None,
                          schedule: Optional[str] = None, steps: Optional[Steps] = None, cfg: Optional[Cfg] = None,
                          width: Optional[Width] = None, height: Optional[Height] = None,
                          seed: Optional[Seed] = None, count: Optional[Count] = None,
                          variation_seed: Optional[Seed] = None, variation_strength: Optional[Strength] = None,
                          hires: Optional[bool] = None, hires_scale: Optional[HiresScale] = None,
                          hires_upscaler: Optional[Name] = None, hires_denoise: Optional[Strength] = None,
                          hires_steps: Optional[HiresSteps] = None):
            ask = Ask(mode="txt2img", **options_to_fields(locals()))
            await submit_from_interaction(app, interaction, ask)

        @app_commands.command(name="img2img", description="Redraw an image guided by a prompt")
        @app_commands.describe(image="The image to start from (PNG, JPEG or WEBP)",
                               strength="How much to change it, 0-1", **common)
        @app_commands.choices(sampler=SAMPLER_CHOICES, schedule=SCHEDULE_CHOICES)
        @app_commands.autocomplete(checkpoint=checkpoint_autocomplete)
        async def img2img(self, interaction: discord.Interaction, image: discord.Attachment, prompt: Prompt,
                          strength: Optional[Strength] = None, negative: Optional[Negative] = None,
                          checkpoint: Optional[str] = None, sampler: Optional[str] = None,
                          schedule: Optional[str] = None, steps: Optional[Steps] = None, cfg: Optional[Cfg] = None,
                          width: Optional[Width] = None, height: Optional[Height] = None,
                          seed: Optional[Seed] = None, count: Optional[Count] = None):
            ask = Ask(mode="img2img", init_image=DiscordImage(image), **options_to_fields(locals()))
            await submit_from_interaction(app, interaction, ask)

        @app_commands.command(name="inpaint", description="Repaint the white part of a mask")
        @app_commands.describe(image="The image to change; its transparent part is repainted when no mask is given",
                               mask="White where to repaint, black to keep",
                               strength="How much to change the masked part, 0-1",
                               mask_blur="Blur of the mask's edge in pixels (A1111's default: 4)",
                               mask_mode="Repaint the masked part, or everything else",
                               masked_content="What the masked part starts from",
                               area="Whole picture, or only the masked part at full size (for small details)",
                               padding="Only masked: pixels of context around the mask", **common)
        @app_commands.choices(sampler=SAMPLER_CHOICES, schedule=SCHEDULE_CHOICES, mask_mode=MASK_MODE_CHOICES,
                              masked_content=MASKED_CONTENT_CHOICES, area=AREA_CHOICES)
        @app_commands.autocomplete(checkpoint=checkpoint_autocomplete)
        async def inpaint(self, interaction: discord.Interaction, image: discord.Attachment, prompt: Prompt,
                          mask: Optional[discord.Attachment] = None, strength: Optional[Strength] = None,
                          mask_blur: Optional[MaskBlur] = None, mask_mode: Optional[str] = None,
                          masked_content: Optional[str] = None, area: Optional[str] = None,
                          padding: Optional[Padding] = None,
                          negative: Optional[Negative] = None, checkpoint: Optional[str] = None,
                          sampler: Optional[str] = None, schedule: Optional[str] = None,
                          steps: Optional[Steps] = None, cfg: Optional[Cfg] = None,
                          width: Optional[Width] = None, height: Optional[Height] = None,
                          seed: Optional[Seed] = None, count: Optional[Count] = None):
            fields = options_to_fields(locals())
            fields["mask_invert"] = None if mask_mode is None else mask_mode == "not masked"
            fields["only_masked"] = None if area is None else area == "only masked"
            ask = Ask(mode="inpaint", init_image=DiscordImage(image), mask=DiscordImage(mask) if mask else None,
                      **fields)
            await submit_from_interaction(app, interaction, ask)

    return Imagine()
