import heapq
import random
import time
from collections import defaultdict
from collections.abc import Hashable
from itertools import count

import pytest

import generation.scheduler as scheduler_module
from generation.scheduler import (
    FairScheduler,
    FifoScheduler,
    QueuedJob,
    SchedulerPolicy,
    job_cost,
)

REF = SchedulerPolicy().reference_cost
SOLO = SchedulerPolicy(max_batch=1, affinity_lookahead=0)  # pure fair order: no batching, no affinity


class JobFactory:
    """Makes jobs with increasing ids/seqs; each job gets its own batch_key unless one is given."""

    def __init__(self) -> None:
        self._ids = count(1)

    def __call__(
        self,
        owner: int,
        *,
        cost: int = REF,
        images: int = 1,
        checkpoint: str = "base",
        batch_key: Hashable | None = None,
        guild: int | None = 1,
    ) -> QueuedJob:
        job_id = next(self._ids)
        return QueuedJob(
            job_id=job_id,
            owner_id=owner,
            guild_id=guild,
            seq=job_id,
            cost=cost,
            images=images,
            checkpoint=checkpoint,
            batch_key=("solo", job_id) if batch_key is None else batch_key,
        )


@pytest.fixture
def make() -> JobFactory:
    return JobFactory()


def drain(scheduler, loaded: str | None = None) -> list[list[QueuedJob]]:
    batches = []
    while batch := scheduler.next_batch(loaded_checkpoint=loaded):
        batches.append(batch)
    return batches


def owners(batches: list[list[QueuedJob]]) -> list[int]:
    return [job.owner_id for batch in batches for job in batch]


# --- basics -------------------------------------------------------------------------------------


def test_job_cost_is_the_product_and_rejects_empty_work():
    assert job_cost(512, 512, 20, 1) == REF
    assert job_cost(1024, 1024, 20, 2) == 8 * REF
    with pytest.raises(ValueError, match="steps"):
        job_cost(512, 512, 0, 1)


def test_policy_and_job_reject_nonsense():
    with pytest.raises(ValueError, match="max_batch"):
        SchedulerPolicy(max_batch=0)
    with pytest.raises(ValueError, match="max_skips"):
        SchedulerPolicy(max_skips=-1)
    with pytest.raises(ValueError, match="images"):
        QueuedJob(job_id=1, owner_id=1, guild_id=None, seq=1, cost=1, images=0, checkpoint="a", batch_key=1)


def test_container_protocol_counts_and_duplicates(make):
    scheduler = FairScheduler(SOLO)
    jobs = [make(1, guild=10), make(1, guild=10), make(2, guild=20), make(3, guild=None)]
    for job in jobs:
        scheduler.add(job)
    assert len(scheduler) == 4
    assert jobs[0].job_id in scheduler and 999 not in scheduler
    assert scheduler.queued_count() == 4
    assert scheduler.queued_count(owner_id=1) == 2
    assert scheduler.queued_count(guild_id=10) == 2
    assert scheduler.queued_count(owner_id=2, guild_id=10) == 0
    with pytest.raises(ValueError, match="already queued"):
        scheduler.add(jobs[0])
    with pytest.raises(KeyError):
        scheduler.position(999)
    assert FairScheduler(SOLO).next_batch(loaded_checkpoint="base") == []


# --- fairness -----------------------------------------------------------------------------------


def test_light_user_is_served_second_not_behind_heavy_users_twenty(make):
    scheduler = FairScheduler()  # default policy: batching and affinity on, but nothing matches
    heavy = [make(1) for _ in range(20)]
    light = make(2)
    for job in [*heavy, light]:
        scheduler.add(job)
    assert scheduler.position(light.job_id) == 2
    served = [job for batch in drain(scheduler, loaded="base") for job in batch]
    assert served.index(light) == 1
    assert [job for job in served if job.owner_id == 1] == heavy


