"""Loading checkpoints into diffusers pipelines, and a bounded LRU cache of loaded ones.

Only the executor's worker thread touches a loaded pipeline, so the cache needs no lock of its own.
"""

from __future__ import annotations

import functools
import gc
import logging
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .checkpoints import CheckpointInfo
from .config import Config, DeviceConfig, ModelsConfig
from .errors import ModelLoadError
from .requests import Mode

log = logging.getLogger(__name__)


def cpu_thread_budget(wanted: int, cores: int | None = None) -> int:
    """torch's threads for CPU generation beside an event loop: `wanted`, or every core but one."""
    import os

    cores = cores or os.cpu_count() or 1
    return wanted if wanted > 0 else max(1, cores - 1)


@dataclass(frozen=True)
class DeviceSpec:
    device: str  # cpu, cuda, mps
    dtype: torch.dtype

    @classmethod
    def choose(cls, wanted: str = "auto", dtype: str = "auto") -> "DeviceSpec":
        """The device (`[device] device`) and the weights' dtype (`[device] dtype`: auto is float16
        on cuda/mps, float32 on the CPU; bfloat16 only where the GPU has it)."""
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
        from .device_options import resolve_dtype

        try:
            return cls(device=wanted, dtype=resolve_dtype(dtype, wanted))
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None


# A1111's "Inpainting conditioning mask strength" (opts.inpainting_mask_weight): 1 hides the whole
# image from an inpainting model's img2img, 0 shows it all. The engine passes `[models]`'s value.
DEFAULT_INPAINTING_MASK_WEIGHT = ModelsConfig.inpainting_mask_weight


def _execution_device(pipe) -> torch.device:
    """Where the VAE computes: its own device, or with CPU offload the device its hooks move it to."""
    device = getattr(pipe, "_execution_device", None)
    return device if isinstance(device, torch.device) else pipe.vae.device


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
            encoded = vae.encode(pixels.to(_execution_device(pipe), torch.float32 if upcast else dtype))
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
            return vae.decode(latents.to(_execution_device(pipe), torch.float32 if upcast else dtype)).sample.to(torch.float32)
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
    # Weights held on the device, per component key (a module shared with other checkpoints has the
    # same key in each): what the PipelineCache's byte bound counts. Empty when offloaded.
    device_bytes: dict = field(default_factory=dict)
    offload: str = "none"  # as applied ("auto" decided)
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


class SharedComponents:
    """Modules that several checkpoints use, loaded once: a VAE file beside several checkpoints (one
    file that `<name>.vae.safetensors` symlinks point to) is one module on the device. Held weakly:
    it goes when the last checkpoint using it is unloaded."""

    def __init__(self) -> None:
        self._modules: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def get(self, key):
        return self._modules.get(key)

    def put(self, key, module) -> None:
        self._modules[key] = module

    def __len__(self) -> int:
        return len(self._modules)


def _vae_key(info: CheckpointInfo, device: DeviceSpec) -> tuple:
    return ("vae", str(Path(info.vae_path).resolve()), info.architecture, str(device.dtype))


