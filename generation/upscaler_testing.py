"""Tiny upscaler files for tests and benchmarks, built offline from a seed: no weights are
downloaded. The state dicts are written key by key in the layouts real files use (Real-ESRGAN
Compact; ESRGAN old and new/BasicSR), without importing the networks in upscaler_archs, so
tests check the loader against files it did not write itself.

`make_compact_state_dict(..., last_bias=0.25)` is the deterministic model: the last conv has zero
weights, so the network adds 0.25 to the nearest-neighbour upscale of its input, exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

__all__ = ["KINDS", "make_compact_state_dict", "make_esrgan_state_dict", "write_test_upscaler"]

KINDS = ("compact", "compact-shift", "esrgan-old", "esrgan-new")


def _conv(generator: torch.Generator, out_ch: int, in_ch: int, gain: float = 1.0,
          bias: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    std = gain / math.sqrt(in_ch * 9)
    weight = torch.randn(out_ch, in_ch, 3, 3, generator=generator) * std
    return weight, torch.randn(out_ch, generator=generator) * 0.01 + bias


def make_compact_state_dict(scale: int = 4, num_feat: int = 4, num_conv: int = 1, seed: int = 0, *,
                            last_bias: float | None = None) -> dict[str, torch.Tensor]:
    """An SRVGGNetCompact state dict (`body.0` conv, `body.1` PReLU, ..., last conv to 3*scale^2).

    With `last_bias` the last conv's weights are zero and its bias is that value everywhere."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    in_ch = 3
    for index in range(num_conv + 1):
        weight, bias = _conv(generator, num_feat, in_ch)
        state[f"body.{2 * index}.weight"], state[f"body.{2 * index}.bias"] = weight, bias
        state[f"body.{2 * index + 1}.weight"] = 0.25 + 0.1 * torch.rand(num_feat, generator=generator)
        in_ch = num_feat
    last = 2 * num_conv + 2
    weight, bias = _conv(generator, 3 * scale * scale, num_feat, gain=0.3)
    if last_bias is not None:
        weight, bias = torch.zeros_like(weight), torch.full_like(bias, float(last_bias))
    state[f"body.{last}.weight"], state[f"body.{last}.bias"] = weight, bias
    return state


def make_esrgan_state_dict(scale: int = 4, num_filters: int = 8, num_blocks: int = 1, seed: int = 0,
                           layout: str = "old", *, num_grow: int = 32,
                           pixel_unshuffle: bool | None = None) -> dict[str, torch.Tensor]:
    """An ESRGAN (RRDBNet) state dict in the "old" (ESRGAN `model.N`) or "new" (BasicSR) layout.

    Scales 1/2/4/8. With pixel unshuffle (default for "new" at scale 1 or 2, as Real-ESRGAN's
    x2plus) the first conv takes 3*f^2 channels (f = 4/scale) and there are two 2x up convs;
    otherwise there are log2(scale) up convs."""
    if layout not in ("old", "new"):
        raise ValueError('layout must be "old" or "new"')
    if pixel_unshuffle is None:
        pixel_unshuffle = layout == "new" and scale in (1, 2)
    if pixel_unshuffle:
        if scale not in (1, 2):
            raise ValueError("pixel unshuffle goes with scale 1 or 2")
        factor, num_up = 4 // scale, 2
    else:
        if scale not in (1, 2, 4, 8):
            raise ValueError("scale must be 1, 2, 4 or 8")
        factor, num_up = 1, int(math.log2(scale))
    generator = torch.Generator().manual_seed(seed)
    nf, gc = num_filters, num_grow
    canon: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    canon["conv_first"] = _conv(generator, nf, 3 * factor * factor)
    for block in range(num_blocks):
        for rdb in (1, 2, 3):
            for conv in range(1, 6):
                out_ch = nf if conv == 5 else gc
                canon[f"body.{block}.rdb{rdb}.conv{conv}"] = _conv(generator, out_ch, nf + (conv - 1) * gc)
    canon["conv_body"] = _conv(generator, nf, nf)
    for index in range(1, num_up + 1):
        canon[f"conv_up{index}"] = _conv(generator, nf, nf, gain=1.4)
    canon["conv_hr"] = _conv(generator, nf, nf, gain=1.4)
    canon["conv_last"] = _conv(generator, 3, nf, gain=0.5, bias=0.5)

    def old_name(name: str) -> str:
        parts = name.split(".")
        if parts[0] == "body":
            return f"model.1.sub.{parts[1]}.RDB{parts[2][3:]}.{parts[3]}.0"
        if name == "conv_first":
            return "model.0"
        if name == "conv_body":
            return f"model.1.sub.{num_blocks}"
        if name.startswith("conv_up"):
            return f"model.{3 * int(name[7:])}"
        return f"model.{3 * num_up + 2}" if name == "conv_hr" else f"model.{3 * num_up + 4}"

    state: dict[str, torch.Tensor] = {}
    for name, (weight, bias) in canon.items():
        key = old_name(name) if layout == "old" else name
        state[f"{key}.weight"], state[f"{key}.bias"] = weight, bias
    return state


def write_test_upscaler(path: Path, kind: str = "compact", *, wrap: str | None = None, prefix: str = "",
                        **options) -> dict[str, torch.Tensor]:
    """Write a tiny upscaler; `kind` is one of KINDS, `options` go to the make_* function.

    `.safetensors` is written flat; `.pth`/`.pt` with torch.save, inside `{wrap: state}` when
    `wrap` is given (e.g. "params_ema", as Real-ESRGAN releases). `prefix` (e.g. "module.") is put
    before every key. Returns the state dict as made (unprefixed, unwrapped)."""
    if kind == "compact":
        state = make_compact_state_dict(**options)
    elif kind == "compact-shift":
        state = make_compact_state_dict(last_bias=0.25, **options)
    elif kind == "esrgan-old":
        state = make_esrgan_state_dict(layout="old", **options)
    elif kind == "esrgan-new":
        state = make_esrgan_state_dict(layout="new", **options)
    else:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = {prefix + key: value.contiguous() for key, value in state.items()}
    if path.suffix.lower() == ".safetensors":
        if wrap:
            raise ValueError("safetensors files are flat; `wrap` applies to .pth files")
        from safetensors.torch import save_file

        save_file(written, str(path))
    else:
        torch.save({wrap: written} if wrap else written, path)
    return state
