"""A community server on the tiny offline model: easel against a raw diffusers loop, side by side in one run.

50 members (40 light, 7 regular, 3 heavy) submit jobs at Poisson arrival times over a window. The same jobs,
at the same times, are served by

* easel: the real GenerationService + LocalExecutor + fair scheduler + store, batching up to
  `[queue] max_batch` = 4 images per pipeline call (jobs that differ only in CFG scale share a batch);
* raw: a plain diffusers StableDiffusionPipeline over the same loaded modules, one call per job in arrival
  order (each with its own size, steps, CFG, count and seeds; count > 1 is one call with
  num_images_per_prompt), never starting a job before it arrives.

Each job: size 256 or 384 (the issue's "mixed 512/768" at full scale, halved: the tiny model at full size
would take far too long on CPUs), 20 or 30 steps, CFG 5-9 in steps of 0.5, its own seed, Euler a, count
1-4 (light members mostly 1, heavy members mostly 4). The workload comes from a fixed random seed, so runs
are comparable. To spread drift of the machine's speed evenly, the window is split in two halves run as
raw, easel, easel, raw, each half starting from an empty queue.

Arrivals: each member is a Poisson process; a light member's rate is 1/4 of a regular's and 1/10 of a heavy's,
the 50 together `--rate` jobs/s (default 1.2, about twice what easel serves at these sizes on 2 CPUs, so its
queue stays busy and batches can form). Fewer jobs than the rate suggests make p95 coarse: raise --seconds.

Goals: easel's jobs/s >= 2.5x the raw loop's; a light member's mean wait (submit -> start) <= 1.5 job-times,
a job-time being the median run time of one job alone (the raw loop's calls). To show what batching can
give at all on the machine, the engine alone also runs 4 one-image jobs one by one and as one batch.

    python bench/community.py [--seconds 20] [--rate 1.2] [--sizes 256,384] [--size-weights 4,1]
                              [--steps 20,30] [--step-weights 4,1] [--members 40,7,3] [--seed 7]
                              [--threads N] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path, where queue.py would shadow the standard library.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402

from bench._common import (BenchModels, cpu_note, make_config, make_registry, prepare_environment,  # noqa: E402
                           print_table, tiny_models, verdict)

GOAL_SPEEDUP = 2.5
GOAL_LIGHT_WAIT = 1.5  # job-times
SAMPLER = "Euler a"
CFG_SCALES = tuple(5.0 + 0.5 * i for i in range(9))  # 5.0 .. 9.0
SUBJECTS = ("a red cat", "a lighthouse at dusk", "a bowl of ramen", "an old robot", "a mountain lake",
            "a knight in armor", "a city street in the rain", "a fox in the snow", "a spaceship", "a teacup")
STYLES = ("oil painting", "watercolor", "pixel art", "photo, 35mm", "anime style", "charcoal sketch")


@dataclass(frozen=True)
class MemberClass:
    name: str
    rate_weight: float  # one member's share of the arrival rate, relative to the other classes' members
    counts: dict[int, float]  # images per job -> weight


CLASSES = (
    MemberClass("light", 1.0, {1: 9, 2: 1}),  # a job now and then
    MemberClass("regular", 4.0, {1: 4, 2: 3, 3: 1, 4: 2}),
    MemberClass("heavy", 10.0, {4: 8, 3: 1, 2: 1}),  # many jobs, mostly 4 images each
)


@dataclass(frozen=True)
class Job:
    index: int
    member: int  # owner id
    member_class: str
    arrival: float  # seconds after the start of its half
    size: int
    steps: int
    cfg: float
    count: int
    seed: int
    prompt: str


@dataclass
class Outcome:
    """One side's pass over one half of the workload."""

    span: float = 0.0  # first arrival (t = 0) to the last job's end
    waits: dict[int, float] = field(default_factory=dict)  # job index -> submit -> start, seconds
    run_times: list[float] = field(default_factory=list)  # seconds per pipeline call
    call_images: list[int] = field(default_factory=list)  # images per pipeline call
    failed: int = 0
    late: float = 0.0  # the most a submit started after its arrival time (the feeder falling behind)


# ---------------------------------------------------------------------------------------------- workload
def parse_weighted(values: str, weights: str, name: str) -> tuple[list[int], list[float]]:
    items = [int(v) for v in values.split(",") if v.strip()]
    scales = [float(w) for w in weights.split(",") if w.strip()] if weights else [1.0] * len(items)
    if not items or len(scales) != len(items) or any(w < 0 for w in scales) or not sum(scales):
        raise ValueError(f"--{name} and its weights must be comma lists of the same length")
    return items, scales


