"""GPU speed: an SD 1.5-architecture pipeline (UNet, VAE, text encoder with random weights, built
offline from the shipped configs: the same shapes and FLOPs as the real model) at 512 px, 30 steps,
batch 1 and 4, in float16: raw diffusers beside easel's engine, torch.compile off and on, reporting
s/image, it/s and peak GPU memory, with public figures for reference.

    python bench/gpu.py                       # on a CUDA machine: the full table
    python bench/gpu.py --smoke               # any machine: the tiny model, 64 px, 2 steps (make test runs it)

Public anchors (other hardware and setups; for orientation, not comparison):
- diffusers' own optimization table, A100, SD 1.5, 30 steps, bf16 + SDPA: 1.18 s; + torch.compile: 0.50 s
- fal.ai's benchmark, A100, SD 1.5, 50 steps, SDPA: 1.60 s; compiled: 1.06 s

Random weights can overflow in float16; the table counts the VAE decodes easel redid in float32
(its NaN fallback), so a slower easel row there is explained rather than hidden.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench._common import cpu_note, median, prepare_environment, print_table  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse, highly detailed"
ANCHORS = [("diffusers docs, A100, 30 steps, bf16 + SDPA", "1.18 s"),
           ("diffusers docs, A100, 30 steps, + torch.compile", "0.50 s"),
           ("fal.ai, A100, 50 steps, SDPA", "1.60 s"),
           ("fal.ai, A100, 50 steps, compiled", "1.06 s")]


class _NanCounter(logging.Handler):
    def __init__(self):
        super().__init__()
        self.count = 0

    def emit(self, record):
        if "NaN" in record.getMessage():
            self.count += 1


def build_model(folder: Path, architecture: str, dtype) -> None:
    """Random weights with the architecture's shipped configs, saved as a diffusers folder."""
    import torch

    from generation.architectures import build_components, pipeline_class

    def random_model(name, model_class):
        import transformers

        if issubclass(model_class, transformers.PreTrainedModel):
            from generation.architectures import config_dir

            model = model_class(model_class.config_class.from_pretrained(config_dir(architecture), subfolder=name))
        else:
            from generation.architectures import config_dir

            model = model_class.from_config(model_class.load_config(config_dir(architecture), subfolder=name))
        return model.eval()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipe = pipeline_class(architecture)(**build_components(architecture, random_model))
    pipe.to(dtype=dtype).save_pretrained(folder, safe_serialization=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, 64 px, 2 steps, on whatever device")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,4)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per row (default 3; smoke 1)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument("--dtype", default=None, help="float16 (default on a GPU), bfloat16 or float32")
    args = parser.parse_args(argv)
    prepare_environment()

    import torch
    from diffusers import StableDiffusionPipeline

    from generation.config import config_from_mapping
    from generation.engine import Engine
    from generation.registry import ModelRegistry
    from generation.requests import GenerationRequest

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    smoke = args.smoke
    architecture = "tiny-sd1" if smoke else "sd1"
    steps = args.steps or (2 if smoke else 30)
    size = args.size or (64 if smoke else 512)
    batches = [int(b) for b in (args.batches or ("1,2" if smoke else "1,4")).split(",")]
    runs = args.runs or (1 if smoke else 3)
    dtype_name = args.dtype or ("float16" if cuda else "float32")
    dtype = getattr(torch, dtype_name)
    compile_modes = [False] if (args.no_compile or smoke or not cuda) else [False, True]
    if not cuda and not smoke:
        print("no CUDA device: running the full-size model on the CPU will take very long; use --smoke",
              file=sys.stderr)
    nan = _NanCounter()
    logging.getLogger("generation").addHandler(nan)

    def peak_mib() -> str:
        return f"{torch.cuda.max_memory_allocated() / 2**20:.0f}" if cuda else "n/a"

    def reset_peak() -> None:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    rows = []
    with tempfile.TemporaryDirectory(prefix="easel-gpu-bench-") as tmp:
        models = Path(tmp) / "models"
        folder = models / "checkpoints" / "bench"
        build_model(folder, architecture, dtype)
        (models / "embeddings").mkdir(parents=True)
        for compiled in compile_modes:
            # raw diffusers: the pipeline as its docs show it, SDPA by default
            raw = StableDiffusionPipeline.from_pretrained(folder, dtype=dtype, safety_checker=None).to(device)
            raw.set_progress_bar_config(disable=True)
            if compiled:
                raw.unet.to(memory_format=torch.channels_last)
                raw.unet = torch.compile(raw.unet, mode="max-autotune", fullgraph=True)
            config = config_from_mapping({
                "paths": {"models_dir": str(models), "data_dir": str(Path(tmp) / f"data-{compiled}")},
                "device": {"device": device, **({"compile": compiled, "compile_sizes": [f"{size}x{size}"]}
                                                if compiled else {})},
                "models": {"default_checkpoint": "bench"},
                "limits": {"max_steps": max(60, steps), "max_count": max(batches)},
            }, env={})
            registry = ModelRegistry.from_config(config)
            registry.refresh()
            engine = Engine(config=config, registry=registry)
            for batch in batches:
                def run_raw():
                    raw(PROMPT, num_inference_steps=steps, height=size, width=size, num_images_per_prompt=batch,
                        guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(1))

                request = GenerationRequest(prompt=PROMPT, sampler="Euler", steps=steps, width=size, height=size,
                                            count=batch, seed=1, cfg_scale=7.0)

                def run_easel():
                    engine.generate(request)

                for label, job in (("raw diffusers", run_raw), ("easel", run_easel)):
                    job()  # warm-up (and compilation)
                    before = nan.count
                    times = []
                    reset_peak()
                    for _ in range(runs):
                        sync()
                        started = time.perf_counter()
                        job()
                        sync()
                        times.append(time.perf_counter() - started)
                    seconds = median(times)
                    rows.append([label + (" + compile" if compiled else ""), batch, f"{seconds / batch:.3f}",
                                 f"{steps * 1 / seconds:.2f}", peak_mib(), nan.count - before if label == "easel" else ""])
            del raw, engine
            if cuda:
                torch.cuda.empty_cache()

    name = torch.cuda.get_device_name() if cuda else cpu_note()
    print(f"GPU speed: {'tiny SD 1.x (smoke)' if smoke else 'SD 1.5 architecture, random weights'}, {size}x{size}, "
          f"{steps} steps, {dtype_name}, {runs} run(s) each, on {name}")
    print_table(["pipeline", "batch", "s/image", "it/s", "peak MiB", "fp32 VAE redos"], rows)
    print("public anchors (other setups, for orientation):")
    for label, figure in ANCHORS:
        print(f"  {label}: {figure} per image")
    by_label = {(row[0], row[1]): float(row[2]) for row in rows}
    for batch in batches:
        for suffix in ("", " + compile"):
            raw_s, easel_s = by_label.get(("raw diffusers" + suffix, batch)), by_label.get(("easel" + suffix, batch))
            if raw_s and easel_s:
                print(f"easel / raw diffusers{suffix}, batch {batch}: {easel_s / raw_s:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
