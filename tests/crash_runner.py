"""Runs the queue in its own process for the crash test: `python crash_runner.py DATA MODELS submit|resume N`.

In `submit` mode the second batch stops at its second step and prints HUNG, so the test's SIGKILL
always lands mid-job, never in the moment between two jobs.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generation.config import config_from_mapping  # noqa: E402
from generation.engine import Engine  # noqa: E402
from generation.executor import LocalExecutor  # noqa: E402
from generation.registry import ModelRegistry  # noqa: E402
from generation.requests import GenerationRequest  # noqa: E402
from generation.service import GenerationService  # noqa: E402
from storage import open_store  # noqa: E402


class EngineThatHangsInSecondBatch(Engine):
    """Stands in for a long job: sampling of the second batch blocks until the process is killed."""

    batches_started = 0

    def run_batch(self, items, *, on_progress=None, preview_every=None):
        self.batches_started += 1
        hang = self.batches_started == 2

        def progress(key, step_progress):
            if on_progress is not None:
                on_progress(key, step_progress)
            if hang and step_progress.step >= 2:
                print("HUNG", flush=True)
                threading.Event().wait()

        return super().run_batch(items, on_progress=progress)


async def main(data_dir: str, models_dir: str, mode: str, jobs: int) -> None:
    config = config_from_mapping({"paths": {"data_dir": data_dir, "models_dir": models_dir}, "device": {"device": "cpu"},
                                  "models": {"default_checkpoint": "tiny"}, "queue": {"per_user_queued": 50}}, env={})
    registry = ModelRegistry.from_config(config)
    registry.refresh()
    engine_class = EngineThatHangsInSecondBatch if mode == "submit" else Engine
    engine = engine_class(config=config, registry=registry)
    store = await open_store(config.data_dir / "easel.db")
    executor = LocalExecutor(engine)
    service = GenerationService(config=config, store=store, engine=engine, executor=executor)
    if mode == "submit":
        for i in range(jobs):
            await service.submit(GenerationRequest(prompt=f"job {i}", width=128, height=128, steps=25, seed=i,
                                                   sampler="Euler"), owner_id=i % 3)
        print("SUBMITTED", flush=True)
    await service.start()
    await service.wait_idle(timeout=600)
    await service.stop()
    executor.shutdown()
    await store.close()
    print("IDLE", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
