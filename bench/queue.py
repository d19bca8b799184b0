"""Queue benchmarks on the tiny offline model, each compared side by side in one run.

a) fairness: a light member's wait, in job-times, behind a heavy member's 20-job backlog, fair vs FIFO.
   Simulated with the scheduler classes, then measured through GenerationService + LocalExecutor + store.
   Goal (fair): <= 2 job-times (the job already running, then the light member's own).
b) throughput: jobs per second for 4 and 8 compatible jobs of different members at 256 px, batched
   (max_batch 8) vs one by one (max_batch 1), through the real service, executor and store. Goal >= 1.3x.
c) checkpoint affinity: model loads for 12 jobs of 4 members alternating between two checkpoints with a
   pipeline cache of one, affinity on (lookahead 4) vs off. Goal: fewer loads with affinity on.

    python bench/queue.py [--rounds 2] [--only a,b,c]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path, where this very file would shadow the standard
# library's `queue` (asyncio and concurrent.futures import it).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from bench._common import (BenchModels, cpu_note, make_config, make_registry, median, prepare_environment,  # noqa: E402
                           print_table, timed, tiny_models, verdict)

GOAL_LIGHT_WAIT = 2.0  # job-times
GOAL_BATCH_SPEEDUP = 1.3
HEAVY_JOBS = 20


# ---------------------------------------------------------------------------------------------- helpers
@dataclass
class ServiceRun:
    """What one pass through the real service observed."""

    seconds: float = 0.0
    finished_order: list[int] = field(default_factory=list)  # job ids, in the order they finished
    finished_at: dict[int, float] = field(default_factory=dict)  # job id -> perf_counter
    failed: dict[int, str] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)  # size of each executor batch
    loads: int = 0


def counting_executor_class():
    from generation.executor import LocalExecutor

    class CountingExecutor(LocalExecutor):
        """The real executor, recording each batch's size."""

        def __init__(self, engine, **kwargs):
            super().__init__(engine, **kwargs)
            self.batch_sizes: list[int] = []

        def run_batch(self, items, device=None):
            self.batch_sizes.append(len(items))
            return super().run_batch(items, device)

    return CountingExecutor


class ServiceHarness:
    """A GenerationService on a fresh store and data folder; the engine may be shared to keep it warm."""

    def __init__(self, *, models: BenchModels, name: str, engine=None, policy=None, scheduler_class=None,
                 sections: dict | None = None):
        from generation.engine import Engine

        self.config = make_config(models, models.data_dir(name), sections)
        self.engine = engine or Engine(config=self.config, registry=make_registry(self.config))
        self.policy = policy
        self.scheduler_class = scheduler_class
        self.run = ServiceRun()
        self._events: asyncio.Queue | None = None

    async def __aenter__(self) -> "ServiceHarness":
        from generation.scheduler import FairScheduler
        from generation.service import GenerationService
        from storage import open_store

        self.store = await open_store(self.config.data_dir / "easel.db")
        self.executor = counting_executor_class()(self.engine)
        self.service = GenerationService(config=self.config, store=self.store, engine=self.engine,
                                         executor=self.executor, policy=self.policy,
                                         scheduler_class=self.scheduler_class or FairScheduler)
        self._subscription = self.service.subscribe(None)
        self._collector = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._collector.cancel()
        self._subscription.close()
        await self.service.stop()
        self.executor.shutdown()
        await self.store.close()
        self.run.batches = list(self.executor.batch_sizes)

    async def _collect(self) -> None:
        from generation.service import JobCanceled, JobFailed, JobFinished

        async for event in self._subscription:
            if isinstance(event, JobFinished):
                self.run.finished_at[event.job_id] = time.perf_counter()
                self.run.finished_order.append(event.job_id)
            elif isinstance(event, (JobFailed, JobCanceled)):
                self.run.failed[event.job_id] = getattr(event, "reason", "")
            else:
                continue
            if self._events is not None:
                self._events.put_nowait(event.job_id)

    async def submit(self, request, owner_id: int) -> int:
        record = await self.service.submit(request, owner_id=owner_id)
        return record.id

    def expect(self) -> None:
        """Call before the jobs can end: counts terminal events from now on."""
        self._events = asyncio.Queue()

    async def wait_for(self, count: int, timeout: float = 300.0) -> None:
        async def wait():
            for _ in range(count):
                await self._events.get()
        await asyncio.wait_for(wait(), timeout)


