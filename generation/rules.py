"""Per-server and per-member rules, as plain functions that tests call directly.

Option resolution: an option the member chose wins; otherwise the member's /settings, then the
server's defaults, then config.toml, then the checkpoint's own size. A value nobody chose is
clamped to the server's limits, so a plain /imagine never fails because an admin lowered one;
a value the member chose above a limit is refused, naming the limit.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping

from .config import DefaultsConfig, LimitsConfig
from .errors import EaselError
from .requests import GenerationRequest

# What /settings stores per member, with the type each value must have.
MEMBER_SETTINGS: dict[str, type] = {"sampler": str, "schedule": str, "steps": int, "width": int, "height": int,
                                    "cfg_scale": float, "negative_prompt": str, "enable_hr": bool,
                                    "hr_scale": float, "hr_upscaler": str}
# What /admin stores per server, with the type each value must have.
GUILD_LIMITS: dict[str, type] = {"max_steps": int, "max_width": int, "max_height": int, "max_count": int,
                                 "max_queued_per_member": int, "max_queued": int}
RESOLVED_OPTIONS = ("negative_prompt", "sampler", "schedule", "steps", "cfg_scale", "width", "height", "count",
                    "strength", "clip_skip", "mask_blur", "masked_content", "only_masked_padding", "enable_hr",
                    "hr_scale", "hr_upscaler", "upscaler", "upscale_by")
# Options with no default in config.toml: a member chooses them or they stay as GenerationRequest has them.
CHOSEN_ONLY = ("mask_invert", "only_masked", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h",
               "hr_resize_x", "hr_resize_y", "hr_second_pass_steps", "hr_sampler", "hr_prompt", "hr_negative_prompt")
# Request field -> the server limit that caps it.
CAPPED_BY_GUILD = {"steps": "max_steps", "width": "max_width", "height": "max_height", "count": "max_count"}

KIND_WORDS = {str: "text", int: "a whole number", float: "a number", bool: "true or false"}


class RuleBroken(EaselError):
    pass


def resolve_options(given: Mapping[str, Any], *, member: Mapping[str, Any], guild: Mapping[str, Any],
                    defaults: DefaultsConfig, limits: LimitsConfig | None = None,
                    size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Fill every option left out (None) from the member, the server's defaults, then the config;
    `size` (the checkpoint's, from generation.requests.default_size) stands in for the config's.
    Filled-in values are clamped to the server's limits and to `limits`; given ones are not."""
    guild_defaults = guild.get("defaults", {}) or {}
    config_defaults = {f.name: getattr(defaults, f.name) for f in fields(defaults)}
    if size is not None:
        config_defaults["width"], config_defaults["height"] = size
    resolved = {}
    for name in RESOLVED_OPTIONS:
        for source in (given, member, guild_defaults, config_defaults):
            value = source.get(name)
            if value is not None:
                resolved[name] = value
                break
        if given.get(name) is None and name in resolved:
            resolved[name] = _clamped(name, resolved[name], guild, limits)
    if given.get("sampler") is not None and given.get("schedule") is None:
        resolved["schedule"] = "Automatic"  # a typed sampler ("DPM++ 2M Karras") carries its own schedule
    resolved.update({name: given[name] for name in CHOSEN_ONLY if given.get(name) is not None})
    return resolved


def _clamped(name: str, value: Any, guild: Mapping[str, Any], limits: LimitsConfig | None) -> Any:
    caps = []
    if CAPPED_BY_GUILD.get(name) and guild.get(CAPPED_BY_GUILD[name]) is not None:
        caps.append(int(guild[CAPPED_BY_GUILD[name]]))
    if limits is not None:
        caps.append({"steps": limits.max_steps, "width": limits.max_width, "height": limits.max_height,
                     "count": limits.max_count}.get(name, value))
    if not caps or not isinstance(value, int) or isinstance(value, bool):
        return value
    value = min([value, *caps])
    return value - value % 8 if name in ("width", "height") else value


def check_channel(guild: Mapping[str, Any], channel_id: int | None) -> None:
    allowed = [int(c) for c in guild.get("allowed_channels", []) or []]
    if allowed and channel_id not in allowed:
        channels = ", ".join(f"<#{c}>" for c in allowed[:5])
        raise RuleBroken(f"easel works only in {channels} on this server")


def guild_limit_problems(request: GenerationRequest, guild: Mapping[str, Any]) -> list[str]:
    """The server's limits the request goes over."""
    problems = []
    for name, key in CAPPED_BY_GUILD.items():
        limit = guild.get(key)
        if limit is not None and getattr(request, name) > int(limit):
            problems.append(f"{name} is at most {limit} on this server")
    return problems


def disabled_checkpoints(guild: Mapping[str, Any]) -> frozenset[str]:
    """Checkpoints this server's admins turned off (the operator's folder stays shared)."""
    return frozenset(str(name) for name in guild.get("disabled_checkpoints", []) or [])


def validated_member_setting(name: str, value: Any) -> Any:
    if name not in MEMBER_SETTINGS:
        raise RuleBroken(f"unknown setting {name}")
    kind = MEMBER_SETTINGS[name]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).strip().lower() in ("true", "on", "yes", "false", "off", "no"):
            return str(value).strip().lower() in ("true", "on", "yes")
        raise RuleBroken(f"{name} must be {KIND_WORDS[bool]}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise RuleBroken(f"{name} must be {KIND_WORDS[kind]}") from None
