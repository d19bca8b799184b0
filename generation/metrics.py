"""Prometheus metrics for operators: queue, jobs, wait and run times, workers. Off unless
`[metrics] port` is set; then `serve` answers GET /metrics (and nothing else).

`Metrics` owns its own CollectorRegistry (never prometheus_client's global one), so several can
live in one process (tests). The queue gauges are the database's counts (every runner's jobs,
`easel generate` included): read by `seed` at start and again shortly after each job event while
`follow` runs, so they are right after a restart and heal themselves if an event is missed. The
job counters and histograms come from the service's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

# Image jobs take from under a second (a tiny upscale) to many minutes (a big hires batch on a
# small GPU, or a long queue); job_timeout_s defaults to 10 minutes.
TIME_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0)

# generation.service's events, by class name (this module stays light: no torch to import for a
# worker pool that only needs WorkerView).
_STATUS = {"JobFinished": "finished", "JobFailed": "failed", "JobCanceled": "canceled"}

# Jobs followed at once (queued or running, and recently ended ones for de-duplication); past this
# the oldest are forgotten, so a missed event can never make the tables grow without bound.
_MAX_TRACKED = 10_000


@dataclass(frozen=True)
class WorkerView:
    """One worker as a worker pool sees it (shared by the pool and `Metrics.observe_workers`).

    `last_seen_s`: seconds since the worker was last heard from."""

    name: str
    busy: bool
    device: str = ""
    loaded: str | None = None
    free_memory: int | None = None  # bytes
    last_seen_s: float = 0.0


class MetricsServer:
    """The running /metrics endpoint; `close()` stops it."""

    def __init__(self, runner, host: str, port: int):
        self._runner = runner
        self.host = host
        self.port = port  # the port bound

    async def close(self) -> None:
        await self._runner.cleanup()


class Metrics:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, refresh_s: float = 30.0,
                 min_refresh_interval_s: float = 0.5):
        """`clock`: seconds, for wait/run times and worker busy time (monotonic; tests pass their
        own). While `follow` runs, the queue gauges are read from the database at most every
        `min_refresh_interval_s` after job events, and at least every `refresh_s`."""
        self._clock = clock
        self.refresh_s = refresh_s
        self.min_refresh_interval_s = min_refresh_interval_s
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_length = Gauge("easel_queue_length", "Jobs waiting in the queue", registry=r)
        self.jobs_running = Gauge("easel_jobs_running", "Jobs running now", registry=r)
        self.jobs_total = Counter("easel_jobs_total", "Jobs that ended, by how they ended", ["status"], registry=r)
        for status in _STATUS.values():
            self.jobs_total.labels(status=status)  # shown as 0 from the start
        self.jobs_submitted = Counter("easel_jobs_submitted_total", "Jobs submitted", registry=r)
        self.job_wait = Histogram("easel_job_wait_seconds", "Time from submitted (or queued at start) to started",
                                  buckets=TIME_BUCKETS, registry=r)
        self.job_run = Histogram("easel_job_run_seconds", "Time from started to finished, failed or canceled",
                                 buckets=TIME_BUCKETS, registry=r)
        self.worker_busy_seconds = Counter("easel_worker_busy_seconds_total", "Seconds a worker spent busy",
                                           ["worker"], registry=r)
        self.worker_up = Gauge("easel_worker_up", "1 while the worker pool lists the worker, 0 once it is gone",
                               ["worker"], registry=r)
        self._queued_at: OrderedDict[int, float] = OrderedDict()  # job id -> when first seen queued
        self._started_at: OrderedDict[int, float] = OrderedDict()  # job id -> when it started
        self._ended: OrderedDict[int, None] = OrderedDict()  # recently ended job ids
        self._workers: dict[str, tuple[bool, float]] = {}  # name -> (busy, when) at the last observation
        self._dirty = asyncio.Event()

    # ------------------------------------------------------------------ queue gauges
    def set_queue(self, queued: int, running: int) -> None:
        self.queue_length.set(queued)
        self.jobs_running.set(running)

    async def refresh(self, store) -> None:
        """The queue gauges from the database's counts."""
        queued = await store.jobs.count_queued()
        active = await store.jobs.count_queued(include_running=True)
        self.set_queue(queued, max(active - queued, 0))

    async def seed(self, store, *, runner: str | None = None) -> None:
        """At start: the queue gauges from the database, and the jobs already queued (`runner`'s
        only, when given: the ones this process's service will run) remembered as queued now, so
        their wait is measured from here and they are not counted as submitted again."""
        await self.refresh(store)
        now = self._clock()
        for record in await store.jobs.list_queued(runner=runner):
            if record.id not in self._queued_at and record.id not in self._started_at and record.id not in self._ended:
                self._remember(self._queued_at, record.id, now)

    # ------------------------------------------------------------------ job events
    def observe_event(self, event) -> None:
        """Update the job metrics from one service event (what `follow` does with each)."""
        job_id = getattr(event, "job_id", None)
        if job_id is None or job_id in self._ended:
            return
        now = self._clock()
        kind = type(event).__name__
        if kind == "JobQueued":
            if job_id not in self._queued_at and job_id not in self._started_at:
                self.jobs_submitted.inc()
                self._remember(self._queued_at, job_id, now)
        elif kind == "JobStarted":
            queued_at = self._queued_at.pop(job_id, None)
            if queued_at is not None:
                self.job_wait.observe(max(now - queued_at, 0.0))
            if job_id not in self._started_at:
                self._remember(self._started_at, job_id, now)
        elif kind in _STATUS:
            self._queued_at.pop(job_id, None)
            started_at = self._started_at.pop(job_id, None)
            if started_at is not None:
                self.job_run.observe(max(now - started_at, 0.0))
            self.jobs_total.labels(status=_STATUS[kind]).inc()
            self._remember(self._ended, job_id, None)
        else:
            return  # progress: nothing to count
        self._dirty.set()

    async def follow(self, service) -> None:
        """Consume every event of `service` until cancelled, keeping the queue gauges fresh from
        its store meanwhile. Start it as a task before the service starts and cancel it at shutdown."""
        subscription = service.subscribe()
        refresher = asyncio.create_task(self._refresh_loop(service.store), name="easel-metrics-refresh")
        try:
            async for event in subscription:
                self.observe_event(event)
        finally:
            subscription.close()
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher

    async def _refresh_loop(self, store) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self.refresh_s)
            self._dirty.clear()
            try:
                await self.refresh(store)
            except Exception as exc:  # a metric must never take the bot down; the next event tries again
                log.warning("could not read the queue counts for /metrics: %s", exc)
            await asyncio.sleep(self.min_refresh_interval_s)

    @staticmethod
    def _remember(table: OrderedDict, job_id: int, value) -> None:
        table[job_id] = value
        while len(table) > _MAX_TRACKED:
            table.popitem(last=False)

    # ------------------------------------------------------------------ workers
    def observe_workers(self, workers: Iterable[WorkerView], *, now: float | None = None) -> None:
        """The worker pool's current list. A worker busy at the previous call is counted busy for
        the whole time since; a worker listed before and missing now gets easel_worker_up 0."""
        now = self._clock() if now is None else now
        seen: dict[str, tuple[bool, float]] = {}
        for worker in workers:
            previous = self._workers.get(worker.name)
            busy_seconds = self.worker_busy_seconds.labels(worker=worker.name)
            if previous is not None and previous[0] and now > previous[1]:
                busy_seconds.inc(now - previous[1])
            self.worker_up.labels(worker=worker.name).set(1)
            seen[worker.name] = (worker.busy, now)
        for name in self._workers.keys() - seen.keys():
            self.worker_up.labels(worker=name).set(0)
        self._workers = seen

    # ------------------------------------------------------------------ HTTP
    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def serve(self, host: str, port: int) -> MetricsServer | None:
        """GET /metrics on host:port (404 for every other path). Port 0 means off: None, nothing served."""
        if port == 0:
            return None
        from aiohttp import web

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        bound = runner.addresses[0][1] if runner.addresses else port
        log.info("serving Prometheus metrics on http://%s:%d/metrics", host, bound)
        return MetricsServer(runner, host, bound)


@contextlib.asynccontextmanager
async def metrics_running(config, *, store, service, executor):
    """The /metrics endpoint for a bot, while the context lasts (nothing when `[metrics] port` is 0):
    job metrics from the service's events and the store, worker metrics from a worker pool's
    `views()` every second."""
    if not config.metrics.port:
        yield None
        return
    metrics = Metrics()
    await metrics.seed(store, runner=service.runner)
    tasks = [asyncio.create_task(metrics.follow(service), name="easel-metrics")]
    if hasattr(executor, "views"):
        async def observe() -> None:
            while True:
                metrics.observe_workers(executor.views())
                await asyncio.sleep(1.0)
        tasks.append(asyncio.create_task(observe(), name="easel-metrics-workers"))
    server = None
    try:
        server = await metrics.serve(config.metrics.host, config.metrics.port)
        yield metrics
    finally:
        if server is not None:
            await server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
