"""A1111's "Variation seed": initial noise slerped between a seed's and a subseed's, and seed resize
(modules/rng.py `ImageRNG.first` and `slerp`, v1.10). One (C, H, W) tensor per image, float32 on CPU."""

from __future__ import annotations

from typing import Sequence

import torch


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's slerp, exactly: norms along dim 1 (per channel and column of a (C, H, W) tensor);
    when the directions nearly agree it falls back to `low*val + high*(1-val)` (A1111's reversed weights)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def randn(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """A1111's randn with randn_source "CPU": a fresh generator per seed. Equals diffusers' first
    draw from `torch.Generator("cpu").manual_seed(seed)` for one image."""
    return torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(int(seed)))


def image_noise(shape: Sequence[int], seed: int, subseed: int | None, strength: float,
                resize_from: tuple[int, int] | None = None) -> torch.Tensor:
    """The initial noise of one image, shape (C, H, W), as A1111's ImageRNG.first draws it.
    `resize_from`: (width, height) in pixels, or None."""
    shape = tuple(shape)
    noise_shape = shape
    if resize_from is not None and resize_from[0] > 0 and resize_from[1] > 0:
        noise_shape = (shape[0], int(resize_from[1]) // 8, int(resize_from[0]) // 8)
    subnoise = randn(subseed, noise_shape) if subseed is not None and strength != 0 else None
    noise = randn(seed, noise_shape)
    if subnoise is not None:
        noise = slerp(strength, noise, subnoise)
    if noise_shape != shape:
        x = randn(seed, shape)
        dx = (shape[2] - noise_shape[2]) // 2
        dy = (shape[1] - noise_shape[1]) // 2
        w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
        h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
        tx = 0 if dx < 0 else dx
        ty = 0 if dy < 0 else dy
        dx = max(-dx, 0)
        dy = max(-dy, 0)
        x[:, ty:ty + h, tx:tx + w] = noise[:, dy:dy + h, dx:dx + w]
        noise = x
    return noise