def make_workload(*, seconds: float, rate: float, members: tuple[int, int, int], sizes, steps,
                  seed: int) -> list[Job]:
    """Each member a Poisson process; the classes' per-member rates in the ratio of their rate_weight."""
    rng = random.Random(seed)
    owners: list[tuple[int, MemberClass]] = []  # (owner id, class), ids from 1
    for member_class, how_many in zip(CLASSES, members):
        owners += [(len(owners) + 1 + i, member_class) for i in range(how_many)]
    total_weight = sum(member_class.rate_weight for _, member_class in owners)
    arrivals: list[tuple[float, int, MemberClass]] = []
    for member, member_class in owners:
        member_rate = rate * member_class.rate_weight / total_weight
        at = rng.expovariate(member_rate)
        while at < seconds:
            arrivals.append((at, member, member_class))
            at += rng.expovariate(member_rate)
    arrivals.sort(key=lambda arrival: arrival[0])
    jobs = []
    for index, (at, member, member_class) in enumerate(arrivals):
        counts = list(member_class.counts)
        jobs.append(Job(index=index, member=member, member_class=member_class.name, arrival=at,
                        size=rng.choices(*sizes)[0], steps=rng.choices(*steps)[0], cfg=rng.choice(CFG_SCALES),
                        count=rng.choices(counts, [member_class.counts[c] for c in counts])[0],
                        seed=rng.randrange(2**31), prompt=f"{rng.choice(SUBJECTS)}, {rng.choice(STYLES)}"))
    return jobs


def halves(jobs: list[Job], seconds: float) -> tuple[list[Job], list[Job]]:
    """The window's two halves, each shifted to start at 0."""
    middle = seconds / 2
    first = [job for job in jobs if job.arrival < middle]
    second = [replace(job, arrival=job.arrival - middle) for job in jobs if job.arrival >= middle]
    return first, second


def describe_workload(jobs: list[Job], args, members: tuple[int, int, int]) -> None:
    images = sum(job.count for job in jobs)
    print(f"\nworkload (seed {args.seed}): {len(jobs)} jobs, {images} images in {args.seconds:g} s "
          f"(asked rate {args.rate:g} jobs/s, drawn {len(jobs) / args.seconds:.2f}); run as two halves of "
          f"{args.seconds / 2:g} s")
    rows = []
    for member_class, how_many in zip(CLASSES, members):
        mine = [job for job in jobs if job.member_class == member_class.name]
        counts = statistics.fmean(job.count for job in mine) if mine else 0.0
        active = len({job.member for job in mine})
        rows.append([member_class.name, how_many, active, len(mine), sum(job.count for job in mine), f"{counts:.2f}",
                     " ".join(f"{c}:{w:g}" for c, w in member_class.counts.items())])
    print_table(["class", "members", "submitting", "jobs", "images", "images/job", "count weights"], rows)

    def mix(attribute: str) -> str:
        values = [getattr(job, attribute) for job in jobs]
        return ", ".join(f"{value}: {values.count(value) * 100 / len(values):.0f}%" for value in sorted(set(values)))

    in_fours = sum(job.count for job in jobs if job.count == 4)
    print(f"  sizes {mix('size')} | steps {mix('steps')} | CFG {min(j.cfg for j in jobs):g}-{max(j.cfg for j in jobs):g}"
          f" | {SAMPLER} | {in_fours * 100 / images:.0f}% of images are in count-4 jobs (one call either way)")


# ---------------------------------------------------------------------------------------------- raw loop
def make_raw_pipeline(engine):
    """A plain StableDiffusionPipeline over the engine's loaded modules (the same weights, already warm)."""
    from diffusers import StableDiffusionPipeline

    loaded = engine.cache.get(engine.registry.resolve(""))
    components = {**loaded.base.components, "safety_checker": None, "requires_safety_checker": False}
    pipe = StableDiffusionPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe, loaded.scheduler_config


def raw_call(pipe, scheduler_config, job: Job) -> None:
    import torch
    from diffusers import EulerAncestralDiscreteScheduler

    # A fresh scheduler per call, as easel makes one; "linspace" is A1111's spacing for Euler a.
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(scheduler_config, timestep_spacing="linspace")
    with torch.inference_mode():
        pipe(prompt=job.prompt, negative_prompt="", num_inference_steps=job.steps, guidance_scale=job.cfg,
             width=job.size, height=job.size, num_images_per_prompt=job.count, output_type="pil",
             generator=[torch.Generator("cpu").manual_seed(job.seed + i) for i in range(job.count)])


