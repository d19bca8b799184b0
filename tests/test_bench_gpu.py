"""bench/gpu.py's CPU smoke mode: the GPU benchmark's code runs in every `make test`, unchanged."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_smoke_mode_prints_its_table():
    result = subprocess.run([sys.executable, "bench/gpu.py", "--smoke"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("GPU speed: tiny SD 1.x (smoke), 64x64, 2 steps")
    table = lines[lines.index(next(line for line in lines if line.strip().startswith("pipeline"))) + 2:][:4]
    rows = [re.split(r"\s{2,}", line.strip()) for line in table]
    assert [(row[0], row[1]) for row in rows] == [("raw diffusers", "1"), ("easel", "1"), ("raw diffusers", "2"),
                                                  ("easel", "2")]
    assert all(float(row[2]) > 0 and float(row[3]) > 0 for row in rows)  # s/image and it/s measured
    assert "easel / raw diffusers, batch 1:" in result.stdout and "fal.ai, A100" in result.stdout
