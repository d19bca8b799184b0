"""One service for every frontend: submit, position, cancel, subscribe to events, history.

The database is the source of truth (the queue is rows); the fair scheduler only decides the
order and is rebuilt from the queued rows at start. The dispatcher waits for an idle device, picks
the fair batch (preferring what an idle device has loaded), claims the device and runs the batch
there in its own task, so there are never more batches in flight than devices; each task publishes
its batch's events, and every terminal state is written before it is announced. A batch whose
device went away (a worker stopped answering) is queued again, its attempts counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import socket
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

from .config import Config
from .engine import BatchItem, CheckedRequest, Engine
from .errors import EaselError
from .executor import Device, Executor, ItemCanceled, ItemFailed, ItemFinished, ItemLost, ItemProgress
from .infotext import png_with_infotext
from .places import PlaceAnnouncer
from .requests import GenerationRequest
from .scheduler import FairScheduler, QueuedJob, SchedulerPolicy

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


POSITION_PUBLISH_S = 0.25  # queue positions are announced at most this often


class QueueLimitReached(EaselError):
    pass


class NotAllowed(EaselError):
    pass


@dataclass(frozen=True, kw_only=True)
class ReplyTarget:
    """Where a job's result goes, in plain ids (never a Discord object), so it survives a restart."""

    frontend: str = "cli"
    guild_id: int | None = None
    channel_id: int | None = None
    application_id: int | None = None
    interaction_token: str | None = None
    interaction_created_at: datetime | None = None


# Events, per job. A subscriber may see many JobQueued/JobProgress, then exactly one terminal event.
@dataclass(frozen=True)
class JobQueued:
    job_id: int
    position: int


@dataclass(frozen=True)
class JobStarted:
    job_id: int


@dataclass(frozen=True)
class JobProgress:
    job_id: int
    step: int
    total: int
    # At latent resolution: a frontend makes its PNG (generation.previews.preview_png) only for the
    # frames it shows, most being skipped by its edit throttle.
    preview: Image.Image | None = None


@dataclass(frozen=True)
class JobFinished:
    job_id: int
    images: tuple  # storage ImageRecord, in index order


@dataclass(frozen=True)
class JobFailed:
    job_id: int
    reason: str


@dataclass(frozen=True)
class JobCanceled:
    job_id: int
    reason: str


JobEvent = JobQueued | JobStarted | JobProgress | JobFinished | JobFailed | JobCanceled
TERMINAL_EVENTS = (JobFinished, JobFailed, JobCanceled)


# Jobs a bot submits may be run by any bot process (a restarted bot takes them over).
BOT_RUNNER = "bot"


def cli_runner_id() -> str:
    """The runner id of this process when it runs its own jobs (`easel generate`)."""
    return f"cli:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def runner_is_gone(runner: str) -> bool:
    """True when `runner` is a process of this host that no longer exists; False when it lives or
    cannot be judged from here (another host)."""
    kind, _, rest = runner.partition(":")
    host, _, rest = rest.partition(":")
    pid = rest.partition(":")[0]
    if kind != "cli" or host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Subscription:
    """An async iterator of events (of one job, or of all jobs when job_id is None)."""

    def __init__(self, service: "GenerationService", job_id: int | None):
        self.job_id = job_id
        self.queue: asyncio.Queue = asyncio.Queue()
        self._service = service

    def __aiter__(self) -> AsyncIterator[JobEvent]:
        return self._iterate()

    async def _iterate(self):
        while True:
            event = await self.queue.get()
            yield event
            if self.job_id is not None and isinstance(event, TERMINAL_EVENTS):
                self.close()
                return

    def close(self) -> None:
        self._service._subscriptions.discard(self)


