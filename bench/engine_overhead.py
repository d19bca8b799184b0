"""Engine overhead: easel's Engine.generate vs a bare diffusers pipeline call with the same parameters.

Both sides use the very same loaded modules (the engine's warm pipeline cache), the same sampler (Euler a,
EulerAncestralDiscreteScheduler on the model's noise schedule with A1111's "linspace" spacing), 20 steps,
CFG 7, 256x256, the same seed. Runs alternate A B A B after a warmup; medians of each are compared.
Goal: engine / raw <= 1.03.

    python bench/engine_overhead.py [--runs 15] [--size 256] [--steps 20] [--architecture tiny-sdxl]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path, where queue.py would shadow the standard library.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402

from bench._common import cpu_note, median, make_config, make_registry, prepare_environment, tiny_models, timed, verdict  # noqa: E402

GOAL_RATIO = 1.03
PROMPT = "a red cat sitting on a windowsill, oil painting"
NEGATIVE = "blurry"
SEED = 1234
CFG = 7.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each side (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs of each side first (default 2)")
    parser.add_argument("--size", type=int, default=256, help="width and height in pixels (default 256)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--architecture", choices=("tiny-sd1", "tiny-sdxl"), default="tiny-sd1",
                        help="the tiny model to measure on (default tiny-sd1)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    prepare_environment(threads=args.threads)
    machine = cpu_note()  # before the load below counts our own runs
    import numpy as np
    import torch
    from diffusers import EulerAncestralDiscreteScheduler

    from generation.engine import Engine
    from generation.requests import GenerationRequest

    with tiny_models(args.architecture) as models:
        config = make_config(models, models.data_dir("data"))
        engine = Engine(config=config, registry=make_registry(config))
        request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, sampler="Euler a", steps=args.steps,
                                    cfg_scale=CFG, width=args.size, height=args.size, seed=SEED)

        def run_engine():
            return engine.generate(request)[0].image

        run_engine()  # loads the checkpoint into the cache: what follows measures a warm engine
        loaded = engine.cache.get(engine.registry.resolve(""))
        # A second pipeline object over the same modules: the raw side owns its scheduler attribute.
        sd1 = "safety_checker" in loaded.base.components
        extra = {"safety_checker": None, "requires_safety_checker": False} if sd1 else {}
        raw_pipe = type(loaded.base)(**{**loaded.base.components, **extra})
        raw_pipe.set_progress_bar_config(disable=True)

        def run_raw():
            # A fresh scheduler per call, as the engine makes one; linspace is A1111's spacing for Euler a.
            raw_pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(loaded.scheduler_config,
                                                                              timestep_spacing="linspace")
            with torch.inference_mode():
                return raw_pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=args.steps,
                                guidance_scale=CFG, width=args.size, height=args.size,
                                generator=torch.Generator("cpu").manual_seed(SEED), output_type="pil").images[0]

        for _ in range(args.warmup):
            run_engine()
            run_raw()
        engine_times, raw_times = [], []
        engine_image = raw_image = None
        for _ in range(args.runs):
            seconds, engine_image = timed(run_engine)
            engine_times.append(seconds)
            seconds, raw_image = timed(run_raw)
            raw_times.append(seconds)

    engine_median, raw_median = median(engine_times), median(raw_times)
    ratio = engine_median / raw_median
    difference = np.abs(np.asarray(engine_image, dtype=np.int16) - np.asarray(raw_image, dtype=np.int16))
    print(f"engine overhead: {args.architecture}, {args.size}x{args.size}, Euler a, {args.steps} steps, CFG {CFG:g}, "
          f"seed {SEED}; {args.runs} runs each, interleaved, after {args.warmup} warmup ({machine})")
    print(f"  raw diffusers  median {raw_median * 1000:8.1f} ms   (min {min(raw_times) * 1000:.1f}, max {max(raw_times) * 1000:.1f})")
    print(f"  easel engine   median {engine_median * 1000:8.1f} ms   (min {min(engine_times) * 1000:.1f}, max {max(engine_times) * 1000:.1f})")
    print(f"  ratio engine/raw = {ratio:.3f}   goal <= {GOAL_RATIO:.2f}: {verdict(ratio <= GOAL_RATIO)}")
    print(f"  outputs: max pixel difference {int(difference.max())} "
          f"({'identical' if not difference.any() else 'differ'}), mean {difference.mean():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
