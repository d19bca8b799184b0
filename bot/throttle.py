"""Progress edits: keep only the newest frame and edit at most once per interval (Discord allows ~5 edits / 2 s)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Generic, TypeVar

log = logging.getLogger(__name__)
Frame = TypeVar("Frame")


class LatestFrameEditor(Generic[Frame]):
    """A task per job that edits its message with the newest frame, never more often than `interval`.

    `offer` never waits, so sampling never waits on Discord; frames that arrive between two edits
    replace each other and only the newest is shown.
    """

    def __init__(self, edit: Callable[[Frame], Awaitable[None]], *, interval: float,
                 clock: Callable[[], float] = time.monotonic):
        self._edit = edit
        self._interval = interval
        self._clock = clock
        self._latest: Frame | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._last_edit = float("-inf")
        self.edits = 0

    def offer(self, frame: Frame) -> None:
        self._latest = frame
        self._changed.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self._changed.wait()
            wait = self._last_edit + self._interval - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            self._changed.clear()
            frame, self._latest = self._latest, None
            if frame is None:
                continue
            self._last_edit = self._clock()
            try:
                await self._edit(frame)
                self.edits += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed preview edit is not worth failing the job for
                log.debug("progress edit failed: %s", exc)

    async def close(self) -> None:
        """Stop editing; pending frames are dropped (the final message replaces them)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    @property
    def next_edit_at(self) -> float:
        return self._last_edit + self._interval
