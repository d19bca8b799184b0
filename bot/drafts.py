"""/info's "Generate with these": an image's parameters kept as a draft in the database, and the
button that turns a draft into a job for whoever clicks it, also after a restart.

The draft id is random (not guessable from job ids) and the draft holds only plain request
fields, already checked against this bot's limits when /info made it.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import discord

from generation.config import LimitsConfig, RetentionConfig
from generation.errors import EaselError
from generation.infotext import parse_hash_list
from generation.prompt_parser import EXTRA_NETWORK, LORA_TYPES
from generation.requests import MAX_SEED
from generation.samplers import resolve_sampler
from generation.submission import Ask

from .errors import send_error

log = logging.getLogger(__name__)

DRAFT_KEY_PREFIX = "draft:"
DRAFT_ID = re.compile(r"^[0-9a-f]{16}$")
# What a draft may set: Ask fields (a stored draft is read back through this list only).
DRAFT_FIELDS = frozenset({"prompt", "negative_prompt", "checkpoint", "sampler", "schedule", "steps", "cfg_scale",
                          "width", "height", "seed", "count", "clip_skip", "enable_hr", "hr_scale", "hr_resize_x",
                          "hr_resize_y", "hr_upscaler", "hr_second_pass_steps", "hr_sampler", "hr_prompt",
                          "hr_negative_prompt", "strength"})


class DraftError(EaselError):
    pass


@dataclass(frozen=True, kw_only=True)
class Draft:
    """Options for submit_from_interaction (`given`), and the image's values that could not be used."""

    given: dict[str, Any]
    ignored: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def _with_local_loras(prompt: str, image_hashes: Mapping[str, str], loras: Mapping[str, str]) -> tuple[str, list[str]]:
    """The prompt's LoRA tags pointed at this bot's files, found by the image's `Lora hashes`, then
    by name; (prompt, tags that were left out because no file here matches)."""
    missing = []

    def local(match: re.Match) -> str:
        tag = match.group(0)
        kind, _, rest = tag[1:-1].partition(":")
        if kind not in LORA_TYPES:
            missing.append(f"{tag} (hypernetworks and other networks are not supported here)")
            return ""
        name, colon, weights = rest.partition(":")
        wanted = (image_hashes.get(name) or "").lower()
        by_hash = [local_name for local_name, short in loras.items() if wanted and short.lower() == wanted]
        if by_hash:
            return f"<{kind}:{by_hash[0]}{colon}{weights}>"
        if name in loras:  # as A1111's paste does when no file has the image's hash
            return tag
        missing.append(f"{tag} (no LoRA here by that {'hash or ' if wanted else ''}name)")
        return ""

    return EXTRA_NETWORK.sub(local, prompt), missing


def draft_from_infotext(fields: Mapping[str, Any], *, limits: LimitsConfig,
                        checkpoints: Mapping[str, str | None], loras: Mapping[str, str] | None = None,
                        hires_upscalers: Sequence[str] = ()) -> Draft:
    """A txt2img draft from generation.infotext.to_request_fields output.

    `checkpoints`: the enabled checkpoints' names and short hashes; the image's model is found
    by name, else by its hash. `loras`: this bot's LoRA names (and aliases) and short hashes; a
    LoRA tag is kept when its file is here (by the image's `Lora hashes`, else by name).
    `hires_upscalers`: what a hires fix may use here; the image's hires fix comes along when A1111
    would paste it (generation.infotext sets enable_hr).

    A value this bot cannot use (unknown sampler or model, out of its limits) is left out, so the
    member's and server's defaults fill it, and is named in `ignored`.
    """
    prompt, negative = str(fields.get("prompt") or "").strip(), str(fields.get("negative_prompt") or "")
    for what, text in (("prompt", prompt), ("negative prompt", negative)):  # first: the rest reads the text
        if len(text) > limits.max_prompt_chars:
            raise DraftError(f"that image's {what} has {len(text):,} characters; the limit here is "
                             f"{limits.max_prompt_chars:,}, so it cannot be generated again")
    image_hashes = parse_hash_list(str((fields.get("extra") or {}).get("Lora hashes", "")))
    prompt, ignored = _with_local_loras(prompt, image_hashes, loras or {})
    prompt = prompt.strip()  # the negative prompt's tags are plain text there, as in A1111
    if not prompt:
        raise DraftError("that image's parameters have no prompt, so there is nothing to generate from")
    given: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative, "count": 1}

    sampler = fields.get("sampler")
    if sampler:
        try:
            choice = resolve_sampler(str(sampler), fields.get("schedule_type"))
        except EaselError:
            ignored.append(f"sampler {sampler!r} (unknown here)")
        else:
            given["sampler"], given["schedule"] = choice.sampler, choice.schedule

    model, model_hash = fields.get("model"), str(fields.get("model_hash") or "").lower()
    if model or model_hash:
        by_hash = [name for name, short in checkpoints.items() if model_hash and (short or "").lower() == model_hash]
        if model in checkpoints:
            given["checkpoint"] = model
        elif len(by_hash) == 1:
            given["checkpoint"] = by_hash[0]
        else:
            ignored.append(f"model {model or model_hash!r} (not available here)")

    steps = fields.get("steps")
    if steps is not None:
        if limits.min_steps <= steps <= limits.max_steps:
            given["steps"] = steps
        else:
            ignored.append(f"steps {steps} (allowed: {limits.min_steps}-{limits.max_steps})")

    cfg = fields.get("cfg_scale")
    if cfg is not None:
        if 0 <= cfg <= limits.max_cfg_scale:
            given["cfg_scale"] = cfg
        else:
            ignored.append(f"CFG scale {cfg:g} (allowed: 0-{limits.max_cfg_scale:g})")

    width, height = fields.get("width"), fields.get("height")
    if width is not None and height is not None:
        fits = (width % 8 == 0 and height % 8 == 0 and limits.min_size <= width <= limits.max_width
                and limits.min_size <= height <= limits.max_height and width * height <= limits.max_pixels)
        if fits:
            given["width"], given["height"] = width, height
        else:
            ignored.append(f"size {width}x{height} (outside this bot's limits)")

    seed = fields.get("seed")
    if seed is not None:
        if 0 <= seed < MAX_SEED:
            given["seed"] = seed
        else:
            ignored.append(f"seed {seed}")

    clip_skip = fields.get("clip_skip")
    if clip_skip is not None:
        if 1 <= clip_skip <= limits.max_clip_skip:
            given["clip_skip"] = clip_skip
        else:
            ignored.append(f"clip skip {clip_skip}")

    if fields.get("enable_hr"):
        _hires_draft(fields, given, ignored, limits=limits, hires_upscalers=hires_upscalers,
                     local=lambda text: _with_local_loras(text, image_hashes, loras or {})[0].strip())
    notes = tuple(str(w) for w in fields.get("warnings", ()) or ())
    return Draft(given=given, ignored=tuple(ignored), notes=notes)


