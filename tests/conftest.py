"""Shared fixtures: the tiny offline model (built once per session) and configs pointing at it."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import pytest
import pytest_asyncio
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach the hub
warnings.filterwarnings("ignore", message="Should have ta>=t0")

from generation.config import Config, config_from_mapping  # noqa: E402
from generation.executor import LocalExecutor  # noqa: E402

EMBEDDING_WIDTH = 32  # the tiny model's text encoder


def write_embeddings(folder: Path) -> None:
    """One file per supported format, plus one with the wrong width."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(7)
    vectors = lambda n, width=EMBEDDING_WIDTH: torch.randn(n, width, generator=generator) * 2  # noqa: E731
    torch.save({"string_to_param": {"*": vectors(2)}, "name": "a1111pt", "step": 100}, folder / "a1111pt.pt")
    save_file({"emb_params": vectors(1)}, str(folder / "a1111st.safetensors"))
    save_file({"diffusersemb": vectors(1)}, str(folder / "diffusersemb.safetensors"))
    save_file({"emb_params": vectors(1, 768)}, str(folder / "widewidth.safetensors"))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    from generation.testing import write_test_model

    root = tmp_path_factory.mktemp("models")
    write_test_model(root / "checkpoints" / "tiny")
    write_embeddings(root / "embeddings")
    return root


@pytest.fixture(scope="session")
def base_config(models_dir, tmp_path_factory) -> Config:
    return make_config(models_dir, tmp_path_factory.mktemp("data"))


def make_config(models_dir: Path, data_dir: Path, **sections) -> Config:
    data = {
        "paths": {"models_dir": str(models_dir), "data_dir": str(data_dir)},
        "device": {"device": "cpu"},
        "models": {"default_checkpoint": "tiny"},
        "defaults": {"width": 64, "height": 64, "steps": 4},
        "previews": {"every_n_steps": 2},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_mapping(data, env={})


@pytest.fixture(scope="session")
def registry(base_config):
    from generation.registry import ModelRegistry

    registry = ModelRegistry.from_config(base_config)
    registry.refresh()
    return registry


@pytest.fixture(scope="session")
def engine(base_config, registry):
    from generation.engine import Engine

    return Engine(config=base_config, registry=registry)


def tiny_request(**changes):
    from generation.requests import GenerationRequest

    fields = dict(prompt="a red cat", width=64, height=64, steps=4, seed=1234, sampler="Euler")
    fields.update(changes)
    return GenerationRequest(**fields)


@pytest.fixture(scope="session", autouse=True)
def gpu_workers_for_the_bot(request):
    """With EASEL_TEST_WORKERS=1 (make test runs the Discord end-to-end file once so), every bot the
    tests start dispatches to two real `easel worker` processes through a real Redis instead of
    running jobs itself (discord_support reads the broker URL set here)."""
    if not os.environ.get("EASEL_TEST_WORKERS"):
        yield None
        return
    import discord_support
    from workers_support import WorkerProcess, redis_server, wait_until_beating

    models = request.getfixturevalue("models_dir")
    folder = request.getfixturevalue("tmp_path_factory").mktemp("workers")
    with redis_server() as url:
        workers = [WorkerProcess(name, broker_url=url, models_dir=models, data_dir=folder) for name in ("e2e-1", "e2e-2")]
        try:
            wait_until_beating(url, [worker.name for worker in workers])
            discord_support.BROKER_URL, discord_support.WORKER_MODELS = url, models
            yield url
        finally:
            discord_support.BROKER_URL = discord_support.WORKER_MODELS = None
            for worker in workers:
                worker.stop()


class CountingExecutor(LocalExecutor):
    """The real executor, recording the size of each batch it is given."""

    def __init__(self, engine):
        super().__init__(engine)
        self.batches: list[list] = []

    def run_batch(self, items, device=None):
        self.batches.append([item.key for item in items])
        return super().run_batch(items, device)


@pytest_asyncio.fixture(loop_scope="function")
async def make_service(tmp_path, models_dir, registry):
    made = []

    async def factory(*, start=True, engine=None, **sections):
        from generation.engine import Engine
        from generation.service import GenerationService
        from storage import open_store

        config = make_config(models_dir, tmp_path / "data", **sections)
        store = await open_store(config.data_dir / "easel.db")
        engine = engine or Engine(config=config, registry=registry)
        executor = CountingExecutor(engine)
        service = GenerationService(config=config, store=store, engine=engine, executor=executor)
        made.append((service, store, executor))
        if start:
            await service.start()
        return service

    yield factory
    for service, store, executor in made:
        await service.stop()
        executor.shutdown()
        await store.close()

