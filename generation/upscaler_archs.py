"""The upscaler networks people use with Stable Diffusion, written here in plain torch, and their
detection from a state dict's key names and shapes (no tensor data is needed to detect).

spandrel, which A1111 uses, cannot be imported on these machines (it needs torchvision), so the
two families that cover almost every SD upscaler are built here:

- ESRGAN / RRDBNet ("ESRGAN"), in every key layout the files come in:
  - old ESRGAN: `model.0.weight`, `model.1.sub.N.RDB1.conv1.0.weight`, ..., `model.1.sub.NB.weight`,
    `model.3/6/...` (upsampling convs), then HR conv and last conv (4x-UltraSharp and most
    community models);
  - new BasicSR/Real-ESRGAN: `conv_first`, `body.N.rdb1.conv1`, `conv_body`, `conv_up1`,
    `conv_up2`, `conv_hr`, `conv_last` (RealESRGAN_x4plus, x4plus_anime_6B, x2plus);
  - BSRGAN/RealSR: `RRDB_trunk.N.RDB1.conv1`, `trunk_conv`, `upconv1`, `HRconv`.
  A first conv taking 12 (48) channels means BasicSR's pixel-unshuffle input: the network then
  works at half (quarter) resolution, so 2 upsampling convs give 2x (1x). Such inputs are padded
  (reflect) to a multiple of 4 and the output cropped back, as spandrel does.
- Real-ESRGAN Compact / SRVGGNetCompact ("Compact"): `body.0` conv, `body.1` PReLU, then
  num_conv x (conv, PReLU), a last conv to out*scale^2 channels, pixel shuffle, plus the
  nearest-upsampled input (realesr-general-x4v3, realesr-animevideov3).

Only 3-channel in/out models are accepted: A1111 feeds them RGB images (as BGR).
Anything else raises UpscalerError; `generation.upscalers` may then try spandrel if it imports.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import EaselError

__all__ = [
    "ArchSpec",
    "CompactNet",
    "RRDBNet",
    "UpscalerError",
    "build_model",
    "canonical_state_dict",
    "detect_architecture",
    "unwrap_state_dict",
]

ESRGAN = "ESRGAN"
COMPACT = "Compact"


class UpscalerError(EaselError):
    """An upscaler file cannot be used, or an upscale cannot run."""


def _unsupported(name: str, why: str = "") -> UpscalerError:
    detail = f" ({why})" if why else ""
    return UpscalerError(
        f"{name} is not an ESRGAN or Real-ESRGAN Compact model{detail}; install spandrel for other "
        "architectures"
    )


# ---------------------------------------------------------------------------------------------------
# Networks


class _DenseBlock(nn.Module):
    """Residual dense block: five 3x3 convs, each seeing the input and all earlier outputs."""

    def __init__(self, feat: int, grow: int):
        super().__init__()
        for index in range(1, 5):
            setattr(self, f"conv{index}", nn.Conv2d(feat + (index - 1) * grow, grow, 3, 1, 1))
        self.conv5 = nn.Conv2d(feat + 4 * grow, feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for index in range(1, 5):
            conv = getattr(self, f"conv{index}")
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), 0.2))
        return self.conv5(torch.cat(features, 1)) * 0.2 + x


class _RRDB(nn.Module):
    def __init__(self, feat: int, grow: int):
        super().__init__()
        self.rdb1 = _DenseBlock(feat, grow)
        self.rdb2 = _DenseBlock(feat, grow)
        self.rdb3 = _DenseBlock(feat, grow)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN's generator, with BasicSR's module names and optional pixel-unshuffle input."""

    architecture = ESRGAN

    def __init__(self, *, in_ch: int = 3, out_ch: int = 3, num_feat: int = 64, num_blocks: int = 23,
                 num_grow: int = 32, num_upsample: int = 2, unshuffle: int = 1):
        super().__init__()
        if unshuffle not in (1, 2, 4) or num_upsample < 0 or (2**num_upsample) % unshuffle:
            raise ValueError("unsupported RRDBNet configuration")
        self.unshuffle = unshuffle
        self.num_upsample = num_upsample
        self.scale = 2**num_upsample // unshuffle
        self.conv_first = nn.Conv2d(in_ch * unshuffle * unshuffle, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[_RRDB(num_feat, num_grow) for _ in range(num_blocks)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        for index in range(1, num_upsample + 1):
            setattr(self, f"conv_up{index}", nn.Conv2d(num_feat, num_feat, 3, 1, 1))
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if self.unshuffle > 1:
            x = _pad_to_multiple(x, 4)
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for index in range(1, self.num_upsample + 1):
            conv = getattr(self, f"conv_up{index}")
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        out = self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))
        if self.unshuffle > 1:
            out = out[..., : height * self.scale, : width * self.scale]
        return out