def request(*, size: int, steps: int, seed: int, checkpoint: str = ""):
    from generation.requests import GenerationRequest

    return GenerationRequest(prompt=f"a red cat, picture {seed}", sampler="Euler a", steps=steps, cfg_scale=7.0,
                             width=size, height=size, seed=seed, checkpoint=checkpoint)


def queued_job(job_id: int, owner_id: int, *, checkpoint: str = "tiny"):
    from generation.scheduler import QueuedJob, job_cost

    return QueuedJob(job_id=job_id, owner_id=owner_id, guild_id=None, seq=job_id, cost=job_cost(512, 512, 20, 1),
                     images=1, checkpoint=checkpoint, batch_key=("same",))


# ---------------------------------------------------------------------------------------------- a) fairness
def simulate_light_wait(scheduler_class) -> tuple[int, int]:
    """(place the light job finished at among all jobs, jobs served until it is done), one job at a time.

    The heavy member's 20 jobs arrive on an idle queue, so the first starts at once; the light member
    submits right after. Every job takes one job-time.
    """
    from generation.scheduler import SchedulerPolicy

    scheduler = scheduler_class(SchedulerPolicy(max_batch=1, affinity_lookahead=0))
    for job_id in range(1, HEAVY_JOBS + 1):
        scheduler.add(queued_job(job_id, owner_id=1))
    finished = scheduler.next_batch(loaded_checkpoint="tiny")  # running while the light job arrives
    light = HEAVY_JOBS + 1
    scheduler.add(queued_job(light, owner_id=2))
    order = [job.job_id for job in finished]
    while batch := scheduler.next_batch(loaded_checkpoint="tiny"):
        order += [job.job_id for job in batch]
    place = order.index(light) + 1
    return place, place  # nothing was done yet when the light job arrived: it waits `place` job-times


async def measure_light_wait(models: BenchModels, engine, scheduler_class, *, size: int, steps: int) -> dict:
    from generation.scheduler import SchedulerPolicy

    async with ServiceHarness(models=models, name=f"fair-{scheduler_class.__name__}", engine=engine,
                              policy=SchedulerPolicy(max_batch=1, affinity_lookahead=0),
                              scheduler_class=scheduler_class,
                              sections={"queue": {"per_user_queued": 100, "per_guild_queued": 100}}) as harness:
        await harness.service.start()
        harness.expect()
        heavy = [await harness.submit(request(size=size, steps=steps, seed=seed), owner_id=1)
                 for seed in range(HEAVY_JOBS)]
        light = await harness.submit(request(size=size, steps=steps, seed=999), owner_id=2)
        submitted = time.perf_counter()
        await harness.wait_for(HEAVY_JOBS + 1)
    run = harness.run
    heavy_times = sorted(run.finished_at[job] for job in heavy if job in run.finished_at)
    job_time = median([later - earlier for earlier, later in zip(heavy_times, heavy_times[1:])])
    return dict(place=run.finished_order.index(light) + 1, done_before=sum(t < submitted for t in heavy_times),
                wait=(run.finished_at[light] - submitted) / job_time, job_time=job_time, failed=len(run.failed))


async def bench_fairness(models: BenchModels, engine) -> bool:
    """Wait in job-times = jobs served from the light member's submit until its job is done, its own included
    (the job running at submit counts whole). The wall-clock wait over the median job-time is shown beside it."""
    from generation.scheduler import FairScheduler, FifoScheduler

    size, steps = 64, 4
    print(f"\na) light member's wait behind a heavy member's {HEAVY_JOBS}-job backlog (max_batch 1; service: "
          f"{size}px, {steps} steps)")
    rows, waits, failed = [], {}, 0
    for scheduler_class in (FairScheduler, FifoScheduler):
        place, wait = simulate_light_wait(scheduler_class)
        waits[(scheduler_class, "simulated")] = wait
        rows.append([scheduler_class.__name__, "simulated", 0, f"{place}/{HEAVY_JOBS + 1}", wait, "-", "-"])
    for scheduler_class in (FairScheduler, FifoScheduler):
        result = await measure_light_wait(models, engine, scheduler_class, size=size, steps=steps)
        served = result["place"] - result["done_before"]
        waits[(scheduler_class, "service")] = served
        failed += result["failed"]
        rows.append([scheduler_class.__name__, "service", result["done_before"], f"{result['place']}/{HEAVY_JOBS + 1}",
                     served, f"{result['wait']:.2f}", f"{result['job_time'] * 1000:.0f} ms"])
    print_table(["scheduler", "how", "heavy done at submit", "light finished", "wait (jobs)", "wait (wall/job-time)",
                 "job-time"], rows)
    alone = median([timed(lambda: engine.generate(request(size=size, steps=steps, seed=seed)))[0] for seed in range(5)])
    print(f"  (one such job alone through Engine.generate: {alone * 1000:.0f} ms; the rest of a service job-time is "
          f"store, PNG files, events)")
    fair = (waits[(FairScheduler, "simulated")], waits[(FairScheduler, "service")])
    ok = max(fair) <= GOAL_LIGHT_WAIT and failed == 0
    print(f"  fair: {fair[0]} simulated, {fair[1]} measured; FIFO: {waits[(FifoScheduler, 'simulated')]} simulated, "
          f"{waits[(FifoScheduler, 'service')]} measured   goal <= {GOAL_LIGHT_WAIT:g} job-times: {verdict(ok)}"
          + (f" ({failed} jobs failed!)" if failed else ""))
    return ok


