"""Things members do to existing jobs (reroll, outpaint, delete, info), shared by buttons, reactions
and commands (/outpaint of an uploaded picture is here too).

No discord objects come in: only ids and flags, so tests call these directly.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from generation.errors import EaselError, ImageError
from generation.images import load_user_image, open_user_image
from generation.infotext import parse_infotext, read_infotext, to_request_fields
from generation.outpainting import (CanvasPlan, OutpaintError, check_move, extend_canvas, outpaint_fields,
                                    plan_canvas, png_bytes)
from generation.requests import GenerationRequest
from generation.submission import PENDING_UPLOAD, Ask, Prepared, Requester
from generation.uploads import ImageInput, check_declared, read_checked

from .context import AppContext


class NotFound(EaselError):
    pass


async def job_for_message(app: AppContext, message_id: int):
    images = await app.store.images.get_by_message(message_id)
    if not images:
        return None
    return await app.store.jobs.get(images[0].job_id)


async def reroll(app: AppContext, job_id: int, requester: Requester):
    """The same request with a new seed, as the requester's own job, through the one submission path
    (this server's rules, the checkpoint gate, caps and moderation apply to the new member)."""
    job = await app.store.jobs.get(job_id)
    if job is None:
        raise NotFound("that result is gone; start a new /imagine")
    ask = Ask.again(GenerationRequest.from_dict(job.request), seed=None)
    return await app.submissions.submit(ask, requester)


@dataclass(frozen=True)
class OutpaintPlan:
    """An outpaint that passed every check (`Submissions.prepare`), waiting for its canvas and its row."""

    prepared: Prepared  # its ask's init_image and mask are PENDING_UPLOAD until `finish_outpaint`
    canvas: CanvasPlan
    direction: str | None
    zoom: float | None
    source: Path | Image.Image  # a finished job's image file, or a decoded upload


async def outpaint_limits(app: AppContext, requester: Requester) -> dict:
    """The size limits a canvas must keep: the bot's, and this server's where it sets lower ones."""
    limits = app.config.limits
    guild_id = requester.target.guild_id
    guild = await app.store.guilds.get_settings(guild_id) if guild_id is not None and not requester.operator else {}
    return dict(max_width=min(limits.max_width, guild.get("max_width") or limits.max_width),
                max_height=min(limits.max_height, guild.get("max_height") or limits.max_height),
                max_pixels=limits.max_pixels, min_size=limits.min_size)


async def plan_outpaint(app: AppContext, job_id: int, requester: Requester, *, direction: str | None = None,
                        zoom: float | None = None) -> OutpaintPlan:
    """Zoom out or pan a finished job's first image, as the requester's own job: the job's prompt,
    negative prompt, checkpoint, sampler, steps and CFG, a new random seed (as Reroll), and every
    rule of the submission path. Cheap (no pixels read): a button runs it before acknowledging."""
    direction, zoom = check_move(direction=direction, zoom=zoom)
    job = await app.store.jobs.get(job_id)
    if job is None:
        raise NotFound("that result is gone; start a new /imagine")
    images = await app.store.images.list_for_job(job_id)
    if not images:
        raise NotFound("that result has no images any more")
    first = min(images, key=lambda image: image.index)
    canvas = plan_canvas(first.width, first.height, direction=direction, zoom=zoom,
                         **await outpaint_limits(app, requester))
    request = GenerationRequest.from_dict(job.request)
    ask = Ask.again(request, seed=None, init_image=PENDING_UPLOAD, mask=PENDING_UPLOAD, **outpaint_fields(canvas))
    prepared = await app.submissions.prepare(ask, requester)
    return OutpaintPlan(prepared=prepared, canvas=canvas, direction=direction, zoom=zoom, source=Path(first.path))


def check_upload_move(app: AppContext, upload: ImageInput, *, direction: str | None = None,
                      zoom: float | None = None) -> None:
    """What can be refused before an upload is downloaded: the choice of move, the declared type and
    size, and (when the upload declares its dimensions) a canvas over the bot's limits."""
    direction, zoom = check_move(direction=direction, zoom=zoom)
    check_declared(upload, max_pixels=app.uploads.max_pixels, what="image")
    if upload.width and upload.height:
        limits = app.config.limits
        plan_canvas(upload.width, upload.height, direction=direction, zoom=zoom, max_width=limits.max_width,
                    max_height=limits.max_height, max_pixels=limits.max_pixels, min_size=limits.min_size)


def _decode_upload(data: bytes, max_pixels: int) -> tuple[Image.Image, dict | None]:
    """The picture, and the parameters in its infotext (None: it has none)."""
    try:
        image = open_user_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        raise ImageError(f"the image: {exc}") from None
    try:
        text = read_infotext(data, max_pixels=max_pixels)
    except ImageError:
        text = None
    fields = to_request_fields(parse_infotext(text)) if text and text.strip() else None
    return image.convert("RGB"), fields


async def plan_upload_outpaint(app: AppContext, upload: ImageInput, requester: Requester, *,
                               direction: str | None = None, zoom: float | None = None,
                               prompt: str | None = None, negative_prompt: str | None = None,
                               checkpoint: str | None = None, seed: int | None = None) -> OutpaintPlan:
    """Zoom out or pan any picture a member uploads. The prompt defaults to the picture's own (its
    infotext's, with its negative prompt); a picture without one needs a prompt."""
    direction, zoom = check_move(direction=direction, zoom=zoom)
    data = await read_checked(upload, max_pixels=app.uploads.max_pixels, what="image")
    image, fields = await asyncio.to_thread(_decode_upload, data, app.uploads.max_pixels)
    if not (prompt or "").strip():
        if not fields or not (fields.get("prompt") or "").strip():
            raise OutpaintError("that image carries no prompt of its own; say what to draw around it "
                                "with the prompt option")
        prompt = fields["prompt"]
        if negative_prompt is None:
            negative_prompt = fields.get("negative_prompt") or None
    canvas = plan_canvas(image.width, image.height, direction=direction, zoom=zoom,
                         **await outpaint_limits(app, requester))
    ask = Ask(prompt=prompt, negative_prompt=negative_prompt, checkpoint=checkpoint, seed=seed,
              init_image=PENDING_UPLOAD, mask=PENDING_UPLOAD, **outpaint_fields(canvas))
    prepared = await app.submissions.prepare(ask, requester)
    return OutpaintPlan(prepared=prepared, canvas=canvas, direction=direction, zoom=zoom, source=image)


def _render(plan: OutpaintPlan, max_pixels: int) -> tuple[bytes, bytes]:
    """Runs off the event loop: the canvas and the mask, as PNG."""
    if isinstance(plan.source, Path):
        try:
            image = load_user_image(plan.source, max_pixels=max_pixels)
        except ImageError:
            raise NotFound("that result's image is no longer kept; start a new /imagine") from None
    else:
        image = plan.source
    if image.size != (plan.canvas.source_width, plan.canvas.source_height):
        raise OutpaintError("that image changed size since it was checked; try again")
    canvas, mask = extend_canvas(image, direction=plan.direction, zoom=plan.zoom)
    return png_bytes(canvas), png_bytes(mask)


async def finish_outpaint(app: AppContext, plan: OutpaintPlan):
    """Build the canvas and the mask, keep both as the requester's uploads, queue the job (a file this
    call created is removed again if queueing fails). Returns the JobRecord."""
    canvas_png, mask_png = await asyncio.to_thread(_render, plan, app.uploads.max_pixels)
    owner_id = plan.prepared.requester.user_id
    kept = await app.uploads.keep_pngs([canvas_png, mask_png], owner_id=owner_id)
    (canvas_path, _), (mask_path, _) = kept
    ask = dataclasses.replace(plan.prepared.ask, init_image=str(canvas_path), mask=str(mask_path))
    try:
        return await app.submissions.enqueue(dataclasses.replace(plan.prepared, ask=ask))
    except BaseException:
        for path, created in kept:
            if created:
                await app.uploads.discard(path)
        raise


async def outpaint(app: AppContext, job_id: int, requester: Requester, *, direction: str | None = None,
                   zoom: float | None = None):
    """Zoom out (`zoom` 1.5 or 2) or pan (`direction` left/right/up/down) a finished job's first image
    as the requester's own job, through the one submission path. Returns the JobRecord."""
    plan = await plan_outpaint(app, job_id, requester, direction=direction, zoom=zoom)
    return await finish_outpaint(app, plan)


def may_delete(job, *, user_id: int, can_manage_messages: bool) -> bool:
    """The one delete rule for the button and the reaction: the requester, or Manage Messages in that channel."""
    return job is not None and (job.owner_id == user_id or can_manage_messages)


async def job_is_on_message(app: AppContext, job_id: int, message_id: int | None) -> bool:
    """Whether the message is this job's result (or its status message), so a button copied onto
    another message cannot act on that message in this job's name."""
    if message_id is None:
        return False
    if any(image.job_id == job_id for image in await app.store.images.get_by_message(message_id)):
        return True
    job = await app.store.jobs.get(job_id)
    return job is not None and job.response_message_id == message_id


async def infotext_of(app: AppContext, job_id: int) -> str:
    images = await app.store.images.list_for_job(job_id)
    if not images:
        raise NotFound("that result has no images any more")
    text = images[0].infotext
    if len(images) > 1:
        text += f"\n(images {len(images)}: seeds {', '.join(str(i.seed) for i in images)})"
    return text
