"""Shows each job's life on Discord: queue position, throttled progress with previews, the result.

It listens to the service's events for every job, so jobs queued before a restart are still
answered. While the interaction token lives (15 min; we stop at 14) it edits the command's
response; after that it posts in the channel, mentioning the member.
"""

from __future__ import annotations

import asyncio
import io
import logging
from datetime import datetime, timedelta, timezone

import discord

from generation.previews import preview_png
from generation.requests import GenerationRequest
from generation.service import (JobCanceled, JobEvent, JobFailed, JobFinished, JobProgress, JobQueued, JobStarted)

from .context import AppContext
from .formatting import queue_position_text
from .throttle import LatestFrameEditor
from .views import result_view

log = logging.getLogger(__name__)

TOKEN_LIFETIME = timedelta(minutes=14)  # Discord's is 15; keep a margin for the upload itself
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
REROLL_EMOJI = "🔁"
DELETE_EMOJI = "❌"


def progress_bar(step: int, total: int, width: int = 16) -> str:
    filled = max(0, min(width, round(width * step / max(1, total))))
    return "█" * filled + "░" * (width - filled)


def fit_files(sizes: list[int], limit: int) -> list[int]:
    """Indexes of the images that fit in one upload (Discord counts the total against the limit)."""
    chosen, total = [], 0
    for index, size in enumerate(sizes):
        if total + size <= limit and len(chosen) < 10:
            chosen.append(index)
            total += size
    return chosen


def result_embed(job, request: GenerationRequest, images, *, token_count: int | None) -> discord.Embed:
    if request.mode == "upscale":
        return upscale_embed(job, request, images)
    title = request.prompt if len(request.prompt) <= 250 else request.prompt[:249] + "…"
    embed = discord.Embed(title=title, colour=discord.Colour.blurple())
    if request.negative_prompt:
        embed.description = f"**Negative:** {request.negative_prompt[:1000]}"
    seeds = ", ".join(str(image.seed) for image in images)
    embed.add_field(name="Seed" if len(images) == 1 else "Seeds", value=seeds[:1024])
    embed.add_field(name="Sampler", value=f"{request.sampler} · {request.steps} steps · CFG {request.cfg_scale:g}")
    embed.add_field(name="Size", value=f"{request.width}×{request.height}")
    embed.add_field(name="Model", value=job.checkpoint[:1024] or "default")
    if request.mode != "txt2img":
        embed.add_field(name="Strength", value=f"{request.strength:g}")
    if request.enable_hr and images:
        embed.add_field(name="Hires fix", value=f"{images[0].width}×{images[0].height} · {request.hr_upscaler[:100]} · "
                                                f"denoise {request.strength:g}")
    if token_count is not None:
        embed.add_field(name="Tokens", value=str(token_count))
    embed.set_footer(text=f"job {job.id} · react 🔁 to reroll")
    return embed


def upscale_embed(job, request: GenerationRequest, images) -> discord.Embed:
    """An upscale's result: what it became and with what; the picture keeps its own parameters."""
    size = f"{images[0].width}×{images[0].height}" if images else "?"
    embed = discord.Embed(title=f"Upscaled {request.upscale_by:g}x to {size}"[:256], colour=discord.Colour.blurple())
    embed.add_field(name="Upscaler", value=request.upscaler[:1024])
    embed.add_field(name="From", value=f"{request.width}×{request.height}")
    embed.set_footer(text=f"job {job.id}")
    return embed


def owner_only(job) -> discord.AllowedMentions:
    """Ping the member who asked and nobody else, whatever the prompt in the embed or content says."""
    return discord.AllowedMentions(everyone=False, roles=False, replied_user=False,
                                   users=[discord.Object(job.owner_id)])


