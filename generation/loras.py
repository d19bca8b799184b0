"""LoRA and LyCORIS files in loras/: names, aliases, A1111's hashes and the width each was trained for.

A scan reads only what is cheap: the `.safetensors` header (tensor names, shapes, `__metadata__`)
and, for the hash, the file's bytes once (then cached). Tensor data is never loaded here; applying
a LoRA is generation/lora_networks.py's business.

As in A1111 (extensions-builtin/Lora, v1.10):
- a LoRA's name is its file stem, case-sensitive; `<lora:NAME:weight>` also finds it by its alias,
  the metadata's `ss_output_name` (only kept here when it differs from the stem);
- its hash is the metadata's `sshs_model_hash` when present, else for `.safetensors` the "addnet"
  hash (sha256 of the bytes after the 8-byte header length and the JSON header, so editing the
  metadata keeps it), else the sha256 of the whole file; the short hash is its first 12 characters.

Where easel is stricter than A1111: pickles (`.pt`, `.ckpt`) are listed but skipped unless
`[models] allow_pickle_checkpoints` is set; the folder is not searched recursively; a file that
is a link to somewhere outside the folder is skipped; a name that cannot be written inside a
`<lora:...>` tag (`:`, `<`, `>`, line breaks) is skipped; of two files with the same stem the
`.safetensors` one wins; an `sshs_model_hash` that is not a hex string is ignored (it would end
up in infotext); and a LoRA whose width fits no checkpoint family present is skipped, as
embeddings are.

Hashes go through the same HashCache as checkpoints. The full-file sha256 is stored under the
file's own path (so a checkpoint and a LoRA of the same file share it); the addnet hash, a
different number for the same file, under the path with ADDNET_CACHE_SUFFIX appended, a name no
model file can have (its suffix is not one we scan).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .architectures import load_weights_only, read_safetensors_header
from .errors import ModelLoadError, ModelNotFound
from .hashing import HashCache, sha256_file

LoraFormat = Literal["safetensors", "pt", "ckpt"]
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
PICKLE_SUFFIXES = (".pt", ".ckpt")
SHORT_HASH_CHARS = 12
ADDNET_CACHE_SUFFIX = "#addnet"

_CHUNK = 1 << 20
# Characters that end a name inside `<lora:NAME:weight>` (A1111's `<(\w+):([^>]+)>`, args split on `:`).
_UNTYPABLE = re.compile(r"[:<>\x00-\x1f\x7f]")
_HEX_HASH = re.compile(r"^[0-9a-fA-F]{12,128}$")

_FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


@dataclass(frozen=True, kw_only=True)
class LoraInfo:
    name: str  # the file stem, case-sensitive
    path: Path
    format: LoraFormat
    hash: str = ""  # A1111's (lower case); "" when the file could not be read
    short_hash: str = ""  # hash[:12]; filled in from `hash` when left empty
    alias: str | None = None  # metadata ss_output_name, when it differs from the name
    width: int | None = None  # cross-attention width it was trained for; None: not known
    skip_reason: str | None = None

    def __post_init__(self) -> None:
        if not self.short_hash and self.hash:
            object.__setattr__(self, "short_hash", self.hash[:SHORT_HASH_CHARS].lower())

    @property
    def usable(self) -> bool:
        return self.skip_reason is None

    @property
    def family(self) -> str:
        """"SD 1.x", "SDXL", ... from the width; "unknown family" when it could not be told."""
        return width_label(self.width)

    @property
    def tag(self) -> str:
        """How a prompt uses it at full strength."""
        return f"<lora:{self.name}:1>"


# --------------------------------------------------------------------------------------- headers


def _header_shapes(path: Path, header: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    try:
        return {name: tuple(int(dim) for dim in info["shape"])
                for name, info in header.items() if name != "__metadata__"}
    except (ValueError, TypeError, KeyError):
        raise ModelLoadError(f"{Path(path).name} is not a valid .safetensors file (unreadable header)") from None


def _header_metadata(header: Mapping[str, Any]) -> dict[str, str]:
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict):
        return {}
    return {str(key): value for key, value in metadata.items() if isinstance(value, str)}


def read_lora_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a .safetensors file (string values only); {} for other formats."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return {}
    return _header_metadata(read_safetensors_header(path)[1])


def read_lora_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes: the .safetensors header, or a pickle's tensors memory-mapped through
    `weights_only` unpickling (call only for pickles the operator allowed)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return _header_shapes(path, read_safetensors_header(path)[1])
    import torch

    state = load_weights_only(path)
    while isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{path.name} does not hold a state dict")
    return {str(key): tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)}


# --------------------------------------------------------------------------------------- hashes


def _addnet_digest(path: Path) -> str:
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as file:
        prefix = file.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 <= length <= size - 8:
            raise ModelLoadError(f"{path.name} is not a valid .safetensors file (bad header)")
        file.seek(8 + length)
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def addnet_hash(path: Path, cache: HashCache | None = None) -> str:
    """A1111's (and kohya's) hash of a .safetensors file: sha256 of everything after the 8-byte
    header length and the JSON header, read in chunks. Cached under `<path>#addnet`."""
    path = Path(path)
    if cache is None:
        return _addnet_digest(path)
    stat = path.stat()
    key = Path(str(path) + ADDNET_CACHE_SUFFIX)
    known = cache.get(key, stat.st_size, stat.st_mtime_ns)
    if known:
        return known
    value = _addnet_digest(path)
    cache.put(key, stat.st_size, stat.st_mtime_ns, value)
    return value


def lora_hash(path: Path, metadata: Mapping[str, str] | None = None, cache: HashCache | None = None) -> str:
    """A1111's LoRA hash: `sshs_model_hash` from the metadata, else the addnet hash for
    .safetensors, else the whole file's sha256. Lower case."""
    path = Path(path)
    declared = (metadata or {}).get("sshs_model_hash", "").strip()
    if _HEX_HASH.match(declared):
        return declared.lower()
    if path.suffix.lower() == ".safetensors":
        return addnet_hash(path, cache)
    return sha256_file(path, cache)