def load_checkpoint(info: CheckpointInfo, device: DeviceSpec, *, options: DeviceConfig | None = None,
                    shared: SharedComponents | None = None) -> LoadedCheckpoint:
    """Load a checkpoint and apply `[device]` (generation.device_options): offload or placement, VAE
    tiling/slicing, attention slicing, channels-last/SDPA/TF32, compile (+ warm-up), and the
    NaN-safe VAE. Without `options` the defaults apply, less what only matters on a GPU when the
    device is the CPU (results there stay exactly as without them). A VAE file already loaded for
    another checkpoint (`shared`) is reused, not loaded again."""
    from diffusers import AutoencoderKL, DiffusionPipeline

    from . import device_options

    options = device_options.cpu_effective(options or DeviceConfig(), device.device)

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
        shared_vae = None
        if info.vae_path:
            from .architectures import config_dir

            shared_vae = shared.get(_vae_key(info, device)) if shared is not None else None
            if shared_vae is None:
                shared_vae = AutoencoderKL.from_single_file(
                    info.vae_path, config=str(config_dir(info.architecture) / "vae"), local_files_only=True,
                    dtype=device.dtype,
                )
                if shared is not None:
                    shared.put(_vae_key(info, device), shared_vae)
            else:
                log.info("checkpoint %s shares the VAE %s already loaded", info.name, info.vae_path)
            pipe.vae = shared_vae
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not load checkpoint {info.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    pipe.set_progress_bar_config(disable=True)
    sizes = device_options.component_bytes(pipe)  # before offloading moves weights to the meta device
    keys = {name: (info.path, info.sha256, name) for name in sizes}
    if shared_vae is not None:
        keys["vae"] = _vae_key(info, device)
    offload = device_options.apply_memory_options(pipe, options, device.device)
    device_options.apply_fast_path(pipe, options, device.device)
    device_options.nan_safe_vae(pipe, info.name)
    if options.compile and options.warmup and getattr(pipe.unet, "_easel_compiled", None) is not None:
        device_options.warm_up(pipe)
    architecture = info.architecture
    if architecture == "unknown":
        architecture = "sdxl" if "XL" in type(pipe).__name__ else "sd1"
        unet = getattr(pipe, "unet", None)
        if getattr(getattr(unet, "config", None), "in_channels", 4) == 9:
            architecture += "-inpaint"
    return LoadedCheckpoint(info=info, base=pipe, architecture=architecture, scheduler_config=dict(pipe.scheduler.config),
                            device_bytes={keys[name]: size for name, size in sizes.items()} if offload == "none" else {},
                            offload=offload)


def estimate_checkpoint_bytes(info: CheckpointInfo, options: DeviceConfig | None = None) -> int:
    """Bytes a checkpoint not loaded before may take on the device, from its files: a single file's
    size, or a diffusers folder's largest weight file per model (variants are alternatives). An
    upper bound more often than not (float32 files load as float16 on a GPU); 0 when offloaded or
    unknown (the hub)."""
    if options is not None and options.offload in ("model", "sequential"):
        return 0
    path = Path(info.path)
    try:
        if info.format in ("safetensors", "ckpt"):
            return info.size or path.stat().st_size
        if info.format == "diffusers" and path.is_dir():
            total = 0
            for folder in path.iterdir():
                if folder.is_dir():
                    weights = [f.stat().st_size for f in folder.iterdir() if f.suffix in (".safetensors", ".bin")]
                    total += max(weights, default=0)
            return total
    except OSError:
        pass
    return 0


class PipelineCache:
    """Loaded checkpoints, bounded by the bytes of their weights on the device and by a count
    (`capacity`); the least recently used ones are dropped until a new one fits.

    Bytes: `max_bytes` (default `[device] cache_bytes`), or when 0 what the device has free now plus
    what the loaded checkpoints hold, less a working margin (2 GiB, 4 GiB with SDXL); no byte bound
    where free memory cannot be measured (the CPU). A checkpoint counts the device-resident bytes of
    its modules (`LoadedCheckpoint.device_bytes`), a module shared by several (one VAE file) once,
    an offloaded one nothing. Before a checkpoint's first load its size is estimated from its files
    (`estimate_checkpoint_bytes`), afterwards remembered; after the load, older ones are dropped
    while the total is over the bound (never the one just loaded)."""

    def __init__(self, *, capacity: int, device: DeviceSpec,
                 loader: Callable[[CheckpointInfo, DeviceSpec], LoadedCheckpoint] | None = None,
                 options: DeviceConfig | None = None, max_bytes: int | None = None,
                 free_bytes: Callable[[], int | None] | None = None,
                 estimate: Callable[[CheckpointInfo], int] | None = None):
        from .device_options import free_device_bytes

        self._capacity = capacity
        self._device = device
        self._options = options or DeviceConfig()
        self.shared = SharedComponents()
        self._loader = loader or functools.partial(load_checkpoint, options=self._options, shared=self.shared)
        self._max_bytes = self._options.cache_bytes if max_bytes is None else max_bytes
        self._free_bytes = free_bytes or (lambda: free_device_bytes(device.device))
        self._estimate = estimate or functools.partial(estimate_checkpoint_bytes, options=self._options)
        self._entries: OrderedDict[tuple[str, str | None], LoadedCheckpoint] = OrderedDict()
        self._footprints: dict[tuple[str, str | None], dict] = {}  # measured device bytes, kept after unloading
        self.loads = 0  # how many times a checkpoint was read from disk (affinity benchmark)

    @classmethod
    def from_config(cls, config: Config) -> "PipelineCache":
        """The cache `[models] pipeline_cache_size` and `[device]` ask for."""
        return cls(capacity=config.models.pipeline_cache_size,
                   device=DeviceSpec.choose(config.device.device, config.device.dtype), options=config.device)

    @property
    def options(self) -> DeviceConfig:
        return self._options

    @staticmethod
    def _footprint(entry) -> dict:
        return dict(getattr(entry, "device_bytes", None) or {})

    @property
    def held_bytes(self) -> int:
        """Device bytes of the loaded checkpoints, each shared module once."""
        held: dict = {}
        for entry in self._entries.values():
            held.update(self._footprint(entry))
        return sum(held.values())

    def budget(self, info: CheckpointInfo | None = None) -> int | None:
        """The byte bound now: fixed, or measured; None when there is none."""
        if self._max_bytes > 0:
            return self._max_bytes
        free = self._free_bytes()
        if free is None:
            return None
        from .architectures import ARCHITECTURES, family
        from .device_options import WORKING_MARGIN, WORKING_MARGIN_SDXL

        names = [entry.info.architecture for entry in self._entries.values()] + ([info.architecture] if info else [])
        sdxl = any(name in ARCHITECTURES and family(name) == "sdxl" for name in names)
        return max(0, self.held_bytes + free - (WORKING_MARGIN_SDXL if sdxl else WORKING_MARGIN))

    def _needed(self, key, info: CheckpointInfo) -> int:
        known = self._footprints.get(key)
        if known is None:
            return self._estimate(info)
        held = set()
        for entry in self._entries.values():
            held.update(self._footprint(entry))
        return sum(size for part, size in known.items() if part not in held)

    def _evict_oldest(self) -> None:
        _, dropped = self._entries.popitem(last=False)
        log.info("unloading checkpoint %s", dropped.info.name)
        del dropped
        gc.collect()
        if self._device.device.startswith("cuda"):
            torch.cuda.empty_cache()

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
        budget = self.budget(info)
        while self._entries and (len(self._entries) >= self._capacity or
                                 (budget is not None and self.held_bytes + self._needed(key, info) > budget)):
            self._evict_oldest()
        log.info("loading checkpoint %s", info.name)
        entry = self._loader(info, self._device)
        self.loads += 1
        self._entries[key] = entry
        self._footprints[key] = self._footprint(entry)
        while budget is not None and len(self._entries) > 1 and self.held_bytes > budget:
            self._evict_oldest()  # the estimate was low: drop older ones, never the one just loaded
        if budget is not None and self.held_bytes > budget:
            log.warning("checkpoint %s holds %.1f GB, over the cache's %.1f GB", info.name, self.held_bytes / 1e9,
                        budget / 1e9)
        return entry

    def clear(self) -> None:
        self._entries.clear()
        gc.collect()