class CompactNet(nn.Module):
    """Real-ESRGAN's SRVGGNetCompact with PReLU activations."""

    architecture = COMPACT

    def __init__(self, *, in_ch: int = 3, out_ch: int = 3, num_feat: int = 64, num_conv: int = 16,
                 scale: int = 4):
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(in_ch, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        layers.append(nn.Conv2d(num_feat, out_ch * scale * scale, 3, 1, 1))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = F.pixel_shuffle(out, self.scale)
        return out + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return x
    # reflect needs the pad to be smaller than the side; tiny inputs repeat their edge instead
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


# ---------------------------------------------------------------------------------------------------
# Detection


@dataclass(frozen=True)
class ArchSpec:
    architecture: str  # "ESRGAN" or "Compact"
    layout: str  # "old", "new", "bsrgan" (ESRGAN) or "compact"
    scale: int
    params: tuple[tuple[str, int], ...]  # keyword arguments of the network class

    def kwargs(self) -> dict[str, int]:
        return dict(self.params)


def unwrap_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """Real-ESRGAN/BasicSR files keep the weights under `params_ema` (or `params`); DataParallel
    saves prefix every key with `module.`."""
    for key in ("params_ema", "params"):
        inner = state.get(key) if isinstance(state, Mapping) else None
        if isinstance(inner, Mapping):
            state = inner
            break
    state = dict(state)
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(shapes[key])
    except KeyError:
        raise _unsupported(name, f"missing {key}") from None


_OLD_RDB = re.compile(r"model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)")
_NEW_RDB = re.compile(r"body\.(\d+)\.rdb([123])\.conv([1-5])\.(weight|bias)")
_BSR_RDB = re.compile(r"RRDB_trunk\.(\d+)\.RDB([123])\.conv([1-5])\.(weight|bias)")
_MODEL_CONV = re.compile(r"model\.(\d+)\.(weight|bias)")
_UP_NEW = re.compile(r"conv_up(\d+)\.(weight|bias)")
_UP_BSR = re.compile(r"upconv(\d+)\.(weight|bias)")
_COMPACT = re.compile(r"body\.(\d+)\.(weight|bias)")


def _esrgan_layout(keys) -> str | None:
    if "model.0.weight" in keys and "model.1.sub.0.RDB1.conv1.0.weight" in keys:
        return "old"
    if {"conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight", "conv_last.weight"} <= keys:
        return "new"
    if {"conv_first.weight", "RRDB_trunk.0.RDB1.conv1.weight", "trunk_conv.weight",
            "conv_last.weight"} <= keys:
        return "bsrgan"
    return None


def _rename_esrgan(keys, layout: str, name: str) -> dict[str, str]:
    """File key -> RRDBNet key. Raises on keys that have no place in the network."""
    mapping: dict[str, str] = {}
    if layout == "old":
        blocks = [int(m.group(1)) for k in keys if (m := _OLD_RDB.fullmatch(k))]
        num_blocks = max(blocks) + 1
        convs: dict[int, list[str]] = {}
        for key in keys:
            if m := _OLD_RDB.fullmatch(key):
                block, rdb, conv, part = m.groups()
                mapping[key] = f"body.{block}.rdb{rdb}.conv{conv}.{part}"
            elif m := re.fullmatch(rf"model\.1\.sub\.{num_blocks}\.(weight|bias)", key):
                mapping[key] = f"conv_body.{m.group(1)}"
            elif m := _MODEL_CONV.fullmatch(key):
                convs.setdefault(int(m.group(1)), []).append(m.group(2))
            else:
                raise _unsupported(name, f"unexpected key {key}")
        indices = sorted(convs)
        if len(indices) < 3 or indices[0] != 0:
            raise _unsupported(name, "unexpected layer layout")
        num_up = len(indices) - 3  # fea conv, up convs..., HR conv, last conv
        # The flattened old network: 0 conv, 1 shortcut, (upsample, conv, act) per 2x, conv, act, conv.
        expected = [0] + [3 + 3 * i for i in range(num_up)] + [3 * num_up + 2, 3 * num_up + 4]
        if indices != expected:
            raise _unsupported(name, "unexpected layer layout (pixel-shuffle or ESRGAN+ variant?)")
        targets = ["conv_first"] + [f"conv_up{i + 1}" for i in range(num_up)] + ["conv_hr", "conv_last"]
        for index, target in zip(indices, targets):
            for part in convs[index]:
                mapping[f"model.{index}.{part}"] = f"{target}.{part}"
        return mapping
    if layout == "new":
        rdb, trunk, up, hr = _NEW_RDB, "conv_body", _UP_NEW, "conv_hr"
    else:
        rdb, trunk, up, hr = _BSR_RDB, "trunk_conv", _UP_BSR, "HRconv"
    for key in keys:
        if m := rdb.fullmatch(key):
            block, index, conv, part = m.groups()
            mapping[key] = f"body.{block}.rdb{index}.conv{conv}.{part}"
        elif m := up.fullmatch(key):
            mapping[key] = f"conv_up{m.group(1)}.{m.group(2)}"
        elif key.startswith(trunk + "."):
            mapping[key] = "conv_body" + key[len(trunk):]
        elif key.startswith(hr + "."):
            mapping[key] = "conv_hr" + key[len(hr):]
        elif key.split(".")[0] in ("conv_first", "conv_last") and key.count(".") == 1:
            mapping[key] = key
        else:
            raise _unsupported(name, f"unexpected key {key}")
    return mapping


def _detect_esrgan(shapes: Mapping[str, tuple[int, ...]], layout: str, name: str) -> ArchSpec:
    mapping = _rename_esrgan(shapes.keys(), layout, name)
    canon = {new: tuple(shapes[old]) for old, new in mapping.items()}
    first = _shape(canon, "conv_first.weight", name)
    last = _shape(canon, "conv_last.weight", name)
    grow = _shape(canon, "body.0.rdb1.conv1.weight", name)
    if len(first) != 4 or len(last) != 4 or len(grow) != 4:
        raise _unsupported(name, "convolution weights are not 4-D")
    num_feat, in_raw, out_ch = first[0], first[1], last[0]
    num_blocks = 1 + max(int(k.split(".")[1]) for k in canon if k.startswith("body."))
    num_up = sum(1 for k in canon if re.fullmatch(r"conv_up\d+\.weight", k))
    if out_ch != 3:
        raise UpscalerError(f"{name} outputs {out_ch} channels; only RGB (3-channel) upscalers work")
    unshuffle = 1
    if in_raw in (out_ch * 4, out_ch * 16):
        unshuffle = int(math.isqrt(in_raw // out_ch))
    if in_raw // (unshuffle * unshuffle) != 3:
        raise UpscalerError(f"{name} takes {in_raw} input channels; only RGB (3-channel) upscalers work")
    if (2**num_up) % unshuffle or num_up > 4:
        raise _unsupported(name, f"{num_up} upsampling convs with pixel-unshuffle {unshuffle}")
    params = (("in_ch", 3), ("out_ch", out_ch), ("num_feat", num_feat), ("num_blocks", num_blocks),
              ("num_grow", grow[0]), ("num_upsample", num_up), ("unshuffle", unshuffle))
    return ArchSpec(ESRGAN, layout, 2**num_up // unshuffle, params)


def _detect_compact(shapes: Mapping[str, tuple[int, ...]], name: str) -> ArchSpec:
    indices: set[int] = set()
    for key in shapes:
        m = _COMPACT.fullmatch(key)
        if not m:
            raise _unsupported(name, f"unexpected key {key}")
        indices.add(int(m.group(1)))
    last = max(indices)
    if last < 2 or last % 2 or indices != set(range(last + 1)):
        raise _unsupported(name, "unexpected Compact layer layout")
    for index in range(1, last, 2):  # activations must be PReLU (a weight per feature)
        if f"body.{index}.weight" not in shapes or f"body.{index}.bias" in shapes:
            raise _unsupported(name, "Compact models without PReLU activations")
    first = _shape(shapes, "body.0.weight", name)
    last_w = _shape(shapes, f"body.{last}.weight", name)
    if len(first) != 4 or len(last_w) != 4:
        raise _unsupported(name, "convolution weights are not 4-D")
    in_ch, num_feat = first[1], first[0]
    if in_ch != 3:
        raise UpscalerError(f"{name} takes {in_ch} input channels; only RGB (3-channel) upscalers work")
    out_total = _shape(shapes, f"body.{last}.bias", name)[0]  # out_ch * scale^2, out_ch = in_ch
    scale = math.isqrt(out_total // 3)
    if scale < 1 or 3 * scale * scale != out_total:
        raise _unsupported(name, f"last conv has {out_total} channels, not 3*scale^2")
    params = (("in_ch", 3), ("out_ch", 3), ("num_feat", num_feat), ("num_conv", (last - 2) // 2),
              ("scale", scale))
    return ArchSpec(COMPACT, "compact", scale, params)


def detect_architecture(shapes: Mapping[str, tuple[int, ...]], name: str = "this file") -> ArchSpec:
    """The network of an (unwrapped) state dict, from its key names and tensor shapes only.

    Raises UpscalerError naming `name` when the keys fit neither family or the shapes do not fit
    the network (checked against the network built on the meta device: no memory is used)."""
    keys = set(shapes)
    layout = _esrgan_layout(keys)
    if layout is not None:
        spec = _detect_esrgan(shapes, layout, name)
    elif "body.0.weight" in keys and "body.1.weight" in keys:
        spec = _detect_compact(shapes, name)
    else:
        raise _unsupported(name)
    _check_shapes(spec, canonical_keys(shapes.keys(), spec, name), shapes, name)
    return spec


def canonical_keys(keys, spec: ArchSpec, name: str = "this file") -> dict[str, str]:
    """File key -> network key."""
    if spec.architecture == ESRGAN:
        return _rename_esrgan(keys, spec.layout, name)
    return {key: key for key in keys}


def _check_shapes(spec: ArchSpec, mapping: Mapping[str, str], shapes: Mapping[str, tuple[int, ...]],
                  name: str) -> None:
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(spec).state_dict().items()}
    got = {mapping[k]: tuple(shapes[k]) for k in mapping}
    missing = sorted(set(expected) - set(got))
    if missing:
        raise _unsupported(name, f"missing {missing[0]}")
    extra = sorted(set(got) - set(expected))
    if extra:
        raise _unsupported(name, f"unexpected key {extra[0]}")
    for key, shape in expected.items():
        if got[key] != shape:
            raise UpscalerError(f"{name}: {key} has shape {list(got[key])}, expected {list(shape)} "
                                f"for a {spec.architecture} network")


def build_model(spec: ArchSpec) -> nn.Module:
    cls = RRDBNet if spec.architecture == ESRGAN else CompactNet
    return cls(**spec.kwargs())


def canonical_state_dict(state: Mapping[str, torch.Tensor], spec: ArchSpec,
                         name: str = "this file") -> dict[str, torch.Tensor]:
    mapping = canonical_keys(state.keys(), spec, name)
    return {mapping[k]: v for k, v in state.items()}
