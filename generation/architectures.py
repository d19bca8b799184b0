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
from collections.abc import Callable, Iterator, Mapping
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
    # "sd1", "sd2" or "sdxl": what the rest of the engine branches on (tiny test models included).
    family: str
    pipeline_class_name: str
    # Widths of the text encoders' token embeddings, in component order.
    text_widths: tuple[int, ...]
    cross_attention_width: int
    unet_base_channels: int
    # Pad token of each tokenizer component of the pipeline.
    pad_tokens: tuple[tuple[str, str], ...]
    # Whether detection picks it from the text encoders' widths. False where files of another
    # architecture look the same (sd2-base: only an explicit choice or a .yaml selects it) and for the
    # inpainting variants, which detection reaches through their base and the UNet's input channels.
    detectable: bool = True
    # The square size the model was trained at: the default image size for it (None: the config's).
    native_size: int | None = None
    # 4: latents only. 9: a dedicated inpainting UNet (4 latent + 1 mask + 4 masked-image latent channels).
    unet_in_channels: int = 4

    def pad_token(self, component: str) -> str:
        return dict(self.pad_tokens)[component]

    @property
    def inpainting(self) -> bool:
        """A dedicated inpainting model: its UNet also reads the mask and the masked image."""
        return self.unet_in_channels == INPAINTING_UNET_CHANNELS


INPAINTING_UNET_CHANNELS = 9
INPAINTING_SUFFIX = "-inpaint"


def _sd(
    name: str, label: str, family: str, text_width: int, base: int, pad: str, *, detectable: bool = True,
    native_size: int | None = None, inpainting: bool = False,
) -> Architecture:
    return Architecture(
        name=name, label=label, family=family,
        pipeline_class_name="StableDiffusionInpaintPipeline" if inpainting else "StableDiffusionPipeline",
        text_widths=(text_width,), cross_attention_width=text_width, unet_base_channels=base,
        pad_tokens=(("tokenizer", pad),), detectable=detectable and not inpainting, native_size=native_size,
        unet_in_channels=INPAINTING_UNET_CHANNELS if inpainting else 4,
    )


def _sdxl(
    name: str, label: str, clip_l: int, clip_g: int, base: int, *, native_size: int | None = None,
    inpainting: bool = False,
) -> Architecture:
    return Architecture(
        name=name, label=label, family="sdxl",
        pipeline_class_name="StableDiffusionXLInpaintPipeline" if inpainting else "StableDiffusionXLPipeline",
        text_widths=(clip_l, clip_g), cross_attention_width=clip_l + clip_g, unet_base_channels=base,
        pad_tokens=(("tokenizer", CLIP_EOS), ("tokenizer_2", OPEN_CLIP_PAD)), native_size=native_size,
        detectable=not inpainting, unet_in_channels=INPAINTING_UNET_CHANNELS if inpainting else 4,
    )


ARCHITECTURES: Mapping[str, Architecture] = MappingProxyType({
    "sd1": _sd("sd1", "Stable Diffusion 1.x", "sd1", 768, 320, CLIP_EOS, native_size=512),
    "sd2": _sd("sd2", "Stable Diffusion 2.x (768, v-prediction)", "sd2", 1024, 320, OPEN_CLIP_PAD, native_size=768),
    # Same weights layout as "sd2": files do not say which one they are.
    "sd2-base": _sd(
        "sd2-base", "Stable Diffusion 2.x base (512, epsilon)", "sd2", 1024, 320, OPEN_CLIP_PAD, detectable=False,
        native_size=512,
    ),
    "sdxl": _sdxl("sdxl", "Stable Diffusion XL", 768, 1280, 320, native_size=1024),
    # Random-weight models with the real layouts but tiny widths, for tests and offline demos.
    "tiny-sd1": _sd("tiny-sd1", "tiny SD 1.x test model", "sd1", 32, 32, CLIP_EOS),
    "tiny-sdxl": _sdxl("tiny-sdxl", "tiny SDXL test model", 32, 64, 32),
    # Dedicated inpainting models (runwayml's SD 1.5 inpainting, diffusers' SDXL inpainting 0.1): the
    # base layout with a 9-channel UNet input. After the bases, so width -> label lookups find the base.
    "sd1-inpaint": _sd("sd1-inpaint", "Stable Diffusion 1.x inpainting", "sd1", 768, 320, CLIP_EOS, native_size=512,
                       inpainting=True),
    "sdxl-inpaint": _sdxl("sdxl-inpaint", "Stable Diffusion XL inpainting", 768, 1280, 320, native_size=1024,
                          inpainting=True),
    "tiny-sd1-inpaint": _sd("tiny-sd1-inpaint", "tiny SD 1.x inpainting test model", "sd1", 32, 32, CLIP_EOS,
                            inpainting=True),
    "tiny-sdxl-inpaint": _sdxl("tiny-sdxl-inpaint", "tiny SDXL inpainting test model", 32, 64, 32, inpainting=True),
})

