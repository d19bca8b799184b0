"""`[device]` options applied to a loaded pipeline: memory (offload, VAE tiling and slicing,
attention slicing), fp16 safety (a VAE decode that gives NaN is redone in float32) and the fast
path (channels-last, SDPA, TF32, torch.compile of the UNet per size bucket, warm-up).

Plain functions; `pipelines.load_checkpoint` calls them in this order: `apply_memory_options`
(places the pipeline on the device, or installs accelerate's offload hooks), `apply_fast_path`,
`nan_safe_vae`, then `warm_up` when compile and warm-up are on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import re
from typing import Any, Callable, Iterable, Mapping

import torch

from .config import DeviceConfig

log = logging.getLogger(__name__)

GIB = 1024 ** 3
# Working memory beside the weights (activations, the VAE decode, CUDA's own): what A1111 users see
# SD 1.x need at 512-768 px and SDXL at 1024 px with small batches.
WORKING_MARGIN = 2 * GIB
WORKING_MARGIN_SDXL = 4 * GIB
# With model offload one model at a time is on the device, and the VAE (the largest working memory
# at 1024 px) runs with the UNet gone: the UNet needs half the margin beside it.
UNET_MARGIN = WORKING_MARGIN // 2
UNET_MARGIN_SDXL = WORKING_MARGIN_SDXL // 2
# torch.compile's backend for `[device] compile` (tests use a cheaper one).
COMPILE_BACKEND: str | Callable = "inductor"
# Graphs one compiled UNet may hold: sizes x batch sizes x prompt lengths seen. Past it, new shapes
# run uncompiled rather than compile again.
MAX_COMPILED_SHAPES = 64

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# --------------------------------------------------------------------------------------------- sizes

def device_kind(device) -> str:
    """"cuda" of "cuda:1", "cpu" of a DeviceSpec on the cpu, ..."""
    return str(getattr(device, "device", device)).partition(":")[0]


def _device_name(device) -> str:
    return str(getattr(device, "device", device))


def parse_size(text: str) -> tuple[int, int]:
    """(width, height) of "832x1216"."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"a size is WIDTHxHEIGHT, not {text!r}")
    return int(match.group(1)), int(match.group(2))


def size_buckets(sizes: Iterable[str | tuple[int, int]]) -> frozenset[tuple[int, int]]:
    return frozenset(parse_size(size) if isinstance(size, str) else (int(size[0]), int(size[1])) for size in sizes)


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (each tensor once, tied weights included)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
    return total


def component_bytes(pipe) -> dict[str, int]:
    """Bytes of each model of a pipeline ("unet", "vae", "text_encoder", ...)."""
    return {name: module_bytes(module) for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}


def working_margin(checkpoint_bytes: Mapping[str, int]) -> int:
    return WORKING_MARGIN_SDXL if "text_encoder_2" in checkpoint_bytes else WORKING_MARGIN


def free_device_bytes(device) -> int | None:
    """Memory the device can still give: free plus what torch's allocator holds unused. None on the CPU."""
    kind, name = device_kind(device), _device_name(device)
    try:
        if kind == "cuda" and torch.cuda.is_available():
            index = torch.device(name).index
            index = torch.cuda.current_device() if index is None else index
            free, _total = torch.cuda.mem_get_info(index)
            return int(free + torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index))
        if kind == "mps" and hasattr(torch, "mps") and hasattr(torch.mps, "recommended_max_memory"):
            return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    except Exception as exc:  # a driver that cannot say: no byte bound
        log.warning("could not measure free memory on %s: %s", name, exc)
    return None


def cpu_effective(options: DeviceConfig, device) -> DeviceConfig:
    """The options that make sense on `device`: on the CPU, VAE slicing and channels-last only change
    the last bits of results (there is no device memory to save), so they are off there."""
    if device_kind(device) == "cpu":
        return dataclasses.replace(options, vae_slicing=False, channels_last=False, tf32=False)
    return options


# --------------------------------------------------------------------------------------------- dtype

