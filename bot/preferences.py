"""Checking what members store with /settings and admins with /admin, against config.toml's limits.

Discord enforces the option ranges it was told about, but a guild's or member's stored values
are checked here again: these functions are the only way values reach the database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from generation.config import Config, DefaultsConfig, LimitsConfig
from generation.errors import EaselError
from generation.samplers import resolve_sampler, resolve_schedule

MAX_NEGATIVE_CHARS = 1000
MAX_BANNED_WORDS = 200
MAX_BANNED_WORD_CHARS = 64
MAX_ALLOWED_CHANNELS = 50


class InvalidSetting(EaselError):
    pass


def _size_problem(name: str, value: int, *, minimum: int, maximum: int) -> str | None:
    if value % 8:
        return f"{name} must be a multiple of 8"
    if not minimum <= value <= maximum:
        return f"{name} must be from {minimum} to {maximum}"
    return None


def member_setting_changes(*, current: Mapping[str, Any], limits: LimitsConfig, defaults: DefaultsConfig,
                           sampler: str | None = None, schedule: str | None = None, steps: int | None = None,
                           width: int | None = None, height: int | None = None, cfg_scale: float | None = None,
                           negative_prompt: str | None = None, enable_hr: bool | None = None,
                           hr_scale: float | None = None, hr_upscaler: str | None = None,
                           hires_upscalers: Sequence[str] = ()) -> dict[str, Any]:
    """The validated changes to a member's stored defaults (keys of generation.rules.MEMBER_SETTINGS).

    A sampler is stored in its canonical spelling; "DPM++ 2M Karras" stores sampler and schedule.
    `hires_upscalers`: the names a hires upscaler may have (the Latent modes and usable upscalers).
    Raises InvalidSetting naming every problem.
    """
    changes: dict[str, Any] = {}
    problems: list[str] = []
    if sampler is not None or schedule is not None:
        base = sampler if sampler is not None else current.get("sampler") or defaults.sampler
        try:
            wanted = resolve_schedule(schedule) if schedule is not None else None
            choice = resolve_sampler(base, wanted)
        except EaselError as exc:
            problems.append(str(exc))
        else:
            if sampler is not None:
                changes["sampler"] = choice.sampler
            changes["schedule"] = choice.schedule
    if steps is not None:
        if not limits.min_steps <= steps <= limits.max_steps:
            problems.append(f"steps must be from {limits.min_steps} to {limits.max_steps}")
        else:
            changes["steps"] = int(steps)
    for name, value, maximum in (("width", width, limits.max_width), ("height", height, limits.max_height)):
        if value is None:
            continue
        problem = _size_problem(name, value, minimum=limits.min_size, maximum=maximum)
        if problem:
            problems.append(problem)
        else:
            changes[name] = int(value)
    if width is not None or height is not None:
        final_width = changes.get("width", current.get("width") or defaults.width)
        final_height = changes.get("height", current.get("height") or defaults.height)
        if final_width * final_height > limits.max_pixels:
            problems.append(f"{final_width}x{final_height} is {final_width * final_height:,} pixels; "
                            f"the limit is {limits.max_pixels:,}")
    if cfg_scale is not None:
        if not 0 <= cfg_scale <= limits.max_cfg_scale:
            problems.append(f"CFG scale must be from 0 to {limits.max_cfg_scale:g}")
        else:
            changes["cfg_scale"] = float(cfg_scale)
    if negative_prompt is not None:
        if len(negative_prompt) > MAX_NEGATIVE_CHARS:
            problems.append(f"the negative prompt may have at most {MAX_NEGATIVE_CHARS} characters")
        else:
            cleared = negative_prompt.strip() in ("", "-")
            changes["negative_prompt"] = None if cleared else negative_prompt.strip()
    if enable_hr is not None:
        changes["enable_hr"] = bool(enable_hr)
    if hr_scale is not None:
        if not 1.0 <= hr_scale <= limits.max_hires_scale:
            problems.append(f"the hires scale must be from 1 to {limits.max_hires_scale:g}")
        else:
            changes["hr_scale"] = float(hr_scale)
    if hr_upscaler is not None:
        if hr_upscaler not in hires_upscalers:
            problems.append(f"there is no hires upscaler named {hr_upscaler!r}; /upscalers lists them")
        else:
            changes["hr_upscaler"] = hr_upscaler
    if problems:
        raise InvalidSetting("; ".join(problems))
    return changes


def guild_limit_bounds(config: Config) -> dict[str, tuple[int, int]]:
    """Inclusive (lowest, highest) value an admin may set for each guild limit."""
    limits, queue = config.limits, config.queue
    return {"max_steps": (limits.min_steps, limits.max_steps), "max_width": (limits.min_size, limits.max_width),
            "max_height": (limits.min_size, limits.max_height), "max_count": (1, limits.max_count),
            "max_queued_per_member": (1, queue.per_user_queued), "max_queued": (1, queue.per_guild_queued)}


def guild_limit_changes(given: Mapping[str, int | None], *, config: Config) -> dict[str, int]:
    """The validated limits an admin set (None: left alone). Raises InvalidSetting naming every problem."""
    bounds = guild_limit_bounds(config)
    changes: dict[str, int] = {}
    problems: list[str] = []
    for key, value in given.items():
        if value is None:
            continue
        if key not in bounds:
            problems.append(f"unknown limit {key}")
            continue
        low, high = bounds[key]
        if not low <= value <= high:
            problems.append(f"{key} must be from {low} to {high}")
        else:
            changes[key] = int(value)
    if problems:
        raise InvalidSetting("; ".join(problems))
    return changes


def allowed_channels_after(current: list[int] | None, channel_id: int, *, allowed: bool) -> list[int]:
    channels = [int(c) for c in current or []]
    if allowed and channel_id not in channels:
        if len(channels) >= MAX_ALLOWED_CHANNELS:
            raise InvalidSetting(f"at most {MAX_ALLOWED_CHANNELS} channels can be listed")
        channels.append(channel_id)
    elif not allowed:
        channels = [c for c in channels if c != channel_id]
    return channels


def disabled_checkpoints_after(current: list[str] | None, name: str, *, enabled: bool) -> list[str]:
    """A server's hidden checkpoints after an admin enabled or disabled `name` there."""
    hidden = [str(n) for n in current or [] if n != name]
    return hidden if enabled else hidden + [name]


def normalized_banned_word(word: str) -> str:
    word = " ".join(word.split()).lower()
    if not word:
        raise InvalidSetting("the banned word is empty")
    if len(word) > MAX_BANNED_WORD_CHARS:
        raise InvalidSetting(f"a banned word may have at most {MAX_BANNED_WORD_CHARS} characters")
    return word


def banned_words_after(current: list[str] | None, word: str, *, add: bool) -> list[str]:
    words = list(current or [])
    word = normalized_banned_word(word)
    if add and word not in words:
        if len(words) >= MAX_BANNED_WORDS:
            raise InvalidSetting(f"at most {MAX_BANNED_WORDS} banned words can be listed")
        words.append(word)
    elif not add:
        if word not in words:
            raise InvalidSetting(f'"{word}" is not on the list')
        words.remove(word)
    return words
