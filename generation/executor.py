"""Executors run batches on devices; `LocalExecutor` is this machine's one device.

The interface is small (wait for an idle device, claim it, run a batch there and stream its
events, cancel one item), so a pool of remote workers (generation/remote.py) stands behind the
same one while the bot stays the fair scheduler: the service asks what is loaded on the idle
devices (affinity), claims one for the batch it picked, and never has more batches in flight
than devices.
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
from .requests import GenerationRequest
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


@dataclass(frozen=True)
class ItemLost:
    """The device running the item went away (a worker stopped answering): the item may run again."""

    key: Hashable
    reason: str


ExecutorEvent = ItemProgress | ItemFinished | ItemFailed | ItemCanceled | ItemLost


@dataclass(frozen=True)
class Device:
    """A claim on one device for one batch (`Executor.claim`); releasing it twice is harmless."""

    name: str
    loaded: str | None  # its model state when claimed (engine.model_state)
    claim: int = 0  # tells this claim from later ones on the same device


class Executor(Protocol):
    async def wait_for_capacity(self) -> None:
        """Return once some device is idle (at once if one is)."""

    @property
    def idle_model_states(self) -> frozenset[str]:
        """What is loaded on each idle device (engine.model_state: checkpoint and LoRA set), for the
        scheduler's affinity."""

    def unavailable(self, request: GenerationRequest) -> str | None:
        """Why no device can run the request (a model no live worker has); None when one can, or
        may once one joins."""

    def claim(self, model_state: str | None) -> Device:
        """Take an idle device for a batch, preferring one with `model_state` loaded. Call only
        after `wait_for_capacity`, with no await in between."""

    def run_batch(self, items: Sequence[BatchItem], device: Device) -> AsyncIterator[ExecutorEvent]:
        """Run compatible items together on the claimed device (released at the end); yields
        progress, then exactly one final event per item."""

    def release(self, device: Device) -> None:
        """Give back a claimed device (`run_batch` does at its end; again is a no-op)."""

    def cancel(self, key: Hashable, reason: str = "canceled") -> bool:
        """Stop one running item at once; the others of its batch go on."""


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class LocalExecutor:
    """Runs batches on this machine's device in one dedicated thread."""

    DEVICE = "local"
    on_change = None  # one device that never comes or goes: nothing to tell

    def __init__(self, engine: Engine, *, job_timeout_s: float | None = None):
        self.engine = engine
        self.job_timeout_s = job_timeout_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="easel-gpu")
        self._tokens: dict[Hashable, CancelToken] = {}
        self._lock = threading.Lock()
        self._claimed: Device | None = None
        self._claims = 0
        self._idle: asyncio.Event | None = None  # made on the event loop, on first use

    @property
    def loaded_checkpoint(self) -> str | None:
        """The checkpoint (with its merged LoRA set, see engine.model_state) a batch would run on
        without loading or merging anything."""
        return self.engine.loaded_model_state

    @property
    def idle_model_states(self) -> frozenset[str]:
        loaded = self.engine.loaded_model_state
        return frozenset() if self._claimed is not None or loaded is None else frozenset((loaded,))

    def unavailable(self, request) -> str | None:
        return None  # the engine's own checks decided already: its registry is this machine's

    def _idle_event(self) -> asyncio.Event:
        if self._idle is None:
            self._idle = asyncio.Event()
            if self._claimed is None:
                self._idle.set()
        return self._idle

    async def wait_for_capacity(self) -> None:
        await self._idle_event().wait()

    def claim(self, model_state: str | None) -> Device:
        if self._claimed is not None:
            raise RuntimeError("the device is running a batch already")
        self._claims += 1
        self._claimed = Device(self.DEVICE, self.engine.loaded_model_state, self._claims)
        self._idle_event().clear()
        return self._claimed

    def release(self, device: Device) -> None:
        if self._claimed == device:
            self._claimed = None
            self._idle_event().set()

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

    async def run_batch(self, items: Sequence[BatchItem], device: Device | None = None) -> AsyncIterator[ExecutorEvent]:
        if device is None:  # a caller that runs one batch at a time (tests, benchmarks)
            await self.wait_for_capacity()
            device = self.claim(None)
        try:
            async for event in self._run(items):
                yield event
        finally:
            self.release(device)

    async def _run(self, items: Sequence[BatchItem]) -> AsyncIterator[ExecutorEvent]:
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
                for event in run_items(self.engine, list(items),
                                       on_progress=lambda key, step: emit(ItemProgress(key, step))):
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


def run_items(engine: Engine, items: list[BatchItem], *, on_progress, preview_every: int | None = None):
    """Run a batch on the calling thread (the device's), yielding one final event per item. Out of
    memory: halve the batch and retry, then fail the single item. Local and remote workers share it."""
    pending = [items]
    while pending:
        group = pending.pop(0)
        try:
            results = engine.run_batch(group, on_progress=on_progress, preview_every=preview_every)
        except Canceled:
            for item in group:
                yield _stopped(item)
            continue
        except EaselError as exc:
            for item in group:
                yield ItemFailed(item.key, str(exc))
            continue
        except Exception as exc:
            if _is_out_of_memory(exc):
                _free_memory()
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
                yield _stopped(item)
            else:
                yield ItemFinished(item.key, tuple(images))


def _stopped(item: BatchItem) -> "ItemFailed | ItemCanceled":
    if item.cancel.timed_out:
        return ItemFailed(item.key, item.cancel.reason)
    return ItemCanceled(item.key, item.cancel.reason)


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