def test_newcomer_goes_next_even_when_heavy_user_was_already_being_served(make):
    scheduler = FairScheduler(SOLO)
    for _ in range(20):
        scheduler.add(make(1))
    assert owners([scheduler.next_batch(loaded_checkpoint=None)]) == [1]
    scheduler.add(make(2))
    assert owners([scheduler.next_batch(loaded_checkpoint=None)]) == [2]


def test_round_robin_among_three_users(make):
    scheduler = FairScheduler(SOLO)
    for owner in (1, 2, 3):
        for _ in range(3):
            scheduler.add(make(owner))
    assert owners(drain(scheduler)) == [1, 2, 3] * 3


def test_cost_weighting_a_4x_job_waits_about_four_1x_jobs(make):
    scheduler = FairScheduler(SOLO)
    for _ in range(3):
        scheduler.add(make(1, cost=4 * REF))
    for _ in range(16):
        scheduler.add(make(2, cost=REF))
    first = scheduler.next_batch(loaded_checkpoint=None)
    assert scheduler.virtual_clock(1) == pytest.approx(4.0)  # in reference jobs
    order = owners([first, *drain(scheduler)])
    big = [index for index, owner in enumerate(order) if owner == 1]
    assert big == [0, 5, 10]  # exactly four 1x jobs between consecutive 4x jobs


def test_idle_time_cannot_be_hoarded(make):
    scheduler = FairScheduler(SOLO)
    # Member 1 uses the GPU alone for a while, then member 2 arrives with a backlog, and so does 1.
    for _ in range(10):
        scheduler.add(make(1))
        drain(scheduler)
    for _ in range(6):
        scheduler.add(make(2))
    for _ in range(6):
        scheduler.add(make(1))
    order = owners(drain(scheduler))
    # Member 2 starts at the virtual time, not at 0: it gets one job of head start, not ten.
    assert order == [2, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 1]


def test_returning_member_cannot_spend_old_idle_time(make):
    scheduler = FairScheduler(SOLO)
    scheduler.add(make(3))  # member 3 is served once, early...
    drain(scheduler)
    for _ in range(10):  # ...then member 1 works alone for ten jobs
        scheduler.add(make(1))
    drain(scheduler)
    assert scheduler.virtual_clock(3) == pytest.approx(9.0)  # restarts at the virtual time, not at 1
    for _ in range(5):
        scheduler.add(make(1))
        scheduler.add(make(3))
    order = owners(drain(scheduler))
    assert order[:3].count(3) <= 2 and order.count(3) == 5


# --- affinity -----------------------------------------------------------------------------------


def test_affinity_prefers_loaded_checkpoint_only_within_lookahead(make):
    def build(lookahead: int) -> tuple[FairScheduler, list[QueuedJob]]:
        scheduler = FairScheduler(SchedulerPolicy(max_batch=1, affinity_lookahead=lookahead))
        jobs = [make(1, checkpoint="x"), make(2, checkpoint="x"), make(3, checkpoint="y")]
        for job in jobs:
            scheduler.add(job)
        return scheduler, jobs

    scheduler, jobs = build(lookahead=2)
    assert scheduler.next_batch(loaded_checkpoint="y") == [jobs[2]]
    scheduler, jobs = build(lookahead=1)
    assert scheduler.next_batch(loaded_checkpoint="y") == [jobs[0]]
    scheduler, jobs = build(lookahead=0)
    assert scheduler.next_batch(loaded_checkpoint="y") == [jobs[0]]
    scheduler, jobs = build(lookahead=2)
    assert scheduler.next_batch(loaded_checkpoint=None) == [jobs[0]]  # nothing loaded: fair order


def test_affinity_stops_after_max_skips(make):
    scheduler = FairScheduler(SchedulerPolicy(max_batch=1, affinity_lookahead=10, max_skips=3))
    waiting = make(1, checkpoint="x")
    scheduler.add(waiting)
    for owner in range(2, 12):
        scheduler.add(make(owner, checkpoint="y"))
    served = [batch[0] for batch in drain(scheduler, loaded="y")]
    assert served.index(waiting) == 3  # passed over exactly three times, then served