def resolve_dtype(choice: str, device) -> torch.dtype:
    """`[device] dtype`: auto is float16 on cuda/mps and float32 on the CPU."""
    kind = device_kind(device)
    if choice == "auto":
        return torch.float16 if kind in ("cuda", "mps") else torch.float32
    if choice not in _DTYPES:
        raise ValueError(f"dtype must be auto, float16, bfloat16 or float32, not {choice!r}")
    dtype = _DTYPES[choice]
    if dtype == torch.bfloat16 and kind == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bfloat16 (RTX 30xx / A100 and later do); set [device] dtype = \"float16\"")
    return dtype


# --------------------------------------------------------------------------------------------- memory

def choose_offload(options: DeviceConfig, free_bytes: int | None, checkpoint_bytes: Mapping[str, int]) -> str:
    """`[device] offload`, with "auto" decided from the bytes of each model (`component_bytes`):
    "none" when all of them (UNet, text encoders, VAE) plus a working margin (2 GiB; 4 GiB for SDXL,
    recognised by its "text_encoder_2") fit in `free_bytes`; else "model" when the UNet alone plus
    half that margin does (one model at a time on the device); else "sequential". Unknown free
    memory (the CPU) is "none"."""
    if options.offload != "auto":
        return options.offload
    if free_bytes is None:
        return "none"
    sdxl = "text_encoder_2" in checkpoint_bytes
    if sum(checkpoint_bytes.values()) + working_margin(checkpoint_bytes) <= free_bytes:
        return "none"
    if checkpoint_bytes.get("unet", 0) + (UNET_MARGIN_SDXL if sdxl else UNET_MARGIN) <= free_bytes:
        return "model"
    return "sequential"


def _back_to_cpu(module, _args, _output) -> None:
    module.to("cpu")


def _sequential_offload(pipe, device) -> None:
    """Layer-by-layer offload of the UNet and VAE (accelerate's `cpu_offload`: weights on the CPU,
    each layer brought to the device for its forward), whole-model offload of the text encoders.

    Not diffusers' `enable_sequential_cpu_offload`: with transformers 5 that breaks in the CLIP text
    encoder (its embedding comes back from accelerate as a plain tensor), and it leaves the encoders'
    weights on the meta device, where easel's prompt encoding reads the device from. A text encoder
    runs once per job, so moving it whole costs little; it goes back to the CPU right after."""
    from accelerate import cpu_offload, cpu_offload_with_hook

    target = torch.device(_device_name(device))
    for name, module in pipe.components.items():
        if not isinstance(module, torch.nn.Module) or hasattr(module, "_hf_hook"):
            continue  # a module shared with a checkpoint loaded before is offloaded already
        module.to("cpu")
        if name.startswith("text_encoder"):
            cpu_offload_with_hook(module, target)
            module.register_forward_hook(_back_to_cpu)
        else:
            cpu_offload(module, target, offload_buffers=len(module._parameters) > 0)
    pipe._offload_device = target


def apply_memory_options(pipe, options: DeviceConfig, device) -> str:
    """Place the pipeline: on the device, or with accelerate's CPU offload hooks (`offload`; "auto"
    measured here, before anything is on the device); VAE slicing; attention slicing on request; the
    VAE tiles above `vae_tiling_above` pixels, decided for each decode and encode by its own size.
    Returns the offload mode used."""
    name = _device_name(device)
    offload = options.offload
    if offload == "auto":
        offload = choose_offload(options, free_device_bytes(name), component_bytes(pipe))
        log.info("offload auto chose %r on %s", offload, name)
    if offload == "none":
        pipe.to(name)
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=name)
    elif offload == "sequential":
        _sequential_offload(pipe, name)
    else:
        raise ValueError(f"offload must be none, model, sequential or auto, not {options.offload!r}")
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "enable_slicing"):
        vae.enable_slicing() if options.vae_slicing else vae.disable_slicing()
        _tile_by_size(pipe, options)
    if options.attention_slicing:
        pipe.enable_attention_slicing("auto")
    pipe._easel_offload = offload
    return offload


