"""The one path from "a member asked for this" to a queued job, for every frontend.

`/imagine`, `/img2img`, `/inpaint`, 🔁, the Reroll button, /info's "Generate with these" and
`easel generate` all go through `Submissions` (`submit`, or `prepare` then `enqueue` for a frontend
that acknowledges in between); frontends only parse their input into an `Ask`, say who and where
the `Requester` is, and format the reply or the error.

Order, cheapest first, so a hostile request costs little and nothing is downloaded for a
request that will be refused:

1. lengths of the prompt and negative prompt, the declared type/size of each upload;
2. the server's allowed channels;
3. the checkpoint: it exists and is enabled (for everyone, and on this server);
4. options resolved (member -> server -> config -> the checkpoint's size; values nobody chose
   clamped to the server's limits) and the server's limits on chosen values;
5. off the event loop, with a deadline: `Engine.check` (numbers, prompt language, weights,
   embeddings, tokens; each distinct text parsed and tokenized once) and moderation of every text
   the encoder will read;
6. the queue caps, counted;
7. uploads downloaded, decoded off the loop and kept;
8. the job row inserted with the caps counted again in the same transaction (an upload this
   call created is removed if that fails).
"""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .engine import CheckedRequest, Engine
from .errors import ImageError, InvalidRequest, ModelNotFound
from .images import mask_from_alpha
from .moderation import ModerationPolicy, WordList, load_nsfw_words
from .registry import ModelRegistry
from .requests import RANDOM_SEED, GenerationRequest, default_size, length_problems
from .rules import RuleBroken, check_channel, disabled_checkpoints, guild_limit_problems, resolve_options
from .service import GenerationService, ReplyTarget
from .uploads import ImageInput, UploadStore, check_declared

PENDING_UPLOAD = "pending upload"  # stands in for an upload's path until it is downloaded