# --------------------------------------------------------------------------------------- widths

# The parameter that holds a layer's input side, per LoRA/LyCORIS layout ("in" = in-features):
# kohya/LyCORIS lora_down [rank, in]; PEFT lora_A [rank, in]; old diffusers processors
# (`to_k_lora.down.weight`, `q_proj.lora_linear_layer.down.weight`) [rank, in]; LoHa hada_w1_b
# [rank, in]; full "diff" [out, in]. LoKr is a Kronecker product: in = in(w1) * in(w2).
_DOWN_PARAMS = ("lora_down.weight", "lora_A.weight", "lora_linear_layer.down.weight", "down.weight",
                "hada_w1_b", "diff")
_LOKR_PARAMS = ("lokr_w1", "lokr_w1_b", "lokr_w2", "lokr_w2_b")
# Module names with "." turned into "_" (kohya's form): the UNet's cross-attention key/value
# projections take the text encoders' output; the text encoders' attention projections and first
# MLP layer take their width (as generation.lora_networks.LoraFile.width reads them).
_UNET_CROSS = re.compile(r"attn2_(?:processor_)?to_[kv](?:_lora)?$")
_TEXT_INPUT = re.compile(r"(?:self_attn_(?:[qkv]_proj|out_proj|to_q_lora)|mlp_fc1)$")


def _tower(module: str) -> str:
    """Which text encoder a normalized module name belongs to: "te" (the only or the first), "te1", "te2"."""
    for prefix, tower in (("lora_te1_", "te1"), ("te1_", "te1"), ("lora_te2_", "te2"), ("te2_", "te2"),
                          ("text_encoder_2_", "te2")):
        if module.startswith(prefix):
            return tower
    return "te"


def _sdxl_width(clip_l: int | None, clip_g: int | None) -> int | None:
    """The cross-attention width of the SDXL-layout family whose text encoders have these widths."""
    from .architectures import ARCHITECTURES

    if clip_l is not None and clip_g is not None:
        return clip_l + clip_g
    widths = {spec.cross_attention_width for spec in ARCHITECTURES.values()
              if len(spec.text_widths) == 2
              and (clip_l is None or spec.text_widths[0] == clip_l)
              and (clip_g is None or spec.text_widths[1] == clip_g)}
    return widths.pop() if len(widths) == 1 else None