class Presenter:
    def __init__(self, *, bot: discord.Client, app: AppContext, edit_interval: float,
                 now=lambda: datetime.now(timezone.utc)):
        self.bot = bot
        self.app = app
        self.edit_interval = edit_interval
        self.now = now
        self._subscription = None
        self._task: asyncio.Task | None = None
        self._editors: dict[int, LatestFrameEditor] = {}
        self._jobs: dict[int, object] = {}
        self._finals: set[asyncio.Task] = set()

    def subscribe(self) -> None:
        """Before the service starts, so no event is missed."""
        self._subscription = self.app.service.subscribe()

    async def start(self) -> None:
        if self._subscription is None:
            self.subscribe()
        self._task = asyncio.create_task(self._loop(), name="easel-presenter")
        for job_id in await self.app.store.images.undelivered_job_ids():
            # finished while the bot was down (or it stopped mid-post): deliver now, once
            images = await self.app.store.images.list_for_job(job_id)
            await self._handle(JobFinished(job_id, tuple(images)))

    async def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for editor in self._editors.values():
            await editor.close()
        if self._finals:
            await asyncio.gather(*self._finals, return_exceptions=True)

    async def _loop(self) -> None:
        async for event in self._subscription:
            try:
                await self._handle(event)
            except Exception:
                log.exception("presenting %s failed", type(event).__name__)

    async def _job(self, job_id: int, *, fresh: bool = False):
        if fresh or job_id not in self._jobs:
            self._jobs[job_id] = await self.app.store.jobs.get(job_id)
        return self._jobs[job_id]

    def _token_alive(self, job) -> bool:
        return bool(job.interaction_token and job.interaction_created_at
                    and self.now() - job.interaction_created_at < TOKEN_LIFETIME)

    async def _handle(self, event: JobEvent) -> None:
        job = await self._job(event.job_id)
        if job is None or job.frontend != "discord":
            return
        if isinstance(event, JobQueued):
            # The service announces a place only when its band changes: one edit per band, not per place.
            self._offer(job, (queue_position_text(event.position), None))
        elif isinstance(event, JobStarted):
            self._offer(job, ("🎨 Starting…", None))
        elif isinstance(event, JobProgress):
            text = f"🎨 {progress_bar(event.step, event.total)} {event.step}/{event.total}"
            self._offer(job, (text, event.preview))
        else:
            editor = self._editors.pop(job.id, None)
            if editor is not None:
                await editor.close()
            task = asyncio.create_task(self._final(job, event))
            self._finals.add(task)
            task.add_done_callback(self._finals.discard)

    # ------------------------------------------------------------------ live message
    def _offer(self, job, frame) -> None:
        if not self._token_alive(job) and job.interaction_token:
            return  # expired: no more live edits; the result is posted in the channel
        editor = self._editors.get(job.id)
        if editor is None:
            editor = LatestFrameEditor(lambda f, job_id=job.id: self._show(job_id, f), interval=self.edit_interval)
            self._editors[job.id] = editor
        editor.offer(frame)

    async def _show(self, job_id: int, frame) -> None:
        job = await self._job(job_id)
        text, preview = frame
        files, embed = [], None
        if preview:
            files = [discord.File(io.BytesIO(preview_png(preview)), "preview.png")]
            embed = discord.Embed(colour=discord.Colour.dark_grey()).set_image(url="attachment://preview.png")
        if self._token_alive(job):
            webhook = discord.Webhook.partial(job.application_id, job.interaction_token, client=self.bot)
            await webhook.edit_message("@original", content=text, embed=embed, attachments=files)
            return
        # No interaction (a reaction reroll): one status message in the channel, edited in place.
        channel = self.bot.get_partial_messageable(job.channel_id)
        if job.response_message_id is None:
            # The one ping of a reaction reroll: its result later replaces this message, and edits never notify.
            message = await channel.send(f"<@{job.owner_id}> {text}", allowed_mentions=owner_only(job))
            await self.app.store.jobs.set_response_message(job.id, message.id)
            await self._job(job.id, fresh=True)
        else:
            await channel.get_partial_message(job.response_message_id).edit(content=f"<@{job.owner_id}> {text}")

    # ------------------------------------------------------------------ the end of a job
    async def _final(self, job, event) -> None:
        job = await self._job(job.id, fresh=True)
        try:
            if isinstance(event, JobFinished):
                await self._deliver(job, event.images)
            elif isinstance(event, JobFailed):
                await self._say(job, f"❌ That didn't work: {event.reason}")
            elif isinstance(event, JobCanceled):
                await self._say(job, f"🚫 Canceled ({event.reason}).")
        except Exception:
            log.exception("could not post the end of job %s", job.id)
        finally:
            self._jobs.pop(job.id, None)

    def _upload_limit(self, job) -> int:
        guild = self.bot.get_guild(job.guild_id) if job.guild_id else None
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    async def _deliver(self, job, images) -> None:
        request = GenerationRequest.from_dict(job.request)
        limit = self._upload_limit(job)
        data = [await asyncio.to_thread(image.path.read_bytes) for image in images]
        chosen = fit_files([len(d) for d in data], limit)
        uploads = [(f"easel-{job.id}-{images[i].seed}.png", data[i]) for i in chosen]
        try:
            # Parsing and tokenizing a member's text: off the event loop.
            tokens = await asyncio.to_thread(self.app.engine.token_count, request.prompt, steps=request.steps)
        except Exception:
            tokens = None
        while True:
            embed = result_embed(job, request, images, token_count=tokens)
            if len(uploads) == 1:
                embed.set_image(url=f"attachment://{uploads[0][0]}")
            note = ""
            if len(uploads) < len(images):
                note = f" ({len(images) - len(uploads)} image(s) were too large for this server's upload limit)"
            try:
                message = await self._send(job, f"<@{job.owner_id}> done{note}", embed=embed, uploads=uploads,
                                           view=result_view(job.id, mode=request.mode))
                break
            except discord.HTTPException as exc:
                # The real limit can be lower than the guild's nominal one: drop the last image and retry.
                if exc.code != 40005 or not uploads:
                    raise
                uploads = uploads[:-1]
        if message is not None:
            await self.app.store.images.set_message(job.id, message.id)
            try:
                await self.bot.get_partial_messageable(job.channel_id).get_partial_message(message.id).add_reaction(REROLL_EMOJI)
            except discord.HTTPException as exc:
                log.info("could not add the reroll reaction: %s", exc)

    async def _say(self, job, text: str) -> None:
        await self._send(job, f"<@{job.owner_id}> {text}")

    async def _send(self, job, content: str, *, embed=None, uploads: list[tuple[str, bytes]] = (), view=None):
        """Edit the command's response while its token lives; otherwise post in the channel."""
        mentions = owner_only(job)

        def files() -> list[discord.File]:  # a discord.File is consumed by one request
            return [discord.File(io.BytesIO(data), name) for name, data in uploads]

        if self._token_alive(job):
            webhook = discord.Webhook.partial(job.application_id, job.interaction_token, client=self.bot)
            try:
                return await webhook.edit_message("@original", content=content, embed=embed, attachments=files(),
                                                  view=view, allowed_mentions=mentions)
            except discord.HTTPException as exc:
                if exc.status not in (401, 404):
                    raise
                log.info("interaction token of job %s no longer works; posting in the channel", job.id)
        channel = self.bot.get_partial_messageable(job.channel_id)
        if job.response_message_id is not None and not job.interaction_token:
            # a reaction reroll: replace its status message with the result
            message = channel.get_partial_message(job.response_message_id)
            return await message.edit(content=content, embed=embed, attachments=files(), view=view,
                                      allowed_mentions=mentions)
        return await channel.send(content, embed=embed, files=files(), view=view, allowed_mentions=mentions)
