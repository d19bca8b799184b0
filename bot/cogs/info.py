"""/info: the generation parameters inside an image, and a button to generate with them."""

# No `from __future__ import annotations`: discord.py reads the option annotations at runtime.

import asyncio

import discord
from discord import app_commands
from discord.ext import commands

from generation.errors import ImageError
from generation.upscalers import hires_upscaler_names
from generation.infotext import DEFAULT_MAX_PIXELS, parse_infotext, read_infotext, to_request_fields
from generation.uploads import read_checked

from ..attachments import DiscordImage
from ..context import AppContext
from ..drafts import Draft, DraftButton, DraftError, draft_from_infotext, draft_view, save_draft
from ..formatting import MAX_FIELD_VALUE, clip, escape, format_value, join_within, quoted

# Reading parameters decodes pixels only for some PNGs; this caps what one /info may decode.
INFO_MAX_PIXELS = DEFAULT_MAX_PIXELS


def info_embed(fields: dict, draft: Draft, filename: str) -> discord.Embed:
    """Within Discord's 6000-character embed total: prompts are clipped, extras summarised."""
    embed = discord.Embed(title=clip(f"Parameters of {filename}", 256), colour=discord.Colour.blurple())
    description = f"**Prompt:** {escape(clip(fields['prompt'], 1800))}"
    if fields.get("negative_prompt"):
        description += f"\n**Negative:** {escape(clip(fields['negative_prompt'], 800))}"
    embed.description = description
    shown = (("Steps", "steps"), ("Sampler", "sampler"), ("Schedule type", "schedule_type"),
             ("CFG scale", "cfg_scale"), ("Seed", "seed"), ("Model", "model"), ("Model hash", "model_hash"),
             ("Clip skip", "clip_skip"), ("Denoising strength", "denoising_strength"), ("Mask blur", "mask_blur"),
             ("Masked content", "masked_content"), ("Masked area padding", "only_masked_padding"))
    for label, key in shown:
        if fields.get(key) is not None and (key != "clip_skip" or fields[key] != 1):
            embed.add_field(name=label, value=clip(format_value(fields[key]), 100))
    if fields.get("mask_invert"):
        embed.add_field(name="Mask mode", value="Inpaint not masked")
    if fields.get("only_masked"):
        embed.add_field(name="Inpaint area", value="Only masked")
    if fields.get("width") and fields.get("height"):
        embed.add_field(name="Size", value=f"{fields['width']}×{fields['height']}")
    if hires := hires_summary(fields):
        embed.add_field(name="Hires fix", value=clip(hires, 200))
    extra = [f"{quoted(key, 40)}: {quoted(str(value), 80)}" for key, value in (fields.get("extra") or {}).items()]
    if extra:
        embed.add_field(name="Other", value=join_within(extra, 600), inline=False)
    ignored = [quoted(item, 120) for item in draft.ignored] + [quoted(note, 120) for note in draft.notes]
    if ignored:
        embed.add_field(name="Not used (your defaults fill these)", value=join_within(ignored, MAX_FIELD_VALUE // 2),
                        inline=False)
    embed.set_footer(text="“Generate with these” queues a new image as your own job")
    return embed


def hires_summary(fields: dict) -> str:
    """A1111's hires keys in one line: "2x with Latent, 15 steps, sampler DPM++ 2M"."""
    parts = []
    if fields.get("hr_resize_x") or fields.get("hr_resize_y"):
        parts.append(f"to {fields.get('hr_resize_x', 0)}×{fields.get('hr_resize_y', 0)}")
    elif fields.get("hr_scale") is not None:
        parts.append(f"{fields['hr_scale']:g}x")
    if fields.get("hr_upscaler"):
        parts.append(f"with {fields['hr_upscaler']}")
    if fields.get("hr_second_pass_steps"):
        parts.append(f"{fields['hr_second_pass_steps']} steps")
    if fields.get("hr_sampler"):
        parts.append(f"sampler {fields['hr_sampler']}")
    if fields.get("hr_prompt"):
        parts.append(f"prompt “{fields['hr_prompt']}”")
    return ", ".join(parts)


def local_loras(registry) -> dict[str, str]:
    """Every usable LoRA's name and alias, with its short hash."""
    found = {}
    for lora in registry.loras:
        if lora.usable:
            found.update({name: lora.short_hash for name in (lora.name, lora.alias) if name})
    return found


def _parameters(data: bytes) -> dict:
    text = read_infotext(data, max_pixels=INFO_MAX_PIXELS)
    if not text or not text.strip():
        raise ImageError("that image carries no generation parameters (many sites strip them on upload)")
    return to_request_fields(parse_infotext(text))


def build_info_cog(app: AppContext) -> commands.Cog:
    class Info(commands.Cog, name="Info"):
        # Registered on the bot by bot.cogs.register_cogs, so its buttons work after a restart.
        dynamic_items = (DraftButton,)

        @app_commands.command(name="info", description="Show the generation parameters stored in an image")
        @app_commands.describe(image="A PNG, JPEG or WEBP image made by easel or Stable Diffusion web UI")
        async def info(self, interaction: discord.Interaction, image: discord.Attachment):
            upload = DiscordImage(image)
            await interaction.response.defer(ephemeral=True, thinking=True)
            data = await read_checked(upload, max_pixels=INFO_MAX_PIXELS, what="image")
            fields = await asyncio.to_thread(_parameters, data)  # decoding and parsing: off the event loop
            checkpoints = {r.name: r.short_hash for r in await app.store.checkpoints.list(enabled_only=True)}
            try:
                draft = draft_from_infotext(fields, limits=app.config.limits, checkpoints=checkpoints,
                                            loras=local_loras(app.registry),
                                            hires_upscalers=hires_upscaler_names(app.registry.upscalers))
            except DraftError as exc:  # the parameters are still worth showing
                await interaction.edit_original_response(embed=info_embed(fields, Draft(given={}, notes=(str(exc),)),
                                                                          image.filename))
                return
            draft_id = await save_draft(app.store, draft, owner_id=interaction.user.id,
                                        retention=app.config.retention)
            await interaction.edit_original_response(embed=info_embed(fields, draft, image.filename),
                                                     view=draft_view(draft_id))

    return Info()