@dataclass(frozen=True, kw_only=True)
class Ask:
    """What a member asked for. None: not chosen; resolved from the member's, the server's and
    the config's defaults. An image is an upload to fetch, or the stored path of an earlier job's."""

    prompt: str
    mode: str = "txt2img"
    negative_prompt: str | None = None
    checkpoint: str | None = None
    sampler: str | None = None
    schedule: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    count: int | None = None
    strength: float | None = None
    clip_skip: int | None = None
    mask_blur: int | None = None
    mask_invert: bool | None = None
    masked_content: str | None = None
    only_masked: bool | None = None
    only_masked_padding: int | None = None
    # A1111's variation seed (request fields of the same names); seed resize as two ints, 0 = off.
    subseed: int | None = None
    subseed_strength: float | None = None
    seed_resize_from_w: int | None = None
    seed_resize_from_h: int | None = None
    # A1111's hires fix (request fields of the same names; `strength` is its denoising strength).
    enable_hr: bool | None = None
    hr_scale: float | None = None
    hr_resize_x: int | None = None
    hr_resize_y: int | None = None
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = None
    hr_sampler: str | None = None
    hr_prompt: str | None = None
    hr_negative_prompt: str | None = None
    # Mode "upscale": the upscaler and factor (the source is init_image).
    upscaler: str | None = None
    upscale_by: float | None = None
    init_image: ImageInput | str | None = None
    mask: ImageInput | str | None = None

    @classmethod
    def again(cls, request: GenerationRequest, **changes: Any) -> "Ask":
        """Every option of an earlier request, as chosen (a reroll: its limits apply to the new member)."""
        fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(GenerationRequest)}
        return cls(**(fields | changes))

    def chosen(self) -> dict[str, Any]:
        """The options given, as GenerationRequest fields (None: left to the defaults)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("prompt", "mode", "init_image", "mask")}


@dataclass(frozen=True, kw_only=True)
class Requester:
    """Who asks and where, in plain ids and flags."""

    user_id: int
    target: ReplyTarget = ReplyTarget()
    channel_nsfw: bool = False  # an age-restricted channel
    # The operator at the command line: no server rules, and any checkpoint the folder has.
    operator: bool = False


@dataclass(frozen=True)
class Prepared:
    """A request that passed every check, waiting for its uploads and its row."""

    checked: CheckedRequest
    ask: Ask
    requester: Requester


class Submissions:
    def __init__(self, *, config: Config, store, registry: ModelRegistry, engine: Engine,
                 service: GenerationService, uploads: UploadStore):
        self.config = config
        self.store = store
        self.registry = registry
        self.engine = engine
        self.service = service
        self.uploads = uploads
        # One thread: checks never run in parallel (they share the token counter), and a flood of
        # hostile prompts cannot take every thread of the default executor.
        self._checks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="easel-check")

    def close(self) -> None:
        self._checks.shutdown(wait=False, cancel_futures=True)

    async def submit(self, ask: Ask, requester: Requester):
        """`prepare`, then `enqueue`: for frontends with nothing to acknowledge in between."""
        return await self.enqueue(await self.prepare(ask, requester))

    async def prepare(self, ask: Ask, requester: Requester) -> "Prepared":
        """Steps 1-6: everything but downloading and storing. Raises EaselError with a
        member-facing message. Quick (no download), so a frontend may run it before it acknowledges."""
        problems = length_problems(ask.prompt, ask.negative_prompt or "", self.config.limits)
        problems += [problem.replace("prompt", "hires prompt", 1) for problem in
                     length_problems(ask.hr_prompt or "", ask.hr_negative_prompt or "", self.config.limits)]
        if problems:
            raise InvalidRequest(problems)
        for what, image in (("image", ask.init_image), ("mask", ask.mask)):
            if image is not None and not isinstance(image, str):
                check_declared(image, max_pixels=self.uploads.max_pixels, what=what)
        target = requester.target
        in_guild = target.guild_id is not None and not requester.operator
        guild = await self.store.guilds.get_settings(target.guild_id) if in_guild else {}
        check_channel(guild, target.channel_id)
        upscale = ask.mode == "upscale"
        checkpoint = "" if upscale else await self._checkpoint(ask.checkpoint or "", guild, requester)
        member = await self.store.users.get_settings(requester.user_id) if not requester.operator else {}
        request = self._request(ask, checkpoint, member=member, guild=guild)
        if upscale:
            request = dataclasses.replace(request, **await self._source_size(ask.init_image))
        problems = guild_limit_problems(request, guild)
        if problems:
            raise RuleBroken("; ".join(problems))
        checked = await self._off_loop(_checked, self.engine, request, self._policy(guild, requester))
        await self.service.check_caps(requester.user_id, target.guild_id)
        return Prepared(checked=checked, ask=ask, requester=requester)

    async def enqueue(self, prepared: "Prepared"):
        """Steps 7-8: keep the uploads and queue the job. Returns the JobRecord."""
        requester = prepared.requester
        created: list[Path] = []
        try:
            request = await self._attach(prepared.checked.request, prepared.ask, requester.user_id, created)
            checked = dataclasses.replace(prepared.checked, request=request)
            if request.mode == "upscale":  # checked again at the size the downloaded picture has
                size = await asyncio.to_thread(_picture_size, Path(request.init_image))
                checked = self.engine.check(dataclasses.replace(request, width=size[0], height=size[1]))
            return await self.service.submit(checked, owner_id=requester.user_id, target=requester.target)
        except BaseException:
            for path in created:
                await self.uploads.discard(path)
            raise

    async def _checkpoint(self, name: str, guild: dict, requester: Requester) -> str:
        """The checkpoint's name; for members it must be enabled, for everyone and on this server."""
        name = name or self.registry.default_name()
        if requester.operator:
            return self.registry.resolve(name).name
        enabled = {record.name for record in await self.store.checkpoints.list(enabled_only=True)}
        if name not in enabled or name in disabled_checkpoints(guild):
            what = f"checkpoint {name!r} is" if name != self.registry.default_name() else "the default checkpoint is"
            raise ModelNotFound(f"{what} not available here; pick one from the list")
        return self.registry.resolve(name).name

    async def _source_size(self, image: ImageInput | str | None) -> dict[str, int]:
        """An upscale's width and height: as the upload declares them (checked again once it is
        downloaded), or an earlier upload's own."""
        if isinstance(image, str):
            width, height = await asyncio.to_thread(_picture_size, self.uploads.stored(image, what="image"))
        elif image is not None and image.width and image.height:
            width, height = image.width, image.height
        else:
            width = height = 8  # unknown until it is downloaded
        return {"width": width, "height": height}

    def _request(self, ask: Ask, checkpoint: str, *, member: dict, guild: dict) -> GenerationRequest:
        architecture = self.registry.resolve(checkpoint).architecture if checkpoint else ""
        size = default_size(self.config.defaults, self.config.limits, architecture,
                            max_width=guild.get("max_width"), max_height=guild.get("max_height"))
        chosen = ask.chosen()
        options = resolve_options(chosen, member=member, guild=guild, defaults=self.config.defaults,
                                  limits=self.config.limits, size=size)
        placeholder = {key: None if value is None else PENDING_UPLOAD
                       for key, value in (("init_image", ask.init_image), ("mask", ask.mask))}
        if ask.mode == "inpaint" and ask.init_image is not None and ask.mask is None:
            placeholder["mask"] = PENDING_UPLOAD  # from the image's transparency, once it is downloaded
        return GenerationRequest(prompt=ask.prompt, mode=ask.mode, checkpoint=checkpoint,
                                 seed=RANDOM_SEED if ask.seed is None else ask.seed, **placeholder, **options)

    def _policy(self, guild: dict, requester: Requester) -> ModerationPolicy:
        banned = WordList.compile(guild.get("banned_words", []) or [])
        nsfw = None
        if guild.get("nsfw_filter"):
            nsfw = WordList.compile([*load_nsfw_words(), *(guild.get("nsfw_words", []) or [])])
        return ModerationPolicy(banned=banned, nsfw=nsfw, nsfw_allowed=requester.channel_nsfw)

    async def _off_loop(self, function, *args):
        future = asyncio.get_running_loop().run_in_executor(self._checks, function, *args)
        try:
            return await asyncio.wait_for(future, self.config.limits.check_deadline_s)
        except TimeoutError:
            raise InvalidRequest(["checking this request took too long; make the prompt simpler"]) from None

    async def _attach(self, request: GenerationRequest, ask: Ask, owner_id: int, created: list[Path]) -> GenerationRequest:
        paths: dict[str, str | None] = {}
        for field, what, image in (("init_image", "image", ask.init_image), ("mask", "mask", ask.mask)):
            if image is None:
                continue
            if isinstance(image, str):  # an earlier job's upload
                paths[field] = str(self.uploads.stored(image, what=what))
                continue
            path, new = await self.uploads.save(image, owner_id=owner_id, what=what)
            if new:
                created.append(path)
            paths[field] = str(path)
        if request.mode == "inpaint" and ask.mask is None and "init_image" in paths:
            png = await asyncio.to_thread(mask_from_alpha, Path(paths["init_image"]), max_pixels=self.uploads.max_pixels)
            if png is None:
                raise ImageError("inpainting needs a mask: attach one (white = repaint), or an image whose "
                                 "transparent part is what to repaint")
            path, new = await self.uploads.keep_png(png, owner_id=owner_id)
            if new:
                created.append(path)
            paths["mask"] = str(path)
        return dataclasses.replace(request, **paths) if paths else request


def _picture_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header of one of our stored PNGs."""
    from PIL import Image

    with Image.open(path, formats=["PNG"]) as picture:
        return picture.size


def _checked(engine: Engine, request: GenerationRequest, policy: ModerationPolicy) -> CheckedRequest:
    """Runs on the check thread: the engine's checks, then moderation of what the encoder will read."""
    checked = engine.check(request)
    reason = policy.check(checked.prompt_texts, checked.negative_texts)
    if reason:
        raise RuleBroken(reason)
    return checked


__all__ = ["Ask", "PENDING_UPLOAD", "Requester", "Submissions"]