# Keys that identify each part of an LDM-layout checkpoint.
UNET_PREFIX = "model.diffusion_model."
UNET_CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
SD1_TOKEN_EMBEDDING = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
SD2_TOKEN_EMBEDDING = "cond_stage_model.model.token_embedding.weight"
SDXL_CLIP_L_TOKEN_EMBEDDING = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
SDXL_CLIP_G_TOKEN_EMBEDDING = "conditioner.embedders.1.model.token_embedding.weight"
SDXL_REFINER_TOKEN_EMBEDDING = "conditioner.embedders.0.model.token_embedding.weight"
_OLD_SD1_TOKEN_EMBEDDING = "cond_stage_model.transformer.embeddings.token_embedding.weight"
# Some old SD-1.x files lack the `text_model.` level; A1111 renames their keys the same way.
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


def family(architecture_name: str) -> str:
    """The family the engine branches on: "sd1", "sd2" or "sdxl" (tiny models report the one they imitate,
    inpainting models the one they were made from)."""
    return architecture(architecture_name).family


def inpainting_variant(architecture_name: str) -> str | None:
    """The dedicated inpainting architecture of a base one ("sd1" -> "sd1-inpaint"), None where we have none."""
    name = architecture(architecture_name).name
    variant = ARCHITECTURES.get(name + INPAINTING_SUFFIX)
    return variant.name if variant is not None and variant.inpainting else None


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


def load_weights_only(path: Path) -> Any:
    """A pickle file (.ckpt, .pt, .pth) from the operator's folder, through torch's weights_only
    unpickler (plain tensors and containers only), memory-mapped when the file allows it."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # mmap needs the zip format (torch >= 1.6 files)
        return torch.load(path, map_location="cpu", weights_only=True)


def read_safetensors_header(path: Path) -> tuple[int, dict[str, Any]]:
    """The header length and the parsed JSON header of a .safetensors file (no tensor data is read)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            prefix = file.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
            if not 2 <= length <= min(size - 8, _MAX_HEADER_BYTES):
                raise ModelLoadError(f"{path.name} is not a valid .safetensors file (bad header)")
            raw = file.read(length)
    except FileNotFoundError:
        raise ModelNotFound(f"{path} does not exist") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path.name} is not a valid .safetensors file (unreadable header)")
    return length, header


