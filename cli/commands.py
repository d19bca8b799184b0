"""What each `easel` subcommand does; argument parsing lives in main.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path
from typing import Callable

from generation.config import Config
from generation.errors import EaselError


def make_test_model(target: Path, *, architecture: str = "tiny-sd1") -> int:
    from generation.testing import write_test_model

    paths = write_test_model(target, architecture=architecture)
    print(f"wrote {paths.folder} (diffusers folder) and {paths.single_file} (single file)")
    return 0


def info(image: Path) -> int:
    from generation.infotext import read_infotext

    try:
        data = image.read_bytes()
    except OSError as exc:
        raise EaselError(f"cannot read {image}: {exc.strerror}") from None
    text = read_infotext(data)
    if not text:
        raise EaselError(f"{image.name} carries no generation parameters")
    print(text)
    return 0


@contextlib.asynccontextmanager
async def _store_and_models(config: Config):
    """The bot's database and a fresh scan of the model folders (hashes cached in the database)."""
    from generation.catalog import refresh_models
    from generation.registry import ModelRegistry
    from storage import open_store

    store = await open_store(config.data_dir / "easel.db")
    try:
        registry = ModelRegistry.from_config(config)
        await refresh_models(registry, store)
        yield store, registry
    finally:
        await store.close()


def models(config: Config) -> int:
    return asyncio.run(_models(config))


async def _models(config: Config) -> int:
    async with _store_and_models(config) as (_, registry):
        _print_models(registry)
    return 0


def _print_models(registry) -> None:
    snapshot = registry.snapshot
    print(f"checkpoints in {registry.checkpoints_dir}:")
    if not snapshot.checkpoints:
        print("  (none)")
    for info in snapshot.checkpoints:
        vae = "  +vae" if info.vae_path else ""
        print(f"  {info.name:<32} [{info.short_hash}] {info.format:<11} {info.architecture}{vae}")
    for skipped in snapshot.skipped:
        print(f"  skipped {Path(skipped.path).name}: {skipped.reason}")
    print(f"embeddings in {registry.embeddings_dir}:")
    if not snapshot.embeddings:
        print("  (none)")
    for embedding in snapshot.embeddings:
        status = f"skipped: {embedding.skip_reason}" if embedding.skip_reason else "ok"
        print(f"  {embedding.trigger:<32} [{embedding.ti_hash}] {embedding.vectors} x {embedding.width}  {status}")


def request_from_args(config: Config, args, *, architecture: str = "") -> "GenerationRequest":
    """The request the arguments ask for; a size left out is the checkpoint `architecture`'s default."""
    from generation.requests import GenerationRequest, default_size

    d = config.defaults
    width, height = default_size(d, config.limits, architecture)
    mode = "inpaint" if args.mask else ("img2img" if args.init else "txt2img")
    return GenerationRequest(
        prompt=args.prompt,
        negative_prompt=d.negative_prompt if args.negative is None else args.negative,
        mode=mode, checkpoint=args.checkpoint or "",
        sampler=args.sampler or d.sampler, schedule=args.schedule or (d.schedule if not args.sampler else "Automatic"),
        steps=d.steps if args.steps is None else args.steps,
        cfg_scale=d.cfg_scale if args.cfg is None else args.cfg,
        width=width if args.width is None else args.width, height=height if args.height is None else args.height,
        seed=args.seed, count=d.count if args.count is None else args.count,
        init_image=str(args.init) if args.init else None, mask=str(args.mask) if args.mask else None,
        strength=d.strength if args.strength is None else args.strength,
        clip_skip=d.clip_skip if args.clip_skip is None else args.clip_skip,
    )


def output_paths(out: Path, count: int, seeds: list[int]) -> list[Path]:
    if out.suffix.lower() == ".png":
        if count == 1:
            return [out]
        return [out.with_name(f"{out.stem}-{seed}.png") for seed in seeds]
    return [out / f"{seed}.png" for seed in seeds]


def generate(config: Config, args, *, progress: Callable[[int, int], None]) -> int:
    """Through the same store and queue as the bot (its own jobs only), then copied to --out."""
    return asyncio.run(_generate(config, args, progress))


async def _generate(config: Config, args, progress) -> int:
    from generation.engine import Engine
    from generation.executor import LocalExecutor
    from generation.service import GenerationService

    async with _store_and_models(config) as (store, registry):
        checkpoint = args.checkpoint
        if checkpoint and Path(checkpoint).exists():
            from generation.checkpoints import checkpoint_from_path

            checkpoint = registry.add_external(
                checkpoint_from_path(Path(checkpoint), allow_pickle=config.models.allow_pickle_checkpoints))
        architecture = registry.resolve(checkpoint or "").architecture
        request = dataclasses.replace(request_from_args(config, args, architecture=architecture), checkpoint=checkpoint)
        engine = Engine(config=config, registry=registry)
        executor = LocalExecutor(engine, job_timeout_s=config.queue.job_timeout_s)
        service = GenerationService(config=config, store=store, engine=engine, executor=executor,
                                    frontend_only="cli")
        try:
            return await _run_job(service, request, args.out, progress)
        finally:
            await service.stop()
            executor.shutdown()


async def _run_job(service, request, out: Path, progress) -> int:
    import shutil

    from generation.service import JobCanceled, JobFailed, JobFinished, JobProgress, ReplyTarget

    await service.start()
    record = await service.submit(request, owner_id=0, target=ReplyTarget(frontend="cli"))
    async for event in service.subscribe(record.id):
        if isinstance(event, JobProgress):
            progress(event.step, event.total)
        elif isinstance(event, (JobFailed, JobCanceled)):
            raise EaselError(event.reason)
        elif isinstance(event, JobFinished):
            paths = output_paths(out, len(event.images), [image.seed for image in event.images])
            for image, path in zip(event.images, paths):
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(image.path, path)
                print(path)
    return 0


def run_bot(config: Config) -> int:
    from bot.app import run

    return run(config)
