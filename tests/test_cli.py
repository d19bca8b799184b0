"""The `easel` command as a user runs it: subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from generation.infotext import read_infotext

ROOT = Path(__file__).resolve().parents[1]


def easel(*args, env_extra=None, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or ROOT, timeout=300)


def test_generate_models_and_info(tmp_path, models_dir):
    env = {"EASEL_MODELS_DIR": str(models_dir), "EASEL_DATA_DIR": str(tmp_path / "data"), "EASEL_DEVICE": "cpu",
           "EASEL_CONFIG": str(tmp_path / "none.toml")}
    out = tmp_path / "out"
    result = easel("generate", "a (red:1.2) cat", "--checkpoint", "tiny", "--width", "64", "--height", "64",
                   "--steps", "3", "--seed", "11", "--count", "2", "--sampler", "DPM++ 2M Karras", "--out", str(out),
                   env_extra=env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["11.png", "12.png"]
    text = read_infotext((out / "11.png").read_bytes())
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in text and "Seed: 11" in text
    assert "3/3" in result.stderr  # the progress bar

    single = easel("generate", "a cat", "--checkpoint", str(models_dir / "checkpoints" / "tiny.safetensors"),
                   "--width", "64", "--height", "64", "--steps", "2", "--out", str(tmp_path / "one.png"), env_extra=env)
    assert single.returncode == 0, single.stderr
    assert (tmp_path / "one.png").exists()

    info = easel("info", str(out / "12.png"), env_extra=env)
    assert info.returncode == 0 and "Seed: 12" in info.stdout

    models = easel("models", env_extra=env)
    assert models.returncode == 0
    assert "tiny.safetensors" in models.stdout and "widewidth" in models.stdout and "width 768" in models.stdout


def test_errors_are_one_readable_line(tmp_path, models_dir):
    env = {"EASEL_MODELS_DIR": str(models_dir), "EASEL_DATA_DIR": str(tmp_path / "data"),
           "EASEL_CONFIG": str(tmp_path / "none.toml")}
    bad = easel("generate", "a cat", "--width", "63", "--steps", "0", env_extra=env)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "easel: steps must be a whole number from 1 to 60; width must be a multiple of 8"]
    missing = easel("generate", "a cat", "--checkpoint", "nope", env_extra=env)
    assert missing.returncode == 2 and "unknown checkpoint 'nope'" in missing.stderr and "Traceback" not in missing.stderr
    config = tmp_path / "bad.toml"
    config.write_text("[limits]\nmax_stepz = 3\n")
    wrong = easel("--config", str(config), "models", env_extra=env)
    assert wrong.returncode == 2 and "unknown key [limits] max_stepz" in wrong.stderr
    no_token = easel("run", env_extra={**env, "DISCORD_TOKEN": ""})
    assert no_token.returncode == 2 and "set DISCORD_TOKEN" in no_token.stderr


def test_make_test_model_writes_both_forms(tmp_path):
    result = easel("make-test-model", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "demo" / "model_index.json").exists() and (tmp_path / "demo.safetensors").exists()
    result = easel("make-test-model", "--sdxl", str(tmp_path / "xl"))
    assert result.returncode == 0, result.stderr
    assert "StableDiffusionXLPipeline" in (tmp_path / "xl" / "model_index.json").read_text()
    assert (tmp_path / "xl.safetensors").exists()


async def test_a_bot_starting_beside_easel_generate_leaves_its_job_alone(tmp_path, models_dir, registry):
    """The attack from the issue: a bot restart used to requeue a running CLI job, and the CLI hung."""
    import asyncio
    import sqlite3
    import time

    from conftest import make_config
    from generation.engine import Engine
    from generation.executor import LocalExecutor
    from generation.service import GenerationService
    from storage import open_store

    data = tmp_path / "data"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EASEL_MODELS_DIR": str(models_dir), "EASEL_DATA_DIR": str(data),
           "EASEL_DEVICE": "cpu", "EASEL_CONFIG": str(tmp_path / "none.toml")}
    cli = subprocess.Popen([sys.executable, "-m", "cli.main", "generate", "a cat", "--checkpoint", "tiny",
                            "--width", "512", "--height", "512", "--steps", "60", "--seed", "3",
                            "--out", str(tmp_path / "cat.png")], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        row = None
        while row is None or row[0] != "running":
            assert time.monotonic() < deadline and cli.poll() is None, cli.stderr.read() if cli.poll() else "slow"
            await asyncio.sleep(0.05)
            try:
                with sqlite3.connect(f"file:{data / 'easel.db'}?mode=ro", uri=True) as db:
                    row = db.execute("SELECT status, runner, id FROM jobs").fetchone()
            except sqlite3.Error:
                row = None  # not created or migrated yet
        status, runner, job_id = row
        assert runner.startswith("cli:")

        config = make_config(models_dir, data)
        store = await open_store(data / "easel.db")
        engine = Engine(config=config, registry=registry)
        executor = LocalExecutor(engine)
        bot = GenerationService(config=config, store=store, engine=engine, executor=executor)
        try:
            await bot.start()  # what a restarting bot does
            assert bot.queued_jobs() == []
            assert (await store.jobs.get(job_id)).status == "running"  # still the CLI's, not requeued
            stdout, stderr = await asyncio.to_thread(cli.communicate, timeout=240)
            assert cli.returncode == 0, stderr
            assert (tmp_path / "cat.png").exists()
            job = await store.jobs.get(job_id)
            assert job.status == "done" and job.attempts == 0
        finally:
            await bot.stop()
            executor.shutdown()
            await store.close()
    finally:
        if cli.poll() is None:
            cli.kill()


def test_generate_inpaints_the_transparent_part_with_a1111_options(tmp_path, models_dir):
    from PIL import Image

    env = {"EASEL_MODELS_DIR": str(models_dir), "EASEL_DATA_DIR": str(tmp_path / "data"), "EASEL_DEVICE": "cpu",
           "EASEL_CONFIG": str(tmp_path / "none.toml")}
    picture = Image.new("RGBA", (64, 64), (30, 120, 200, 255))
    picture.paste((0, 0, 0, 0), (40, 40, 56, 56))  # an erased square
    picture.save(tmp_path / "erased.png")
    result = easel("generate", "a red ball", "--init", str(tmp_path / "erased.png"), "--inpaint", "--only-masked",
                   "--padding", "8", "--mask-blur", "2", "--masked-content", "fill", "--steps", "2", "--seed", "4",
                   "--out", str(tmp_path / "ball.png"), env_extra=env)
    assert result.returncode == 0, result.stderr
    text = read_infotext((tmp_path / "ball.png").read_bytes())
    assert "Mask blur: 2" in text and "Inpaint area: Only masked, Masked area padding: 8" in text
    assert "Masked content: fill" in text
    kept = Image.open(tmp_path / "ball.png").convert("RGB")
    assert kept.getpixel((5, 5)) == (30, 120, 200)  # outside the mask: the source, exactly


def test_generate_with_a_variation_seed(tmp_path, models_dir):
    env = {"EASEL_MODELS_DIR": str(models_dir), "EASEL_DATA_DIR": str(tmp_path / "data"), "EASEL_DEVICE": "cpu",
           "EASEL_CONFIG": str(tmp_path / "none.toml")}
    result = easel("generate", "a cat", "--width", "64", "--height", "64", "--steps", "2", "--seed", "3",
                   "--count", "2", "--subseed", "7", "--subseed-strength", "0.5", "--seed-resize-from", "128x128",
                   "--out", str(tmp_path / "out"), env_extra=env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["3-0.png", "3-1.png"]  # one seed, two images
    texts = [read_infotext((tmp_path / "out" / name).read_bytes()) for name in ("3-0.png", "3-1.png")]
    assert "Seed: 3, Size: 64x64" in texts[1] and "Variation seed: 8, Variation seed strength: 0.5" in texts[1]
    assert "Seed resize from: 128x128" in texts[0]
    bad = easel("generate", "a cat", "--seed-resize-from", "huge", env_extra=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_hires_generate_then_upscale(tmp_path, models_dir):
    """`easel generate --hr-*` writes A1111's hires keys; `easel upscale` keeps the source's parameters
    and adds A1111's postprocessing keys, through the same queue."""
    from PIL import Image

    from generation.upscaler_testing import write_test_upscaler

    models = tmp_path / "models"
    models.mkdir()
    for folder in ("checkpoints", "embeddings"):
        (models / folder).symlink_to(models_dir / folder)
    write_test_upscaler(models / "upscalers" / "4x-tiny.safetensors", "compact")
    env = {"EASEL_MODELS_DIR": str(models), "EASEL_DATA_DIR": str(tmp_path / "data"), "EASEL_DEVICE": "cpu",
           "EASEL_CONFIG": str(tmp_path / "none.toml")}
    first = tmp_path / "hires.png"
    result = easel("generate", "a cat", "--checkpoint", "tiny", "--width", "64", "--height", "64", "--steps", "3",
                   "--seed", "5", "--hr-scale", "1.5", "--hr-steps", "2", "--strength", "0.5", "--hr-upscaler",
                   "4x-tiny", "--out", str(first), env_extra=env)
    assert result.returncode == 0, result.stderr
    assert Image.open(first).size == (96, 96)
    text = read_infotext(first.read_bytes())
    assert "Size: 64x64" in text and "Denoising strength: 0.5, Hires upscale: 1.5, Hires steps: 2, " \
                                      "Hires upscaler: 4x-tiny" in text
    assert "5/5" in result.stderr  # both passes on one progress bar

    upscaled = tmp_path / "big.png"
    result = easel("upscale", str(first), "--upscaler", "4x-tiny", "--scale", "2.5", "--out", str(upscaled),
                   env_extra=env)
    assert result.returncode == 0, result.stderr
    image = Image.open(upscaled)
    assert image.size == (240, 240)  # int(96 * 2.5) // 8 * 8
    assert image.text["parameters"] == text
    assert image.text["postprocessing"] == image.text["extras"] == \
        "Postprocess upscale by: 2.5, Postprocess upscaler: 4x-tiny"

    too_big = easel("upscale", str(first), "--upscaler", "Lanczos", "--scale", "9", env_extra=env)
    assert too_big.returncode == 2 and "the upscale factor must be from 1 to 4" in too_big.stderr
    unknown = easel("upscale", str(first), "--upscaler", "4x-tiny-nope", env_extra=env)
    assert unknown.returncode == 2 and "unknown upscaler '4x-tiny-nope'; did you mean 4x-tiny?" in unknown.stderr