class GenerationService:
    def __init__(self, *, config: Config, store, engine: Engine, executor: Executor,
                 policy: SchedulerPolicy | None = None, scheduler_class=FairScheduler,
                 runner: str = BOT_RUNNER):
        self.config = config
        self.store = store
        self.engine = engine
        self.executor = executor
        self.policy = policy or SchedulerPolicy(max_batch=config.queue.max_batch,
                                                affinity_lookahead=config.queue.affinity_lookahead)
        self._scheduler_class = scheduler_class
        self._scheduler = scheduler_class(self.policy)
        # Which jobs are ours: the bot's (BOT_RUNNER), or one CLI process's own (cli_runner_id()), so a
        # bot never takes over a live `easel generate` job and two CLI processes never share one.
        self.runner = runner
        self._subscriptions: set[Subscription] = set()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._running: set[int] = set()  # started jobs of the batches on the executor
        self._batches: set[asyncio.Task] = set()  # batches picked and not over yet, one per claimed device
        self._picked: set[int] = set()  # the jobs of those batches (no longer queued, maybe not started yet)
        self._finishing: set[asyncio.Task] = set()  # results being written while the next batch runs
        self._saving: set[int] = set()  # the jobs of those tasks
        self._announced_terminal: set[int] = set()
        self._places = PlaceAnnouncer()
        self._places_stale = False  # something moved since the last walk of the places began
        self._publisher: asyncio.Task | None = None
        self.image_dir = config.data_dir / "images"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        requeued, failed = await self.store.jobs.recover_interrupted(self.config.queue.max_attempts, runner=self.runner)
        if requeued or failed:
            log.warning("recovered after a restart: %d jobs queued again, %d failed", len(requeued), len(failed))
        for runner in await self.store.jobs.active_runners():
            if runner != self.runner and runner_is_gone(runner):
                ended = await self.store.jobs.fail_runner(runner, "the easel generate process that ran it has ended")
                log.warning("failed %d jobs of %s, which has ended", len(ended), runner)
        jobs = [self._queued_job(record) for record in await self.store.jobs.list_queued(runner=self.runner)]
        self._scheduler = self._scheduler_class.rebuild(self.policy, jobs)
        for _ in self._places.slices(self._scheduler.service_order()):
            pass  # the places as they are: the messages already show them
        self._task = asyncio.create_task(self._dispatch_loop(), name="easel-dispatcher")

    async def stop(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._batches:
            # Again until they end: a client library may swallow one cancellation mid-read.
            for task in list(self._batches):
                task.cancel()
            await asyncio.wait(list(self._batches), timeout=0.5)
        if self._finishing:  # let results already computed reach the database
            await asyncio.gather(*self._finishing, return_exceptions=True)

    # ------------------------------------------------------------------ frontend API
    async def submit(self, request: GenerationRequest | CheckedRequest, *, owner_id: int,
                     target: ReplyTarget = ReplyTarget()):
        """Store and enqueue, the caps counted and the row inserted in one transaction. Frontends pass
        the CheckedRequest of generation.submission; a bare request is checked here (off the loop).
        Returns the JobRecord; raises EaselError for the user."""
        from storage import QueueCapReached

        checked = request if isinstance(request, CheckedRequest) else await asyncio.to_thread(self.engine.check, request)
        request = checked.request.with_resolved_seed()
        try:
            record = await self.store.jobs.create(
                owner_id=owner_id, request=request.to_dict(), checkpoint=checked.checkpoint,
                batch_key=repr(checked.batch_key), cost=checked.cost, runner=self.runner,
                caps=await self._caps(target.guild_id),
                frontend=target.frontend, guild_id=target.guild_id, channel_id=target.channel_id,
                application_id=target.application_id, interaction_token=target.interaction_token,
                interaction_created_at=target.interaction_created_at,
            )
        except QueueCapReached as reached:
            raise QueueLimitReached(_cap_message(reached.scope, reached.count, reached.limit)) from None
        await self.store.prompt_history.add(user_id=owner_id, guild_id=target.guild_id, job_id=record.id,
                                            prompt=request.prompt, negative_prompt=request.negative_prompt)
        self._scheduler.add(self._queued_job(record))
        self._publish_positions()
        self.wake()
        return record

    async def check_caps(self, owner_id: int, guild_id: int | None) -> None:
        """The caps, counted without inserting: cheap, for refusing before an upload is downloaded.
        `submit` counts again in the transaction that inserts."""
        caps = await self._caps(guild_id)
        mine = await self.store.jobs.count_queued(owner_id=owner_id, include_running=True)
        if mine >= caps.per_member:
            raise QueueLimitReached(_cap_message("member", mine, caps.per_member))
        if guild_id is not None and caps.per_guild is not None:
            theirs = await self.store.jobs.count_queued(guild_id=guild_id, include_running=True)
            if theirs >= caps.per_guild:
                raise QueueLimitReached(_cap_message("guild", theirs, caps.per_guild))

    def position(self, job_id: int) -> int | None:
        """1-based place in the queue, 0 while running, None when not queued here."""
        if job_id in self._running or job_id in self._picked:
            return 0
        if job_id in self._scheduler:  # exact now, even between two publications
            return self._scheduler.position(job_id)
        return None

    def queued_jobs(self) -> list[QueuedJob]:
        return self._scheduler.jobs()

    async def cancel(self, job_id: int, *, by_user_id: int, moderator: bool = False) -> bool:
        """Cancel a queued or running job. Only its owner or a moderator may. False when already over."""
        record = await self.store.jobs.get(job_id)
        if record is None:
            raise NotAllowed(f"there is no job #{job_id}")
        if record.owner_id != by_user_id and not moderator:
            raise NotAllowed("only the member who asked for it or a moderator can cancel that job")
        if record.is_terminal:
            return False
        reason = "canceled by its owner" if record.owner_id == by_user_id else "canceled by a moderator"
        if await self.store.jobs.cancel(job_id, canceled_by=by_user_id, from_status={"queued"}):
            self._scheduler.remove(job_id)
        elif await self.store.jobs.cancel(job_id, canceled_by=by_user_id, from_status={"running"}):
            self.executor.cancel(job_id, reason)  # stops the run at once; its batch partners go on
        else:
            return False
        self._announce(JobCanceled(job_id, reason))
        self._publish_positions()
        return True

    def subscribe(self, job_id: int | None = None) -> Subscription:
        subscription = Subscription(self, job_id)
        self._subscriptions.add(subscription)
        return subscription

    async def history(self, user_id: int, query: str | None = None, *, limit: int = 10, offset: int = 0,
                      guild_id: int | None = None):
        return await self.store.prompt_history.search(user_id, query, limit=limit, offset=offset, guild_id=guild_id)

    async def wait_idle(self, timeout: float = 60.0) -> None:
        """For tests and the CLI: until nothing is queued or running."""
        async def idle():
            while len(self._scheduler) or self._running or self._batches or self._finishing:
                await asyncio.sleep(0.02)
        await asyncio.wait_for(idle(), timeout)

    # ------------------------------------------------------------------ internals
    async def _caps(self, guild_id: int | None):
        """config.toml's caps, lowered by the server's /admin limits."""
        from storage import QueueCaps

        per_member, per_guild = self.config.queue.per_user_queued, self.config.queue.per_guild_queued
        if guild_id is None:
            return QueueCaps(per_member=per_member, per_guild=None)
        settings = await self.store.guilds.get_settings(guild_id)
        return QueueCaps(per_member=min(per_member, int(settings.get("max_queued_per_member", per_member))),
                         per_guild=min(per_guild, int(settings.get("max_queued", per_guild))))

    def _queued_job(self, record) -> QueuedJob:
        """The scheduler's view of a row; its "checkpoint" is the model state (checkpoint and LoRA set)
        that affinity compares with what the executor has loaded."""
        from .engine import model_state, upscaler_state

        request = record.request
        try:
            loras = self.engine.lora_set(GenerationRequest.from_dict(request))
        except (EaselError, TypeError):  # a row the engine cannot read: it fails when it runs
            loras = ()
        state = upscaler_state(str(request.get("upscaler"))) if request.get("mode") == "upscale" \
            else model_state(record.checkpoint, loras)
        return QueuedJob(job_id=record.id, owner_id=record.owner_id, guild_id=record.guild_id, seq=record.id,
                         cost=record.cost, images=int(request.get("count", 1)),
                         checkpoint=state, batch_key=record.batch_key)

    def _announce(self, event: JobEvent) -> None:
        if isinstance(event, TERMINAL_EVENTS):
            if event.job_id in self._announced_terminal:
                return
            self._announced_terminal.add(event.job_id)
        for subscription in list(self._subscriptions):
            if subscription.job_id in (None, event.job_id):
                subscription.queue.put_nowait(event)

    def _publish_positions(self) -> None:
        """Announce the places that changed band (see generation.places), at most once per
        POSITION_PUBLISH_S: a burst of submits and picks costs one walk of the queue, not one each."""
        self._places_stale = True
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.create_task(self._publish_places(), name="easel-places")

    async def _publish_places(self) -> None:
        while self._places_stale:
            await asyncio.sleep(POSITION_PUBLISH_S)
            self._places_stale = False
            for changes in self._places.slices(self._scheduler.service_order()):
                for job_id, place in changes:
                    if job_id in self._scheduler:  # not picked nor canceled since the walk began
                        self._announce(JobQueued(job_id, place))
                await asyncio.sleep(0)  # a long queue is walked a slice at a time

    def wake(self) -> None:
        """Look at the queue again (a job came, or a device joined or became free)."""
        self._wakeup.set()

    async def _dispatch_loop(self) -> None:
        while True:
            self._wakeup.clear()
            await self.executor.wait_for_capacity()
            batch = self._scheduler.next_batch(loaded_checkpoint=self.executor.idle_model_states)
            if not batch:
                await self._wakeup.wait()
                continue
            self._picked |= {job.job_id for job in batch}
            self._publish_positions()  # everyone behind the picked jobs moved up
            device = self.executor.claim(batch[0].checkpoint)
            task = asyncio.create_task(self._batch_on(device, batch), name=f"easel-batch-{batch[0].job_id}")
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _batch_on(self, device: Device, batch: list[QueuedJob]) -> None:
        try:
            await self._run_batch(batch, device)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("a batch failed unexpectedly")
            await self._fail_unannounced(batch, "something went wrong on the bot's side; the error was logged")
        finally:
            self._picked -= {job.job_id for job in batch}
            self._publish_positions()
            self.wake()

    async def _run_batch(self, batch: list[QueuedJob], device: Device) -> None:
        items: list[BatchItem] = []
        try:
            for job in batch:
                if not await self.store.jobs.start(job.job_id):
                    await self._announce_stored_end(job.job_id)  # canceled or failed between pick and start
                    continue
                record = await self.store.jobs.get(job.job_id)
                request = GenerationRequest.from_dict(record.request)
                reason = self.executor.unavailable(request)
                if reason is not None:
                    if await self.store.jobs.fail(job.job_id, reason, from_status={"running"}):
                        self._announce(JobFailed(job.job_id, reason))
                    continue
                self._running.add(job.job_id)
                items.append(BatchItem(key=job.job_id, request=request))
                self._announce(JobStarted(job.job_id))
            self._publish_positions()
            if not items:
                return
            async for event in self.executor.run_batch(items, device):
                await self._on_event(event)
        finally:
            self.executor.release(device)  # whatever happened (the executor releases it too)
            for item in items:
                self._running.discard(item.key)

    async def _on_event(self, event) -> None:
        if isinstance(event, ItemProgress):
            self._announce(JobProgress(event.key, event.progress.step, event.progress.total, event.progress.preview))
        elif isinstance(event, ItemFinished):
            # PNG files and the commit overlap with the next batch instead of keeping the GPU idle.
            self._saving.add(event.key)
            task = asyncio.create_task(self._finish(event))
            self._finishing.add(task)
            task.add_done_callback(self._finish_done)
        elif isinstance(event, ItemFailed):
            if await self.store.jobs.fail(event.key, event.reason, from_status={"running"}):
                self._announce(JobFailed(event.key, event.reason))
        elif isinstance(event, ItemLost):
            await self._requeue_lost(event)
        elif isinstance(event, ItemCanceled):
            if await self.store.jobs.cancel(event.key, from_status={"running"}):
                self._announce(JobCanceled(event.key, event.reason))
            else:
                record = await self.store.jobs.get(event.key)
                if record is not None and record.status == "canceled":
                    self._announce(JobCanceled(event.key, event.reason))

    async def _requeue_lost(self, event: ItemLost) -> None:
        """The item's device went away: run it again elsewhere (its attempt counted), or fail it at
        `[queue] max_attempts`, as after a crash."""
        outcome = await self.store.jobs.requeue_lost(event.key, self.config.queue.max_attempts)
        if not outcome:  # failed at the attempts cap, or canceled meanwhile
            await self._announce_stored_end(event.key)
            return
        log.warning("job %s is queued again: %s", event.key, event.reason)
        record = await self.store.jobs.get(event.key)
        self._scheduler.add(self._queued_job(record))
        self._publish_positions()
        self.wake()

    async def _announce_stored_end(self, job_id: int) -> None:
        record = await self.store.jobs.get(job_id)
        if record is None or not record.is_terminal:
            log.error("job %s could not start and is %s", job_id, record.status if record else "gone")
        elif record.status == "canceled":
            self._announce(JobCanceled(job_id, "canceled"))
        elif record.status == "failed":
            self._announce(JobFailed(job_id, record.error or "failed"))

    async def _fail_unannounced(self, batch: list[QueuedJob], reason: str) -> None:
        """Every job of a batch that broke gets its one final event, stored first when the store works."""
        for job in batch:
            if job.job_id in self._announced_terminal or job.job_id in self._saving:
                continue  # over already, or its result is being saved
            try:
                await self.store.jobs.fail(job.job_id, reason)
                await self._announce_stored_end(job.job_id)
            except Exception:
                log.exception("could not record the failure of job %s", job.job_id)
            self._announce(JobFailed(job.job_id, reason))  # no-op when the stored end was announced

    def _finish_done(self, task: asyncio.Task) -> None:
        self._finishing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("saving a result failed", exc_info=task.exception())

    async def _finish(self, event: ItemFinished) -> None:
        try:
            await self._save_result(event)
        except Exception:
            log.exception("saving the result of job %s failed", event.key)
            reason = "the result could not be saved on the bot's side; the error was logged"
            try:
                await self.store.jobs.fail(event.key, reason, from_status={"running"})
            except Exception:
                log.exception("could not record the failure of job %s", event.key)
            self._announce(JobFailed(event.key, reason))  # a no-op if it was announced already
        finally:
            self._saving.discard(event.key)

    async def _save_result(self, event: ItemFinished) -> None:
        from storage.records import NewImage

        folder = self.image_dir / str(event.key)
        try:
            new_images = await asyncio.to_thread(_write_images, folder, event.images)
        except OSError as exc:
            log.error("could not save the images of job %s: %s", event.key, exc)
            reason = "the images could not be saved on the bot's disk; the error was logged"
            if await self.store.jobs.fail(event.key, reason, from_status={"running"}):
                self._announce(JobFailed(event.key, reason))
            return
        images = await self.store.jobs.complete(event.key, [NewImage(**fields) for fields in new_images])
        if images is None:  # canceled while it ran: its files are not kept
            await asyncio.to_thread(_remove_files, [Path(f["path"]) for f in new_images])
            return
        self._announce(JobFinished(event.key, tuple(images)))


def _cap_message(scope: str, count: int, limit: int) -> str:
    if scope == "member":
        return f"you already have {count} jobs waiting; the limit is {limit}. Wait for one to finish or cancel one."
    return f"this server already has {count} jobs waiting; the limit is {limit}. Try again in a little while."


def _write_images(folder: Path, images) -> list[dict]:
    """PNG files with infotext; rewriting after a crash-and-retry overwrites the same names."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for image in images:
        data = image.png or png_with_infotext(image.image, image.infotext, postprocessing=image.postprocessing)
        path = folder / f"{image.index}-{image.seed}.png"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        written.append(dict(index=image.index, seed=image.seed, path=path, sha256=hashlib.sha256(data).hexdigest(),
                            width=image.image.width, height=image.image.height, bytes=len(data), infotext=image.infotext))
    return written


def _remove_files(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
