"""Plain-text formatting for command replies, within Discord's limits. Pure: no I/O, no state.

Everything the member typed is escaped before it goes into markdown, so a prompt such as
`**bold** (cat:1.2)` shows as written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from discord.utils import escape_markdown, escape_mentions

from generation.places import EXACT_PLACES, PLACE_BANDS, place_band

MAX_CONTENT = 2000
MAX_EMBED_DESCRIPTION = 4096
MAX_FIELD_VALUE = 1024
MAX_CHOICE_NAME = 100
MAX_OPTION_CHARS = 6000  # the longest text a slash-command string option may declare
MAX_TEXT_INPUT = 4000  # the longest text a modal's text input may hold (its max_length, its value)

_WHITESPACE = re.compile(r"\s+")


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, ending with … when cut."""
    if limit < 1:
        return ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(text: str, limit: int) -> str:
    """Whitespace (newlines included) collapsed to single spaces, then clipped."""
    return clip(_WHITESPACE.sub(" ", text).strip(), limit)


def escape(text: str) -> str:
    """Markdown and mentions shown as written."""
    return escape_mentions(escape_markdown(text))


def quoted(text: str, limit: int) -> str:
    """A member's text on one line, escaped, at most `limit` characters before escaping."""
    return escape(one_line(text, limit)) or "(empty)"


def join_within(lines: Sequence[str], limit: int, *, separator: str = "\n") -> str:
    """As many whole lines as fit in `limit`, and a note saying how many were left out."""
    kept: list[str] = []
    used = 0
    for index, line in enumerate(lines):
        rest = len(lines) - index
        note = f"… and {rest} more"
        needed = len(line) + (len(separator) if kept else 0)
        # Keep room for the note unless this is the last line.
        reserve = 0 if rest == 1 else len(separator) + len(note)
        if used + needed + reserve > limit:
            kept.append(note)
            break
        kept.append(line)
        used += needed
    return clip(separator.join(kept), limit)


def format_duration(seconds: float) -> str:
    """Rough, friendly: "under a minute", "about 4 min", "about 1 h 20 min"."""
    if not math.isfinite(seconds) or seconds < 0:
        return "unknown"
    if seconds < 60:
        return "under a minute"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"about {hours} h {minutes} min" if minutes else f"about {hours} h"


def page_count(total: int, per_page: int) -> int:
    return max(1, math.ceil(total / per_page))


def timestamp(moment: datetime | None, style: str = "R") -> str:
    """A Discord timestamp tag (shown in each member's own time zone)."""
    return f"<t:{int(moment.timestamp())}:{style}>" if moment is not None else "?"


# ------------------------------------------------------------------------------------ /queue


def queue_line(*, job_id: int, prompt: str, position: int | None, starts_in_s: float | None) -> str:
    if position == 0:
        where = "🎨 running now"
    elif position is None:
        where = "⏳ waiting to be scheduled"
    else:
        where = f"⏳ position {position}"
        if starts_in_s is not None:
            where += f", starts in {format_duration(starts_in_s)}"
    return f"**#{job_id}** · {where} · {quoted(prompt, 80)}"


# ------------------------------------------------------------------------------------ models


def checkpoint_line(*, name: str, short_hash: str | None, architecture: str | None, default: bool) -> str:
    hash_text = f"`{short_hash}`" if short_hash else "no hash"
    mark = " · **default**" if default else ""
    return f"**{escape(name)}** · {hash_text} · {architecture or 'unknown'}{mark}"


def embedding_line(*, trigger: str, vectors: int | None, skip_reason: str | None) -> str:
    if skip_reason:
        return f"~~{escape(trigger)}~~ · skipped: {escape(one_line(skip_reason, 150))}"
    count = vectors or 0
    return f"**{escape(trigger)}** · {count} vector{'s' if count != 1 else ''}"


def code(text: str) -> str:
    """`text` as inline code, or escaped plain text when it holds a backtick (which would end the span)."""
    return f"`{text}`" if text and "`" not in text else escape(text)


def lora_line(*, name: str, short_hash: str | None, family: str, alias: str | None,
              skip_reason: str | None) -> str:
    """One LoRA of /loras: how to write it in a prompt, its hash, family and alias, or why it is skipped."""
    shown = one_line(name, 100)
    if skip_reason:
        return f"~~{escape(shown)}~~ · skipped: {escape(one_line(skip_reason, 150))}"
    line = f"{code(f'<lora:{shown}:1>')} · {code(short_hash) if short_hash else 'no hash'} · {family}"
    if alias:
        line += f" · alias {code(one_line(alias, 60))}"
    return line