def run_raw(pipe, scheduler_config, jobs: list[Job]) -> Outcome:
    outcome = Outcome()
    start = time.perf_counter()
    for job in jobs:
        now = time.perf_counter() - start
        if now < job.arrival:
            time.sleep(job.arrival - now)
        began = time.perf_counter()
        try:
            raw_call(pipe, scheduler_config, job)
        except Exception as exc:  # counted, and the goal fails
            print(f"  raw job {job.index} failed: {exc!r}")
            outcome.failed += 1
        ended = time.perf_counter()
        outcome.waits[job.index] = began - start - job.arrival
        outcome.run_times.append(ended - began)
        outcome.call_images.append(job.count)
    outcome.span = time.perf_counter() - start
    return outcome


# ---------------------------------------------------------------------------------------------- easel
def easel_request(job: Job):
    from generation.requests import GenerationRequest

    return GenerationRequest(prompt=job.prompt, sampler=SAMPLER, steps=job.steps, cfg_scale=job.cfg,
                             width=job.size, height=job.size, seed=job.seed, count=job.count)


async def run_easel(models: BenchModels, engine, jobs: list[Job], name: str) -> Outcome:
    from bench.queue import ServiceHarness
    from generation.service import JobStarted

    outcome = Outcome()
    sections = {"queue": {"max_batch": 4, "per_user_queued": 10_000, "per_guild_queued": 10_000,
                          "job_timeout_s": 3600.0}}
    async with ServiceHarness(models=models, name=name, engine=engine, sections=sections) as harness:
        started_at: dict[int, float] = {}
        subscription = harness.service.subscribe(None)

        async def watch_starts() -> None:
            async for event in subscription:
                if isinstance(event, JobStarted):
                    started_at[event.job_id] = time.perf_counter()

        watcher = asyncio.create_task(watch_starts())
        executor = harness.executor
        original_run_batch = executor.run_batch

        async def timed_run_batch(items, device=None):
            began = time.perf_counter()
            try:
                async for event in original_run_batch(items, device):
                    yield event
            finally:
                outcome.run_times.append(time.perf_counter() - began)
                outcome.call_images.append(sum(item.request.count for item in items))

        executor.run_batch = timed_run_batch  # the service calls it on the instance
        await harness.service.start()
        harness.expect()
        submitted_at: dict[int, tuple[Job, float]] = {}
        start = time.perf_counter()
        for job in jobs:
            delay = start + job.arrival - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.perf_counter()
            outcome.late = max(outcome.late, now - start - job.arrival)
            job_id = await harness.submit(easel_request(job), owner_id=job.member)
            submitted_at[job_id] = (job, now)
        await harness.wait_for(len(jobs), timeout=3600.0)
        outcome.span = max(harness.run.finished_at.values(), default=start) - start
        watcher.cancel()
        subscription.close()
    outcome.failed = len(harness.run.failed)
    for job_id, (job, submitted) in submitted_at.items():
        if job_id in started_at:
            outcome.waits[job.index] = started_at[job_id] - submitted
    return outcome


# ---------------------------------------------------------------------------------------------- report
def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def merge(outcomes: list[Outcome]) -> Outcome:
    total = Outcome()
    for outcome in outcomes:
        total.span += outcome.span
        total.waits.update(outcome.waits)
        total.run_times += outcome.run_times
        total.call_images += outcome.call_images
        total.failed += outcome.failed
        total.late = max(total.late, outcome.late)
    return total