# ---------------------------------------------------------------------------------------------- b) throughput
async def measure_throughput(models: BenchModels, engine, *, jobs: int, max_batch: int, size: int, steps: int,
                             name: str) -> ServiceRun:
    """All jobs queued first (one per member), then the service starts: time until the last one ends."""
    from generation.scheduler import SchedulerPolicy

    async with ServiceHarness(models=models, name=name, engine=engine,
                              policy=SchedulerPolicy(max_batch=max_batch, affinity_lookahead=4)) as harness:
        for member in range(jobs):
            await harness.submit(request(size=size, steps=steps, seed=100 + member), owner_id=member + 1)
        harness.expect()
        start = time.perf_counter()
        await harness.service.start()
        await harness.wait_for(jobs)
        harness.run.seconds = time.perf_counter() - start
    return harness.run


def engine_throughput(engine, *, jobs: int, batched: bool, size: int, steps: int) -> float:
    """Seconds for the same jobs straight through the engine: one run_batch call, or one generate each."""
    from generation.engine import BatchItem

    requests = [request(size=size, steps=steps, seed=100 + member) for member in range(jobs)]
    start = time.perf_counter()
    if batched:
        engine.run_batch([BatchItem(key=index, request=item) for index, item in enumerate(requests)])
    else:
        for item in requests:
            engine.generate(item)
    return time.perf_counter() - start


async def bench_throughput(models: BenchModels, engine, *, rounds: int) -> bool:
    """Goal at 256 px through the service; the engine alone shows the ceiling, 64 px is for comparison."""
    from generation.engine import BatchItem

    steps = 8
    cases = [(256, 4, True), (256, 8, True), (64, 8, False)]  # (size, jobs, judged against the goal)
    print(f"\nb) throughput: compatible jobs of different members, {steps} steps, Euler a, batched (max_batch 8) vs "
          f"one by one; median of {rounds} interleaved rounds")
    for size in sorted({size for size, _, _ in cases}):  # first calls at a new shape are slow: not measured
        for jobs in (1, 4, 8):
            engine.run_batch([BatchItem(key=i, request=request(size=size, steps=2, seed=i)) for i in range(jobs)])
    rows, passed = [], True
    for size, jobs, judged in cases:
        service: dict[int, list[float]] = {8: [], 1: []}
        direct: dict[bool, list[float]] = {True: [], False: []}
        batches: list[int] = []
        failed = 0
        for round_index in range(rounds):
            for max_batch in (8, 1):
                run = await measure_throughput(models, engine, jobs=jobs, max_batch=max_batch, size=size, steps=steps,
                                               name=f"tp-{size}-{jobs}-{max_batch}-{round_index}")
                service[max_batch].append(run.seconds)
                failed += len(run.failed)
                if max_batch == 8:
                    batches = run.batches
            for batched in (True, False):
                direct[batched].append(engine_throughput(engine, jobs=jobs, batched=batched, size=size, steps=steps))
        single, together = jobs / median(service[1]), jobs / median(service[8])
        speedup = together / single
        ceiling = median(direct[False]) / median(direct[True])
        ok = speedup >= GOAL_BATCH_SPEEDUP and failed == 0
        if judged:
            passed &= ok
        rows.append([f"{size}px", jobs, f"{single:.2f}", f"{together:.2f}", f"{speedup:.2f}x", str(batches),
                     f"{ceiling:.2f}x", (verdict(ok) if judged else "(info)") + (f" ({failed} failed!)" if failed else "")])
    print_table(["size", "jobs", "one by one (jobs/s)", "batched (jobs/s)", "speedup", "batches",
                 "engine alone", f"goal >= {GOAL_BATCH_SPEEDUP}x"], rows)
    return passed


