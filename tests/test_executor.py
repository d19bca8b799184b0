"""The executor on the real engine: streaming, time limit, and out-of-memory handling.

Out-of-memory cannot happen on this CPU, so the GPU boundary is simulated: an engine that raises
torch.OutOfMemoryError for batches larger than it can "fit"."""

from __future__ import annotations

import torch

from conftest import tiny_request
from generation.engine import BatchItem, Engine
from generation.executor import ItemFailed, ItemFinished, ItemProgress, LocalExecutor


class SmallGpuEngine(Engine):
    def __init__(self, *, fits: int, **kwargs):
        super().__init__(**kwargs)
        self.fits = fits
        self.calls: list[int] = []

    def run_batch(self, items, *, on_progress=None, preview_every=None):
        self.calls.append(len(items))
        if len(items) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().run_batch(items, on_progress=on_progress)


async def run_all(executor, items):
    return [event async for event in executor.run_batch(items)]


async def test_events_stream_progress_then_one_final_event_per_item(engine):
    executor = LocalExecutor(engine)
    items = [BatchItem(key=i, request=tiny_request(seed=i, steps=3)) for i in range(2)]
    events = await run_all(executor, items)
    executor.shutdown()
    finals = [e for e in events if not isinstance(e, ItemProgress)]
    assert sorted(e.key for e in finals) == [0, 1] and all(isinstance(e, ItemFinished) for e in finals)
    assert {e.progress.step for e in events if isinstance(e, ItemProgress)} == {1, 2, 3}
    assert events.index(finals[0]) > 0  # progress came first


async def test_out_of_memory_halves_the_batch_then_fails_clearly(base_config, registry):
    engine = SmallGpuEngine(fits=2, config=base_config, registry=registry)
    executor = LocalExecutor(engine)
    items = [BatchItem(key=i, request=tiny_request(seed=i, steps=2)) for i in range(4)]
    events = await run_all(executor, items)
    assert engine.calls == [4, 2, 2]
    assert sorted(e.key for e in events if isinstance(e, ItemFinished)) == [0, 1, 2, 3]

    engine.fits = 0
    engine.calls.clear()
    events = await run_all(executor, [BatchItem(key=i, request=tiny_request(seed=i, steps=2)) for i in range(2)])
    executor.shutdown()
    assert engine.calls == [2, 1, 1]
    failures = [e for e in events if isinstance(e, ItemFailed)]
    assert len(failures) == 2 and "ran out of memory" in failures[0].reason


async def test_a_job_over_the_time_limit_fails_with_the_reason(engine):
    executor = LocalExecutor(engine, job_timeout_s=0.3)
    events = await run_all(executor, [BatchItem(key="slow", request=tiny_request(steps=60, width=256, height=256))])
    executor.shutdown()
    final = events[-1]
    assert isinstance(final, ItemFailed) and "took longer than the 0.3 s limit" in final.reason
    assert max(e.progress.step for e in events if isinstance(e, ItemProgress)) < 60
