"""`easel generate` as a whole process against a raw diffusers script doing the same work: load
the tiny model, generate the same four images, write them as PNGs. Both are timed from process
start to exit, interleaved, medians compared. Goal: easel <= 1.03x the raw script.

    python bench/cli_startup.py [--runs 5] [--size 256] [--steps 20]
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

from bench._common import REPO_ROOT, cpu_note, median, prepare_environment, print_table, tiny_models, verdict  # noqa: E402

GOAL = 1.03
PROMPT = "a red cat sitting on a windowsill, oil painting"
RAW = r"""
import sys, torch
from pathlib import Path
from diffusers import StableDiffusionPipeline, EulerDiscreteScheduler
folder, out, size, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
pipe.set_progress_bar_config(disable=True)
pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
images = pipe(sys.argv[5], num_inference_steps=steps, width=size, height=size, num_images_per_prompt=4,
              generator=[torch.Generator().manual_seed(s) for s in range(4)]).images
out.mkdir(parents=True, exist_ok=True)
for index, image in enumerate(images):
    image.save(out / f"{index}.png")
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    prepare_environment()
    machine = cpu_note()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    # As on a user's machine, the warm-up run leaves bytecode caches behind. With PYTHONDONTWRITEBYTECODE
    # (set on some CI hosts) only installed packages have theirs, and easel's own modules would be compiled
    # again on every start, a cost the raw script, all site-packages, never pays.
    bytecode_note = "bytecode cached" if env.pop("PYTHONDONTWRITEBYTECODE", None) is None else \
        "PYTHONDONTWRITEBYTECODE unset for both, so the warm-up run caches bytecode as a user's machine does"
    with tiny_models() as models:
        data = models.data_dir("data")
        env.update(EASEL_MODELS_DIR=str(models.root), EASEL_DATA_DIR=str(data), EASEL_DEVICE="cpu",
                   EASEL_CONFIG=str(models.scratch / "none.toml"))
        commands = {
            "raw diffusers script": [sys.executable, "-c", RAW, str(models.root / "checkpoints" / "tiny"),
                                     str(models.scratch / "raw"), str(args.size), str(args.steps), PROMPT],
            "easel generate": [sys.executable, "-m", "cli.main", "generate", PROMPT, "--checkpoint", "tiny",
                               "--sampler", "Euler", "--width", str(args.size), "--height", str(args.size),
                               "--steps", str(args.steps), "--count", "4", "--seed", "0",
                               "--out", str(models.scratch / "easel")],
        }
        times: dict[str, list[float]] = {label: [] for label in commands}
        for label, command in commands.items():  # warm the file cache; the database is made here
            subprocess.run(command, cwd=REPO_ROOT, env=env, check=True, capture_output=True)
        for _ in range(args.runs):
            for label, command in commands.items():
                started = time.perf_counter()
                subprocess.run(command, cwd=REPO_ROOT, env=env, check=True, capture_output=True)
                times[label].append(time.perf_counter() - started)
    raw = median(times["raw diffusers script"])
    rows = [[label, f"{median(values):.2f}", f"{median(values) / raw:.3f}"] for label, values in times.items()]
    print(f"Whole process, four {args.size}px images, {args.steps} steps, tiny SD 1.x; {args.runs} runs each, "
          f"interleaved ({machine}; {bytecode_note})")
    print_table(["command", "median s", "ratio to raw"], rows)
    ratio = median(times["easel generate"]) / raw
    print(f"goal easel generate <= {GOAL}x the raw script: {verdict(ratio <= GOAL)} ({ratio:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