def should_tile(width: int, height: int, options: DeviceConfig) -> bool:
    """Tile the VAE for a width x height picture: above `vae_tiling_above` pixels (0: never)."""
    return bool(options.vae_tiling_above) and width * height > options.vae_tiling_above


def prepare_for_size(pipe, width: int, height: int, batch: int, options: DeviceConfig) -> None:
    """VAE tiling for this size and slicing for this batch, before a pipeline call. The VAE also
    decides tiling itself for every decode and encode by the size it is given (`apply_memory_options`),
    so callers need this only to set the state ahead, e.g. for code that reads `vae.use_tiling`."""
    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(vae, "enable_tiling"):
        return
    vae.enable_tiling() if should_tile(width, height, options) else vae.disable_tiling()
    vae.enable_slicing() if options.vae_slicing and batch > 1 else vae.disable_slicing()


def _tile_by_size(pipe, options: DeviceConfig) -> None:
    """Wrap the VAE's decode and encode so that each sets tiling for the picture it handles."""
    vae = pipe.vae
    vae._easel_options = options  # a VAE shared by checkpoints follows the latest loader's options
    if getattr(vae, "_easel_tiles_by_size", False):
        return
    factor = 2 ** (len(vae.config.block_out_channels) - 1)

    def sized(method, latent: bool):
        @functools.wraps(method)
        def run(x, *args, **kwargs):
            height, width = x.shape[-2:]
            if latent:
                height, width = height * factor, width * factor
            vae.enable_tiling() if should_tile(width, height, vae._easel_options) else vae.disable_tiling()
            return method(x, *args, **kwargs)

        return run

    vae.decode = sized(vae.decode, latent=True)
    vae.encode = sized(vae.encode, latent=False)
    vae._easel_tiles_by_size = True


# --------------------------------------------------------------------------------------------- fp16 safety