def test_affinity_with_zero_max_skips_never_skips(make):
    scheduler = FairScheduler(SchedulerPolicy(max_batch=1, affinity_lookahead=10, max_skips=0))
    waiting = make(1, checkpoint="x")
    scheduler.add(waiting)
    scheduler.add(make(2, checkpoint="y"))
    assert scheduler.next_batch(loaded_checkpoint="y") == [waiting]


@pytest.mark.parametrize("seed", range(20))
def test_affinity_never_passes_a_job_more_than_max_skips_nor_beyond_lookahead(seed):
    rng = random.Random(seed)
    policy = SchedulerPolicy(max_batch=1, affinity_lookahead=rng.randint(1, 4), max_skips=rng.randint(0, 3))
    make = JobFactory()
    scheduler = FairScheduler(policy)
    passed = defaultdict(int)
    loaded = "ck0"
    for _ in range(150):
        if rng.random() < 0.6 or not len(scheduler):
            scheduler.add(make(rng.randint(1, 6), checkpoint=f"ck{rng.randint(0, 2)}", cost=rng.choice([1, 2, 4])))
            continue
        # With max_batch=1 the heads in fair order are the first job of each member in the estimate.
        heads, seen = [], set()
        for job in scheduler.jobs():
            if job.owner_id not in seen:
                seen.add(job.owner_id)
                heads.append(job)
        (chosen,) = scheduler.next_batch(loaded_checkpoint=loaded)
        index = heads.index(chosen)
        assert index <= policy.affinity_lookahead
        if index:
            assert chosen.checkpoint == loaded
        for job in heads[:index]:
            passed[job.job_id] += 1
            assert passed[job.job_id] <= policy.max_skips
        if rng.random() < 0.2:
            loaded = f"ck{rng.randint(0, 2)}"


# --- batching -----------------------------------------------------------------------------------


def test_batching_takes_other_users_compatible_heads_only(make):
    scheduler = FairScheduler(SchedulerPolicy(max_batch=4, affinity_lookahead=0))
    a1, a2 = make(1, batch_key="k"), make(1, batch_key="k")
    b1, b2 = make(2, batch_key="k"), make(2, batch_key="b")
    c1 = make(3, batch_key="other")
    d1 = make(4, batch_key="k")
    for job in (a1, a2, b1, b2, c1, d1):
        scheduler.add(job)
    assert scheduler.next_batch(loaded_checkpoint=None) == [a1, b1, d1]  # not a2 (same user), not c1
    # Each batched job advanced its owner's clock, so member 3 (not yet served) goes before b2.
    assert scheduler.next_batch(loaded_checkpoint=None) == [c1]
    assert scheduler.next_batch(loaded_checkpoint=None) == [a2]
    assert scheduler.next_batch(loaded_checkpoint=None) == [b2]


def test_batching_counts_images_and_takes_fitting_heads_in_fair_order(make):
    scheduler = FairScheduler(SchedulerPolicy(max_batch=4, affinity_lookahead=0))
    first = make(1, images=2, batch_key="k")
    too_big = make(2, images=3, batch_key="k")
    fits = make(3, images=1, batch_key="k")
    fits_too = make(4, images=1, batch_key="k")
    late = make(5, images=1, batch_key="k")
    for job in (first, too_big, fits, fits_too, late):
        scheduler.add(job)
    assert scheduler.next_batch(loaded_checkpoint=None) == [first, fits, fits_too]
    assert scheduler.next_batch(loaded_checkpoint=None) == [too_big, late]


def test_job_larger_than_max_batch_runs_alone(make):
    scheduler = FairScheduler(SchedulerPolicy(max_batch=4))
    big, small = make(1, images=6, batch_key="k"), make(2, images=1, batch_key="k")
    scheduler.add(big)
    scheduler.add(small)
    assert scheduler.next_batch(loaded_checkpoint=None) == [big]