def _one(values: set[int]) -> int | None | bool:
    """The single value, None for none, False when they disagree."""
    if len(values) > 1:
        return False
    return next(iter(values), None)


def lora_width_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """The cross-attention width a LoRA was trained for, from tensor names and shapes only: 768 for
    SD 1.x, 1024 for SD 2.x, 2048 for SDXL (clip_l 768 + clip_g 1280), the tiny test models' own.

    Read from the in-features of the UNet's cross-attention to_k/to_v (kohya `lora_unet_*attn2_to_k`,
    SDXL's sgm names too, PEFT `unet.*.attn2.to_k.lora_A`, LoHa, LoKr, full diff), else from the text
    encoders' q_proj (k/v/out_proj and mlp fc1 too; `lora_te_`, `lora_te1_`/`lora_te2_`,
    `text_encoder(_2).`: a `text_encoder.` without `text_encoder_2.` is SD 1.x/2.x's only encoder).
    None when the file has neither, or when its layers disagree."""
    cross: set[int] = set()
    towers: dict[str, set[int]] = {"te": set(), "te1": set(), "te2": set()}
    lokr: dict[str, dict[str, tuple[int, ...]]] = {}

    def note(module: str, in_features: int) -> None:
        normalized = module.replace(".", "_")
        if _UNET_CROSS.search(normalized):
            cross.add(in_features)
        elif _TEXT_INPUT.search(normalized):
            towers[_tower(normalized)].add(in_features)

    for key, shape in shapes.items():
        module, _, param = key.rpartition(".")
        if param in _LOKR_PARAMS:
            lokr.setdefault(module, {})[param] = tuple(shape)
            continue
        for name in _DOWN_PARAMS:
            if key.endswith("." + name):
                if len(shape) == 2:
                    note(key[: -len(name) - 1], int(shape[1]))
                break
    for module, params in lokr.items():
        w1 = params.get("lokr_w1") or params.get("lokr_w1_b")
        w2 = params.get("lokr_w2") or params.get("lokr_w2_b")
        if w1 is not None and w2 is not None and len(w1) == 2 and len(w2) == 2:
            note(module, int(w1[1]) * int(w2[1]))

    unet = _one(cross)
    te, te1, te2 = (_one(towers[name]) for name in ("te", "te1", "te2"))
    if False in (unet, te, te1, te2):
        return None
    if te2 is not None or te1 is not None:
        if te is not None and te1 is not None:
            return None  # "te" and "te1" both claim the first encoder
        text = _sdxl_width(te1 if te1 is not None else te, te2)  # diffusers: text_encoder. + text_encoder_2.
    else:
        text = te
    if unet is not None and text is not None and unet != text:
        return None
    return unet if unet is not None else text


def width_label(width: int | None) -> str:
    """The model family of a cross-attention width: "SD 1.x", "SD 2.x", "SDXL", "tiny SD 1.x", ..."""
    from .architectures import ARCHITECTURES

    if width is None:
        return "unknown family"
    labels = sorted({("tiny " if spec.name.startswith("tiny") else "") + _FAMILY_LABELS.get(spec.family, spec.family)
                     for spec in ARCHITECTURES.values() if spec.cross_attention_width == width})
    return " / ".join(labels) if labels else f"width {width}"


def width_mismatch(width: int, expected_widths: Collection[int]) -> str:
    """Why a LoRA of `width` fits none of the checkpoint families present."""
    wanted = " or ".join(width_label(w) for w in sorted(expected_widths))
    return f"made for {width_label(width)} (width {width}); the checkpoints here are {wanted}"


def _is_network_key(key: str) -> bool:
    lowered = key.lower()
    return ("lora" in lowered or ".hada_" in lowered or ".lokr_" in lowered or ".oft_" in lowered
            or lowered.endswith((".diff", ".diff_b", ".on_input", ".alpha", ".dora_scale"))
            or lowered.startswith(("lora_", "lycoris_")))