def fmt(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # nan (no jobs of that class): a dash


def report(jobs: list[Job], raw: Outcome, easel: Outcome, members: tuple[int, int, int],
           ceiling: tuple[float, float] | None) -> bool:
    images = sum(job.count for job in jobs)
    job_time = statistics.median(raw.run_times)
    print("\nthroughput (both halves; wall = first arrival to last end, summed over the halves)")
    rows = []
    for label, outcome in (("raw diffusers, one job per call", raw), ("easel (fair, max_batch 4)", easel)):
        rows.append([label, len(jobs), images, f"{outcome.span:.1f}", f"{len(jobs) / outcome.span:.3f}",
                     len(outcome.call_images), f"{images / max(len(outcome.call_images), 1):.2f}",
                     f"{statistics.median(outcome.run_times) * 1000:.0f}", f"{busy_of(outcome) * 100:.0f}%",
                     outcome.failed or ""])
    print_table(["side", "jobs", "images", "wall (s)", "jobs/s", "pipeline calls", "images/call", "median call (ms)",
                 "busy", "failed"], rows)
    speedup = raw.span / easel.span
    sizes = sorted(easel.call_images)
    print("  easel's calls by images: " + ", ".join(f"{n}: {sizes.count(n)}" for n in sorted(set(sizes))))

    print(f"\nwait, submit -> start (s); job-time = median raw call (one job alone) = {job_time * 1000:.0f} ms")
    rows = []
    light_mean = float("nan")
    for member_class, how_many in zip(CLASSES, members):
        mine = [job.index for job in jobs if job.member_class == member_class.name]
        easel_waits = [easel.waits[i] for i in mine if i in easel.waits]
        raw_waits = [raw.waits[i] for i in mine if i in raw.waits]
        easel_mean = statistics.fmean(easel_waits) if easel_waits else float("nan")
        raw_mean = statistics.fmean(raw_waits) if raw_waits else float("nan")
        if member_class.name == "light":
            light_mean = easel_mean / job_time
        rows.append([member_class.name, how_many, len(mine), fmt(percentile(easel_waits, 0.5)),
                     fmt(percentile(easel_waits, 0.95)), fmt(easel_mean), fmt(easel_mean / job_time),
                     fmt(percentile(raw_waits, 0.5)), fmt(percentile(raw_waits, 0.95)), fmt(raw_mean / job_time)])
    print_table(["class", "members", "jobs", "easel p50", "easel p95", "easel mean", "mean (job-times)",
                 "raw p50", "raw p95", "raw mean (job-times)"], rows)
    if easel.late > 0.5:
        print(f"  note: a submit started up to {easel.late:.1f} s after its arrival (the event loop was busy)")
    if busy_of(easel) < 0.9:
        print("  note: easel's device was idle for over 10% of the wall time: raise --rate to keep the queue busy")

    failed = raw.failed + easel.failed
    speed_ok = speedup >= GOAL_SPEEDUP and failed == 0
    wait_ok = light_mean <= GOAL_LIGHT_WAIT and failed == 0  # False when there were no light jobs (nan)
    print(f"\neasel {len(jobs) / easel.span:.3f} jobs/s vs raw {len(jobs) / raw.span:.3f} jobs/s: {speedup:.2f}x"
          f"   goal >= {GOAL_SPEEDUP:g}x: {verdict(speed_ok)}")
    if ceiling is not None and not speed_ok:
        print(f"  (batching 4 one-image jobs gains only {ceiling[0] / ceiling[1]:.2f}x on this machine, engine alone; "
              f"count-4 jobs are one call on both sides)")
    print(f"light member's mean wait: {fmt(light_mean)} job-times   goal <= {GOAL_LIGHT_WAIT:g}: {verdict(wait_ok)}"
          + (" (no light jobs in this window: raise --seconds)" if light_mean != light_mean else "")
          + (f" ({failed} jobs failed!)" if failed else ""))
    return speed_ok and wait_ok


def busy_of(outcome: Outcome) -> float:
    return sum(outcome.run_times) / outcome.span if outcome.span else 0.0


# ---------------------------------------------------------------------------------------------- main
def warm_up(engine, pipe, scheduler_config, jobs: list[Job]) -> None:
    """First calls at a new shape are slow (kernel setup): every UNet and VAE shape either side will see, 2 steps,
    unmeasured. Both sides run the same modules, so the raw calls warm the kernels for easel too; one engine call
    per size warms easel's own path (per-image guidance included)."""
    from generation.engine import BatchItem

    for size in sorted({job.size for job in jobs}):
        for images in sorted({job.count for job in jobs} | {1, 2, 3, 4}):
            raw_call(pipe, scheduler_config, replace(jobs[0], size=size, steps=2, count=images))
        engine.run_batch([BatchItem(key=i, request=easel_request(replace(jobs[0], size=size, steps=2, count=1,
                                                                         cfg=5.0 + i, seed=i))) for i in range(2)])


def batching_ceiling(engine, job: Job) -> tuple[float, float]:
    """Engine alone, no service: seconds for 4 one-image jobs like `job` one by one, and as one batch. Their ratio
    is the most batching can gain on this machine at that size (a busy GPU gains far more than CPUs)."""
    from generation.engine import BatchItem

    requests = [easel_request(replace(job, count=1, cfg=CFG_SCALES[2 * i], seed=job.seed + i)) for i in range(4)]
    start = time.perf_counter()
    for request in requests:
        engine.run_batch([BatchItem(key=0, request=request)])
    alone = time.perf_counter() - start
    start = time.perf_counter()
    engine.run_batch([BatchItem(key=i, request=request) for i, request in enumerate(requests)])
    return alone, time.perf_counter() - start


async def run(args, members: tuple[int, int, int], sizes, steps) -> bool:
    from generation.engine import Engine
    from generation.requests import GenerationRequest

    jobs = make_workload(seconds=args.seconds, rate=args.rate, members=members, sizes=sizes, steps=steps,
                         seed=args.seed)
    if not jobs:
        raise SystemExit("the workload is empty: raise --rate or --seconds")
    describe_workload(jobs, args, members)
    first, second = halves(jobs, args.seconds)
    with tiny_models() as models:
        config = make_config(models, models.data_dir("engine"))
        engine = Engine(config=config, registry=make_registry(config))
        engine.generate(GenerationRequest(prompt="a red cat", width=64, height=64, steps=2, seed=1))  # loads it
        pipe, scheduler_config = make_raw_pipeline(engine)
        started = time.perf_counter()
        warm_up(engine, pipe, scheduler_config, jobs)
        ceiling = None
        if not args.quick:
            common = statistics.mode([(job.size, job.steps) for job in jobs])
            ceiling = batching_ceiling(engine, replace(jobs[0], size=common[0], steps=common[1]))
            print(f"\nbatching ceiling (engine alone, 4 one-image jobs at {common[0]} px, {common[1]} steps): "
                  f"{ceiling[0]:.2f} s one by one, {ceiling[1]:.2f} s as one batch = {ceiling[0] / ceiling[1]:.2f}x")
        print(f"\n(warm-up {time.perf_counter() - started:.0f} s) running raw 1st half, easel 1st half, easel 2nd "
              f"half, raw 2nd half ...", flush=True)
        raw_parts, easel_parts = [], []
        for label, side, part in (("raw", "raw", first), ("easel", "easel", first), ("easel", "easel", second),
                                  ("raw", "raw", second)):
            began = time.perf_counter()
            if side == "raw":
                raw_parts.append(run_raw(pipe, scheduler_config, part))
            else:
                easel_parts.append(await run_easel(models, engine, part, name=f"easel-{len(easel_parts)}"))
            print(f"  {label}: {len(part)} jobs in {time.perf_counter() - began:.1f} s", flush=True)
    return report(jobs, merge(raw_parts), merge(easel_parts), members, ceiling)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="arrival window in seconds (default 20)")
    parser.add_argument("--rate", type=float, default=None,
                        help="arrivals, jobs/s (default 1.2, about twice what easel serves on 2 CPUs: the queue stays busy)")
    parser.add_argument("--sizes", default="256,384", help="image sizes, square (default 256,384)")
    parser.add_argument("--size-weights", default="4,1", help="their weights (default 4,1)")
    parser.add_argument("--steps", default="20,30", help="step counts (default 20,30)")
    parser.add_argument("--step-weights", default="4,1", help="their weights (default 4,1)")
    parser.add_argument("--members", default="40,7,3", help="light,regular,heavy members (default 40,7,3)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads, both sides (default: torch's)")
    parser.add_argument("--seed", type=int, default=7, help="workload seed (default 7)")
    parser.add_argument("--quick", action="store_true",
                        help="a ~30 s version: a 4 s window, 256 px only, no batching-ceiling measurement")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = args.seconds or 4.0
        if args.sizes == "256,384" and args.size_weights == "4,1":
            args.sizes, args.size_weights = "256", "1"
    args.seconds = args.seconds or 20.0
    args.rate = args.rate or 1.2
    try:
        sizes = parse_weighted(args.sizes, args.size_weights, "sizes")
        steps = parse_weighted(args.steps, args.step_weights, "steps")
        members = tuple(int(n) for n in args.members.split(","))
    except ValueError as exc:
        parser.error(str(exc))
    if len(members) != 3 or min(members) < 0 or not sum(members) or args.seconds <= 0 or args.rate <= 0:
        parser.error("--members takes three counts (light,regular,heavy); --seconds and --rate must be positive")
    if any(size % 8 or size < 64 for size in sizes[0]):
        parser.error("--sizes must be multiples of 8, at least 64")

    prepare_environment(threads=args.threads)
    print(f"community server on the tiny offline model ({cpu_note()})")
    started = time.perf_counter()
    passed = asyncio.run(run(args, members, sizes, steps))
    print(f"\nall goals: {verdict(passed)}  ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