# ------------------------------------------------------------------------------------ /history


def history_line(*, number: int, prompt: str, negative_prompt: str, job_id: int | None,
                 created_at: datetime | None) -> str:
    line = f"**{number}.** {quoted(prompt, 280)}"
    if negative_prompt:
        line += f"\n    ↳ *negative:* {quoted(negative_prompt, 100)}"
    job = f"job #{job_id} · " if job_id is not None else ""
    return f"{line}\n    {job}{timestamp(created_at)}"


# ------------------------------------------------------------------------------------ settings

MEMBER_SETTING_LABELS: dict[str, str] = {"sampler": "Sampler", "schedule": "Schedule type", "steps": "Steps",
                                         "width": "Width", "height": "Height", "cfg_scale": "CFG scale",
                                         "negative_prompt": "Negative prompt", "enable_hr": "Hires fix",
                                         "hr_scale": "Hires scale", "hr_upscaler": "Hires upscaler"}
GUILD_LIMIT_LABELS: dict[str, str] = {"max_steps": "Max steps", "max_width": "Max width",
                                      "max_height": "Max height", "max_count": "Max images per request",
                                      "max_queued_per_member": "Max queued per member",
                                      "max_queued": "Max queued in the server"}


def queue_position_text(position: int) -> str:
    """A waiting job's place as its message shows it: exact near the front, further back only the band
    it is within ("within the first 50"), so a long queue moving up one place per pick edits a message
    a handful of times, not once per pick (Discord rate-limits edits)."""
    if position <= EXACT_PLACES:
        return f"⏳ Queued — position {position}"
    band = place_band(position)
    if band <= PLACE_BANDS[-1]:
        return f"⏳ Queued — within the first {band:,}"
    return f"⏳ Queued — {PLACE_BANDS[-1]:,}+ waiting ahead"


def worker_line(view) -> str:
    """One GPU worker for /admin workers (a metrics.WorkerView)."""
    memory = f" · {view.free_memory / 2**30:.1f} GiB free" if view.free_memory is not None else ""
    loaded = f" · {clip(view.loaded, 80)}" if view.loaded else " · nothing loaded"
    state = "🟠 busy" if view.busy else "🟢 idle"
    return f"**{escape(view.name)}** {state} on {view.device}{loaded}{memory} · seen {view.last_seen_s:.1f} s ago"


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return quoted(value, 300)
    return str(value)


def settings_lines(settings: Mapping[str, Any], labels: Mapping[str, str], *,
                   fallback: Mapping[str, Any] | None = None) -> list[str]:
    """One line per known setting: the stored value, or the fallback marked "(default)"."""
    lines = []
    for key, label in labels.items():
        if settings.get(key) is not None:
            lines.append(f"**{label}:** {format_value(settings[key])}")
        elif fallback is not None and fallback.get(key) not in (None, ""):
            lines.append(f"**{label}:** {format_value(fallback[key])} *(default)*")
        elif fallback is not None:
            lines.append(f"**{label}:** *(none)*")
    return lines


def guild_limit_lines(settings: Mapping[str, Any]) -> list[str]:
    lines = [f"**{label}:** {settings[key]}" for key, label in GUILD_LIMIT_LABELS.items()
             if settings.get(key) is not None]
    return lines or ["**Limits:** only the bot's own"]


def guild_settings_lines(settings: Mapping[str, Any]) -> list[str]:
    lines = guild_limit_lines(settings)
    channels = [int(c) for c in settings.get("allowed_channels", []) or []]
    lines.append("**Channels:** " + (", ".join(f"<#{c}>" for c in channels) if channels else "every channel"))
    words = list(settings.get("banned_words", []) or [])
    lines.append("**Banned words:** " + (", ".join(f"||{escape(w)}||" for w in words) if words else "none"))
    nsfw = list(settings.get("nsfw_words", []) or [])
    lines.append("**NSFW filter:** " + ("on, outside age-restricted channels" if settings.get("nsfw_filter") else "off")
                 + (f" (+{len(nsfw)} words of this server)" if nsfw else ""))
    hidden = list(settings.get("disabled_checkpoints", []) or [])
    lines.append("**Checkpoints turned off here:** " + (", ".join(escape(n) for n in hidden) if hidden else "none"))
    return lines


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def names_list(names: Iterable[str], limit: int = 10) -> str:
    names = list(names)
    shown = ", ".join(escape(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
