"""Hires fix and upscaling cost: a plain job, the same job with a 2x Latent hires fix (easel beside
the same two passes written with raw diffusers pipelines), and a 4x upscale of its result; then
the peak memory of upscaling to a large picture with A1111's tiling and without.

All on the tiny offline model and a Real-ESRGAN Compact upscaler built offline (random weights,
the architecture of realesr-general-x4v3: 64 features, 16 convolutions), runs interleaved after a
warm-up, medians compared. Memory is each upscale's peak resident growth in a fresh process.

    python bench/hires.py [--runs 5] [--size 512] [--steps 20] [--memory-size 2048]
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402

from bench._common import (REPO_ROOT, cpu_note, make_config, make_registry, median, prepare_environment,  # noqa: E402
                           print_table, tiny_models, timed, verdict)

OVERHEAD_GOAL = 1.05  # easel's hires fix against the same two raw diffusers calls
PROMPT = "a red cat sitting on a windowsill, oil painting"

# Run in a fresh interpreter per measurement: peak RSS (VmHWM) only grows within a process.
MEMORY_PROBE = r"""
import json, sys, torch
from pathlib import Path
from PIL import Image
from generation.upscalers import load_upscaler_model, upscale_with_model
def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
path, size, tile = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]) or torch.get_num_threads())
model = load_upscaler_model(path, allow_pickle=False)
image = Image.effect_noise((size, size), 64).convert("RGB")
before = peak_kib()
out = upscale_with_model(model, image, tile=tile, overlap=8)
print(json.dumps({"growth_mib": (peak_kib() - before) / 1024, "size": list(out.size)}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each job (default 5)")
    parser.add_argument("--size", type=int, default=512, help="first-pass width and height (default 512)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps of each pass (default 20)")
    parser.add_argument("--memory-size", type=int, default=2048,
                        help="side of the picture whose 4x upscale's memory is measured (default 2048)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)

    prepare_environment(threads=args.threads)
    machine = cpu_note()
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    from generation.engine import Engine
    from generation.hires import img2img_strength, second_pass_schedule
    from generation.requests import GenerationRequest
    from generation.samplers import make_scheduler, resolve_sampler
    from generation.upscaler_testing import write_test_upscaler

    with tiny_models() as models:
        upscaler = models.root / "upscalers" / "4x-compact.safetensors"
        write_test_upscaler(upscaler, "compact", num_feat=64, num_conv=16)
        config = make_config(models, models.data_dir("data"))
        engine = Engine(config=config, registry=make_registry(config))
        common = dict(prompt=PROMPT, sampler="Euler", steps=args.steps, width=args.size, height=args.size, seed=1234)
        plain = GenerationRequest(**common)
        hires = GenerationRequest(**common, enable_hr=True, hr_scale=2.0, hr_upscaler="Latent", strength=0.5)
        [first] = engine.generate(plain)
        upscale = GenerationRequest(prompt="", mode="upscale", init_image=str(models.scratch / "first.png"),
                                    width=args.size, height=args.size, upscaler="4x-compact", upscale_by=4.0, seed=1)
        first.image.save(upscale.init_image)

        loaded = engine.cache.get(engine.registry.resolve(""))
        choice = resolve_sampler("Euler", "Automatic")
        text2image = StableDiffusionPipeline(**loaded.base.components)
        image2image = StableDiffusionImg2ImgPipeline(**loaded.base.components)
        for pipe in (text2image, image2image):
            pipe.set_progress_bar_config(disable=True)
        total, _ = second_pass_schedule(args.steps, 0.5)

        def raw_hires():
            """The same two passes as plain diffusers calls: latents out, interpolate, img2img of the last N."""
            text2image.scheduler = make_scheduler(choice, loaded.scheduler_config, steps=args.steps)
            latents = text2image(PROMPT, num_inference_steps=args.steps, width=args.size, height=args.size,
                                 generator=torch.Generator().manual_seed(1234), output_type="latent").images
            latents = torch.nn.functional.interpolate(latents, scale_factor=2, mode="bilinear")
            image2image.scheduler = make_scheduler(choice, loaded.scheduler_config, steps=total)
            return image2image(PROMPT, image=latents, strength=img2img_strength(total, args.steps),
                               num_inference_steps=total, generator=torch.Generator().manual_seed(1234)).images

        jobs = {"plain job": lambda: engine.generate(plain),
                "+ 2x Latent hires fix": lambda: engine.generate(hires),
                "raw diffusers, same two passes": raw_hires,
                "4x upscale of the plain image": lambda: engine.generate(upscale)}
        times: dict[str, list[float]] = {label: [] for label in jobs}
        for job in jobs.values():
            job()  # warm
        for _ in range(args.runs):
            for label, job in jobs.items():
                seconds, _ = timed(job)
                times[label].append(seconds)

        memory = {}
        for tile in (192, 0):
            probe = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(upscaler), str(args.memory_size),
                                    str(tile), str(args.threads)],
                                   capture_output=True, text=True, cwd=REPO_ROOT, timeout=3600)
            if probe.returncode != 0:
                memory[tile] = {"error": probe.stderr.strip().splitlines()[-1:]}
            else:
                memory[tile] = json.loads(probe.stdout.strip().splitlines()[-1])

    base = median(times["plain job"])
    rows = [[label, f"{median(values) * 1000:.0f}", f"{median(values) / base:.2f}"] for label, values in times.items()]
    print(f"Hires fix and upscale: tiny SD 1.x, {args.size}x{args.size}, Euler, {args.steps} steps per pass, "
          f"hires denoise 0.5; {args.runs} runs each, interleaved ({machine})")
    print_table(["job", "median ms", "ratio to the plain job"], rows)
    overhead = median(times["+ 2x Latent hires fix"]) / median(times["raw diffusers, same two passes"])
    print(f"easel's hires fix / raw diffusers' two passes: {overhead:.3f} "
          f"(goal <= {OVERHEAD_GOAL}: {verdict(overhead <= OVERHEAD_GOAL)})")
    side = args.memory_size
    print(f"4x upscale of a {side}x{side} picture (result {side * 4}x{side * 4}), Compact 64x16, peak memory growth:")
    rows = []
    for tile, result in memory.items():
        label = f"tiles of {tile} px, overlap 8 (A1111's default)" if tile else "untiled"
        rows.append([label, "failed: " + " ".join(result["error"]) if "error" in result
                     else f"{result['growth_mib']:.0f} MiB"])
    print_table(["upscale", "peak growth"], rows)
    if all("error" not in result for result in memory.values()):
        tiled, untiled = memory[192]["growth_mib"], memory[0]["growth_mib"]
        output_mib = (side * 4) ** 2 * 3 / 2 ** 20
        print(f"tiled / untiled memory: {tiled / untiled:.3f}; the result picture alone is {output_mib:.0f} MiB, "
              f"so tiling keeps the peak near the picture itself ({tiled / output_mib:.2f}x it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
