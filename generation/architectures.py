"""Which Stable Diffusion family a single-file checkpoint belongs to, and loading it offline.

A1111/Civitai checkpoints are one `.safetensors` (or `.ckpt`) file in the original LDM key layout:
weights only, no configuration. diffusers needs a config folder of the same architecture to build the
pipeline and would fetch one from the Hub; the folders ship in `generation/configs/<architecture>/`
(JSON only, no weights, no tokenizer) so loading never touches the network. The CLIP tokenizer is
rebuilt from the BPE merges inside the `open-clip-torch` wheel.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .errors import EaselError, ModelLoadError, ModelNotFound

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from transformers import CLIPTokenizer

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"

CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
# OpenCLIP (SD 2.x, SDXL's second encoder) pads with "!" (id 0) instead of the end token.
OPEN_CLIP_PAD = "!"
_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps the first 49152 - 256 - 2 merges of the file (the rest were never trained).
_BPE_MERGE_COUNT = 49152 - 256 - 2

# Largest safetensors header we accept; the format itself caps it at 100 MB.
_MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class Architecture:
    """One model family we can load from a single file."""

    name: str
    label: str
    pipeline_class_name: str
    # Width of the (first) text encoder's token embeddings and of the UNet's cross-attention input.
    text_width: int
    cross_attention_width: int
    unet_base_channels: int
    # Pad token of each tokenizer component of the pipeline.
    pad_tokens: tuple[tuple[str, str], ...]

    def pad_token(self, component: str) -> str:
        return dict(self.pad_tokens)[component]


ARCHITECTURES: Mapping[str, Architecture] = MappingProxyType({
    "sd1": Architecture(
        name="sd1", label="Stable Diffusion 1.x", pipeline_class_name="StableDiffusionPipeline",
        text_width=768, cross_attention_width=768, unet_base_channels=320,
        pad_tokens=(("tokenizer", CLIP_EOS),),
    ),
    "sd2": Architecture(
        name="sd2", label="Stable Diffusion 2.x (768, v-prediction)", pipeline_class_name="StableDiffusionPipeline",
        text_width=1024, cross_attention_width=1024, unet_base_channels=320,
        pad_tokens=(("tokenizer", OPEN_CLIP_PAD),),
    ),
    # Same weights layout as "sd2"; never detected (files do not say which), chosen by override only.
    "sd2-base": Architecture(
        name="sd2-base", label="Stable Diffusion 2.x base (512, epsilon)", pipeline_class_name="StableDiffusionPipeline",
        text_width=1024, cross_attention_width=1024, unet_base_channels=320,
        pad_tokens=(("tokenizer", OPEN_CLIP_PAD),),
    ),
    "sdxl": Architecture(
        name="sdxl", label="Stable Diffusion XL", pipeline_class_name="StableDiffusionXLPipeline",
        text_width=768, cross_attention_width=2048, unet_base_channels=320,
        pad_tokens=(("tokenizer", CLIP_EOS), ("tokenizer_2", OPEN_CLIP_PAD)),
    ),
    "tiny-sd1": Architecture(
        name="tiny-sd1", label="tiny SD 1.x test model", pipeline_class_name="StableDiffusionPipeline",
        text_width=32, cross_attention_width=32, unet_base_channels=32,
        pad_tokens=(("tokenizer", CLIP_EOS),),
    ),
})

# Keys that identify each part of an LDM-layout checkpoint.
UNET_PREFIX = "model.diffusion_model."
UNET_CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
SD1_TOKEN_EMBEDDING = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
SD2_TOKEN_EMBEDDING = "cond_stage_model.model.token_embedding.weight"
SDXL_CLIP_L_TOKEN_EMBEDDING = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
SDXL_CLIP_G_TOKEN_EMBEDDING = "conditioner.embedders.1.model.token_embedding.weight"
SDXL_REFINER_TOKEN_EMBEDDING = "conditioner.embedders.0.model.token_embedding.weight"
# Files saved with transformers < 4.x lack the `text_model.` level; A1111 renames them the same way.
_OLD_SD1_TEXT_PREFIXES = (
    ("cond_stage_model.transformer.embeddings.", "cond_stage_model.transformer.text_model.embeddings."),
    ("cond_stage_model.transformer.encoder.", "cond_stage_model.transformer.text_model.encoder."),
    ("cond_stage_model.transformer.final_layer_norm.", "cond_stage_model.transformer.text_model.final_layer_norm."),
)


def architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ModelLoadError(
            f"unknown model architecture {name!r}; known: {', '.join(ARCHITECTURES)}"
        ) from None


def config_dir(architecture_name: str) -> Path:
    """The shipped diffusers config folder (model_index.json + component configs) of an architecture."""
    architecture(architecture_name)
    return CONFIGS_DIR / architecture_name


def pipeline_class(architecture_name: str) -> type[DiffusionPipeline]:
    import diffusers

    return getattr(diffusers, architecture(architecture_name).pipeline_class_name)


# ---------------------------------------------------------------------------------------------------
# Tokenizer


def _bpe_file() -> Path:
    # Found without importing open_clip: its __init__ needs torchvision, which we do not install.
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / _BPE_FILE
            if candidate.is_file():
                return candidate
    raise ModelLoadError(
        "the CLIP tokenizer needs open-clip-torch's BPE file; install it with "
        "`pip install --no-deps open-clip-torch`"
    )


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte maps to a printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


@functools.cache
def _clip_bpe() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """(tokens in id order, merges) of the CLIP ViT-L/14 tokenizer; immutable so it can be cached."""
    lines = gzip.decompress(_bpe_file().read_bytes()).decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : _BPE_MERGE_COUNT + 1])
    alphabet = list(_byte_to_unicode().values())
    tokens = (
        *alphabet,
        *(symbol + "</w>" for symbol in alphabet),
        *("".join(merge) for merge in merges),
        CLIP_BOS,
        CLIP_EOS,
    )
    if len(tokens) != CLIP_VOCAB_SIZE or any(len(merge) != 2 for merge in merges):
        raise ModelLoadError(f"{_BPE_FILE} is not the CLIP BPE file ({len(tokens)} tokens); reinstall open-clip-torch")
    return tokens, merges  # type: ignore[return-value]


def sd_clip_tokenizer(*, pad_token: str = CLIP_EOS) -> CLIPTokenizer:
    """The exact 49,408-token CLIP tokenizer of Stable Diffusion, built offline.

    A new object on every call: textual inversion adds tokens to the tokenizer it is given.
    SD 1.x and SDXL's first tokenizer pad with `<|endoftext|>`; SD 2.x and SDXL's second with "!".
    """
    from transformers import CLIPTokenizer

    tokens, merges = _clip_bpe()
    return CLIPTokenizer(
        vocab={token: index for index, token in enumerate(tokens)},
        merges=list(merges),
        bos_token=CLIP_BOS,
        eos_token=CLIP_EOS,
        unk_token=CLIP_EOS,
        pad_token=pad_token,
        model_max_length=CLIP_MAX_LENGTH,
    )


# ---------------------------------------------------------------------------------------------------
# Detection


def read_safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a .safetensors header; the tensor data is never read."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            prefix = file.read(8)
            header_length = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
            if not 2 <= header_length <= min(size - 8, _MAX_HEADER_BYTES):
                raise ModelLoadError(f"{path.name} is not a valid .safetensors file (bad header)")
            raw = file.read(header_length)
    except FileNotFoundError:
        raise ModelNotFound(f"{path} does not exist") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw)
        shapes = {
            name: tuple(int(dim) for dim in info["shape"])
            for name, info in header.items()
            if name != "__metadata__"
        }
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError):
        raise ModelLoadError(f"{path.name} is not a valid .safetensors file (unreadable header)") from None
    return shapes


def _what_else_it_is(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """A hint for files that hold no SD checkpoint, so the user learns what they dropped in."""
    keys = list(shapes)
    if any("lora" in key.lower() for key in keys[:200]) or any(key.startswith("lora_") for key in keys):
        return "it looks like a LoRA"
    if any(key in shapes for key in ("emb_params", "string_to_param", "clip_l", "clip_g")) and len(keys) <= 4:
        return "it looks like a textual inversion embedding"
    if "encoder.conv_in.weight" in shapes or (keys and all(k.startswith("first_stage_model.") for k in keys)):
        return "it looks like a VAE"
    if "conv_in.weight" in shapes and any(k.startswith("down_blocks.") for k in keys):
        return "it looks like a diffusers UNet; put the whole diffusers folder in the models folder instead"
    sample = ", ".join(keys[:3]) or "no tensors"
    return f"{len(keys)} tensors, e.g. {sample}"


def _width(shapes: Mapping[str, tuple[int, ...]], key: str) -> int | None:
    shape = shapes.get(key)
    return shape[-1] if shape else None


def detect_architecture_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """Architecture name of an LDM-layout state dict, from its tensor names and shapes only."""
    unet_in = shapes.get(UNET_CONV_IN)
    if unet_in is None or len(unet_in) != 4:
        raise ModelLoadError(f"not a Stable Diffusion checkpoint (no UNet weights): {_what_else_it_is(shapes)}")
    if unet_in[1] != 4:
        kind = {9: "an inpainting", 8: "an instruct-pix2pix"}.get(unet_in[1], f"a {unet_in[1]}-channel")
        raise ModelLoadError(f"this is {kind} checkpoint; only normal txt2img checkpoints (4 input channels) are supported")

    if SDXL_CLIP_G_TOKEN_EMBEDDING in shapes:
        found = f"SDXL text encoders of width {_width(shapes, SDXL_CLIP_L_TOKEN_EMBEDDING)} and {_width(shapes, SDXL_CLIP_G_TOKEN_EMBEDDING)}"
        name = "sdxl" if (
            _width(shapes, SDXL_CLIP_L_TOKEN_EMBEDDING) == 768 and _width(shapes, SDXL_CLIP_G_TOKEN_EMBEDDING) == 1280
        ) else None
    elif SDXL_REFINER_TOKEN_EMBEDDING in shapes:
        raise ModelLoadError("this is an SDXL refiner checkpoint; only base models can generate images on their own")
    elif SD2_TOKEN_EMBEDDING in shapes:
        width = _width(shapes, SD2_TOKEN_EMBEDDING)
        found = f"an OpenCLIP text encoder of width {width}"
        name = "sd2" if width == 1024 else None
    else:
        width = _width(shapes, SD1_TOKEN_EMBEDDING) or _width(
            shapes, "cond_stage_model.transformer.embeddings.token_embedding.weight"
        )
        if width is None:
            raise ModelLoadError("checkpoint has a UNet but no text encoder (cond_stage_model / conditioner weights)")
        found = f"a CLIP text encoder of width {width}"
        name = {768: "sd1", 32: "tiny-sd1"}.get(width)
    if name is None:
        raise ModelLoadError(f"unknown checkpoint architecture: {found}")

    spec = ARCHITECTURES[name]
    if unet_in[0] != spec.unet_base_channels:
        raise ModelLoadError(
            f"unknown checkpoint architecture: {found} but a UNet with {unet_in[0]} base channels "
            f"({spec.label} has {spec.unet_base_channels})"
        )
    cross = next(
        (shape[-1] for key, shape in shapes.items() if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight")),
        None,
    )
    if cross is not None and cross != spec.cross_attention_width:
        raise ModelLoadError(
            f"unknown checkpoint architecture: {found} but UNet cross-attention of width {cross} "
            f"({spec.label} has {spec.cross_attention_width})"
        )
    return name


def detect_architecture(path: Path) -> str:
    """Architecture name of a single-file `.safetensors` checkpoint; reads only its header."""
    return detect_architecture_from_shapes(read_safetensors_shapes(Path(path)))


# ---------------------------------------------------------------------------------------------------
# Loading


def _tensor_state_dict(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    import torch

    # Training checkpoints nest the weights under "state_dict" next to step counters and optimizer state.
    while isinstance(state_dict.get("state_dict"), Mapping):
        state_dict = state_dict["state_dict"]
    tensors = {key: value for key, value in state_dict.items() if isinstance(value, torch.Tensor)}
    renamed = {}
    for key, value in tensors.items():
        for old, new in _OLD_SD1_TEXT_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = value
    return renamed


def _read_checkpoint(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    if suffix == ".ckpt":
        import torch

        # The restricted unpickler: plain tensors and containers only, no code runs.
        return torch.load(path, map_location="cpu", weights_only=True)
    raise ModelLoadError(f"{path.name}: single-file checkpoints must end in .safetensors or .ckpt")


class _DropEmptyFloat32Warning(logging.Filter):
    """diffusers 0.42 warns on every `.to(dtype)`, even when no module must stay float32 (an empty list)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


