"""ms per prompt: easel's A1111 prompt encoder vs diffusers' own encode_prompt, side by side in one run.

Tiny offline model (text encoder width 32, 2 layers), CPU. diffusers truncates at 77 tokens, so
for the 3-chunk prompt it encodes a third of the text: that row shows the cost of not truncating.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# bench/queue.py would shadow the standard library's queue module: drop this folder from the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from generation import quiet_libraries  # noqa: E402
from generation.conditioning import PromptEncoder  # noqa: E402
from generation.testing import build_tiny_pipeline  # noqa: E402

PROMPTS = {
    "plain": "a photo of a red cat sitting on a wooden chair, soft light, detailed fur",
    "weighted": "a photo of a (red:1.3) cat sitting on a [wooden] chair, ((soft light)), (detailed fur:0.8)",
    "3-chunk": ", ".join(f"detail number {i}" for i in range(38)),
}


def median_ms(function, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    quiet_libraries()
    pipe = build_tiny_pipeline()
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder, max_chunks=6)
    print(f"{'prompt':<10} {'tokens':>6} {'easel ms':>9} {'diffusers ms':>13} {'ratio':>6}")
    with torch.inference_mode():
        for name, prompt in PROMPTS.items():
            ours = lambda: encoder.encode(prompt, "blurry, low quality")  # noqa: E731
            theirs = lambda: pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt="blurry, low quality")  # noqa: E731
            ours(), theirs()  # warm up
            # interleave the two so drift in machine load hits both equally
            easel_times, diffusers_times = [], []
            for _ in range(args.runs):
                easel_times.append(median_ms(ours, 1))
                diffusers_times.append(median_ms(theirs, 1))
            easel_ms, diffusers_ms = statistics.median(easel_times), statistics.median(diffusers_times)
            tokens = encoder.token_count(prompt)
            print(f"{name:<10} {tokens:>6} {easel_ms:>9.2f} {diffusers_ms:>13.2f} {easel_ms / diffusers_ms:>6.2f}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
