"""LoRA cost: a plain job, the same job with one LoRA and with three, and the time to switch LoRA sets.

All on the tiny offline model, one engine, runs interleaved after a warmup; medians compared. Each
LoRA covers every Linear and Conv2d of the text encoder and UNet (rank 4), so a merge touches every
layer a real LoRA can touch. Goals: a job with a merged LoRA set costs <= 1.02x a plain one (the
merged weights are plain weights), and switching sets costs less than one 20-step job.

    python bench/lora.py [--runs 9] [--size 256] [--steps 20] [--architecture tiny-sdxl]
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402

from bench._common import (cpu_note, make_config, make_registry, median, prepare_environment, print_table,  # noqa: E402
                           tiny_models, timed, verdict)

STEP_GOAL = 1.02
PROMPT = "a red cat sitting on a windowsill, oil painting"
SETS = {"plain": "", "one LoRA": " <lora:a:0.8>", "three LoRAs": " <lora:a:0.8> <lora:b:0.5> <lyco:c:0.6:0.3>"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs of each job (default 9)")
    parser.add_argument("--size", type=int, default=256, help="width and height in pixels (default 256)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--architecture", choices=("tiny-sd1", "tiny-sdxl"), default="tiny-sd1")
    parser.add_argument("--flush-denormal", action="store_true",
                        help="flush denormal floats to zero on the CPU, for both sides (tells value-dependent CPU "
                             "costs of the random tiny weights from LoRA costs)")
    args = parser.parse_args(argv)

    prepare_environment(threads=args.threads)
    if args.flush_denormal:
        import torch

        torch.set_flush_denormal(True)
    machine = cpu_note()
    from generation.engine import Engine
    from generation.lora_testing import write_tiny_lora
    from generation.requests import GenerationRequest
    from generation.testing import build_tiny_pipeline

    with tiny_models(args.architecture) as models:
        pipe = build_tiny_pipeline(architecture=args.architecture)
        (models.root / "loras").mkdir()
        for seed, (name, kind) in enumerate((("a", "lora"), ("b", "loha"), ("c", "lokr"))):
            # Small deltas, as trained LoRAs have: large random ones push the tiny model into overflow.
            write_tiny_lora(models.root / "loras" / f"{name}.safetensors", pipe, kind=kind, seed=seed, std=0.02)
        config = make_config(models, models.data_dir("data"))
        engine = Engine(config=config, registry=make_registry(config))
        requests = {label: GenerationRequest(prompt=PROMPT + tags, sampler="Euler a", steps=args.steps,
                                             width=args.size, height=args.size, seed=1234)
                    for label, tags in SETS.items()}

        def job(label):
            return lambda: engine.generate(requests[label])

        times: dict[str, list[float]] = {label: [] for label in SETS}
        for label in SETS:
            job(label)()  # warm: loads, parses the files once (they stay in memory)
        # Steady state, as the queue's affinity makes it: each job after one of its own set.
        for _ in range(args.runs):
            for label in SETS:
                job(label)()
                seconds, _ = timed(job(label))
                times[label].append(seconds)

        loaded = engine.cache.get(engine.registry.resolve(""))
        one, three = engine.lora_set(requests["one LoRA"]), engine.lora_set(requests["three LoRAs"])
        switches = []
        for _ in range(args.runs):
            for target in (three, one, ()):
                seconds, _ = timed(lambda: engine.merge_loras(loaded, target))
                switches.append(seconds)

    plain = median(times["plain"])
    rows = [[label, f"{median(values) * 1000:.1f}", f"{median(values) / plain:.3f}"] for label, values in times.items()]
    switch = median(switches)
    print(f"LoRA cost: {args.architecture}, {args.size}x{args.size}, Euler a, {args.steps} steps; {args.runs} runs each, "
          f"interleaved{', denormals flushed' if args.flush_denormal else ''} ({machine})")
    print_table(["job", "median ms", "ratio to plain"], rows)
    print(f"switching LoRA sets (restore + merge, files in memory): median {switch * 1000:.1f} ms = "
          f"{switch / plain:.3f} of a plain {args.steps}-step job")
    worst = max(median(values) / plain for label, values in times.items() if label != "plain")
    print(f"goal: with a LoRA <= {STEP_GOAL:.2f}x plain: {verdict(worst <= STEP_GOAL)} (worst {worst:.3f}); "
          f"a switch < one job: {verdict(switch < plain)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
