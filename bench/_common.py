"""What both benchmarks share: an offline tiny model in a temp folder, configs pointing at it, timing helpers.

Benchmarks are not tests: they print numbers measured side by side in one run, on whatever machine runs
them, and a PASS/FAIL against each goal. Run them from the repository root, e.g.
`python -m bench.engine_overhead` or `python bench/engine_overhead.py`.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent


def prepare_environment(*, threads: int = 0) -> None:
    """Offline, quiet, repository importable; `threads` > 0 pins torch's CPU threads.
    Call before importing generation/ or storage/."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach the hub
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import warnings

    warnings.filterwarnings("ignore", message="Should have ta>=t0")
    import generation

    generation.quiet_libraries()
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


@dataclass(frozen=True)
class BenchModels:
    root: Path  # models_dir: checkpoints/tiny (folder) and checkpoints/tiny.safetensors (single file)
    scratch: Path  # for data dirs and databases

    def data_dir(self, name: str) -> Path:
        folder = self.scratch / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder


@contextmanager
def tiny_models(architecture: str = "tiny-sd1") -> Iterator[BenchModels]:
    """The offline tiny model (SD-1.x, or "tiny-sdxl"), named "tiny", written fresh into a temp folder removed afterwards."""
    from generation.testing import write_test_model

    with tempfile.TemporaryDirectory(prefix="easel-bench-") as tmp:
        root = Path(tmp) / "models"
        write_test_model(root / "checkpoints" / "tiny", architecture=architecture)
        (root / "embeddings").mkdir(parents=True)
        yield BenchModels(root=root, scratch=Path(tmp) / "scratch")


def make_config(models: BenchModels, data_dir: Path, sections: dict[str, dict[str, Any]] | None = None):
    """A validated Config on the tiny model and CPU; `sections` override or add config.toml tables."""
    from generation.config import config_from_mapping

    data: dict[str, dict[str, Any]] = {
        "paths": {"models_dir": str(models.root), "data_dir": str(data_dir)},
        "device": {"device": "cpu"},
        "models": {"default_checkpoint": "tiny"},
    }
    for name, values in (sections or {}).items():
        data.setdefault(name, {}).update(values)
    return config_from_mapping(data, env={})


def make_registry(config):
    from generation.registry import ModelRegistry

    registry = ModelRegistry.from_config(config)
    registry.refresh()
    return registry


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def median(values: list[float]) -> float:
    return statistics.median(values)


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("  " + "  ".join("-" * width for width in widths))


def cpu_note() -> str:
    """The machine, and a warning when other work competes for its CPUs (timings then scatter widely)."""
    import torch

    note = f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs"
    try:
        load = os.getloadavg()[0]
    except OSError:
        return note
    note += f", load {load:.1f}"
    if load > 0.5:
        note += " -- other work is running: ratios below are noisier than on an idle machine"
    return note