def _refusal(name: str, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """What the merger would refuse in this file (DoRA, IA3, OFT, unknown keys), from its key names."""
    from .lora_networks import LoraError, lora_layers

    try:
        lora_layers(name, shapes)
    except LoraError as exc:
        return "it " + str(exc).removeprefix(f'LoRA "{name}" ')  # "it is a DoRA file; ..."
    return None


def not_a_lora_reason(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why a file with these tensors is no LoRA (a checkpoint, an embedding, ...); None when it may be one."""
    if any(_is_network_key(key) for key in shapes):
        return None
    keys = list(shapes)
    if any(key.startswith(("model.diffusion_model.", "conditioner.", "cond_stage_model.")) for key in keys):
        return "not a LoRA: it looks like a checkpoint (those go in checkpoints/)"
    if any(key in shapes for key in ("emb_params", "string_to_param", "clip_l", "clip_g")) and len(keys) <= 4:
        return "not a LoRA: it looks like a textual inversion embedding (those go in embeddings/)"
    return f"not a LoRA: no LoRA weights among its {len(keys)} tensors"


# --------------------------------------------------------------------------------------- scanning


def _format(suffix: str) -> LoraFormat:
    return {".safetensors": "safetensors", ".pt": "pt", ".ckpt": "ckpt"}[suffix]


def _scan_order(path: Path) -> tuple[str, bool, str]:
    # by stem, the .safetensors file of a stem first: it keeps the name when a pickle has the same stem
    return path.stem, path.suffix.lower() != ".safetensors", path.name


def scan_loras(folder: Path, *, allow_pickle: bool, hash_cache: HashCache | None = None,
               expected_widths: Collection[int] | None = None) -> list[LoraInfo]:
    """Every LoRA file directly inside `folder`, sorted by name; those that cannot be used carry a
    skip reason. `expected_widths`: the cross-attention widths of the checkpoints present (None or
    empty: any); a LoRA of another width is skipped, one of unknown width is kept."""
    found: list[LoraInfo] = []
    folder = Path(folder)
    if not folder.is_dir():
        return found
    root = folder.resolve()
    claimed: set[str] = set()
    for entry in sorted(folder.iterdir(), key=_scan_order):
        suffix = entry.suffix.lower()
        if suffix not in LORA_SUFFIXES or entry.name.startswith("."):
            continue
        name, kind = entry.stem, _format(suffix)

        def skipped(reason: str, *, path: Path = entry, hash: str = "") -> LoraInfo:
            return LoraInfo(name=name, path=path, format=kind, hash=hash, skip_reason=reason)

        try:
            if not entry.is_file():
                continue
            resolved = entry.resolve(strict=True)
            if not resolved.is_relative_to(root):
                found.append(skipped("it is a link to a file outside the loras folder"))
                continue
            if not name or _UNTYPABLE.search(name):
                found.append(skipped("its name cannot be written in <lora:name:weight> (no : < > or line breaks)",
                                     path=resolved))
                continue
            if suffix in PICKLE_SUFFIXES and not allow_pickle:
                found.append(skipped(f"{suffix} is a pickle; set [models] allow_pickle_checkpoints = true to load it",
                                     path=resolved))
                continue
            if name in claimed:
                found.append(skipped("another file has the same name", path=resolved))
                continue
            claimed.add(name)
            if suffix == ".safetensors":
                _, header = read_safetensors_header(resolved)
                metadata, shapes = _header_metadata(header), _header_shapes(resolved, header)
            else:
                metadata, shapes = {}, read_lora_shapes(resolved)
            reason = not_a_lora_reason(shapes)
            if reason is not None:  # before hashing: a checkpoint dropped here may be gigabytes
                found.append(skipped(reason, path=resolved))
                continue
            value = lora_hash(entry, metadata, hash_cache)
            alias = metadata.get("ss_output_name") or None
            width = lora_width_from_shapes(shapes)
            if width is not None and expected_widths and width not in expected_widths:
                reason = width_mismatch(width, expected_widths)
            reason = reason or _refusal(name, shapes)
            found.append(LoraInfo(name=name, path=resolved, format=kind, hash=value,
                                  alias=alias if alias != name else None, width=width, skip_reason=reason))
        except (ModelLoadError, ModelNotFound) as exc:
            found.append(skipped(str(exc)))
        except Exception as exc:  # one broken file must not hide the others
            found.append(skipped(f"unreadable: {type(exc).__name__}"))
    return found  # by name; of one name, the file that holds it first
