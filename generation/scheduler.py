"""Which queued generation jobs run next.

The durable queue is rows in the database; this module only decides the order. It does no I/O and is
rebuilt from the queued rows at start (`FairScheduler.rebuild`).

Model (start-time fair queueing, one FIFO queue and one virtual clock per member):

* Serving a job of cost ``c`` (width x height x steps x images) advances its owner's clock by ``c``, i.e.
  by ``c / reference_cost`` reference jobs, so one huge job counts as several small ones.
* The next job is the head of the member with the smallest clock; ties go to the earlier-submitted head.
* The virtual time is the smallest clock among members with queued jobs at the latest pick. A member whose
  queue was empty restarts at ``max(own clock, virtual time)``: idle time cannot be saved up and spent
  later, yet a newcomer still goes before members who were already served in the current round.
* Checkpoint affinity may pass over the fair choice for a head job at most ``affinity_lookahead`` places
  further on whose checkpoint is already loaded (on one of the idle devices, when there are several);
  no job is passed over more than ``max_skips`` times.
* A batch is the chosen job plus other members' head jobs with the same ``batch_key``, in fair order, up
  to ``max_batch`` images; each advances its owner's clock as if served alone. A member's jobs are always
  served in their submit order.
"""

from __future__ import annotations

import abc
import heapq
import itertools
from bisect import insort
from collections.abc import Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, Self

__all__ = [
    "FairScheduler",
    "FifoScheduler",
    "JobScheduler",
    "QueuedJob",
    "SchedulerPolicy",
    "job_cost",
]