def _hires_draft(fields: Mapping[str, Any], given: dict[str, Any], ignored: list[str], *, limits: LimitsConfig,
                 hires_upscalers: Sequence[str], local: Callable[[str], str]) -> None:
    """The image's hires fix, each value this bot cannot use left to the defaults and named."""
    given["enable_hr"] = True
    strength = fields.get("denoising_strength")
    if strength is not None and 0 < strength <= 1:
        given["strength"] = strength
    scale = fields.get("hr_scale")
    if scale is not None:
        if 1 <= scale <= limits.max_hires_scale:
            given["hr_scale"] = scale
        else:
            ignored.append(f"hires scale {scale:g} (allowed: 1-{limits.max_hires_scale:g})")
    for key in ("hr_resize_x", "hr_resize_y"):
        if fields.get(key) is not None and 0 <= fields[key] <= limits.max_hires_side:
            given[key] = fields[key]
    steps = fields.get("hr_second_pass_steps")
    if steps is not None:
        if 0 <= steps <= limits.max_steps:
            given["hr_second_pass_steps"] = steps
        else:
            ignored.append(f"hires steps {steps}")
    upscaler = fields.get("hr_upscaler")
    if upscaler is not None:
        if upscaler in hires_upscalers:
            given["hr_upscaler"] = upscaler
        else:
            ignored.append(f"hires upscaler {upscaler!r} (not available here)")
    sampler = fields.get("hr_sampler")
    if sampler:
        try:
            given["hr_sampler"] = resolve_sampler(str(sampler), None).sampler
        except EaselError:
            ignored.append(f"hires sampler {sampler!r} (unknown here)")
    for key in ("hr_prompt", "hr_negative_prompt"):
        text = str(fields.get(key) or "")
        if text and len(text) <= limits.max_prompt_chars:
            given[key] = local(text) if key == "hr_prompt" else text  # its LoRA tags, as the prompt's


def new_draft_id() -> str:
    return secrets.token_hex(8)


async def save_draft(store, draft: Draft, *, owner_id: int, retention: RetentionConfig,
                     now: datetime | None = None) -> str:
    """Keep a draft; drafts older than `[retention] drafts_days` go, and so do the member's oldest
    beyond `max_drafts_per_member`."""
    now = now or datetime.now(timezone.utc)
    draft_id = new_draft_id()
    await store.settings.set(DRAFT_KEY_PREFIX + draft_id, {
        "given": draft.given, "ignored": list(draft.ignored), "owner_id": owner_id, "created_at": now.isoformat(),
    })
    await store.settings.delete_stale(DRAFT_KEY_PREFIX, created_before=now - timedelta(days=retention.drafts_days))
    await store.settings.trim_owner(DRAFT_KEY_PREFIX, owner_id, retention.max_drafts_per_member)
    return draft_id


async def load_draft(store, draft_id: str) -> Draft | None:
    if not DRAFT_ID.match(draft_id):
        return None
    value = await store.settings.get(DRAFT_KEY_PREFIX + draft_id)
    if not isinstance(value, dict) or not isinstance(value.get("given"), dict):
        return None
    given = {key: item for key, item in value["given"].items() if key in DRAFT_FIELDS}
    return Draft(given=given, ignored=tuple(value.get("ignored", ())))


class DraftButton(discord.ui.DynamicItem[discord.ui.Button], template=r"easel:draft:(?P<draft_id>[0-9a-f]{16})"):
    def __init__(self, draft_id: str):
        super().__init__(discord.ui.Button(label="Generate with these", emoji="🎨", style=discord.ButtonStyle.primary,
                                           custom_id=f"easel:draft:{draft_id}"))
        self.draft_id = draft_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["draft_id"])

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        from .views import refuse_in_dms  # the same DM rule as slash commands and result buttons

        return not await refuse_in_dms(interaction)

    async def callback(self, interaction: discord.Interaction) -> None:
        from .cogs.imagine import submit_from_interaction

        app = interaction.client.app  # type: ignore[attr-defined]
        try:
            draft = await load_draft(app.store, self.draft_id)
            if draft is None:
                raise DraftError("those parameters are no longer stored; run /info on the image again")
            await submit_from_interaction(app, interaction, Ask(mode="txt2img", **draft.given))
        except EaselError as exc:
            await send_error(interaction, exc)


def draft_view(draft_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(DraftButton(draft_id))
    return view
