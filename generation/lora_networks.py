"""A1111's LoRA merger: read LoRA/LyCORIS files, merge a set into a loaded pipeline's weights, restore.

Math and rules as in A1111 v1.10 (extensions-builtin/Lora: network.py, network_lora.py,
network_hada.py, network_lokr.py, lyco_helpers.py, networks.py), without peft:
- ΔW per layer for multiplier 1: LoRA up@down (conv kernels, `lora_mid` = LoCon CP decomposition),
  LoHa (w1a@w1b)*(w2a@w2b) (optional Tucker `hada_t1`/`hada_t2`), LoKr kron(w1, w2) (w1/w2 whole or
  as a@b, optional `lokr_t2`); times `scale` if stored, else alpha/rank, else 1. A stored `bias`
  part is added to ΔW before scaling (network.py finalize_updown).
- W' = W + Σ mᵢΔWᵢ, summed in float32 and cast back to the weight's dtype once; mᵢ is the use's te
  or unet multiplier by the layer's side; a multiplier of 0 skips the layer.
- Before another set is merged every changed weight is restored from an exact copy, so switching
  A -> B -> A or back to no LoRA gives bit-identical weights.
- A 9-channel (inpaint) conv_in gets a 4-channel ΔW zero-padded to 9 input channels.

Refused by name (LoraError): DoRA (`dora_scale`, peft `lora_magnitude_vector`), IA3, full diff,
norm, GLoRA and OFT layers. Bundled embeddings (`bundle_emb.*`) are not loaded: their names are
listed in `LoraFile.bundled_embeddings` so the caller can say so. A1111's `dyn` argument is not
supported.

Names: `LoraFile.modules` is keyed by kohya layer names: `lora_unet_` + UNet module path, `lora_te_`
(SD 1.x/2.x), `lora_te1_`/`lora_te2_` (SDXL) + CLIP module path (`text_model.` level included),
all with "." -> "_". peft/diffusers keys are renamed to that form when read. The UNet part keeps
the file's own naming (diffusers paths, or the original sgm/LDM names SDXL kohya files use);
`lora_targets` resolves both against the pipeline's real modules, so no UNet config is needed
at read time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch

from .architectures import load_weights_only
from .errors import EaselError

__all__ = [
    "LoraError",
    "LoraFile",
    "LoraMerger",
    "NetworkModule",
    "lora_targets",
    "read_lora_file",
]


class LoraError(EaselError):
    """A LoRA file that cannot be read or applied; the message is for members as-is."""


# ---------------------------------------------------------------------------------------------------
# Layer types

_COMMON_PARTS = frozenset({"alpha", "scale", "bias"})
_LORA_PARTS = frozenset({"lora_up.weight", "lora_down.weight", "lora_mid.weight"}) | _COMMON_PARTS
_LOHA_PARTS = frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"}) | _COMMON_PARTS
_LOKR_PARTS = frozenset({
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
}) | _COMMON_PARTS
# Parts that mark a network type easel does not apply (A1111 does), in A1111's order of trying.
_REFUSED_TYPES = (
    ("an IA3", frozenset({"weight", "on_input"})),
    ("a full-weight (diff)", frozenset({"diff", "diff_b"})),
    ("a norm-layer", frozenset({"w_norm", "b_norm"})),
    ("a GLoRA", frozenset({"a1.weight", "a2.weight", "b1.weight", "b2.weight"})),
    ("an OFT", frozenset({"oft_blocks", "oft_diag", "oft_R"})),
)
_DORA_PARTS = frozenset({"dora_scale", "lora_magnitude_vector"})
_SUPPORTED = "LoRA, LoCon, LoHa and LoKr"


def _f32(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    return tensor.to(device=device, dtype=torch.float32)


def _conventional(up: torch.Tensor, down: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """lyco_helpers.rebuild_conventional (without dyn_dim)."""
    return (up.reshape(up.size(0), -1) @ down.reshape(down.size(0), -1)).reshape(shape)


def _cp(up: torch.Tensor, down: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
    """lyco_helpers.rebuild_cp_decomposition: LoCon's lora_mid."""
    up = up.reshape(up.size(0), -1)
    down = down.reshape(down.size(0), -1)
    return torch.einsum("n m k l, i n, m j -> i j k l", mid, up, down)