# ---------------------------------------------------------------------------------------------- c) affinity
async def measure_loads(models: BenchModels, *, scheduler_class, lookahead: int, max_batch: int, name: str) -> ServiceRun:
    """12 jobs, 4 members round-robin, each member alternating checkpoints; a fresh cache of capacity 1."""
    from generation.scheduler import SchedulerPolicy

    checkpoints = ("tiny", "tiny.safetensors")  # the same weights as a diffusers folder and a single file
    async with ServiceHarness(models=models, name=name, policy=SchedulerPolicy(max_batch=max_batch,
                                                                               affinity_lookahead=lookahead),
                              scheduler_class=scheduler_class, sections={"models": {"pipeline_cache_size": 1}}) as harness:
        assert harness.engine.cache.loads == 0
        for round_index in range(3):
            for member in range(4):
                checkpoint = checkpoints[(member + round_index) % 2]
                await harness.submit(request(size=64, steps=2, seed=10 * round_index + member, checkpoint=checkpoint),
                                     owner_id=member + 1)
        harness.expect()
        start = time.perf_counter()
        await harness.service.start()
        await harness.wait_for(12)
        harness.run.seconds = time.perf_counter() - start
        harness.run.loads = harness.engine.cache.loads
    return harness.run


async def bench_affinity(models: BenchModels) -> bool:
    from generation.scheduler import FairScheduler, FifoScheduler

    print("\nc) checkpoint loads: 12 jobs, 4 members alternating 2 checkpoints, pipeline cache 1, 64px, 2 steps")
    cases = [
        ("fair, affinity 4", FairScheduler, 4, 1),
        ("fair, affinity off", FairScheduler, 0, 1),
        ("FIFO", FifoScheduler, 0, 1),
        ("fair, affinity 4, max_batch 4", FairScheduler, 4, 4),
    ]
    rows, loads = [], {}
    for label, scheduler_class, lookahead, max_batch in cases:
        run = await measure_loads(models, scheduler_class=scheduler_class, lookahead=lookahead, max_batch=max_batch,
                                  name=f"aff-{len(rows)}")
        loads[label] = run.loads
        rows.append([label, max_batch, run.loads, f"{run.seconds:.1f} s", len(run.batches),
                     f"{len(run.failed)} failed!" if run.failed else ""])
    print_table(["scheduler", "max_batch", "loads", "wall", "batches", ""], rows)
    on, off = loads["fair, affinity 4"], min(loads["fair, affinity off"], loads["FIFO"])
    ok = on < off
    print(f"  loads with affinity {on} vs without {off} ({off / max(on, 1):.1f}x fewer)   goal: fewer: {verdict(ok)}")
    return ok


# ---------------------------------------------------------------------------------------------- main
async def run(parts: set[str], rounds: int) -> bool:
    from generation.engine import Engine

    results = []
    with tiny_models() as models:
        config = make_config(models, models.data_dir("engine"))
        engine = Engine(config=config, registry=make_registry(config))
        engine.generate(request(size=64, steps=2, seed=1))  # loads the checkpoint: runs below share a warm engine
        if "a" in parts:
            results.append(await bench_fairness(models, engine))
        if "b" in parts:
            results.append(await bench_throughput(models, engine, rounds=rounds))
        if "c" in parts:
            results.append(await bench_affinity(models))
    return all(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the throughput comparison (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--only", default="a,b,c", help="which parts to run, e.g. a,c (default a,b,c)")
    args = parser.parse_args(argv)
    parts = {part.strip() for part in args.only.split(",") if part.strip()}
    if not parts or parts - {"a", "b", "c"} or args.rounds < 1:
        parser.error("--only takes a comma list of a, b, c; --rounds must be at least 1")
    prepare_environment(threads=args.threads)
    print(f"queue benchmarks on the tiny offline model ({cpu_note()})")
    started = time.perf_counter()
    passed = asyncio.run(run(parts, args.rounds))
    print(f"\nall goals: {verdict(passed)}  ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
