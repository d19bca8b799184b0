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
    print(f"wrote {paths.folder} (diffusers folder) and {paths.single_file} (single file), {architecture}")
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


def doctor(config_path: Path | None) -> int:
    from generation.doctor import run_doctor

    return run_doctor(config_path)


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
    loras_dir = getattr(registry, "loras_dir", None)
    if loras_dir is None:
        return
    print(f"loras in {loras_dir}:")
    if not snapshot.loras:
        print("  (none)")
    for lora in snapshot.loras:
        if lora.skip_reason:
            print(f"  {lora.name:<32} skipped {lora.path.name}: {lora.skip_reason}")
            continue
        alias = f"  alias {lora.alias}" if lora.alias else ""
        family = f"{lora.family} ({lora.width})" if lora.width else lora.family
        print(f"  {lora.name:<32} [{lora.short_hash}] {lora.format:<11} {family}{alias}")


def _size_arg(value: str | None, flag: str) -> tuple[int | None, int | None]:
    if not value:
        return None, None
    try:
        width, height = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise EaselError(f"{flag} must be WIDTHxHEIGHT, not {value!r}") from None
    return width, height


def ask_from_args(args) -> "Ask":
    """What the arguments ask for; options left out are resolved like a member's (config, then the
    checkpoint's own size)."""
    from generation.submission import Ask
    from generation.uploads import FileImage

    if args.command == "upscale":
        return Ask(prompt="", mode="upscale", init_image=FileImage(args.image), upscaler=args.upscaler,
                   upscale_by=args.scale)
    resize_w, resize_h = _size_arg(getattr(args, "seed_resize_from", None), "--seed-resize-from")
    hr_x, hr_y = _size_arg(getattr(args, "hr_resize", None), "--hr-resize")
    hires = [args.hr_scale, args.hr_resize, args.hr_upscaler, args.hr_steps, args.hr_sampler, args.hr_prompt,
             args.hr_negative]

    mode = "inpaint" if args.mask or args.inpaint else ("img2img" if args.init else "txt2img")
    return Ask(prompt=args.prompt, mode=mode, negative_prompt=args.negative, checkpoint=args.checkpoint or None,
               sampler=args.sampler, schedule=args.schedule or ("Automatic" if args.sampler else None),
               steps=args.steps, cfg_scale=args.cfg, width=args.width, height=args.height,
               seed=None if args.seed == -1 else args.seed, count=args.count, strength=args.strength,
               clip_skip=args.clip_skip, init_image=FileImage(args.init) if args.init else None,
               mask=FileImage(args.mask) if args.mask else None, mask_blur=args.mask_blur,
               mask_invert=args.invert_mask or None, masked_content=args.masked_content,
               only_masked=args.only_masked or None, only_masked_padding=args.padding,
               subseed=getattr(args, "subseed", None), subseed_strength=getattr(args, "subseed_strength", None),
               seed_resize_from_w=resize_w, seed_resize_from_h=resize_h,
               enable_hr=True if any(value is not None for value in hires) else None, hr_scale=args.hr_scale,
               hr_resize_x=hr_x, hr_resize_y=hr_y, hr_upscaler=args.hr_upscaler, hr_second_pass_steps=args.hr_steps,
               hr_sampler=args.hr_sampler, hr_prompt=args.hr_prompt, hr_negative_prompt=args.hr_negative)


def output_paths(out: Path, count: int, seeds: list[int]) -> list[Path]:
    if out.suffix.lower() == ".png":
        if count == 1:
            return [out]
        names = _distinct_names(seeds)
        return [out.with_name(f"{out.stem}-{name}.png") for name in names]
    return [out / f"{name}.png" for name in _distinct_names(seeds)]


def _distinct_names(seeds: list[int]) -> list[str]:
    """The seeds as file names; with a variation seed every image has the same seed: then seed-index."""
    if len(set(seeds)) == len(seeds):
        return [str(seed) for seed in seeds]
    return [f"{seed}-{index}" for index, seed in enumerate(seeds)]


def generate(config: Config, args, *, progress: Callable[[int, int], None]) -> int:
    """Through the same store and queue as the bot (its own jobs only), then copied to --out."""
    return asyncio.run(_generate(config, args, progress))


async def _generate(config: Config, args, progress) -> int:
    from generation.engine import Engine
    from generation.executor import LocalExecutor
    from generation.service import GenerationService, cli_runner_id
    from generation.submission import Requester, Submissions
    from generation.uploads import UploadStore

    # Nothing here shows a preview, and on a CPU making them slows the sampling thread down.
    config = dataclasses.replace(config, previews=dataclasses.replace(config.previews, enabled=False))
    async with _store_and_models(config) as (store, registry):
        checkpoint = getattr(args, "checkpoint", "")  # `easel upscale` names none
        if checkpoint and Path(checkpoint).exists():
            from generation.checkpoints import checkpoint_from_path

            args.checkpoint = registry.add_external(
                checkpoint_from_path(Path(checkpoint), allow_pickle=config.models.allow_pickle_checkpoints))
        engine = Engine(config=config, registry=registry)
        executor = LocalExecutor(engine, job_timeout_s=config.queue.job_timeout_s)
        # Its own runner id: a bot beside it never takes this process's job, nor another CLI's.
        service = GenerationService(config=config, store=store, engine=engine, executor=executor,
                                    runner=cli_runner_id())
        submissions = Submissions(config=config, store=store, registry=registry, engine=engine, service=service,
                                  uploads=UploadStore(config=config, store=store))
        try:
            await service.start()
            record = await submissions.submit(ask_from_args(args), Requester(user_id=0, operator=True))
            # Never forever: the job's own time limit, plus room for loading and saving.
            limit = config.queue.job_timeout_s * 2 + 60
            try:
                return await asyncio.wait_for(_follow(service.subscribe(record.id), args.out, progress), limit)
            except TimeoutError:
                raise EaselError(f"no result after {limit:.0f} s; the job was left as it is") from None
        finally:
            submissions.close()
            await service.stop()
            executor.shutdown()


async def _follow(events, out: Path, progress) -> int:
    import shutil

    from generation.service import JobCanceled, JobFailed, JobFinished, JobProgress

    async for event in events:
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


def worker(config: Config, *, device: str | None, name: str | None) -> int:
    import logging

    from generation import worker as worker_module

    if device:
        config = dataclasses.replace(config, device=dataclasses.replace(config.device, device=device.lower()))
    logging.getLogger().setLevel(logging.WARNING)
    return worker_module.serve(config, name=name or worker_module.default_name())


def run_bot(config: Config) -> int:
    from bot.app import run

    return run(config)
