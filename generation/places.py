"""How a waiting job's place in the queue is announced: exactly near the front, in bands further back.

A long queue moves up one place per pick. Announcing every new place of every waiting job would be an
event (and a Discord edit) per job per pick; announcing a place only when its band changes makes it a
handful per job over its whole wait. The walk that finds the places goes in slices, so a queue of any
length never holds the event loop for more than one slice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .scheduler import QueuedJob

__all__ = ["EXACT_PLACES", "PLACE_BANDS", "PLACES_PER_SLICE", "PlaceAnnouncer", "place_band"]

EXACT_PLACES = 10  # the first places are announced (and shown) exactly
PLACE_BANDS = (20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)  # further back: "within the first N"
PLACES_PER_SLICE = 100  # jobs walked between two returns to the event loop (well under 1 ms)


def place_band(place: int) -> int:
    """The place as far as it is shown: itself near the front, else the upper bound of its band; past
    the last band, one more than it."""
    if place <= EXACT_PLACES:
        return place
    return next((band for band in PLACE_BANDS if place <= band), PLACE_BANDS[-1] + 1)


class PlaceAnnouncer:
    """Remembers the band last announced for each waiting job."""

    def __init__(self) -> None:
        self._bands: dict[int, int] = {}

    def slices(self, order: Iterable[QueuedJob]) -> Iterator[list[tuple[int, int]]]:
        """Walk `order` (the scheduler's service order), yielding per slice the (job_id, place) of the
        jobs whose band changed or that were never announced. Once the walk is done, jobs not in it
        are forgotten; a walk left unfinished changes nothing it did not yield."""
        seen: dict[int, int] = {}
        changes: list[tuple[int, int]] = []
        for place, job in enumerate(order, start=1):
            band = seen[job.job_id] = place_band(place)
            if self._bands.get(job.job_id) != band:
                self._bands[job.job_id] = band
                changes.append((job.job_id, place))
            if place % PLACES_PER_SLICE == 0:
                yield changes
                changes = []
        yield changes
        self._bands = seen