@contextmanager
def _quiet_dtype_casts() -> Iterator[None]:
    logger = logging.getLogger("diffusers.models.modeling_utils")
    quiet = _DropEmptyFloat32Warning()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _load_components(
    checkpoint: dict[str, torch.Tensor], spec: Architecture, dtype: torch.dtype
) -> dict[str, Any]:
    """Every pipeline component, built from the shipped configs and the checkpoint's weights."""
    import diffusers
    import torch
    import transformers
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm

    folder = config_dir(spec.name)
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    components: dict[str, Any] = {}
    for name, value in sorted(index.items()):
        if name.startswith("_"):
            continue
        if not isinstance(value, list):  # pipeline options such as force_zeros_for_empty_prompt
            components[name] = value
            continue
        library, class_name = value
        if library is None:
            components[name] = None
        elif class_name == "CLIPTokenizer":
            components[name] = sd_clip_tokenizer(pad_token=spec.pad_token(name))
        elif library == "transformers":
            components[name] = create_diffusers_clip_model_from_ldm(
                getattr(transformers, class_name), checkpoint=checkpoint, config=str(folder), subfolder=name,
                torch_dtype=dtype, local_files_only=True,
            )
        elif library == "diffusers" and issubclass(cls := getattr(diffusers, class_name), diffusers.SchedulerMixin):
            components[name] = cls.from_pretrained(folder, subfolder=name)
        elif library == "diffusers":
            components[name] = cls.from_single_file(
                checkpoint, config=str(folder), subfolder=name, local_files_only=True, dtype=dtype
            )
        else:
            raise ModelLoadError(f"config for {spec.name} names an unsupported component {library}.{class_name}")
        module = components[name]
        if isinstance(module, torch.nn.Module):
            # Weights absent from the file stay as empty "meta" tensors; say so now, not at generation time.
            missing = [key for key, param in module.named_parameters() if param.device.type == "meta"]
            if missing:
                raise ModelLoadError(
                    f"checkpoint has no weights for the {name.replace('_', ' ')} "
                    f"({len(missing)} missing, e.g. {missing[0]})"
                )
    return components


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def load_single_file(
    path: Path,
    *,
    dtype: torch.dtype,
    state_dict: Mapping[str, Any] | None = None,
    architecture_name: str | None = None,
) -> DiffusionPipeline:
    """An A1111/LDM-layout checkpoint as a diffusers pipeline on the CPU, fully offline.

    `state_dict` is the file's contents when the caller has already read it (e.g. a `.ckpt` it
    unpickled its own way); otherwise `.safetensors` is read directly and `.ckpt` through
    `torch.load(weights_only=True)`. `architecture_name` overrides detection (e.g. "sd2-base").
    """
    path = Path(path)
    try:
        if state_dict is None:
            if not path.is_file():
                raise ModelNotFound(f"{path} does not exist")
            if path.suffix.lower() == ".safetensors" and architecture_name is None:
                architecture_name = detect_architecture(path)  # cheap: fails before reading gigabytes
            state_dict = _read_checkpoint(path)
        checkpoint = _tensor_state_dict(state_dict)
        if architecture_name is None:
            architecture_name = detect_architecture_from_shapes(
                {key: tuple(tensor.shape) for key, tensor in checkpoint.items()}
            )
        spec = architecture(architecture_name)
        with _quiet_dtype_casts():
            components = _load_components(checkpoint, spec, dtype)
        return pipeline_class(spec.name)(**components)
    except ModelLoadError as exc:
        if path.name in str(exc):
            raise
        raise ModelLoadError(f"{path.name}: {exc}") from exc
    except EaselError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not load {path.name}: {_one_line(exc)}") from exc
