"""The GPU executor: one worker thread per device owns the engine; events cross into asyncio safely.

The interface is deliberately small (run a batch, stream its events, cancel one item) so a remote
worker pool can stand behind it later while the bot stays the fair scheduler.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import AsyncIterator, Hashable, Protocol, Sequence

from .engine import BatchItem, CancelToken, Engine, GeneratedImage, StepProgress
from .errors import Canceled, EaselError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemProgress:
    key: Hashable
    progress: StepProgress


@dataclass(frozen=True)
class ItemFinished:
    key: Hashable
    images: tuple[GeneratedImage, ...]


@dataclass(frozen=True)
class ItemFailed:
    key: Hashable
    reason: str  # readable by a user


@dataclass(frozen=True)
class ItemCanceled:
    key: Hashable
    reason: str


ExecutorEvent = ItemProgress | ItemFinished | ItemFailed | ItemCanceled


class Executor(Protocol):
    def run_batch(self, items: Sequence[BatchItem]) -> AsyncIterator[ExecutorEvent]:
        """Run compatible items together; yields progress, then exactly one final event per item."""

    def cancel(self, key: Hashable, reason: str = "canceled") -> bool:
        """Stop one running item at once; the others of its batch go on."""

    @property
    def loaded_checkpoint(self) -> str | None:
        """The checkpoint (with its merged LoRA set, see engine.model_state) a batch would run on
        without loading or merging anything, for the scheduler's affinity."""


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class LocalExecutor:
    """Runs batches on this machine's device in one dedicated thread."""

    def __init__(self, engine: Engine, *, job_timeout_s: float | None = None):
        self.engine = engine
        self.job_timeout_s = job_timeout_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="easel-gpu")
        self._tokens: dict[Hashable, CancelToken] = {}
        self._lock = threading.Lock()

    @property
    def loaded_checkpoint(self) -> str | None:
        return self.engine.loaded_model_state

    def cancel(self, key: Hashable, reason: str = "canceled") -> bool:
        with self._lock:
            token = self._tokens.get(key)
        if token is None:
            return False
        token.cancel(reason)
        return True

    def shutdown(self) -> None:
        with self._lock:
            for token in self._tokens.values():
                token.cancel("the bot is shutting down")
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def run_batch(self, items: Sequence[BatchItem]) -> AsyncIterator[ExecutorEvent]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        done = object()
        with self._lock:
            for item in items:
                self._tokens[item.key] = item.cancel
        timers = []
        if self.job_timeout_s:
            for item in items:
                timers.append(loop.call_later(self.job_timeout_s, functools.partial(
                    item.cancel.cancel, f"it took longer than the {self.job_timeout_s:g} s limit", timed_out=True)))

        def emit(event) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        def work() -> None:
            try:
                for event in self._run_with_oom_retry(list(items), on_progress=lambda key, step: emit(ItemProgress(key, step))):
                    emit(event)
            finally:
                emit(done)

        future = loop.run_in_executor(self._pool, work)
        try:
            while True:
                event = await events.get()
                if event is done:
                    break
                yield event
        finally:
            for timer in timers:
                timer.cancel()
            with self._lock:
                for item in items:
                    self._tokens.pop(item.key, None)
            await asyncio.shield(future)

    def _run_with_oom_retry(self, items: list[BatchItem], *, on_progress):
        """Runs in the worker thread. Out of memory: halve the batch and retry, then fail the single item."""
        pending = [items]
        while pending:
            group = pending.pop(0)
            try:
                results = self.engine.run_batch(group, on_progress=on_progress)
            except Canceled:
                for item in group:
                    yield self._stopped(item)
                continue
            except EaselError as exc:
                for item in group:
                    yield ItemFailed(item.key, str(exc))
                continue
            except Exception as exc:
                if _is_out_of_memory(exc):
                    self._free_memory()
                    if len(group) > 1:
                        half = len(group) // 2
                        log.warning("out of memory with %d jobs; retrying as %d + %d", len(group), half, len(group) - half)
                        pending[:0] = [group[:half], group[half:]]
                        continue
                    for item in group:
                        yield ItemFailed(item.key, "the GPU ran out of memory; try a smaller size or fewer images")
                    continue
                log.exception("generation failed")
                for item in group:
                    yield ItemFailed(item.key, f"generation failed ({type(exc).__name__}); the error was logged")
                continue
            for item in group:
                images = results.get(item.key)
                if images is None:
                    yield self._stopped(item)
                else:
                    yield ItemFinished(item.key, tuple(images))

    @staticmethod
    def _stopped(item: BatchItem) -> "ItemFailed | ItemCanceled":
        if item.cancel.timed_out:
            return ItemFailed(item.key, item.cancel.reason)
        return ItemCanceled(item.key, item.cancel.reason)

    @staticmethod
    def _free_memory() -> None:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
