"""Announcing queue places: exact near the front, by band further back, walked in slices."""

from itertools import count

from generation.places import EXACT_PLACES, PLACE_BANDS, PLACES_PER_SLICE, PlaceAnnouncer, place_band
from generation.scheduler import FairScheduler, QueuedJob, SchedulerPolicy

SOLO = SchedulerPolicy(max_batch=1, affinity_lookahead=0)


def queue_of(n: int, ids=None) -> FairScheduler:
    ids = ids or count(1)
    scheduler = FairScheduler(SOLO)
    for _ in range(n):
        job_id = next(ids)
        scheduler.add(QueuedJob(job_id=job_id, owner_id=job_id, guild_id=1, seq=job_id, cost=1, images=1,
                                checkpoint="base", batch_key=job_id))
    return scheduler


def announce(announcer: PlaceAnnouncer, scheduler: FairScheduler) -> dict[int, int]:
    slices = list(announcer.slices(scheduler.service_order()))
    assert all(len(changes) <= PLACES_PER_SLICE for changes in slices)
    return {job_id: place for changes in slices for job_id, place in changes}


def test_place_band_is_exact_at_the_front_then_the_band_it_is_within():
    assert [place_band(place) for place in (1, EXACT_PLACES)] == [1, EXACT_PLACES]
    assert place_band(EXACT_PLACES + 1) == PLACE_BANDS[0]
    assert place_band(PLACE_BANDS[0]) == PLACE_BANDS[0] and place_band(PLACE_BANDS[0] + 1) == PLACE_BANDS[1]
    assert place_band(PLACE_BANDS[-1] + 12345) == PLACE_BANDS[-1] + 1


def test_a_long_queue_moving_up_announces_only_band_changes():
    scheduler = queue_of(3000)
    announcer = PlaceAnnouncer()
    assert announce(announcer, scheduler) == {job.job_id: place
                                              for place, job in enumerate(scheduler.jobs(), start=1)}
    scheduler.next_batch(loaded_checkpoint=None)  # everyone moves up one place
    moved = announce(announcer, scheduler)
    # The first ten, and the one job at each band's edge: 11 -> 10, 21 -> 20, 51 -> 50, ...
    edges = [EXACT_PLACES] + [band for band in PLACE_BANDS if band < 3000]
    assert sorted(moved.values()) == list(range(1, EXACT_PLACES)) + edges
    assert announce(announcer, scheduler) == {}  # nothing moved: nothing announced


def test_new_jobs_are_announced_and_gone_ones_forgotten():
    ids = count(1)
    scheduler = queue_of(5, ids)
    announcer = PlaceAnnouncer()
    announce(announcer, scheduler)
    first = scheduler.jobs()[0]
    scheduler.remove(first.job_id)
    assert first.job_id not in announce(announcer, scheduler)  # forgotten
    scheduler.add(first)  # back again under its old id (a lost job queued again): announced again
    late = QueuedJob(job_id=next(ids), owner_id=99, guild_id=1, seq=99, cost=1, images=1, checkpoint="base",
                     batch_key="x")
    scheduler.add(late)
    changes = announce(announcer, scheduler)
    assert changes[late.job_id] == scheduler.position(late.job_id)
    assert first.job_id in changes
