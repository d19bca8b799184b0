"""The fair scheduler at a big server's scale: 10,000 queued jobs from 2,000 members, no model.

Times, over many picks at a steady queue length (each pick's jobs are replaced by new arrivals, untimed):

* `next_batch`: one pick (what the dispatcher does each time a device is free);
* `positions()`: the estimated place of every queued job, which GenerationService computes after each
  pick (and each submit, cancel, batch end) to publish position updates; it walks the whole service order;
* the service's diff of the new positions against the previous ones (one JobQueued event per change);
* for comparison, the places of only the first K jobs in service order (e.g. those whose Discord
  messages show a position), taken lazily from the scheduler's own order generator;
* what every pick and every order walk pays before taking a single job (scheduler internals, timed alone):
  the fair walk's setup (a heap of every member's head job) and the per-member queue snapshot.

Goal: median and p99 < 1 ms for `next_batch` and for `positions()`.

    python bench/scheduler_scale.py [--jobs 10000] [--members 2000] [--picks 300] [--first 25,100]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path, where queue.py would shadow the standard library.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import gc  # noqa: E402
import itertools  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

from bench._common import print_table, verdict  # noqa: E402

GOAL_MS = 1.0
SIZES = (512, 768)  # the full-scale sizes: only the cost and the batch key depend on them
STEPS = (20, 30)
CHECKPOINTS = ("tiny", "tiny", "tiny", "tiny", "other")  # one job in five on a checkpoint not loaded
COUNTS = (1, 1, 1, 2, 4)


def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Workload:
    """Jobs of `members` members, some much busier than others (Pareto weights), fixed seed."""

    def __init__(self, members: int, seed: int):
        self.rng = random.Random(seed)
        self.members = list(range(1, members + 1))
        self.weights = [self.rng.paretovariate(1.2) for _ in self.members]
        self.next_id = 1

    def job(self, owner_id: int | None = None):
        from generation.scheduler import QueuedJob, job_cost

        rng = self.rng
        if owner_id is None:
            owner_id = rng.choices(self.members, self.weights)[0]
        size, steps, images = rng.choice(SIZES), rng.choice(STEPS), rng.choice(COUNTS)
        checkpoint = rng.choice(CHECKPOINTS)
        job_id = self.next_id
        self.next_id += 1
        return QueuedJob(job_id=job_id, owner_id=owner_id, guild_id=1, seq=job_id,
                         cost=job_cost(size, size, steps, images), images=images, checkpoint=checkpoint,
                         batch_key=(checkpoint, "txt2img", "Euler a", steps, size, size))

    def initial(self, jobs: int) -> list:
        """Every member has at least one job queued; the rest go to members by weight."""
        first = [self.job(owner) for owner in self.members[:jobs]]
        return first + [self.job() for _ in range(jobs - len(first))]


def timed_ms(function) -> tuple[float, object]:
    start = time.perf_counter_ns()
    result = function()
    return (time.perf_counter_ns() - start) / 1e6, result


def publish_diff(previous: dict[int, int], positions: dict[int, int]) -> int:
    """What GenerationService._publish_positions does with the new positions: one event per change."""
    from generation.service import JobQueued

    events = [JobQueued(job_id, place) for job_id, place in positions.items() if previous.get(job_id) != place]
    return len(events)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="queued jobs, kept steady (default 10000)")
    parser.add_argument("--members", type=int, default=2_000, help="members they belong to (default 2000)")
    parser.add_argument("--picks", type=int, default=300, help="timed picks (default 300)")
    parser.add_argument("--first", default="25,100", help="K for the first-K positions comparison (default 25,100)")
    parser.add_argument("--seed", type=int, default=7, help="workload seed (default 7)")
    args = parser.parse_args(argv)
    firsts = [int(k) for k in args.first.split(",") if k.strip()]
    if args.jobs < 1 or args.members < 1 or args.picks < 2 or any(k < 1 for k in firsts):
        parser.error("--jobs, --members, --first must be at least 1, --picks at least 2")

    from bench._common import prepare_environment

    prepare_environment()
    from generation.scheduler import FairScheduler, SchedulerPolicy, _FairWalk

    policy = SchedulerPolicy(max_batch=4, affinity_lookahead=4)
    workload = Workload(args.members, args.seed)
    scheduler = FairScheduler.rebuild(policy, workload.initial(args.jobs))
    print(f"fair scheduler at scale: {len(scheduler):,} queued jobs of {args.members:,} members "
          f"(python {sys.version.split()[0]}); max_batch {policy.max_batch}, affinity lookahead "
          f"{policy.affinity_lookahead}; {args.picks} picks, each pick's jobs replaced by new arrivals")

    times: dict[str, list[float]] = {"next_batch": [], "positions()": [], "publish diff": []}
    for k in firsts:
        times[f"first {k} positions"] = []
    times["walk setup"], times["queue snapshot"] = [], []
    picked_images: list[int] = []
    changed: list[int] = []
    previous = scheduler.positions()
    gc.collect()
    for pick in range(args.picks):
        elapsed, batch = timed_ms(lambda: scheduler.next_batch(loaded_checkpoint="tiny"))
        times["next_batch"].append(elapsed)
        picked_images.append(sum(job.images for job in batch))
        elapsed, positions = timed_ms(scheduler.positions)
        times["positions()"].append(elapsed)
        elapsed, count = timed_ms(lambda: publish_diff(previous, positions))
        times["publish diff"].append(elapsed)
        changed.append(count)
        previous = positions
        for k in (firsts if pick % 2 else firsts[::-1]):  # alternating: each K is first (caches cold) as often
            # The scheduler's order is a lazy generator (private, _service_order): the first K places only.
            elapsed, head = timed_ms(lambda: {job.job_id: place for place, job in
                                              zip(range(1, k + 1), scheduler._service_order())})
            times[f"first {k} positions"].append(elapsed)
            assert all(previous[job_id] == place for job_id, place in head.items())
        elapsed, _ = timed_ms(lambda: _FairWalk(scheduler._queues, scheduler._clocks, scheduler._virtual_time,
                                                policy.max_batch))
        times["walk setup"].append(elapsed)
        elapsed, _ = timed_ms(lambda: {owner: tuple(queue) for owner, queue in scheduler._queues.items()})
        times["queue snapshot"].append(elapsed)
        for _ in batch:  # back to the steady length, untimed
            scheduler.add(workload.job())

    rows, results = [], {}
    for name, values in times.items():
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        results[name] = (p50, p99)
        judged = name in ("next_batch", "positions()")
        ok = p99 < GOAL_MS
        rows.append([name, f"{p50:.3f}", f"{p99:.3f}", f"{max(values):.3f}",
                     verdict(ok) if judged else "(info)"])
    print()
    print_table(["operation", "median (ms)", "p99 (ms)", "max (ms)", f"goal < {GOAL_MS:g} ms"], rows)
    print(f"  per pick: {sum(picked_images) / len(picked_images):.2f} images taken on average; "
          f"{sum(changed) / len(changed):,.0f} of {len(scheduler):,} positions changed (one JobQueued event each)")

    next_ok = results["next_batch"][1] < GOAL_MS
    positions_ok = results["positions()"][1] < GOAL_MS
    print(f"\nnext_batch at {len(scheduler):,} jobs: median {results['next_batch'][0]:.3f} ms, "
          f"p99 {results['next_batch'][1]:.3f} ms   goal < {GOAL_MS:g} ms: {verdict(next_ok)}")
    print(f"positions() at {len(scheduler):,} jobs: median {results['positions()'][0]:.3f} ms, "
          f"p99 {results['positions()'][1]:.3f} ms   goal < {GOAL_MS:g} ms: {verdict(positions_ok)}")
    if not positions_ok:
        ratio = results["positions()"][0] / GOAL_MS
        best_k = min(firsts)
        print(f"  positions() is {ratio:.0f}x over the goal: it replays the fair order over every queued job, "
              f"and the service calls it after every pick, submit, cancel and batch end, then compares all "
              f"{len(scheduler):,} places and sends an event for each one that moved.")
        print(f"  The first {best_k} places alone cost {results[f'first {best_k} positions'][0]:.3f} ms (median) "
              f"through the scheduler's lazy order generator, which is private (_service_order); nothing public "
              f"offers it. To meet the goal, generation/scheduler.py would need a public positions(limit=K) (or "
              f"positions_of(job_ids)) built on that generator, and generation/service.py would publish only "
              f"those (the jobs whose messages show a place) and answer position() for the rest on demand; that "
              f"alone still misses 1 ms while each walk starts from scratch (below).")
    members = len(scheduler._queues)
    setup, snapshot = results["walk setup"][0], results["queue snapshot"][0]
    if not next_ok or not positions_ok:
        print(f"  Where the time goes: every next_batch and every order walk first builds a fresh heap of all "
              f"{members:,} members' head jobs ({setup:.3f} ms median), and every order walk, even for the first K "
              f"places, first copies every member's queue ({snapshot:.3f} ms). Keeping the fair heap between calls "
              f"(updated on add, remove and pick) would make a pick O(log members + max_batch), and a first-K walk "
              f"over the live queues (cursors, no copies) O(K log members).")
    print(f"\nall goals: {verdict(next_ok and positions_ok)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
