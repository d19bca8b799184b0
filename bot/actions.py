"""Things members do to existing jobs (reroll, outpaint, vary, remix, use as init, delete, info),
shared by buttons, reactions and commands (/outpaint of an uploaded picture is here too).

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


# ---------------------------------------------------------------------- iteration (Midjourney-style)
# Vary, Remix, Use as init and Upscale: each is the presser's own new job through the one
# submission path (`plan_*` = `Submissions.prepare`, every check and no I/O worth waiting for, so a
# button runs it before acknowledging; `finish` = `Submissions.enqueue`), built from a finished job
# and, for all but Remix, one of its images.

VARY_KINDS = ("subtle", "strong")


class IterationError(EaselError):
    pass


@dataclass(frozen=True)
class ResultImage:
    """A finished job's image file as an upload (`generation.uploads.ImageInput`): it declares what
    the database recorded, and the submission path checks, reads and keeps it as the presser's own
    upload, as any attachment (an earlier job's images are not uploads, and may be deleted later)."""

    path: Path
    width: int
    height: int
    size: int
    content_type: str = "image/png"

    @classmethod
    def of(cls, image) -> "ResultImage":
        return cls(path=Path(image.path), width=image.width, height=image.height, size=image.bytes)

    async def read(self) -> bytes:
        try:
            return await asyncio.to_thread(self.path.read_bytes)
        except OSError:
            raise NotFound("that result's image is no longer kept; start a new /imagine") from None


async def _job_request(app: AppContext, job_id: int) -> GenerationRequest:
    job = await app.store.jobs.get(job_id)
    if job is None:
        raise NotFound("that result is gone; start a new /imagine")
    return GenerationRequest.from_dict(job.request)


async def _image(app: AppContext, job_id: int, image_index: int):
    images = await app.store.images.list_for_job(job_id)
    if not images:
        raise NotFound("that result has no images any more")
    for image in images:
        if image.index == image_index:
            return image
    raise NotFound(f"that result has no image {image_index + 1}")


def _check_variable(request: GenerationRequest) -> None:
    if request.mode != "txt2img":
        raise IterationError(f"Vary works on pictures drawn from a prompt alone (txt2img); this one is "
                             f"{'an' if request.mode[0] in 'aeiu' else 'a'} {request.mode} result. "
                             "Try Remix or Use as init instead.")


def _check_not_upscale(request: GenerationRequest, what: str) -> None:
    if request.mode == "upscale":
        raise IterationError(f"an upscale has nothing to {what}; use the button on the picture it was made from")


async def image_choices(app: AppContext, job_id: int, *, vary: bool = False) -> list[int]:
    """The indexes of the job's images a per-image button (Vary, Use as init, Upscale) may act on,
    in order; the job is checked first (Vary: txt2img only), so a refusal comes before any picker."""
    request = await _job_request(app, job_id)
    if vary:
        _check_variable(request)
    images = await app.store.images.list_for_job(job_id)
    if not images:
        raise NotFound("that result has no images any more")
    return sorted(image.index for image in images)


async def finish(app: AppContext, prepared: Prepared):
    """Queue a planned job (keeping its image as the requester's upload first). Returns the JobRecord."""
    return await app.submissions.enqueue(prepared)


async def plan_vary(app: AppContext, job_id: int, image_index: int, requester: Requester,
                    strength_kind: str) -> Prepared:
    """The job's request again from the chosen image's seed, with a new random variation seed at the
    configured strength (`[defaults] vary_subtle_strength` / `vary_strong_strength`), as many images
    as the job had. txt2img only (A1111's variation seed is)."""
    if strength_kind not in VARY_KINDS:
        raise IterationError(f"vary is {' or '.join(VARY_KINDS)}, not {strength_kind!r}")
    request = await _job_request(app, job_id)
    _check_variable(request)
    image = await _image(app, job_id, image_index)
    try:
        seed = request.seeds()[image_index]  # seed + k; with a variation, the seed every image shares
    except (ValueError, IndexError):  # not recorded with the request: the image's own
        seed = image.seed
    defaults = app.config.defaults
    strength = defaults.vary_subtle_strength if strength_kind == "subtle" else defaults.vary_strong_strength
    ask = Ask.again(request, seed=seed, subseed=None, subseed_strength=strength)
    return await app.submissions.prepare(ask, requester)


async def vary(app: AppContext, job_id: int, image_index: int, requester: Requester, strength_kind: str):
    """Vary (subtle/strong) one image of a finished txt2img job, as the requester's own job. Returns the JobRecord."""
    return await finish(app, await plan_vary(app, job_id, image_index, requester, strength_kind))


async def remix_texts(app: AppContext, job_id: int) -> tuple[str, str]:
    """The job's prompt and negative prompt, for the Remix form."""
    request = await _job_request(app, job_id)
    _check_not_upscale(request, "remix")
    return request.prompt, request.negative_prompt


async def plan_remix(app: AppContext, job_id: int, requester: Requester, *, prompt: str,
                     negative_prompt: str) -> Prepared:
    """The job's request with new texts: its seed (so its images, changed only by the words), size,
    count, checkpoint, sampler and every other setting kept."""
    request = await _job_request(app, job_id)
    _check_not_upscale(request, "remix")
    return await app.submissions.prepare(Ask.again(request, prompt=prompt, negative_prompt=negative_prompt),
                                         requester)


async def remix(app: AppContext, job_id: int, requester: Requester, *, prompt: str, negative_prompt: str):
    """Generate the job again with edited texts, as the requester's own job. Returns the JobRecord."""
    return await finish(app, await plan_remix(app, job_id, requester, prompt=prompt,
                                              negative_prompt=negative_prompt))


async def plan_use_as_init(app: AppContext, job_id: int, image_index: int, requester: Requester) -> Prepared:
    """img2img from the chosen image: the job's prompt, negative prompt, checkpoint, sampler, steps,
    CFG, count and clip skip; the image's size; a new random seed; the default strength."""
    request = await _job_request(app, job_id)
    image = await _image(app, job_id, image_index)
    source = ResultImage.of(image)
    if request.mode == "upscale":  # an upscale keeps only its texts: the rest from the defaults
        ask = Ask(mode="img2img", prompt=request.prompt, negative_prompt=request.negative_prompt,
                  init_image=source, width=image.width, height=image.height, enable_hr=False)
    else:
        ask = Ask.again(request, mode="img2img", init_image=source, mask=None, width=image.width,
                        height=image.height, seed=None, strength=None, subseed=None, subseed_strength=0.0,
                        seed_resize_from_w=0, seed_resize_from_h=0, mask_blur=None, mask_invert=None,
                        masked_content=None, only_masked=None, only_masked_padding=None,
                        enable_hr=False)
    return await app.submissions.prepare(ask, requester)


async def use_as_init(app: AppContext, job_id: int, image_index: int, requester: Requester):
    """img2img from one image of a finished job, as the requester's own job. Returns the JobRecord."""
    return await finish(app, await plan_use_as_init(app, job_id, image_index, requester))


async def plan_upscale(app: AppContext, job_id: int, image_index: int, requester: Requester) -> Prepared:
    """A1111's Extras upscale of the chosen image with this server's upscaler and factor (else the
    config's), the job's prompt kept with it for the record."""
    request = await _job_request(app, job_id)
    image = await _image(app, job_id, image_index)
    ask = Ask(mode="upscale", prompt=request.prompt, negative_prompt=request.negative_prompt,
              init_image=ResultImage.of(image))
    return await app.submissions.prepare(ask, requester)


async def upscale(app: AppContext, job_id: int, image_index: int, requester: Requester):
    """Upscale one image of a finished job, as the requester's own job. Returns the JobRecord."""
    return await finish(app, await plan_upscale(app, job_id, image_index, requester))


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