def random_workload(rng: random.Random, make: JobFactory, n: int, n_owners: int) -> list[QueuedJob]:
    keys = [f"k{index}" for index in range(rng.randint(1, 4))]
    return [
        make(
            rng.randint(1, n_owners),
            cost=rng.choice([REF // 2, REF, 2 * REF, 4 * REF]),
            images=rng.choice([1, 1, 1, 2, 4]),
            checkpoint=rng.choice(["a", "b", "c"]),
            batch_key=rng.choice(keys),
            guild=rng.choice([1, 2, None]),
        )
        for _ in range(n)
    ]


def random_policy(rng: random.Random) -> SchedulerPolicy:
    return SchedulerPolicy(
        max_batch=rng.choice([1, 2, 4, 8]),
        affinity_lookahead=rng.randint(0, 4),
        max_skips=rng.randint(0, 3),
    )


@pytest.mark.parametrize("seed", range(30))
def test_invariants_under_random_adds_removes_and_batches(seed):
    rng = random.Random(seed)
    make = JobFactory()
    policy = random_policy(rng)
    scheduler = FairScheduler(policy)
    pending = random_workload(rng, make, 200, rng.randint(1, 8))
    added_order: dict[int, list[int]] = defaultdict(list)
    served: list[QueuedJob] = []
    removed: set[int] = set()
    while pending or len(scheduler):
        action = rng.random()
        if pending and action < 0.5:
            job = pending.pop(0)
            scheduler.add(job)
            added_order[job.owner_id].append(job.job_id)
        elif len(scheduler) and action < 0.6:
            victim = rng.choice(scheduler.jobs())
            assert scheduler.remove(victim.job_id) == victim
            assert scheduler.remove(victim.job_id) is None
            removed.add(victim.job_id)
        else:
            batch = scheduler.next_batch(loaded_checkpoint=rng.choice([None, "a", "b", "c"]))
            assert bool(batch) == bool(len(scheduler) + len(batch))
            if not batch:
                continue
            assert len({job.owner_id for job in batch}) == len(batch), "one job per member per batch"
            assert len({job.batch_key for job in batch}) == 1
            assert len(batch) == 1 or sum(job.images for job in batch) <= policy.max_batch
            assert not any(job.job_id in scheduler for job in batch)
            served.extend(batch)
    served_ids = [job.job_id for job in served]
    assert len(served_ids) == len(set(served_ids))
    assert set(served_ids) | removed == {job_id for ids in added_order.values() for job_id in ids}
    for owner, ids in added_order.items():
        mine = [job.job_id for job in served if job.owner_id == owner]
        assert mine == [job_id for job_id in ids if job_id not in removed], f"member {owner} out of FIFO order"


# --- positions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(30))
def test_positions_match_actual_serving_order(seed):
    rng = random.Random(seed)
    make = JobFactory()
    policy = random_policy(rng)
    scheduler = FairScheduler(policy)
    for job in random_workload(rng, make, rng.randint(1, 80), rng.randint(1, 10)):
        scheduler.add(job)
    # Serve a few first so members' clocks differ, then check from that state onwards.
    for _ in range(rng.randint(0, 5)):
        scheduler.next_batch(loaded_checkpoint=None)
    for job in random_workload(rng, make, rng.randint(0, 30), 12):
        scheduler.add(job)
    positions = scheduler.positions()
    assert positions == scheduler.positions()  # estimating mutates nothing
    estimated = scheduler.jobs()
    assert [positions[job.job_id] for job in estimated] == list(range(1, len(estimated) + 1))
    if estimated:
        probe = rng.choice(estimated)
        assert scheduler.position(probe.job_id) == positions[probe.job_id]
    actual = [job for batch in drain(scheduler, loaded=None) for job in batch]
    assert actual == estimated


class CountingHeapq:
    """Delegates to heapq, counting calls: a machine-independent measure of the estimate's work."""

    def __init__(self) -> None:
        self.calls = 0

    def heappush(self, heap, item):
        self.calls += 1
        heapq.heappush(heap, item)

    def heappop(self, heap):
        self.calls += 1
        return heapq.heappop(heap)


def test_positions_stay_cheap_for_hundreds_of_jobs(monkeypatch):
    counts = {}
    for n in (500, 2000):
        rng = random.Random(n)
        scheduler = FairScheduler(SchedulerPolicy(max_batch=4))
        for job in random_workload(rng, JobFactory(), n, n_owners=n // 10):
            scheduler.add(job)
        counter = CountingHeapq()
        monkeypatch.setattr(scheduler_module, "heapq", counter)
        started = time.perf_counter()
        positions = scheduler.positions()
        elapsed = time.perf_counter() - started
        monkeypatch.undo()
        assert len(positions) == n
        assert counter.calls <= 8 * n  # a constant number of O(log n) heap operations per job
        counts[n] = counter.calls
        assert elapsed < 2.0  # generous: a few milliseconds normally
    assert counts[2000] <= 5 * counts[500]  # linear growth, not quadratic


# --- remove and rebuild -------------------------------------------------------------------------


def test_remove_queued_jobs(make):
    scheduler = FairScheduler(SOLO)
    a1, a2, a3 = make(1), make(1), make(1)
    b1 = make(2)
    for job in (a1, a2, a3, b1):
        scheduler.add(job)
    assert scheduler.remove(a2.job_id) == a2
    assert a2.job_id not in scheduler and len(scheduler) == 3
    assert scheduler.positions() == {a1.job_id: 1, b1.job_id: 2, a3.job_id: 3}
    assert scheduler.remove(b1.job_id) == b1  # member 2's only job: member 2 becomes idle
    assert scheduler.remove(12345) is None
    assert [job for batch in drain(scheduler) for job in batch] == [a1, a3]


def test_remove_head_lets_the_next_job_of_that_member_take_its_place(make):
    scheduler = FairScheduler(SOLO)
    a1, a2, b1 = make(1), make(1), make(2)
    for job in (a1, a2, b1):
        scheduler.add(job)
    scheduler.remove(a1.job_id)
    assert scheduler.jobs() == [a2, b1]  # a2 inherits member 1's place (clock 0, earlier seq)


@pytest.mark.parametrize("seed", range(10))
def test_rebuild_gives_the_same_order_as_the_original(seed):
    rng = random.Random(seed)
    policy = random_policy(rng)
    jobs = random_workload(rng, JobFactory(), 120, rng.randint(1, 10))
    original = FairScheduler(policy)
    for job in jobs:
        original.add(job)
    shuffled = list(jobs)
    rng.shuffle(shuffled)
    rebuilt = FairScheduler.rebuild(policy, shuffled)
    assert rebuilt.jobs() == original.jobs()
    loaded = [rng.choice([None, "a", "b"]) for _ in jobs]
    assert [rebuilt.next_batch(loaded_checkpoint=ck) for ck in loaded] == [
        original.next_batch(loaded_checkpoint=ck) for ck in loaded
    ]


# --- FIFO baseline ------------------------------------------------------------------------------


def test_fifo_serves_in_submit_order_without_affinity(make):
    scheduler = FifoScheduler(SchedulerPolicy(max_batch=4))
    jobs = [make(1, checkpoint="x", batch_key="k") for _ in range(5)] + [make(2, checkpoint="y", batch_key="k")]
    for job in reversed(jobs):  # added out of order: still served by seq
        scheduler.add(job)
    assert scheduler.position(jobs[-1].job_id) == 6
    batches = drain(scheduler, loaded="y")
    assert batches == [[job] for job in jobs]  # batching is off by default


def test_fifo_batching_keeps_submit_order_per_member(make):
    scheduler = FifoScheduler(SchedulerPolicy(max_batch=4), batching=True)
    a1, a2 = make(1, batch_key="k"), make(1, batch_key="k")
    b1, b2 = make(2, batch_key="other"), make(2, batch_key="k")  # b2 must not overtake b1
    c1 = make(3, batch_key="k", images=2)
    for job in (a1, a2, b1, b2, c1):
        scheduler.add(job)
    estimated = scheduler.jobs()
    assert drain(scheduler) == [[a1, c1], [a2], [b1], [b2]]
    assert estimated == [a1, c1, a2, b1, b2]


@pytest.mark.parametrize("seed", range(10))
def test_fifo_positions_match_serving_and_rebuild(seed):
    rng = random.Random(seed)
    policy = random_policy(rng)
    jobs = random_workload(rng, JobFactory(), 60, 5)
    batching = rng.random() < 0.5
    scheduler = FifoScheduler.rebuild(policy, jobs, batching=batching)
    estimated = scheduler.jobs()
    assert scheduler.positions() == {job.job_id: place for place, job in enumerate(estimated, start=1)}
    assert [job for batch in drain(scheduler, loaded="a") for job in batch] == estimated
    if not batching:
        assert estimated == sorted(jobs, key=lambda job: job.seq)


def test_affinity_with_several_idle_devices_matches_any_of_them(make):
    """With two idle devices (one has "y", the other "z" loaded), a head on either is preferred within
    the lookahead; None entries (a device with nothing loaded) are ignored."""
    scheduler = FairScheduler(SchedulerPolicy(max_batch=1, affinity_lookahead=2))
    jobs = [make(1, checkpoint="x"), make(2, checkpoint="z"), make(3, checkpoint="y")]
    for job in jobs:
        scheduler.add(job)
    assert scheduler.next_batch(loaded_checkpoint={"y", "z", None}) == [jobs[1]]
    assert scheduler.next_batch(loaded_checkpoint=[None]) == [jobs[0]]  # nothing loaded anywhere: fair order


# --- the live heaps against a from-scratch reference ---------------------------------------------


class ReferenceFair:
    """The module docstring's rules done the slow, obvious way: every pick sorts every member's head."""

    def __init__(self, policy: SchedulerPolicy) -> None:
        self.policy = policy
        self.queues: dict[int, list[QueuedJob]] = {}
        self.clocks: dict[int, int] = {}
        self.virtual_time = 0
        self.skips: dict[int, int] = {}

    def add(self, job: QueuedJob) -> None:
        if job.owner_id not in self.queues:
            self.queues[job.owner_id] = []
            self.clocks[job.owner_id] = max(self.clocks.get(job.owner_id, 0), self.virtual_time)
        self.queues[job.owner_id].append(job)
        self.queues[job.owner_id].sort(key=lambda queued: queued.seq)

    def remove(self, job_id: int) -> None:
        for owner, queue in list(self.queues.items()):
            queue[:] = [job for job in queue if job.job_id != job_id]
            if not queue:
                del self.queues[owner]
        self.skips.pop(job_id, None)

    def heads(self) -> list[QueuedJob]:
        return sorted((queue[0] for queue in self.queues.values()),
                      key=lambda job: (self.clocks[job.owner_id], job.seq, job.job_id))

    def next_batch(self, loaded: set[str]) -> list[QueuedJob]:
        if not self.queues:
            return []
        heads = self.heads()
        self.virtual_time = max(self.virtual_time, self.clocks[heads[0].owner_id])
        candidates = heads[:1 + (self.policy.affinity_lookahead if loaded else 0)]
        first = candidates[0]
        for index, job in enumerate(candidates):
            if job.checkpoint in loaded:
                for passed in candidates[:index]:
                    self.skips[passed.job_id] = self.skips.get(passed.job_id, 0) + 1
                first = job
                break
            if self.skips.get(job.job_id, 0) >= self.policy.max_skips:
                break
        batch, room = [first], self.policy.max_batch - first.images
        for job in heads:  # fair order; each member's own clock is unchanged until the batch is taken
            if job is not first and job.batch_key == first.batch_key and job.images <= room:
                batch.append(job)
                room -= job.images
        for job in batch:
            self.clocks[job.owner_id] += job.cost
            self.remove(job.job_id)
        return batch


@pytest.mark.parametrize("seed", range(40))
def test_live_heaps_pick_exactly_what_the_reference_picks(seed):
    """Adds, cancels, picks with affinity and lost jobs queued again under their old ids, long enough
    for the heaps to be rebuilt several times: every pick and every estimate equals the reference's."""
    rng = random.Random(seed)
    make = JobFactory()
    policy = random_policy(rng)
    scheduler, reference = FairScheduler(policy), ReferenceFair(policy)
    served: list[QueuedJob] = []
    for _ in range(600):
        action = rng.random()
        if action < 0.45:
            job = random_workload(rng, make, 1, rng.randint(1, 12))[0]
        elif action < 0.5 and served:
            job = served.pop(rng.randrange(len(served)))  # its device went away: the same row again
        else:
            job = None
        if job is not None:
            scheduler.add(job)
            reference.add(job)
        elif action < 0.6 and len(scheduler):
            victim = rng.choice(scheduler.jobs()).job_id
            scheduler.remove(victim)
            reference.remove(victim)
        else:
            loaded = rng.choice([set(), {"a"}, {"b", "c"}])
            batch = scheduler.next_batch(loaded_checkpoint=loaded)
            assert batch == reference.next_batch(loaded)
            served.extend(batch)
        if rng.random() < 0.1:
            limit = rng.randint(0, 6)
            copy = ReferenceFair(policy)
            copy.queues = {owner: list(queue) for owner, queue in reference.queues.items()}
            copy.clocks, copy.virtual_time = dict(reference.clocks), reference.virtual_time
            expected = [job for _ in range(len(scheduler)) for job in copy.next_batch(set())]
            assert scheduler.jobs() == expected
            assert scheduler.positions(limit) == {job.job_id: place for place, job in
                                                  enumerate(expected[:limit], start=1)}


def test_a_snapshot_order_is_undisturbed_by_later_changes(make):
    scheduler = FairScheduler(SchedulerPolicy(max_batch=2))
    for owner in (1, 2, 3, 1, 2, 3, 1):
        scheduler.add(make(owner, batch_key="k"))
    before = scheduler.jobs()
    order = scheduler.service_order()
    first_two = [next(order), next(order)]
    scheduler.next_batch(loaded_checkpoint=None)
    scheduler.remove(before[4].job_id)
    scheduler.add(make(4, batch_key="k"))
    assert first_two + list(order) == before


def test_a_pick_and_the_first_places_cost_the_same_at_any_queue_length(monkeypatch):
    """Heap operations, a machine-independent measure: a pick and the first 10 places at 10x the
    queue (members and jobs) cost about what they cost at 1x; all the places grow with the queue."""
    costs = {}
    for n in (1000, 10000):
        rng = random.Random(n)
        scheduler = FairScheduler(SchedulerPolicy(max_batch=4, affinity_lookahead=4))
        for job in random_workload(rng, JobFactory(), n, n_owners=n // 5):
            scheduler.add(job)
        counter = CountingHeapq()
        monkeypatch.setattr(scheduler_module, "heapq", counter)
        picks = []
        for _ in range(50):
            before = counter.calls
            scheduler.next_batch(loaded_checkpoint="a")
            picks.append(counter.calls - before)
        before = counter.calls
        assert len(scheduler.positions(10)) == 10
        first_ten = counter.calls - before
        before = counter.calls
        scheduler.positions()
        costs[n] = (sorted(picks)[len(picks) // 2], first_ten, counter.calls - before)
        monkeypatch.undo()
    (pick_1x, first_1x, all_1x), (pick_10x, first_10x, all_10x) = costs[1000], costs[10000]
    assert pick_10x <= 2 * pick_1x + 4 and first_10x <= 2 * first_1x + 4
    assert all_10x >= 5 * all_1x