@contextlib.contextmanager
def _quiet_dtype_warning():
    """diffusers warns on every `.to(dtype)` of a model ("modules ... should be kept in float32")."""
    logger = logging.getLogger("diffusers.models.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _sample(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output.sample


def _finite(output) -> bool:
    return bool(torch.isfinite(_sample(output)).all())


def nan_safe_vae(pipe, name: str = "") -> None:
    """A1111's NaN check for the VAE (`devices.test_for_nans`, then the float32 VAE of
    `--no-half-vae`): a decode in float16/bfloat16 that gives any NaN (or inf: SDXL's VAE overflows
    in float16) is done again with the VAE upcast to float32 for that call, then cast back (as
    diffusers' `upcast_vae` does for a VAE with `force_upcast`). The first time is logged as a
    warning; after it this VAE decodes in float32 straight away (A1111 likewise keeps its VAE in
    float32 from then on), without holding float32 weights between decodes. Idempotent; a VAE shared
    by checkpoints is wrapped once."""
    vae = getattr(pipe, "vae", None)
    if vae is None or getattr(vae, "_easel_nan_safe", False):
        return
    original = vae.decode
    state = {"float32": False}

    def in_float32(z, args, kwargs):
        dtype = vae.dtype
        with _quiet_dtype_warning():
            vae.to(dtype=torch.float32)
        try:
            output = original(z.to(torch.float32), *args, **kwargs)
        finally:
            with _quiet_dtype_warning():
                vae.to(dtype=dtype)
        sample = _sample(output).to(z.dtype)
        return (sample,) if isinstance(output, tuple) else type(output)(sample=sample)

    @functools.wraps(original)
    def decode(z, *args, **kwargs):
        if vae.dtype == torch.float32:
            return original(z, *args, **kwargs)
        if state["float32"]:
            return in_float32(z, args, kwargs)
        output = original(z, *args, **kwargs)
        if _finite(output):
            return output
        state["float32"] = True
        log.warning("VAE produced NaN in %s; decoded again in float32 (%s; this VAE decodes in float32 from now on)",
                    str(vae.dtype).removeprefix("torch."), name or type(pipe).__name__)
        return in_float32(z, args, kwargs)

    vae.decode = decode
    vae._easel_nan_safe = True


# --------------------------------------------------------------------------------------------- fast path

def enable_tf32(device) -> bool:
    """TF32 matmuls and convolutions on Ampere (compute capability 8) and later; False elsewhere."""
    if device_kind(device) != "cuda" or not torch.cuda.is_available():
        return False
    index = torch.device(_device_name(device)).index
    major, _minor = torch.cuda.get_device_capability(index)
    if major < 8:
        return False
    # The legacy flags, as diffusers and accelerate set them (mixing them with torch's newer
    # fp32_precision API is an error).
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def _use_sdpa(unet) -> str:
    """The attention the UNet runs: diffusers' default is SDPA (`AttnProcessor2_0`, flash / memory
    efficient kernels on CUDA) where torch has it; a UNet left on the classic processor is moved to it."""
    processors = getattr(unet, "attn_processors", {})
    kinds = {type(processor).__name__ for processor in processors.values()}
    if "AttnProcessor" in kinds and hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        unet.set_attn_processor({name: AttnProcessor2_0() if type(p) is AttnProcessor else p
                                 for name, p in processors.items()})
        kinds = {type(processor).__name__ for processor in unet.attn_processors.values()}
    if kinds & {"SlicedAttnProcessor", "SlicedAttnAddedKVProcessor"}:
        return "sliced"
    return "sdpa" if "AttnProcessor2_0" in kinds else ", ".join(sorted(kinds)) or "none"


def apply_fast_path(pipe, options: DeviceConfig, device) -> dict[str, Any]:
    """channels_last UNet, SDPA attention (unless attention slicing was asked for), TF32 on Ampere
    and later, and `compile_unet` when `[device] compile` is on (not for an offloaded UNet: the
    offload hooks would sit inside the graph). Returns what was applied."""
    unet = getattr(pipe, "unet", None)
    offload = getattr(pipe, "_easel_offload", "none")
    applied: dict[str, Any] = {"channels_last": False, "tf32": False, "attention": None, "compiled": False}
    if unet is None:
        return applied
    if options.channels_last and offload != "sequential":
        unet.to(memory_format=torch.channels_last)
        applied["channels_last"] = True
    if options.tf32:
        applied["tf32"] = enable_tf32(device)
    applied["attention"] = "sliced" if options.attention_slicing else _use_sdpa(unet)
    if options.compile:
        if offload != "none":
            log.warning("[device] compile skipped: the UNet is offloaded (%s)", offload)
        else:
            compile_unet(pipe, options.compile_sizes)
            applied["compiled"] = True
    return applied


class CompiledUNet:
    """The UNet's forward, compiled per size bucket.

    `torch.compile(forward, dynamic=False)`: every input shape is a static graph. What keeps it from
    recompiling per request:
    - only latents whose picture size (latent size x the VAE factor) is one of `buckets` go to the
      compiled function; any other size runs the original, eager forward, so an odd size never
      compiles anything;
    - within a bucket a graph depends on the batch (images x 2 for CFG, more for AND parts) and the
      prompt length (77 tokens per chunk): each (shape, dtype) key compiles once, the first time it
      is seen (or at warm-up) and is reused by every later request with that key; dynamo's own
      guards pick the graph. At most `max_shapes` keys are compiled (dynamo's recompile limit is
      raised to match); past it new keys run eager, logged once;
    - the timestep goes in as a float32 tensor whatever the sampler made it (int64, float64, a
      Python number): the UNet casts it to float32 anyway, and a dtype change would be a new graph;
      its value is data, never guarded on.
    Weights are the module's own parameters (inputs of the graph), so a LoRA merged in place is seen
    without recompiling.
    """

    def __init__(self, unet, buckets: frozenset[tuple[int, int]], *, factor: int, backend=None, mode=None,
                 max_shapes: int = MAX_COMPILED_SHAPES):
        import torch._dynamo

        self.unet = unet
        self.buckets = buckets
        self.factor = factor
        self.eager = unet.forward
        self.compiled = torch.compile(self.eager, dynamic=False, backend=backend or COMPILE_BACKEND, mode=mode)
        self.shapes: set[tuple] = set()
        self.max_shapes = max_shapes
        self._full_logged = False
        config = torch._dynamo.config
        for limit in ("recompile_limit", "cache_size_limit"):
            if hasattr(config, limit):
                setattr(config, limit, max(getattr(config, limit), max_shapes + 1))
                break
        if hasattr(config, "accumulated_recompile_limit"):
            config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * max_shapes)

    def key(self, sample: torch.Tensor, encoder_hidden_states, kwargs) -> tuple | None:
        height, width = sample.shape[-2] * self.factor, sample.shape[-1] * self.factor
        if (width, height) not in self.buckets:
            return None
        added = kwargs.get("added_cond_kwargs") or {}
        return (tuple(sample.shape), sample.dtype, str(sample.device),
                tuple(getattr(encoder_hidden_states, "shape", ())),
                tuple(sorted((k, tuple(v.shape)) for k, v in added.items() if torch.is_tensor(v))))

    def __call__(self, sample, timestep, encoder_hidden_states=None, *args, **kwargs):
        key = self.key(sample, encoder_hidden_states, kwargs)
        if key is not None and key not in self.shapes:
            if len(self.shapes) >= self.max_shapes:
                if not self._full_logged:
                    log.warning("compiled UNet holds %d shapes; new ones run uncompiled", self.max_shapes)
                    self._full_logged = True
                key = None
            else:
                log.info("compiling the UNet for %s", key[0])
                self.shapes.add(key)
        if key is None:
            return self.eager(sample, timestep, encoder_hidden_states, *args, **kwargs)
        timestep = torch.as_tensor(timestep, device=sample.device).to(torch.float32)
        return self.compiled(sample, timestep, encoder_hidden_states, *args, **kwargs)


