"""Loading checkpoints into diffusers pipelines, and a bounded LRU cache of loaded ones.

Only the executor's worker thread touches a loaded pipeline, so the cache needs no lock of its own.
"""

from __future__ import annotations

import functools
import gc
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .checkpoints import CheckpointInfo
from .config import ModelsConfig
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
        kind, _, index = wanted.partition(":")  # cuda:1 is the second GPU
        if kind == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"the device is {wanted} but no CUDA GPU is available")
        if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
            raise ModelLoadError(f"the device is {wanted} but this machine has {torch.cuda.device_count()} GPU(s)")
        if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ModelLoadError("the device is mps but MPS is not available")
        # fp16 halves memory and is what SD runs in on GPUs; CPUs have no fast fp16 kernels.
        return cls(device=wanted, dtype=torch.float16 if kind in ("cuda", "mps") else torch.float32)


# A1111's "Inpainting conditioning mask strength" (opts.inpainting_mask_weight): 1 hides the whole
# image from an inpainting model's img2img, 0 shows it all. The engine passes `[models]`'s value.
DEFAULT_INPAINTING_MASK_WEIGHT = ModelsConfig.inpainting_mask_weight


def encode_image_mean(pipe, pixels: torch.Tensor) -> torch.Tensor:
    """Latents of [-1, 1] pixels [B, 3, H, W]: the VAE posterior's mean (A1111 samples it with its
    unseeded global RNG; the mean is that without the noise), scaled as the pipelines scale. An SDXL
    VAE that overflows in float16 runs in float32, as diffusers' XL pipelines do."""
    vae = pipe.vae
    dtype = vae.dtype
    upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False) and hasattr(pipe, "text_encoder_2")
    with torch.no_grad():
        if upcast:
            vae.to(dtype=torch.float32)
        try:
            encoded = vae.encode(pixels.to(vae.device, torch.float32 if upcast else dtype))
        finally:
            if upcast:
                vae.to(dtype=dtype)
    dist = getattr(encoded, "latent_dist", None)
    latents = (dist.mode() if dist is not None else encoded.latents).to(torch.float32)
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean, dtype=latents.dtype, device=latents.device).view(1, -1, 1, 1)
        std = torch.tensor(std, dtype=latents.dtype, device=latents.device).view(1, -1, 1, 1)
        return (latents - mean) * config.scaling_factor / std
    return latents * config.scaling_factor


def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """[-1, 1] pixels [B, 3, H, W] (float32) of latents as the pipelines scale them: the inverse of
    `encode_image_mean`, with the same float32 fallback for an SDXL VAE that overflows in float16."""
    vae = pipe.vae
    dtype = vae.dtype
    upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False) and hasattr(pipe, "text_encoder_2")
    config = vae.config
    latents = latents.to(torch.float32)
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean, dtype=latents.dtype, device=latents.device).view(1, -1, 1, 1)
        std = torch.tensor(std, dtype=latents.dtype, device=latents.device).view(1, -1, 1, 1)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor
    with torch.no_grad():
        if upcast:
            vae.to(dtype=torch.float32)
        try:
            return vae.decode(latents.to(vae.device, torch.float32 if upcast else dtype)).sample.to(torch.float32)
        finally:
            if upcast:
                vae.to(dtype=dtype)