def read_safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a .safetensors header; the tensor data is never read."""
    _, header = read_safetensors_header(path)
    try:
        return {name: tuple(int(dim) for dim in info["shape"]) for name, info in header.items()
                if name != "__metadata__"}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ModelLoadError(f"{Path(path).name} is not a valid .safetensors file (unreadable header)") from None


def _what_else_it_is(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """A hint for files that hold no SD checkpoint, so the user learns what they dropped in."""
    keys = list(shapes)
    if any("lora" in key.lower() for key in keys):
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


_FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


def detect_architecture_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """Architecture name of an LDM-layout state dict, from its tensor names and shapes only."""
    unet_in = shapes.get(UNET_CONV_IN)
    if unet_in is None or len(unet_in) != 4:
        raise ModelLoadError(f"not a Stable Diffusion checkpoint (no UNet weights): {_what_else_it_is(shapes)}")
    if unet_in[1] not in (4, INPAINTING_UNET_CHANNELS):
        kind = {8: "an instruct-pix2pix"}.get(unet_in[1], f"a {unet_in[1]}-channel")
        raise ModelLoadError(
            f"this is {kind} checkpoint; only normal checkpoints (4 UNet input channels) and inpainting "
            f"checkpoints (9) are supported"
        )

    if SDXL_CLIP_G_TOKEN_EMBEDDING in shapes:
        widths = (_width(shapes, SDXL_CLIP_L_TOKEN_EMBEDDING), _width(shapes, SDXL_CLIP_G_TOKEN_EMBEDDING))
        found = f"SDXL text encoders of widths {widths[0]} and {widths[1]}"
    elif SDXL_REFINER_TOKEN_EMBEDDING in shapes:
        raise ModelLoadError("this is an SDXL refiner checkpoint; only base models can generate images on their own")
    elif SD2_TOKEN_EMBEDDING in shapes:
        widths = (_width(shapes, SD2_TOKEN_EMBEDDING),)
        found = f"an OpenCLIP text encoder of width {widths[0]}"
    else:
        width = _width(shapes, SD1_TOKEN_EMBEDDING) or _width(shapes, _OLD_SD1_TOKEN_EMBEDDING)
        if width is None:
            raise ModelLoadError("checkpoint has a UNet but no text encoder (cond_stage_model / conditioner weights)")
        widths = (width,)
        found = f"a CLIP text encoder of width {width}"
    layout = "sdxl" if len(widths) == 2 else ("sd2" if SD2_TOKEN_EMBEDDING in shapes else "sd1")
    name = next(
        (
            spec.name for spec in ARCHITECTURES.values()
            if spec.detectable and spec.family == layout and spec.text_widths == widths
        ),
        None,
    )
    if name is None:
        raise ModelLoadError(f"unknown checkpoint architecture: {found}")
    if unet_in[1] == INPAINTING_UNET_CHANNELS:
        # Same layout as its base model but for the UNet's first convolution (mask + masked image).
        variant = inpainting_variant(name)
        if variant is None:
            family_name = _FAMILY_NAMES.get(ARCHITECTURES[name].family, ARCHITECTURES[name].label)
            raise ModelLoadError(
                f"this is an {family_name} inpainting checkpoint; only SD 1.x and SDXL inpainting checkpoints "
                f"are supported"
            )
        name = variant

    spec = ARCHITECTURES[name]
    if unet_in[0] != spec.unet_base_channels:
        raise ModelLoadError(
            f"unknown checkpoint architecture: {found} but a UNet with {unet_in[0]} base channels "
            f"({spec.label} has {spec.unet_base_channels})"
        )
    cross_attention_keys = (
        key for key in shapes if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight")
    )
    cross = next((shapes[key][-1] for key in cross_attention_keys), None)
    if cross is not None and cross != spec.cross_attention_width:
        raise ModelLoadError(
            f"unknown checkpoint architecture: {found} but UNet cross-attention of width {cross} "
            f"({spec.label} has {spec.cross_attention_width})"
        )
    return name


def detect_architecture(path: Path) -> str:
    """Architecture name of a single-file checkpoint. A `.safetensors` file: only its header is
    read. A `.ckpt` (the caller has allowed pickles): `weights_only` unpickling, memory-mapped so
    the weights themselves are not read; an old non-zip file is read whole."""
    path = Path(path)
    if path.suffix.lower() != ".ckpt":
        return detect_architecture_from_shapes(read_safetensors_shapes(path))
    state = load_weights_only(path)
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{path.name} does not hold a state dict")
    return detect_architecture_from_shapes({key: tuple(t.shape) for key, t in _tensor_state_dict(state).items()})


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


def build_components(
    architecture_name: str, make_model: Callable[[str, type], torch.nn.Module]
) -> dict[str, Any]:
    """Keyword arguments for the architecture's pipeline class, from its shipped `model_index.json`.

    Tokenizers, schedulers and pipeline options come from the configs; each model component
    (UNet, VAE, text encoders) from `make_model(component_name, model_class)`, in a fixed order.
    """
    import diffusers
    import transformers

    spec = architecture(architecture_name)
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
        elif library in ("diffusers", "transformers"):
            component_class = getattr(diffusers if library == "diffusers" else transformers, class_name)
            if issubclass(component_class, diffusers.SchedulerMixin):
                components[name] = component_class.from_pretrained(folder, subfolder=name)
            else:
                components[name] = make_model(name, component_class)
        else:
            raise ModelLoadError(f"config for {spec.name} names an unsupported component {library}.{class_name}")
    return components


def _load_components(checkpoint: dict[str, torch.Tensor], spec: Architecture, dtype: torch.dtype) -> dict[str, Any]:
    """Every pipeline component, its weights converted from the checkpoint by diffusers' own converters."""
    import torch
    import transformers
    from diffusers.loaders.single_file_utils import SingleFileComponentError, create_diffusers_clip_model_from_ldm

    folder = str(config_dir(spec.name))

    def load_model(name: str, model_class: type) -> torch.nn.Module:
        part = name.replace("_", " ")
        try:
            if issubclass(model_class, transformers.PreTrainedModel):
                model = create_diffusers_clip_model_from_ldm(
                    model_class, checkpoint=checkpoint, config=folder, subfolder=name, local_files_only=True
                )
            else:
                # No dtype here: diffusers would cast before we can see missing weights.
                model = model_class.from_single_file(checkpoint, config=folder, subfolder=name, local_files_only=True)
        except SingleFileComponentError:
            raise ModelLoadError(f"checkpoint has no weights for the {part}") from None
        except NotImplementedError as exc:
            # diffusers moves the model before we can look: weights it never got are empty meta tensors.
            if "meta tensor" not in str(exc):
                raise
            raise ModelLoadError(f"checkpoint lacks some weights of the {part}") from None
        # Weights absent from the file stay as empty "meta" tensors; say so now, not at generation time.
        missing = [key for key, param in model.named_parameters() if param.device.type == "meta"]
        if missing:
            raise ModelLoadError(f"checkpoint lacks {len(missing)} weights of the {part}, e.g. {missing[0]}")
        return model.to(dtype)

    return build_components(spec.name, load_model)


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