def _tucker(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """lyco_helpers.make_weight_cp: LoHa's hada_t*, LoKr's lokr_t2."""
    temp = torch.einsum("i j k l, j r -> i r k l", t, wb)
    return torch.einsum("i j k l, i r -> r j k l", temp, wa)


@dataclass(frozen=True, eq=False)
class NetworkModule:
    """One layer of a LoRA file: its type ("lora", "loha", "lokr") and tensors by A1111 part name
    ("lora_up.weight", "hada_w1_a", "lokr_w2", "alpha", ...), on the CPU as stored."""

    name: str
    kind: str
    tensors: Mapping[str, torch.Tensor]

    @property
    def rank(self) -> int | None:
        """A1111's `dim`, the divisor of alpha."""
        t = self.tensors
        if self.kind == "lora":
            return int(t["lora_down.weight"].shape[0])
        if self.kind == "loha":
            return int(t["hada_w1_b"].shape[0])
        rank = int(t["lokr_w1_b"].shape[0]) if "lokr_w1_b" in t else None
        return int(t["lokr_w2_b"].shape[0]) if "lokr_w2_b" in t else rank

    @property
    def scale(self) -> float:
        """The stored `scale`, else alpha/rank, else 1 (network.py calc_scale)."""
        if "scale" in self.tensors:
            return float(self.tensors["scale"].item())
        rank = self.rank
        if rank is not None and "alpha" in self.tensors:
            return float(self.tensors["alpha"].item()) / rank
        return 1.0

    @property
    def shape(self) -> tuple[int, ...]:
        """ΔW's shape as A1111 builds it, before it is fitted to the weight (out, in[, kh, kw])."""
        t = self.tensors
        if self.kind == "lora":
            up, down = t["lora_up.weight"], t["lora_down.weight"]
            shape = (up.shape[0], down.shape[1])
            if "lora_mid.weight" in t:
                return shape + tuple(t["lora_mid.weight"].shape[2:])
            return shape + tuple(down.shape[2:]) if down.ndim == 4 else shape
        if self.kind == "loha":
            w1a, w1b = t["hada_w1_a"], t["hada_w1_b"]
            if "hada_t1" in t:
                return (w1a.shape[1], w1b.shape[1]) + tuple(t["hada_t1"].shape[2:])
            shape = (w1a.shape[0], w1b.shape[1])
            return shape + tuple(w1b.shape[2:]) if w1b.ndim == 4 else shape
        w1 = t["lokr_w1"].shape if "lokr_w1" in t else (t["lokr_w1_a"].shape[0], t["lokr_w1_b"].shape[1])
        if "lokr_w2" in t:
            w2 = tuple(t["lokr_w2"].shape)
        elif "lokr_t2" in t:
            w2 = (t["lokr_w2_a"].shape[1], t["lokr_w2_b"].shape[1]) + tuple(t["lokr_t2"].shape[2:])
        else:
            w2 = (t["lokr_w2_a"].shape[0], t["lokr_w2_b"].shape[1])
        return (w1[0] * w2[0], w1[1] * w2[1]) + tuple(w2[2:])

    @property
    def in_features(self) -> int:
        return int(self.shape[1])

    def fitted_shape(self, weight_shape: Sequence[int]) -> tuple[int, ...] | None:
        """The shape ΔW takes for a weight of this shape (4 input channels for a 9-channel conv_in),
        None when it does not fit."""
        numel = math.prod(self.shape)
        weight_shape = tuple(weight_shape)
        if numel == math.prod(weight_shape):
            return weight_shape
        if len(weight_shape) == 4 and weight_shape[1] == 9:
            narrow = (weight_shape[0], 4, *weight_shape[2:])
            if numel == math.prod(narrow):
                return narrow
        return None

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """ΔW for multiplier 1, float32, on the weight's device and in its shape."""
        fitted = self.fitted_shape(weight.shape)
        if fitted is None:
            raise LoraError(f"LoRA layer {self.name} of shape {_dims(self.shape)} does not fit a weight "
                            f"of shape {_dims(weight.shape)}")
        device = weight.device
        t = {key: _f32(value, device) for key, value in self.tensors.items() if key not in ("alpha", "scale")}
        if self.kind == "lora":
            up, down = t["lora_up.weight"], t["lora_down.weight"]
            shape = [up.size(0), down.size(1)]
            if "lora_mid.weight" in t:
                updown = _cp(up, down, t["lora_mid.weight"])
                shape += t["lora_mid.weight"].shape[2:]
            else:
                if down.ndim == 4:
                    shape += down.shape[2:]
                updown = _conventional(up, down, shape)
        elif self.kind == "loha":
            w1a, w1b, w2a, w2b = t["hada_w1_a"], t["hada_w1_b"], t["hada_w2_a"], t["hada_w2_b"]
            shape = [w1a.size(0), w1b.size(1)]
            if "hada_t1" in t:
                shape = [w1a.size(1), w1b.size(1), *t["hada_t1"].shape[2:]]
                updown1 = _tucker(t["hada_t1"], w1a, w1b)
            else:
                if w1b.ndim == 4:
                    shape += w1b.shape[2:]
                updown1 = _conventional(w1a, w1b, shape)
            updown2 = _tucker(t["hada_t2"], w2a, w2b) if "hada_t2" in t else _conventional(w2a, w2b, shape)
            updown = updown1 * updown2
        else:
            w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
            if "lokr_w2" in t:
                w2 = t["lokr_w2"]
            elif "lokr_t2" in t:
                w2 = _tucker(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
            else:
                w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
            shape = list(fitted) if len(fitted) == 4 else [w1.size(0) * w2.size(0), w1.size(1) * w2.size(1)]
            if w2.ndim == 4:
                w1 = w1[:, :, None, None]
            updown = torch.kron(w1, w2.contiguous()).reshape(shape)
        if "bias" in t:
            updown = (updown.reshape(t["bias"].shape) + t["bias"]).reshape(shape)
        updown = updown.reshape(fitted) * self.scale
        if fitted != tuple(weight.shape):
            # Inpaint conv_in: the LoRA knows the 4 latent channels, not the 5 of mask and masked image.
            updown = torch.nn.functional.pad(updown, (0, 0, 0, 0, 0, weight.shape[1] - fitted[1]))
        return updown


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


# ---------------------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True, eq=False)
class LoraFile:
    """A parsed LoRA/LyCORIS file, kept in memory (tensors on CPU, float32 or as stored).
    Compared by identity. `bundled_embeddings`: names of the textual-inversion embeddings the file
    carries (`bundle_emb.*`), which easel does not load."""

    path: Path
    modules: Mapping[str, NetworkModule]
    metadata: Mapping[str, str] = field(default_factory=dict)
    bundled_embeddings: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.path.stem

    def width(self) -> int | None:
        """The cross-attention width it was trained for (768 SD 1.x, 1024 SD 2.x, 2048 SDXL, the tiny
        models' own): the in-features of the UNet's attn2 to_k/to_v, else of the text encoders'
        attention and fc1 layers; None when unknown or inconsistent."""
        cross: set[int] = set()
        towers: dict[str, set[int]] = {"lora_te_": set(), "lora_te1_": set(), "lora_te2_": set()}
        for name, module in self.modules.items():
            if name.startswith("lora_unet_") and _CROSS_KV.search(name):
                cross.add(module.in_features)
            elif _TEXT_INPUT.search(name):
                for prefix, widths in towers.items():
                    if name.startswith(prefix):
                        widths.add(module.in_features)
        if len(cross) > 1 or any(len(widths) > 1 for widths in towers.values()):
            return None
        if cross:
            return cross.pop()
        te, te1, te2 = (next(iter(towers[p]), None) for p in ("lora_te_", "lora_te1_", "lora_te2_"))
        if te1 is None and te2 is None:
            return te
        if te1 is not None and te2 is not None:
            return te1 + te2
        return _sdxl_width(te1, te2)


_CROSS_KV = re.compile(r"attn2_to_[kv]$")
_TEXT_INPUT = re.compile(r"_(?:self_attn_[qkv]_proj|self_attn_out_proj|mlp_fc1)$")


def _sdxl_width(clip_l: int | None, clip_g: int | None) -> int | None:
    """The SDXL-layout family a single known encoder width points to, when only one does."""
    from .architectures import ARCHITECTURES

    widths = {spec.cross_attention_width for spec in ARCHITECTURES.values()
              if len(spec.text_widths) == 2
              and (clip_l is None or spec.text_widths[0] == clip_l)
              and (clip_g is None or spec.text_widths[1] == clip_g)}
    return widths.pop() if len(widths) == 1 else None


def _text_path(path: str) -> str:
    """A CLIP module path with the `text_model.` level files use (transformers 5 dropped it from
    CLIPTextModel; CLIPTextModelWithProjection keeps it, with `text_projection` beside it)."""
    if path.startswith("text_model.") or path == "text_projection" or path.startswith("text_projection."):
        return path
    return "text_model." + path


def _kohya(path: str) -> str:
    return path.replace(".", "_")


# peft / diffusers part names -> A1111's.
_PEFT_PARTS = (
    ("lora_A.weight", "lora_down.weight"),
    ("lora_B.weight", "lora_up.weight"),
    ("lora.down.weight", "lora_down.weight"),
    ("lora.up.weight", "lora_up.weight"),
    ("lora_linear_layer.down.weight", "lora_down.weight"),
    ("lora_linear_layer.up.weight", "lora_up.weight"),
    ("lora_magnitude_vector", "lora_magnitude_vector"),
    ("lora_magnitude_vector.weight", "lora_magnitude_vector"),
    ("alpha", "alpha"),
)
_PEFT_COMPONENTS = (("text_encoder_2.", "lora_te2_"), ("text_encoder.", "lora_te1_"), ("unet.", "lora_unet_"))
# diffusers' old attention-processor files: `<attention>.processor.to_q_lora.down.weight`.
_PROCESSOR = re.compile(r"(?P<attn>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<side>up|down)\.weight")


def _split_key(key: str) -> tuple[str, str] | None:
    """(kohya layer name, A1111 part name) of one tensor key; None when the key is not understood."""
    if key.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")):
        name, _, part = key.partition(".")
        # A1111 also takes peft's part names under kohya layer names (network_lora.py).
        part = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}.get(part, part)
        return (name, part) if part else None
    component = next((c for c in _PEFT_COMPONENTS if key.startswith(c[0])), None)
    rest = key[len(component[0]):] if component else key
    if match := _PROCESSOR.fullmatch(rest):
        if component is not None and component[1] != "lora_unet_":
            return None
        proj = "to_out.0" if match["proj"] == "to_out" else match["proj"]
        return "lora_unet_" + _kohya(f"{match['attn']}.{proj}"), f"lora_{match['side']}.weight"
    if component is None:
        return None
    for suffix, part in _PEFT_PARTS:
        if rest.endswith("." + suffix):
            path = rest[: -len(suffix) - 1]
            if component[1] != "lora_unet_":
                path = _text_path(path)
            return component[1] + _kohya(path), part
    return None


def _load_state_dict(path: Path, allow_pickle: bool) -> tuple[dict[str, object], dict[str, str]]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as file:
                metadata = dict(file.metadata() or {})
                return {key: file.get_tensor(key) for key in file.keys()}, metadata
        except FileNotFoundError:
            raise LoraError(f'LoRA "{path.stem}" is missing ({path.name})') from None
        except (SafetensorError, OSError, ValueError) as exc:
            raise LoraError(f'LoRA "{path.stem}" is not a readable .safetensors file: {exc}') from None
    if suffix in (".pt", ".ckpt"):
        if not allow_pickle:
            raise LoraError(f'LoRA "{path.stem}" is a pickle ({suffix}); only .safetensors LoRAs are '
                            "allowed here")
        try:
            state = load_weights_only(path)
        except FileNotFoundError:
            raise LoraError(f'LoRA "{path.stem}" is missing ({path.name})') from None
        except Exception as exc:  # the restricted unpickler refuses anything but plain tensors
            raise LoraError(f'LoRA "{path.stem}" could not be read: {str(exc).splitlines()[0][:200]}') from None
        if not isinstance(state, Mapping):
            raise LoraError(f'LoRA "{path.stem}" does not hold a state dict')
        return dict(state), {}
    raise LoraError(f'LoRA "{path.stem}": LoRA files must end in .safetensors (or .pt/.ckpt where allowed)')


def lora_layers(stem: str, keys: Iterable[str]) -> tuple[dict[str, tuple[str, dict[str, str]]], list[str]]:
    """From tensor names alone: each layer's kind and {part: key}, and the bundled embeddings'
    names. Raises LoraError naming DoRA, a refused type, or the first key not understood, so a
    folder scan can tell without reading any tensor what `read_lora_file` would refuse."""
    label = f'LoRA "{stem}"'
    groups: dict[str, dict[str, str]] = {}
    bundled: list[str] = []
    for key in keys:
        if key.startswith("bundle_emb."):
            emb = key.split(".")[1] if key.count(".") >= 2 else key
            if emb not in bundled:
                bundled.append(emb)
            continue
        split = _split_key(key)
        if split is None:
            if key.startswith("oft_unet_"):  # kohya's OFT names
                raise LoraError(f"{label} is an OFT network; easel applies {_SUPPORTED} only")
            raise LoraError(f"{label} has a key easel does not understand: {key}")
        name, part = split
        groups.setdefault(name, {}).setdefault(part, key)
    if any(part in _DORA_PARTS for parts in groups.values() for part in parts):
        raise LoraError(f"{label} is a DoRA file; easel does not apply DoRA yet")
    layers: dict[str, tuple[str, dict[str, str]]] = {}
    for name, parts in groups.items():
        if {"lora_up.weight", "lora_down.weight"} <= parts.keys():
            kind, allowed = "lora", _LORA_PARTS
        elif {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= parts.keys():
            kind, allowed = "loha", _LOHA_PARTS
        elif (("lokr_w1" in parts or {"lokr_w1_a", "lokr_w1_b"} <= parts.keys())
              and ("lokr_w2" in parts or {"lokr_w2_a", "lokr_w2_b"} <= parts.keys())):
            kind, allowed = "lokr", _LOKR_PARTS
        else:
            for what, marks in _REFUSED_TYPES:
                if marks & parts.keys():
                    raise LoraError(f"{label} is {what} network (layer {name}); easel applies {_SUPPORTED} only")
            raise LoraError(f"{label} has a layer easel does not understand: {next(iter(parts.values()))}")
        unknown = [part for part in parts if part not in allowed]
        if unknown:
            raise LoraError(f"{label} has a key easel does not understand: {parts[unknown[0]]}")
        if kind == "lokr" and "lokr_t2" in parts and not {"lokr_w2_a", "lokr_w2_b"} <= parts.keys():
            raise LoraError(f"{label} has a key easel does not understand: {parts['lokr_t2']}")
        layers[name] = (kind, parts)
    if not layers:
        what = "only bundled embeddings" if bundled else "no LoRA layers"
        raise LoraError(f"{label} holds {what}")
    return layers, bundled


def read_lora_file(path: Path, *, allow_pickle: bool = False) -> LoraFile:
    """Parse a LoRA/LyCORIS file (kohya/A1111, LoCon, LoHa, LoKr, peft/diffusers) into memory.

    `.safetensors` is read without running code; `.pt`/`.ckpt` only when `allow_pickle`, through
    `torch.load(weights_only=True)`. Raises LoraError naming DoRA or the refused type, or the first
    key that is not understood; a file without any layer is refused too."""
    path = Path(path)
    state, metadata = _load_state_dict(path, allow_pickle)
    if not all(isinstance(value, torch.Tensor) for value in state.values()):
        bad = next(key for key, value in state.items() if not isinstance(value, torch.Tensor))
        raise LoraError(f'LoRA "{path.stem}" has a key easel does not understand: {bad}')
    layers, bundled = lora_layers(path.stem, state)
    modules = {name: NetworkModule(name=name, kind=kind, tensors=MappingProxyType(
                   {part: state[key] for part, key in parts.items()}))
               for name, (kind, parts) in layers.items()}
    return LoraFile(path=path, modules=MappingProxyType(modules), metadata=MappingProxyType(metadata),
                    bundled_embeddings=tuple(bundled))


# ---------------------------------------------------------------------------------------------------
# Targets

_RESNET_PARTS = (
    ("conv1", "in_layers.2"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
    ("norm1", "in_layers.0"),
    ("norm2", "out_layers.0"),
)
_UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _sgm_blocks(unet: torch.nn.Module) -> dict[str, tuple[str, bool]]:
    """diffusers UNet block path -> (sgm/LDM block path, is a resnet), from the UNet's own layout:
    LDM numbers input/output blocks flat (resnet .0, attention .1, resampler after them)."""
    blocks: dict[str, tuple[str, bool]] = {}
    slot = 1
    for i, block in enumerate(unet.down_blocks):
        attentions = getattr(block, "attentions", None) or ()
        for j in range(len(block.resnets)):
            blocks[f"down_blocks.{i}.resnets.{j}"] = (f"input_blocks.{slot}.0", True)
            if j < len(attentions):
                blocks[f"down_blocks.{i}.attentions.{j}"] = (f"input_blocks.{slot}.1", False)
            slot += 1
        if getattr(block, "downsamplers", None):
            blocks[f"down_blocks.{i}.downsamplers.0.conv"] = (f"input_blocks.{slot}.0.op", False)
            slot += 1
    mid = getattr(unet, "mid_block", None)
    if mid is not None:
        for j in range(len(mid.resnets)):
            blocks[f"mid_block.resnets.{j}"] = (f"middle_block.{2 * j}", True)
        for j in range(len(getattr(mid, "attentions", None) or ())):
            blocks[f"mid_block.attentions.{j}"] = (f"middle_block.{2 * j + 1}", False)
    slot = 0
    for i, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None) or ()
        for j in range(len(block.resnets)):
            blocks[f"up_blocks.{i}.resnets.{j}"] = (f"output_blocks.{slot}.0", True)
            if j < len(attentions):
                blocks[f"up_blocks.{i}.attentions.{j}"] = (f"output_blocks.{slot}.1", False)
            if j == len(block.resnets) - 1 and getattr(block, "upsamplers", None):
                position = 2 if attentions else 1  # after the resnet (and the attention)
                blocks[f"up_blocks.{i}.upsamplers.0.conv"] = (f"output_blocks.{slot}.{position}.conv", False)
            slot += 1
    return blocks


def _sgm_name(path: str, blocks: Mapping[str, tuple[str, bool]]) -> str | None:
    """The sgm/LDM name of a UNet module path, None when it has none."""
    if path in _UNET_TOP:
        return _UNET_TOP[path]
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in blocks:
            sgm, resnet = blocks[prefix]
            rest = ".".join(parts[cut:])
            if resnet:
                rest = next((new + rest[len(old):] for old, new in _RESNET_PARTS
                             if rest == old or rest.startswith(old + ".")), rest)
            return f"{sgm}.{rest}" if rest else sgm
    return None


def lora_targets(pipe) -> dict[str, tuple[str, torch.nn.Module]]:
    """Kohya layer name -> ("te" | "unet", Linear/Conv2d module) for the pipeline's text encoders
    and UNet. Text encoders answer to `lora_te_` and `lora_te1_` (one encoder) or `lora_te1_`/
    `lora_te2_` (SDXL); every UNet layer to its diffusers name and its sgm/LDM name. A name two
    modules would share is left out."""
    targets: dict[str, tuple[str, torch.nn.Module]] = {}
    ambiguous: set[str] = set()

    def add(name: str, side: str, module: torch.nn.Module) -> None:
        known = targets.get(name)
        if known is not None and known[1] is not module:
            ambiguous.add(name)
        targets[name] = (side, module)

    layers = (torch.nn.Linear, torch.nn.Conv2d)
    encoder_2 = getattr(pipe, "text_encoder_2", None)
    first = ("lora_te1_",) if encoder_2 is not None else ("lora_te_", "lora_te1_")
    encoders = [(getattr(pipe, "text_encoder", None), first), (encoder_2, ("lora_te2_",))]
    for encoder, prefixes in encoders:
        if encoder is None:
            continue
        for path, module in encoder.named_modules():
            if isinstance(module, layers):
                for prefix in prefixes:
                    add(prefix + _kohya(_text_path(path)), "te", module)
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        blocks = _sgm_blocks(unet)
        for path, module in unet.named_modules():
            if isinstance(module, layers):
                add("lora_unet_" + _kohya(path), "unet", module)
                sgm = _sgm_name(path, blocks)
                if sgm is not None:
                    add("lora_unet_" + _kohya(sgm), "unet", module)
    for name in ambiguous:
        del targets[name]
    return targets


def _encoder_depths(pipe) -> dict[str, int]:
    """Kohya prefix -> number of transformer layers of that text encoder."""
    depths = {}
    encoder_2 = getattr(pipe, "text_encoder_2", None)
    first = ("lora_te1_",) if encoder_2 is not None else ("lora_te_", "lora_te1_")
    for encoder, prefixes in ((getattr(pipe, "text_encoder", None), first), (encoder_2, ("lora_te2_",))):
        layers = getattr(getattr(encoder, "config", None), "num_hidden_layers", None)
        if layers is not None:
            for prefix in prefixes:
                depths[prefix] = int(layers)
    return depths


_TE_LAYER = re.compile(r"(lora_te[12]?_)text_model_encoder_layers_(\d+)_")


# ---------------------------------------------------------------------------------------------------
# Merging


Use = tuple[LoraFile, float, float]
_FAMILY_NAMES = {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "Stable Diffusion XL"}


class LoraMerger:
    """Merges LoRA sets into one loaded pipeline's weights (shared by its txt2img/img2img/inpaint
    pipelines, which share modules). Keeps an exact copy of every weight it changed (on
    `backup_device`) and restores it before applying another set, so switching A -> B -> A gives
    bit-identical weights. Not thread-safe: only the GPU thread calls it."""

    def __init__(self, pipe, *, backup_device: str | torch.device = "cpu"):
        self._targets = lora_targets(pipe)
        self._depths = _encoder_depths(pipe)
        unet_config = getattr(getattr(pipe, "unet", None), "config", None)
        self._family_width = getattr(unet_config, "cross_attention_dim", None)
        self._backup_device = torch.device(backup_device)
        self._backups: dict[torch.nn.Module, torch.Tensor] = {}
        self._applied: tuple[Use, ...] = ()

    @property
    def applied(self) -> tuple[Use, ...]:
        """The (file, te multiplier, unet multiplier) uses merged now; () = the plain model."""
        return self._applied

    def _skipped(self, name: str) -> bool:
        """Text-encoder layers this encoder does not have are skipped, not refused: diffusers' SD 2.x
        encoder stops at 23 of OpenCLIP's 24 layers, whose output SD 2.x never reads."""
        match = _TE_LAYER.match(name)
        return bool(match) and match[1] in self._depths and int(match[2]) >= self._depths[match[1]]

    def check(self, lora: LoraFile) -> list[str]:
        """Why this file does not fit the pipeline (layers with no match here, other shapes); [] = fits."""
        missing: list[str] = []
        misfits: list[str] = []
        for name, module in lora.modules.items():
            target = self._targets.get(name)
            if target is None:
                if not self._skipped(name):
                    missing.append(name)
                continue
            weight = target[1].weight
            if module.fitted_shape(weight.shape) is None:
                misfits.append(f"{name} (LoRA {_dims(module.shape)}, model {_dims(weight.shape)})")
        if not missing and not misfits:
            return []
        width = lora.width()
        hint = ""
        if width is not None and width != self._family_width:
            from .architectures import ARCHITECTURES

            labels = [spec.label if spec.name.startswith("tiny") else _FAMILY_NAMES.get(spec.family, spec.label)
                      for spec in ARCHITECTURES.values() if spec.cross_attention_width == width]
            hint = f" (made for {labels[0]}?)" if labels else f" (made for a model of width {width}?)"
        head = f'LoRA "{lora.name}" does not fit this checkpoint: '
        problems = []
        if missing:
            problems.append(f"{head}{len(missing)} of {len(lora.modules)} layers have no match here, "
                            f"e.g. {missing[0]}{hint}")
        if misfits:
            problems.append(f"{head}{len(misfits)} layers have other shapes, e.g. {misfits[0]}{hint}")
        return problems

    def apply(self, uses: Sequence[Use]) -> None:
        """Merge exactly these (file, te multiplier, unet multiplier) uses, in order; [] restores the
        plain model; the same list as last time (same file objects, same multipliers) is a no-op.
        Raises LoraError, with the model restored to plain, when a file does not fit."""
        wanted = tuple((lora, float(te), float(unet)) for lora, te, unet in uses)
        if _same(wanted, self._applied):
            return
        problems = [problem for lora in dict.fromkeys(use[0] for use in wanted) for problem in self.check(lora)]
        if problems:
            self._restore_all()
            raise LoraError("; ".join(problems))
        plan: dict[torch.nn.Module, list[tuple[NetworkModule, float]]] = {}
        for lora, te, unet in wanted:
            for name, module in lora.modules.items():
                target = self._targets.get(name)
                if target is None:
                    continue  # a layer this encoder does not have (see _skipped)
                side, layer = target
                multiplier = te if side == "te" else unet
                if multiplier != 0.0:
                    plan.setdefault(layer, []).append((module, multiplier))
        try:
            with torch.no_grad():
                for layer in [layer for layer in self._backups if layer not in plan]:
                    layer.weight.copy_(self._backups[layer])
                    del self._backups[layer]
                for layer, contributions in plan.items():
                    weight = layer.weight
                    backup = self._backups.get(layer)
                    if backup is None:  # not changed by us: these are the plain weights
                        backup = self._backups[layer] = weight.detach().to(self._backup_device, copy=True)
                    merged = backup.to(device=weight.device, dtype=torch.float32, copy=True)
                    for module, multiplier in contributions:
                        merged += multiplier * module.delta(merged)
                    weight.copy_(merged)
        except BaseException:
            self._restore_all()
            raise
        self._applied = wanted

    def _restore_all(self) -> None:
        with torch.no_grad():
            for layer, backup in self._backups.items():
                layer.weight.copy_(backup)
        self._backups.clear()
        self._applied = ()


def _same(a: tuple[Use, ...], b: tuple[Use, ...]) -> bool:
    return len(a) == len(b) and all(x[0] is y[0] and x[1:] == y[1:] for x, y in zip(a, b))
