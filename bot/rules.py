"""Per-guild and per-member rules, as plain functions (no discord import) so tests call them directly.

Option resolution: an option the member typed wins; otherwise the member's /settings, then the
guild's defaults, then config.toml.
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any, Mapping

from generation.config import DefaultsConfig
from generation.errors import EaselError
from generation.requests import GenerationRequest

# What /settings stores per member, with the type each value must have.
MEMBER_SETTINGS: dict[str, type] = {"sampler": str, "schedule": str, "steps": int, "width": int, "height": int,
                                    "cfg_scale": float, "negative_prompt": str}
# What /admin stores per guild.
GUILD_LIMITS: dict[str, type] = {"max_steps": int, "max_width": int, "max_height": int, "max_count": int,
                                 "max_queued_per_member": int, "max_queued": int}
RESOLVED_OPTIONS = ("negative_prompt", "sampler", "schedule", "steps", "cfg_scale", "width", "height", "count",
                    "strength", "clip_skip")


KIND_WORDS = {str: "text", int: "a whole number", float: "a number"}


class RuleBroken(EaselError):
    pass


def resolve_options(given: Mapping[str, Any], *, member: Mapping[str, Any], guild: Mapping[str, Any],
                    defaults: DefaultsConfig, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Fill every option left out (None) from the member, the guild's defaults, then the config;
    `size` (the checkpoint's, from generation.requests.default_size) stands in for the config's."""
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
    if given.get("sampler") is not None and given.get("schedule") is None:
        resolved["schedule"] = "Automatic"  # a typed sampler ("DPM++ 2M Karras") carries its own schedule
    return resolved


def check_channel(guild: Mapping[str, Any], channel_id: int | None) -> None:
    allowed = [int(c) for c in guild.get("allowed_channels", []) or []]
    if allowed and channel_id not in allowed:
        channels = ", ".join(f"<#{c}>" for c in allowed[:5])
        raise RuleBroken(f"easel works only in {channels} on this server")


def banned_word_in(text: str, banned: list[str]) -> str | None:
    lowered = text.lower()
    for word in banned:
        if re.search(rf"(?<!\w){re.escape(word.lower())}(?!\w)", lowered):
            return word
    return None


def check_request_rules(request: GenerationRequest, guild: Mapping[str, Any]) -> None:
    """The guild's banned words and limits; one message naming everything that is wrong."""
    problems = []
    word = banned_word_in(f"{request.prompt}\n{request.negative_prompt}", list(guild.get("banned_words", []) or []))
    if word:
        problems.append(f'your prompt contains "{word}", which this server does not allow')
    for key, value, label in (("max_steps", request.steps, "steps"), ("max_width", request.width, "width"),
                              ("max_height", request.height, "height"), ("max_count", request.count, "count")):
        limit = guild.get(key)
        if limit is not None and value > int(limit):
            problems.append(f"{label} is at most {limit} on this server")
    if problems:
        raise RuleBroken("; ".join(problems))


def validated_member_setting(name: str, value: Any) -> Any:
    if name not in MEMBER_SETTINGS:
        raise RuleBroken(f"unknown setting {name}")
    kind = MEMBER_SETTINGS[name]
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise RuleBroken(f"{name} must be {KIND_WORDS[kind]}") from None