@functools.cache
def full_mask_pipeline_class(inpaint_class: type) -> type:
    """txt2img and img2img on a dedicated inpainting checkpoint, as A1111 runs them.

    A 9-channel UNet always reads a mask and a masked image beside the latents. A1111 gives it a
    mask that covers everything (processing.py `txt2img_image_conditioning`, and
    `img2img_image_conditioning` without a mask) and as the masked image, in [-1, 1]:
    txt2img: zeros (all mid-grey); img2img: lerp(image, image * (1 - mask), inpainting_mask_weight),
    which is image * (1 - weight) for a full mask. The subclass of `inpaint_class` this returns takes
    the txt2img / img2img arguments (no mask) and runs the inpaint pipeline with exactly that: a
    white mask and the masked image's latents (`encode_image_mean`, as the engine's inpainting
    conditioning). Everything else is the inpaint pipeline's own: at strength 1 pure noise (as
    txt2img), below it the init image's latents noised (as img2img).
    """

    class FullMaskPipeline(inpaint_class):
        def __call__(self, *args, image=None, strength: float = 1.0, width: int | None = None,
                     height: int | None = None, inpainting_mask_weight: float = DEFAULT_INPAINTING_MASK_WEIGHT,
                     **kwargs):
            from PIL import Image

            if "mask_image" in kwargs or "masked_image_latents" in kwargs:
                raise TypeError("a full-mask pipeline makes its own mask; use the inpaint pipeline for a mask")
            if not 0.0 <= inpainting_mask_weight <= 1.0:
                raise ValueError(f"inpainting_mask_weight must be from 0 to 1, not {inpainting_mask_weight}")
            default = self.unet.config.sample_size * self.vae_scale_factor
            if image is None:  # txt2img
                if strength != 1.0:
                    raise ValueError("txt2img on an inpainting checkpoint runs at strength 1")
                width, height = width or default, height or default
                image = Image.new("RGB", (width, height), (127, 127, 127))  # never seen: fully masked
                masked = torch.zeros(1, 3, height, width)
            else:  # img2img
                first = image[0] if isinstance(image, (list, tuple)) else image
                if isinstance(first, Image.Image):  # img2img pipelines take the size from the image
                    width, height = width or first.width, height or first.height
                width, height = width or default, height or default
                pixels = self.image_processor.preprocess(image, height=height, width=width).to(torch.float32)
                masked = pixels.contiguous() * (1.0 - inpainting_mask_weight)
            return super().__call__(
                *args, image=image, mask_image=Image.new("L", (width, height), 255),
                masked_image_latents=encode_image_mean(self, masked), strength=strength, width=width,
                height=height, **kwargs,
            )

    FullMaskPipeline.__name__ = FullMaskPipeline.__qualname__ = inpaint_class.__name__.replace(
        "InpaintPipeline", "FullMaskInpaintPipeline")
    return FullMaskPipeline


def _with_same_modules(pipeline_class: type, base):
    """A `pipeline_class` around `base`'s very modules and options (no copy, no cast, no reload)."""
    expected, optional = pipeline_class._get_signature_keys(pipeline_class)
    kwargs = {name: component for name, component in base.components.items() if name in expected}
    kwargs.update({name: base.config[name] for name in optional if name in base.config})
    pipe = pipeline_class(**kwargs)
    pipe.set_progress_bar_config(**getattr(base, "_progress_bar_config", {}))
    return pipe


@dataclass
class LoadedCheckpoint:
    info: CheckpointInfo
    base: object  # the pipeline it loads as: text-to-image, or inpaint for an inpainting checkpoint
    architecture: str
    scheduler_config: dict = field(default_factory=dict)  # as loaded: each run builds its sampler from this
    embeddings: set[str] = field(default_factory=set)  # triggers already loaded into the shared text encoder
    lora_merger: object | None = None  # generation.lora_networks.LoraMerger, made when a LoRA is first used
    lora_set: tuple = ()  # the LoRA set merged into the weights now (Engine.lora_set)
    _derived: dict[str, object] = field(default_factory=dict)

    def pipeline_for(self, mode: Mode):
        """img2img and inpaint reuse the already-loaded modules (from_pipe: no copy, no reload).

        An inpainting checkpoint loads as its inpaint pipeline; txt2img and img2img run on the same
        modules with a full mask, as in A1111 (`full_mask_pipeline_class`)."""
        if self.inpainting:
            if mode == "inpaint":
                return self.base
            if "full-mask" not in self._derived:
                self._derived["full-mask"] = _with_same_modules(full_mask_pipeline_class(type(self.base)), self.base)
            return self._derived["full-mask"]
        if mode == "txt2img":
            return self.base
        if mode not in self._derived:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            factory = AutoPipelineForImage2Image if mode == "img2img" else AutoPipelineForInpainting
            self._derived[mode] = factory.from_pipe(self.base)
            self._derived[mode].set_progress_bar_config(**getattr(self.base, "_progress_bar_config", {}))
        return self._derived[mode]

    @property
    def is_sdxl(self) -> bool:
        from .architectures import family

        return family(self.architecture) == "sdxl"

    @property
    def inpainting(self) -> bool:
        """A dedicated inpainting checkpoint: `base` is its inpaint pipeline (9-channel UNet)."""
        from .architectures import ARCHITECTURES

        spec = ARCHITECTURES.get(self.architecture)
        return spec is not None and spec.inpainting


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
        unet = getattr(pipe, "unet", None)
        if getattr(getattr(unet, "config", None), "in_channels", 4) == 9:
            architecture += "-inpaint"
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
            if self._device.device.startswith("cuda"):
                torch.cuda.empty_cache()
        log.info("loading checkpoint %s", info.name)
        entry = self._loader(info, self._device)
        self.loads += 1
        self._entries[key] = entry
        return entry

    def clear(self) -> None:
        self._entries.clear()
        gc.collect()
