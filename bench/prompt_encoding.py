"""ms per prompt: easel's A1111 prompt encoder vs diffusers' own encode_prompt, side by side in one run;
then parse time on hostile text at two lengths.

Tiny offline model (text encoder width 32, 2 layers), CPU. diffusers truncates at 77 tokens, so
for the 3-chunk prompt it encodes a third of the text: that row shows the cost of not truncating.

The parse table times split_and + prompt_schedule + parse_attention (+ extra-network tags) on
1,000 and 8,000 characters of the worst shapes known, and parse_infotext on parameter lines
without pairs: linear parsing shows a ratio near 8, quadratic near 64.
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
from generation.infotext import parse_infotext  # noqa: E402
from generation.prompt_parser import extra_network_tags, parse_attention, prompt_schedule, split_and  # noqa: E402
from generation.testing import build_tiny_pipeline  # noqa: E402

PROMPTS = {
    "plain": "a photo of a red cat sitting on a wooden chair, soft light, detailed fur",
    "weighted": "a photo of a (red:1.3) cat sitting on a [wooden] chair, ((soft light)), (detailed fur:0.8)",
    "3-chunk": ", ".join(f"detail number {i}" for i in range(38)),
}


# name -> (characters -> text, steps); steps None: an infotext parameter line
HOSTILE = {
    "(a] repeated": (lambda n: "(a]" * (n // 3), 20),
    "[a|b], 60 steps": (lambda n: "[a|b]" * (n // 5), 60),
    "spaces": (lambda n: "a" + " " * (n - 2) + "b", 20),
    "nested brackets": (lambda n: "(" * (n // 2) + "a" + ")" * (n // 2 - 1), 20),
    "<a: repeated": (lambda n: "<a:" * (n // 3), 20),
    "infotext: one key": (lambda n: "a" * n, None),
    "infotext: words": (lambda n: "ab " * (n // 3), None),
}


def parse(text: str, steps: int | None) -> None:
    if steps is None:
        parse_infotext("prompt\n" + text)
        return
    extra_network_tags(text)
    for part, _ in split_and(text):
        for _, scheduled in prompt_schedule(part, steps):
            parse_attention(scheduled)


def parse_table(runs: int) -> None:
    print(f"\n{'hostile text':<18} {'1,000 ms':>9} {'8,000 ms':>9} {'ratio':>6}")
    for name, (make, steps) in HOSTILE.items():
        short, long = make(1000), make(8000)
        short_ms = median_ms(lambda: parse(short, steps), runs)
        long_ms = median_ms(lambda: parse(long, steps), runs)
        print(f"{name:<18} {short_ms:>9.2f} {long_ms:>9.2f} {long_ms / short_ms:>6.1f}")


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
    parse_table(max(3, args.runs // 5))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