def job_cost(width: int, height: int, steps: int, count: int, *, prompt_parts: int = 1) -> int:
    """The work a job asks for, in pixel-steps: what fairness is measured in.

    A step evaluates the UNet once for the negative prompt and once per composable prompt part, so a
    prompt with `prompt_parts` AND-parts costs (1 + parts) / 2 times a plain one."""
    for name, value in (("width", width), ("height", height), ("steps", steps), ("count", count),
                        ("prompt_parts", prompt_parts)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    return width * height * steps * count * (1 + prompt_parts) // 2


@dataclass(frozen=True, kw_only=True)
class QueuedJob:
    """What the scheduler needs to know about one queued job (built from its database row)."""

    job_id: int
    owner_id: int
    guild_id: int | None
    seq: int  # submit order, e.g. the row id
    cost: int  # see job_cost
    images: int
    checkpoint: str
    batch_key: Hashable  # equal keys may share one pipeline call (caller folds in model, size, sampler...)

    def __post_init__(self) -> None:
        if self.cost < 1:
            raise ValueError(f"job {self.job_id}: cost must be at least 1, got {self.cost}")
        if self.images < 1:
            raise ValueError(f"job {self.job_id}: images must be at least 1, got {self.images}")


@dataclass(frozen=True, kw_only=True)
class SchedulerPolicy:
    max_batch: int = 4  # images per pipeline call; 1 turns cross-user batching off
    affinity_lookahead: int = 4  # places past the fair choice searched for a loaded checkpoint; 0 = off
    max_skips: int = 3  # times one job may be passed over for checkpoint affinity
    reference_cost: int = 512 * 512 * 20  # one "standard job"; the unit of `virtual_clock`

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.affinity_lookahead < 0:
            raise ValueError(f"affinity_lookahead must not be negative, got {self.affinity_lookahead}")
        if self.max_skips < 0:
            raise ValueError(f"max_skips must not be negative, got {self.max_skips}")
        if self.reference_cost < 1:
            raise ValueError(f"reference_cost must be at least 1, got {self.reference_cost}")


class JobScheduler(Protocol):
    """The interface both schedulers share, for code that takes either."""

    def add(self, job: QueuedJob) -> None: ...
    def remove(self, job_id: int) -> QueuedJob | None: ...
    def next_batch(self, *, loaded_checkpoint: "str | Collection[str] | None") -> list[QueuedJob]: ...
    def position(self, job_id: int) -> int: ...
    def positions(self) -> dict[int, int]: ...
    def queued_count(self, owner_id: int | None = None, guild_id: int | None = None) -> int: ...
    def jobs(self) -> list[QueuedJob]: ...
    def __len__(self) -> int: ...
    def __contains__(self, job_id: object) -> bool: ...


class _SchedulerBase(abc.ABC):
    """What both schedulers answer the same way; subclasses define `_service_order`."""

    def __init__(self, policy: SchedulerPolicy) -> None:
        self._policy = policy
        self._jobs: dict[int, QueuedJob] = {}

    @property
    def policy(self) -> SchedulerPolicy:
        return self._policy

    @abc.abstractmethod
    def _service_order(self, *, snapshot: bool = False) -> Iterator[QueuedJob]:
        """Every queued job in the order it would be served if nothing changed; mutates nothing. Without
        `snapshot` it must be consumed before the scheduler changes."""

    def service_order(self) -> Iterator[QueuedJob]:
        """Queued jobs in estimated service order, lazily, as they are now: it may be consumed a slice at a
        time while jobs come and go (it costs a copy of the queues)."""
        return self._service_order(snapshot=True)

    def jobs(self) -> list[QueuedJob]:
        """Queued jobs in estimated service order."""
        return list(self._service_order())

    def positions(self, limit: int | None = None) -> dict[int, int]:
        """job_id -> 1-based estimated place in service order, for every job or the first `limit`."""
        places = range(1, (len(self) if limit is None else limit) + 1)
        return {job.job_id: place for place, job in zip(places, self._service_order())}

    def position(self, job_id: int) -> int:
        """1-based estimated place of one queued job; KeyError if it is not queued."""
        if job_id not in self._jobs:
            raise KeyError(job_id)
        for place, job in enumerate(self._service_order(), start=1):
            if job.job_id == job_id:
                return place
        raise AssertionError(f"queued job {job_id} missing from the service order")

    def queued_count(self, owner_id: int | None = None, guild_id: int | None = None) -> int:
        """Queued jobs, optionally only those of one owner and/or one guild."""
        return sum(
            1
            for job in self._jobs.values()
            if (owner_id is None or job.owner_id == owner_id) and (guild_id is None or job.guild_id == guild_id)
        )

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def _check_new(self, job: QueuedJob) -> None:
        if job.job_id in self._jobs:
            raise ValueError(f"job {job.job_id} is already queued")


def _loaded_set(loaded: "str | Collection[str] | None") -> frozenset[str]:
    if loaded is None:
        return frozenset()
    if isinstance(loaded, str):
        return frozenset((loaded,))
    return frozenset(state for state in loaded if state is not None)


# Heap entries sort in fair order: (owner's clock, head's seq, head's job_id, owner_id).
_Entry = tuple[int, int, int, int]
_BatchHeaps = dict[tuple[Hashable, int], list[_Entry]]  # (batch_key, images) -> heads that could join a batch


class _FairWalk:
    """Takes jobs in fair order from the queues, moving only its own cursors and clocks.

    It changes the heaps it is given when it `owns_heaps` (a pick, or a walk given copies), else it copies
    each on its first change (an estimate), so no walk starts by visiting every member. An entry is pushed
    when its job becomes its owner's head, with the owner's clock then, and that clock moves only when the
    head is taken: an entry is current exactly while its job is the head at that clock; others are dropped
    when they reach a top. Each taken job costs O(log members + max_batch).
    """

    def __init__(self, queues: Mapping[int, Sequence[QueuedJob]], clocks: Mapping[int, int], virtual_time: int,
                 max_batch: int, fair_heap: list[_Entry], batch_heaps: _BatchHeaps, *, owns_heaps: bool) -> None:
        self._queues = queues
        self._cursors: dict[int, int] = {}  # owners not in it are at their first job
        self._base_clocks = clocks
        self.clocks: dict[int, int] = {}  # the clocks this walk moved
        self.virtual_time = virtual_time
        self._max_batch = max_batch
        self._fair_heap = fair_heap if owns_heaps else list(fair_heap)
        self._batch_heaps = batch_heaps if owns_heaps else dict(batch_heaps)
        self._copied: set[tuple[Hashable, int]] | None = None if owns_heaps else set()

    def clock(self, owner_id: int) -> int:
        return self.clocks.get(owner_id, self._base_clocks.get(owner_id, 0))

    def _head(self, owner_id: int) -> QueuedJob | None:
        queue, cursor = self._queues.get(owner_id, ()), self._cursors.get(owner_id, 0)
        return queue[cursor] if cursor < len(queue) else None

    def _batch_heap(self, key: tuple[Hashable, int], *, create: bool) -> list[_Entry] | None:
        heap = self._batch_heaps.get(key)
        if self._copied is not None and key not in self._copied and (heap is not None or create):
            heap = self._batch_heaps[key] = list(heap or ())
            self._copied.add(key)
        elif heap is None and create:
            heap = self._batch_heaps[key] = []
        return heap

    def push_head(self, owner_id: int) -> None:
        job = self._head(owner_id)
        if job is None:
            return
        entry = (self.clock(owner_id), job.seq, job.job_id, owner_id)
        heapq.heappush(self._fair_heap, entry)
        if job.images < self._max_batch:  # only these can ever join another job's batch
            heapq.heappush(self._batch_heap((job.batch_key, job.images), create=True), entry)

    def _top(self, heap: list[_Entry]) -> _Entry | None:
        """The first current entry, dropping stale ones above it (inlined: the walk's innermost loop)."""
        queues, cursors, clocks, base_clocks = self._queues, self._cursors, self.clocks, self._base_clocks
        while heap:
            clock, _, job_id, owner = heap[0]
            queue, cursor = queues.get(owner, ()), cursors.get(owner, 0)
            if (cursor < len(queue) and queue[cursor].job_id == job_id
                    and clocks.get(owner, base_clocks.get(owner, 0)) == clock):
                return heap[0]
            heapq.heappop(heap)
        return None

    def fair_heads(self, limit: int) -> list[QueuedJob]:
        """The first `limit` head jobs in fair order."""
        entries: list[_Entry] = []
        while len(entries) < limit and self._top(self._fair_heap) is not None:
            entry = heapq.heappop(self._fair_heap)
            if not entries or entries[-1] != entry:  # the same head pushed twice at one clock: keep one
                entries.append(entry)
        for entry in entries:
            heapq.heappush(self._fair_heap, entry)
        return [self._head(owner) for *_, owner in entries]

    def take_next(self) -> list[QueuedJob]:
        """The next batch in fair order (no affinity); empty when nothing is left."""
        top = self._top(self._fair_heap)
        return self.take_batch(self._head(top[3])) if top is not None else []

    def take_batch(self, first: QueuedJob) -> list[QueuedJob]:
        """Take `first` (a current head) and the other members' heads that batch with it."""
        top = self._top(self._fair_heap)
        assert top is not None and self._head(first.owner_id) is first, "take_batch needs a current head"
        self.virtual_time = max(self.virtual_time, top[0])
        batch = [first]
        self._advance(first)
        room = self._max_batch - first.images
        while room > 0 and (entry := self._pop_joiner(first.batch_key, room)) is not None:
            job = self._head(entry[3])
            batch.append(job)
            self._advance(job)
            room -= job.images
        # Pushed only now so that a member's next job cannot join the batch its previous job is in.
        for job in batch:
            self.push_head(job.owner_id)
        return batch

    def _advance(self, job: QueuedJob) -> None:
        self._cursors[job.owner_id] = self._cursors.get(job.owner_id, 0) + 1
        self.clocks[job.owner_id] = self.clock(job.owner_id) + job.cost

    def _pop_joiner(self, batch_key: Hashable, room: int) -> _Entry | None:
        best: list[_Entry] | None = None
        for images in range(1, room + 1):
            if (batch_key, images) not in self._batch_heaps:
                continue
            heap = self._batch_heap((batch_key, images), create=False)
            top = self._top(heap)
            if top is not None and (best is None or top < best[0]):
                best = heap
        return heapq.heappop(best) if best is not None else None


class FairScheduler(_SchedulerBase):
    """Per-member FIFO queues served in start-time fair order (see the module docstring).

    The fair heap of member heads lives between calls (stale entries dropped lazily, all rebuilt after as
    many changes as there are members), so a pick is O(log members + max_batch) and the first K places
    O(K log members), at any queue length."""

    def __init__(self, policy: SchedulerPolicy = SchedulerPolicy()) -> None:
        super().__init__(policy)
        # Only members with queued jobs. Tuples, replaced on change (a member's queue is short): a
        # snapshot of every queue is then a copy of this dict.
        self._queues: dict[int, tuple[QueuedJob, ...]] = {}
        # Active members, plus idle ones whose clock may still be ahead of the virtual time (the rest would
        # restart at the virtual time anyway; they are forgotten when the heaps are rebuilt).
        self._clocks: dict[int, int] = {}
        self._virtual_time = 0
        self._skips: dict[int, int] = {}  # job_id -> times passed over for affinity
        self._fair_heap: list[_Entry] = []
        self._batch_heaps: _BatchHeaps = {}
        self._changes = 0  # since the heaps were last rebuilt

    @classmethod
    def rebuild(cls, policy: SchedulerPolicy, jobs: Iterable[QueuedJob]) -> Self:
        """A scheduler holding `jobs` (e.g. the queued rows after a restart), added in submit order."""
        scheduler = cls(policy)
        for job in sorted(jobs, key=lambda job: (job.seq, job.job_id)):
            scheduler.add(job)
        return scheduler

    def _walk(self, *, estimate: bool = False) -> _FairWalk:
        """A walk over the live queues: a pick updates the heaps, an estimate copies what it changes."""
        return _FairWalk(self._queues, self._clocks, self._virtual_time, self._policy.max_batch,
                         self._fair_heap, self._batch_heaps, owns_heaps=not estimate)

    def add(self, job: QueuedJob) -> None:
        self._check_new(job)
        queue = self._queues.get(job.owner_id)
        if queue is None:
            queue = ()
            self._clocks[job.owner_id] = max(self._clocks.get(job.owner_id, 0), self._virtual_time)
        # Added out of submit order (a lost job queued again): still kept in submit order.
        index = next((i for i, queued in enumerate(queue) if queued.seq > job.seq), len(queue))
        queue = self._queues[job.owner_id] = (*queue[:index], job, *queue[index:])
        self._jobs[job.job_id] = job
        if queue[0] is job:
            self._walk().push_head(job.owner_id)
        self._changed()

    def remove(self, job_id: int) -> QueuedJob | None:
        """Drop a queued job (canceled); returns it, or None if it was not queued."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return None
        queue = self._queues[job.owner_id]
        index = next(i for i, queued in enumerate(queue) if queued.job_id == job_id)
        queue = self._queues[job.owner_id] = queue[:index] + queue[index + 1:]
        if not queue:
            del self._queues[job.owner_id]
        elif index == 0:
            self._walk().push_head(job.owner_id)
        self._skips.pop(job_id, None)
        self._changed()
        return job

    def next_batch(self, *, loaded_checkpoint: "str | Collection[str] | None") -> list[QueuedJob]:
        """Take the next batch off the queue (first job first); empty when nothing is queued.
        `loaded_checkpoint`: what is loaded where the batch may run (several: one per idle device)."""
        if not self._queues:
            return []
        loaded = _loaded_set(loaded_checkpoint)
        walk = self._walk()
        lookahead = self._policy.affinity_lookahead if loaded else 0
        first = self._choose(walk.fair_heads(1 + lookahead), loaded)
        batch = walk.take_batch(first)  # pushes the members' next heads at their new clocks
        for job in batch:
            queue = self._queues[job.owner_id] = self._queues[job.owner_id][1:]
            if not queue:
                del self._queues[job.owner_id]
            del self._jobs[job.job_id]
            self._skips.pop(job.job_id, None)
            self._clocks[job.owner_id] = walk.clocks[job.owner_id]
        self._virtual_time = walk.virtual_time
        self._changed()
        return batch

    def _changed(self) -> None:
        """Rebuild the heaps from the heads once the stale entries may outnumber them: O(1) amortized."""
        self._changes += 1
        if self._changes <= max(64, len(self._queues)):
            return
        self._changes = 0
        self._clocks = {owner: clock for owner, clock in self._clocks.items()
                        if owner in self._queues or clock > self._virtual_time}
        self._fair_heap, self._batch_heaps = [], {}
        walk = self._walk()
        for owner in self._queues:
            walk.push_head(owner)

    def _choose(self, candidates: list[QueuedJob], loaded: frozenset[str]) -> QueuedJob:
        """The fair choice, or the first later candidate already on a loaded checkpoint that can be
        reached without passing a job that has been passed over `max_skips` times."""
        for index, job in enumerate(candidates):
            if job.checkpoint in loaded:
                for passed in candidates[:index]:
                    self._skips[passed.job_id] = self._skips.get(passed.job_id, 0) + 1
                return job
            if self._skips.get(job.job_id, 0) >= self._policy.max_skips:
                break
        return candidates[0]

    def virtual_clock(self, owner_id: int) -> float:
        """A member's clock in reference jobs; an idle member reads as where they would restart."""
        clock = self._clocks.get(owner_id, 0)
        if owner_id not in self._queues:
            clock = max(clock, self._virtual_time)
        return clock / self._policy.reference_cost

    def _service_order(self, *, snapshot: bool = False) -> Iterator[QueuedJob]:
        # Affinity is left out: it depends on which checkpoint will be loaded, which is unknown here.
        # Not a generator itself, so the snapshot is taken now, not at the first job.
        if snapshot:  # its own queues and heaps: later changes to the scheduler can't disturb it
            walk = _FairWalk(dict(self._queues), dict(self._clocks),
                             self._virtual_time, self._policy.max_batch, list(self._fair_heap),
                             {key: list(heap) for key, heap in self._batch_heaps.items()}, owns_heaps=True)
        else:
            walk = self._walk(estimate=True)
        return itertools.chain.from_iterable(iter(walk.take_next, []))


class FifoScheduler(_SchedulerBase):
    """Plain submit order, no affinity: the baseline the fair scheduler is measured against.

    With `batching`, a batch takes later jobs with the first job's batch_key up to `max_batch` images, at
    most one per member and never past an earlier job of the same member. Its estimate then costs
    O(n^2), which is fine for a baseline.
    """

    def __init__(self, policy: SchedulerPolicy = SchedulerPolicy(), *, batching: bool = False) -> None:
        super().__init__(policy)
        self._batching = batching
        self._order: list[tuple[int, int]] = []  # (seq, job_id), sorted

    @classmethod
    def rebuild(cls, policy: SchedulerPolicy, jobs: Iterable[QueuedJob], *, batching: bool = False) -> Self:
        scheduler = cls(policy, batching=batching)
        for job in jobs:
            scheduler.add(job)
        return scheduler

    def add(self, job: QueuedJob) -> None:
        self._check_new(job)
        self._jobs[job.job_id] = job
        insort(self._order, (job.seq, job.job_id))

    def remove(self, job_id: int) -> QueuedJob | None:
        job = self._jobs.pop(job_id, None)
        if job is not None:
            self._order.remove((job.seq, job.job_id))
        return job

    def next_batch(self, *, loaded_checkpoint: "str | Collection[str] | None") -> list[QueuedJob]:
        batch = self._batch_from([self._jobs[job_id] for _, job_id in self._order])
        for job in batch:
            self.remove(job.job_id)
        return batch

    def _batch_from(self, ordered: Sequence[QueuedJob]) -> list[QueuedJob]:
        if not ordered:
            return []
        first = ordered[0]
        batch = [first]
        if not self._batching:
            return batch
        room = self._policy.max_batch - first.images
        seen_owners = {first.owner_id}  # in the batch, or passed over (their later jobs must wait)
        for job in ordered[1:]:
            if room <= 0:
                break
            if job.owner_id not in seen_owners and job.batch_key == first.batch_key and job.images <= room:
                batch.append(job)
                room -= job.images
            seen_owners.add(job.owner_id)
        return batch

    def _service_order(self, *, snapshot: bool = False) -> Iterator[QueuedJob]:
        remaining = [self._jobs[job_id] for _, job_id in self._order]  # a snapshot either way
        return iter(remaining) if not self._batching else self._batched_order(remaining)

    def _batched_order(self, remaining: list[QueuedJob]) -> Iterator[QueuedJob]:
        while batch := self._batch_from(remaining):
            yield from batch
            taken = {job.job_id for job in batch}
            remaining = [job for job in remaining if job.job_id not in taken]
