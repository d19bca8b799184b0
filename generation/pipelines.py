"""Loading checkpoints into diffusers pipelines, and a bounded LRU cache of loaded ones.

Only the executor's worker thread touches a loaded pipeline, so the cache needs no lock of its own.
"""

from __future__ import annotations

import gc
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .checkpoints import CheckpointInfo
from .errors import ModelLoadError
from .requests import Mode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceSpec:
    device: str  # cpu, cuda, mps
    dtype: torch.dtype

    @classmethod
    def choose(cls, wanted: str = "auto") -> "DeviceSpec":
        if wanted == "auto":
            if torch.cuda.is_available():
                wanted = "cuda"
            elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
                wanted = "mps"
            else:
                wanted = "cpu"
        if wanted == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("EASEL_DEVICE is cuda but no CUDA GPU is available")
        if wanted == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ModelLoadError("EASEL_DEVICE is mps but MPS is not available")
        # fp16 halves memory and is what SD runs in on GPUs; CPUs have no fast fp16 kernels.
        return cls(device=wanted, dtype=torch.float16 if wanted in ("cuda", "mps") else torch.float32)


@dataclass
class LoadedCheckpoint:
    info: CheckpointInfo
    base: object  # the text-to-image pipeline
    architecture: str
    scheduler_config: dict = field(default_factory=dict)  # as loaded: each run builds its sampler from this
    embeddings: set[str] = field(default_factory=set)  # triggers already loaded into the shared text encoder
    lora_merger: object | None = None  # generation.lora_networks.LoraMerger, made when a LoRA is first used
    lora_set: tuple = ()  # the LoRA set merged into the weights now (Engine.lora_set)
    _derived: dict[str, object] = field(default_factory=dict)

    def pipeline_for(self, mode: Mode):
        """img2img and inpaint reuse the already-loaded modules (from_pipe: no copy, no reload)."""
        if mode == "txt2img":
            return self.base
        if mode not in self._derived:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            factory = AutoPipelineForImage2Image if mode == "img2img" else AutoPipelineForInpainting
            self._derived[mode] = factory.from_pipe(self.base)
        return self._derived[mode]

    @property
    def is_sdxl(self) -> bool:
        from .architectures import family

        return family(self.architecture) == "sdxl"


def load_checkpoint(info: CheckpointInfo, device: DeviceSpec) -> LoadedCheckpoint:
    from diffusers import AutoencoderKL, DiffusionPipeline

    common = dict(safety_checker=None, requires_safety_checker=False)
    try:
        if info.format == "diffusers":
            from .architectures import pipeline_class

            cls = pipeline_class(info.architecture) if info.architecture != "unknown" else DiffusionPipeline
            pipe = cls.from_pretrained(info.path, dtype=device.dtype, local_files_only=True, **common)
        elif info.format in ("safetensors", "ckpt"):
            from .architectures import ARCHITECTURES, load_single_file

            # diffusers reads .ckpt with torch.load(weights_only=True); the registry only offers them when allowed.
            # The scan's architecture counts: it may know more than the weights (sd2-base from a .yaml).
            pipe = load_single_file(Path(info.path), dtype=device.dtype,
                                    architecture_name=info.architecture if info.architecture in ARCHITECTURES else None)
        elif info.format == "hub":
            pipe = DiffusionPipeline.from_pretrained(info.path, dtype=device.dtype, **common)
        else:
            raise ModelLoadError(f"unknown checkpoint format {info.format!r}")
        if info.vae_path:
            from .architectures import config_dir

            pipe.vae = AutoencoderKL.from_single_file(
                info.vae_path, config=str(config_dir(info.architecture) / "vae"), local_files_only=True, dtype=device.dtype
            )
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not load checkpoint {info.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device.device)
    architecture = info.architecture
    if architecture == "unknown":
        architecture = "sdxl" if "XL" in type(pipe).__name__ else "sd1"
    return LoadedCheckpoint(info=info, base=pipe, architecture=architecture, scheduler_config=dict(pipe.scheduler.config))


class PipelineCache:
    """Keeps at most `capacity` checkpoints loaded; the least recently used one is dropped first."""

    def __init__(self, *, capacity: int, device: DeviceSpec, loader: Callable[[CheckpointInfo, DeviceSpec], LoadedCheckpoint] = load_checkpoint):
        self._capacity = capacity
        self._device = device
        self._loader = loader
        self._entries: OrderedDict[tuple[str, str | None], LoadedCheckpoint] = OrderedDict()
        self.loads = 0  # how many times a checkpoint was read from disk (affinity benchmark)

    @property
    def device(self) -> DeviceSpec:
        return self._device

    def loaded_names(self) -> list[str]:
        return [entry.info.name for entry in self._entries.values()]

    @property
    def most_recent(self) -> str | None:
        return next(reversed(self._entries.values())).info.name if self._entries else None

    def peek(self, name: str) -> LoadedCheckpoint | None:
        """A loaded checkpoint by name, without loading or reordering anything."""
        return next((entry for entry in self._entries.values() if entry.info.name == name), None)

    def get(self, info: CheckpointInfo) -> LoadedCheckpoint:
        key = (info.path, info.sha256)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        while len(self._entries) >= self._capacity:
            _, dropped = self._entries.popitem(last=False)
            log.info("unloading checkpoint %s", dropped.info.name)
            del dropped
            gc.collect()
            if self._device.device == "cuda":
                torch.cuda.empty_cache()
        log.info("loading checkpoint %s", info.name)
        entry = self._loader(info, self._device)
        self.loads += 1
        self._entries[key] = entry
        return entry

    def clear(self) -> None:
        self._entries.clear()
        gc.collect()
