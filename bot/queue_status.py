"""A member's place in the queue, a rough wait, and canceling jobs. No discord objects: ids and flags only."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from generation.errors import EaselError
from generation.service import JobCanceled, JobFailed, JobFinished, JobStarted, NotAllowed

from .context import AppContext

log = logging.getLogger(__name__)


class NoSuchJob(EaselError):
    pass


class NothingToCancel(EaselError):
    pass


class ThroughputMeter:
    """Seconds of generation per unit of job cost (pixel-steps), learned from finished jobs.

    Busy time is counted once even when several jobs share a batch: a job is charged from its
    start or the previous finish, whichever is later. Old samples fade (`decay` per finished job),
    so the estimate follows the current hardware and load.
    """

    def __init__(self, *, decay: float = 0.8, clock: Callable[[], float] = time.monotonic):
        self._decay = decay
        self._clock = clock
        self._busy_s = 0.0
        self._cost = 0.0
        self._last_end = float("-inf")
        self._running: dict[int, tuple[float, int]] = {}  # job id -> (start time, cost)

    def started(self, job_id: int, cost: int) -> None:
        self._running[job_id] = (self._clock(), cost)

    def finished(self, job_id: int) -> None:
        entry = self._running.pop(job_id, None)
        now = self._clock()
        if entry is not None:
            start, cost = entry
            self._busy_s = self._busy_s * self._decay + max(0.0, now - max(start, self._last_end))
            self._cost = self._cost * self._decay + cost
        self._last_end = now

    def ended(self, job_id: int) -> None:
        """Failed or canceled: its time says nothing about speed."""
        if self._running.pop(job_id, None) is not None:
            self._last_end = self._clock()

    @property
    def seconds_per_cost(self) -> float | None:
        return self._busy_s / self._cost if self._cost > 0 else None

    def running_cost(self) -> int:
        return sum(cost for _, cost in self._running.values())


def estimate_start_s(cost_ahead: int, seconds_per_cost: float | None) -> float | None:
    """Seconds until a job starts, when everything ahead of it costs `cost_ahead`; None before any measurement."""
    if seconds_per_cost is None:
        return None
    return cost_ahead * seconds_per_cost


async def feed_meter(meter: ThroughputMeter, app: AppContext, subscription) -> None:
    """Runs for the bot's life: the service's events, read into the meter."""
    async for event in subscription:
        try:
            if isinstance(event, JobStarted):
                record = await app.store.jobs.get(event.job_id)
                meter.started(event.job_id, record.cost if record is not None else 1)
            elif isinstance(event, JobFinished):
                meter.finished(event.job_id)
            elif isinstance(event, (JobFailed, JobCanceled)):
                meter.ended(event.job_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("could not record %s for the wait estimate", type(event).__name__)


@dataclass(frozen=True, kw_only=True)
class QueueEntry:
    job_id: int
    prompt: str
    position: int | None  # 0: running; None: queued but not scheduled here (e.g. held by another process)
    starts_in_s: float | None


async def queue_entries(app: AppContext, user_id: int, meter: ThroughputMeter | None) -> list[QueueEntry]:
    """The member's queued and running jobs, newest first, with positions and a rough wait."""
    records = await app.store.jobs.list_for_owner(user_id, statuses={"queued", "running"}, limit=50)
    order = app.service.queued_jobs()
    cost_before: dict[int, int] = {}
    ahead = meter.running_cost() if meter is not None else 0
    for job in order:
        cost_before[job.job_id] = ahead
        ahead += job.cost
    rate = meter.seconds_per_cost if meter is not None else None
    entries = []
    for record in records:
        position = app.service.position(record.id)
        starts_in = None
        if position and record.id in cost_before:
            starts_in = estimate_start_s(cost_before[record.id], rate)
        entries.append(QueueEntry(job_id=record.id, prompt=str(record.request.get("prompt", "")),
                                  position=position, starts_in_s=starts_in))
    return entries


async def active_jobs(app: AppContext, user_id: int, limit: int = 25):
    return await app.store.jobs.list_for_owner(user_id, statuses={"queued", "running"}, limit=limit)


_ALREADY_OVER = {"done": "has already finished", "failed": "has already failed", "canceled": "was already canceled"}


async def cancel_job(app: AppContext, *, job_id: int | None, user_id: int, guild_id: int | None,
                     moderator: bool):
    """Cancel `job_id`, or the member's newest active job. Returns the job's record (as before the cancel).

    A moderator's power stops at their own server: they may cancel others' jobs only from there.
    """
    if job_id is None:
        mine = await active_jobs(app, user_id, limit=1)
        if not mine:
            raise NothingToCancel("you have nothing queued or running")
        record = mine[0]
    else:
        record = await app.store.jobs.get(job_id)
        if record is None:
            raise NoSuchJob(f"there is no job #{job_id}")
    if record.owner_id != user_id and not (moderator and guild_id is not None and record.guild_id == guild_id):
        raise NotAllowed(f"job #{record.id} is not yours; only its owner or a moderator of its server can cancel it")
    if record.is_terminal:
        raise NothingToCancel(f"job #{record.id} {_ALREADY_OVER.get(record.status, 'is over')}")
    moderator_cancel = record.owner_id != user_id
    if not await app.service.cancel(record.id, by_user_id=user_id, moderator=moderator_cancel):
        raise NothingToCancel(f"job #{record.id} has already finished")
    return record
