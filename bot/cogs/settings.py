"""/settings: a member's own defaults for /imagine (read back by generation.rules.resolve_options)."""

# No `from __future__ import annotations`: discord.py reads the Range bounds (from config) at runtime.

from dataclasses import asdict
from typing import Optional

import discord
from discord import app_commands
from discord.ext import commands

from generation.samplers import SAMPLER_NAMES, SCHEDULE_TYPES
from generation.upscalers import hires_upscaler_names

from ..context import AppContext
from ..formatting import MEMBER_SETTING_LABELS, settings_lines
from ..preferences import MAX_NEGATIVE_CHARS, member_setting_changes
from generation.rules import MEMBER_SETTINGS

SCHEDULE_CHOICES = [app_commands.Choice(name=name, value=name) for name in SCHEDULE_TYPES]
MAX_CHOICES = 25  # Discord: choices one autocomplete answer may carry


def upscaler_autocomplete(names):
    """Autocomplete over `names()` (called per keystroke, so a refresh shows at once)."""
    async def complete(interaction: discord.Interaction, current: str):
        current = str(current or "").lower()
        return [app_commands.Choice(name=name, value=name) for name in names()
                if current in name.lower()][:MAX_CHOICES]
    return complete


async def sampler_autocomplete(interaction: discord.Interaction, current: str):
    current = str(current or "").lower()
    return [app_commands.Choice(name=name, value=name) for name in SAMPLER_NAMES if current in name.lower()][:25]


def build_settings_cog(app: AppContext) -> commands.Cog:
    limits = app.config.limits
    Steps = app_commands.Range[int, limits.min_steps, limits.max_steps]
    Width = app_commands.Range[int, limits.min_size, limits.max_width]
    Height = app_commands.Range[int, limits.min_size, limits.max_height]
    Cfg = app_commands.Range[float, 0.0, limits.max_cfg_scale]
    Negative = app_commands.Range[str, 1, MAX_NEGATIVE_CHARS]
    Sampler = app_commands.Range[str, 1, 100]
    HiresScale = app_commands.Range[float, 1.0, limits.max_hires_scale]
    hires_upscalers = lambda: hires_upscaler_names(app.registry.upscalers)  # noqa: E731
    defaults = {key: value for key, value in asdict(app.config.defaults).items() if key in MEMBER_SETTINGS}

    class Settings(commands.Cog, name="Settings"):
        @app_commands.command(name="settings", description="Your defaults for /imagine; run it empty to see them")
        @app_commands.describe(sampler="Sampler (\"DPM++ 2M Karras\" sets the schedule too)",
                               schedule="Schedule type", steps="Sampling steps", cfg="CFG scale",
                               width="Width in pixels (multiple of 8)", height="Height in pixels (multiple of 8)",
                               negative="Negative prompt used when you give none (\"-\" clears it)",
                               hires="Hires fix on every /imagine (generate, upscale, refine)",
                               hires_scale="Hires fix: how many times larger", hires_upscaler="Hires fix: upscaler",
                               reset="Forget all your defaults first")
        @app_commands.choices(schedule=SCHEDULE_CHOICES)
        @app_commands.autocomplete(sampler=sampler_autocomplete, hires_upscaler=upscaler_autocomplete(hires_upscalers))
        async def settings(self, interaction: discord.Interaction, sampler: Optional[Sampler] = None,
                           schedule: Optional[str] = None, steps: Optional[Steps] = None,
                           width: Optional[Width] = None, height: Optional[Height] = None,
                           cfg: Optional[Cfg] = None, negative: Optional[Negative] = None,
                           hires: Optional[bool] = None, hires_scale: Optional[HiresScale] = None,
                           hires_upscaler: Optional[Sampler] = None, reset: Optional[bool] = False):
            user_id = interaction.user.id
            current = {} if reset else await app.store.users.get_settings(user_id)
            changes = member_setting_changes(current=current, limits=limits, defaults=app.config.defaults,
                                             sampler=sampler, schedule=schedule, steps=steps, width=width,
                                             height=height, cfg_scale=cfg, negative_prompt=negative,
                                             enable_hr=hires, hr_scale=hires_scale, hr_upscaler=hires_upscaler,
                                             hires_upscalers=hires_upscalers())
            if reset:
                changes = {key: None for key in MEMBER_SETTINGS} | changes
            stored = await app.store.users.update_settings(user_id, **changes) if changes else current
            if reset:
                title = "Your defaults were reset"
            else:
                title = "Your defaults were saved" if changes else "Your defaults"
            embed = discord.Embed(title=title, colour=discord.Colour.blurple(),
                                  description="\n".join(settings_lines(stored, MEMBER_SETTING_LABELS,
                                                                       fallback=defaults)))
            embed.set_footer(text="Options you type in /imagine always win; then these; then the server's")
            await interaction.response.send_message(embed=embed, ephemeral=True)

    return Settings()