def compile_unet(pipe, buckets: Iterable[str | tuple[int, int]], *, backend=None, mode=None,
                 max_shapes: int = MAX_COMPILED_SHAPES) -> CompiledUNet:
    """Compile `pipe.unet` for the given picture sizes ("832x1216" or (832, 1216)); see `CompiledUNet`.
    The UNet stays the same module (its config, dtype, hooks, attention processors), only its
    `forward` dispatches. Idempotent: a UNet compiled already keeps its compiled forward."""
    unet = pipe.unet
    existing = getattr(unet, "_easel_compiled", None)
    if existing is not None:
        return existing
    factor = getattr(pipe, "vae_scale_factor", 8)
    compiled = CompiledUNet(unet, size_buckets(buckets), factor=factor, backend=backend, mode=mode,
                            max_shapes=max_shapes)
    unet.forward = compiled
    unet._easel_compiled = compiled
    return compiled


def warm_up(pipe, buckets: Iterable[str | tuple[int, int]] | None = None, *, steps: int = 1) -> int:
    """One step at each bucket size (one image, empty prompt, CFG: the shapes of a one-image
    request with a prompt of up to 75 tokens), so those graphs compile now rather than during the
    first members' jobs. Returns the number of sizes run. Buckets default to the compiled ones."""
    from PIL import Image

    compiled = getattr(getattr(pipe, "unet", None), "_easel_compiled", None)
    sizes = sorted(size_buckets(buckets) if buckets is not None else (compiled.buckets if compiled else ()))
    inpaint = int(getattr(pipe.unet.config, "in_channels", 4)) == 9
    for width, height in sizes:
        kwargs: dict[str, Any] = dict(prompt="", negative_prompt="", num_inference_steps=steps, width=width,
                                      height=height, guidance_scale=7.0, output_type="latent")
        if inpaint:
            kwargs.update(image=Image.new("RGB", (width, height)), mask_image=Image.new("L", (width, height), 255))
        with torch.inference_mode():
            pipe(**kwargs)
    if sizes:
        log.info("warmed up the UNet at %s", ", ".join(f"{w}x{h}" for w, h in sizes))
    return len(sizes)
