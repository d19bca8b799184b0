"""A1111's hires fix, as pure arithmetic: the second pass's size and crop, its step slice, and the
latent upscale (A1111 v1.10 `StableDiffusionProcessingTxt2Img`).

1. The first pass is a normal txt2img at width x height.
2. `target_size`: hr_scale times that (int(), no rounding to 8), or hr_resize_x x hr_resize_y. One
   of them 0 keeps the aspect ratio (integer division); both set: the image is scaled to cover
   them and the latents are centre-cropped by `truncate` latent pixels.
3. The latents are upscaled to (target // 8) with a `LATENT_MODES` interpolation, or decoded,
   resized by an upscaler (A1111's `resize_image` mode 0) and encoded again; then cropped.
4. The second pass is img2img from fresh seeded noise at the new size (A1111's new ImageRNG:
   the same seeds, subseeds and seed resize, drawn again, not the first noise resized), over
   exactly N = hr_second_pass_steps or steps steps: the last N of a `second_pass_schedule` total.
   Its prompt schedule counts on from the first pass (prompt_parser, `first_pass_steps`).
5. A hires size equal to the first pass's means no hires pass at all (A1111 turns it off).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# A1111's latent upscale modes (shared.latent_upscale_modes): name -> (interpolate mode, antialias).
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
LATENT_FACTOR = 8  # A1111's opt_f: pixels per latent pixel, hard-coded there for every model


@dataclass(frozen=True)
class HiresPlan:
    upscale_to: tuple[int, int]  # (w, h) the first pass is upscaled to, before the crop
    truncate: tuple[int, int]  # latent pixels cropped off (x, y), split around the centre
    steps: int  # the second pass's N

    @property
    def final_size(self) -> tuple[int, int]:
        """The image the second pass makes: the cropped latents times 8."""
        w, h = self.upscale_to
        return (w // LATENT_FACTOR - self.truncate[0]) * LATENT_FACTOR, \
            (h // LATENT_FACTOR - self.truncate[1]) * LATENT_FACTOR


def target_size(width: int, height: int, *, hr_scale: float, hr_resize_x: int = 0,
                hr_resize_y: int = 0) -> tuple[tuple[int, int], tuple[int, int]]:
    """((upscale_to_x, upscale_to_y), (truncate_x, truncate_y)) as A1111's
    calculate_target_resolution computes them."""
    if hr_resize_x == 0 and hr_resize_y == 0:
        return (int(width * hr_scale), int(height * hr_scale)), (0, 0)
    if hr_resize_y == 0:
        return (hr_resize_x, hr_resize_x * height // width), (0, 0)
    if hr_resize_x == 0:
        return (hr_resize_y * width // height, hr_resize_y), (0, 0)
    if width / height < hr_resize_x / hr_resize_y:
        to = (hr_resize_x, hr_resize_x * height // width)
    else:
        to = (hr_resize_y * width // height, hr_resize_y)
    return to, ((to[0] - hr_resize_x) // LATENT_FACTOR, (to[1] - hr_resize_y) // LATENT_FACTOR)


def plan(width: int, height: int, steps: int, *, hr_scale: float, hr_resize_x: int, hr_resize_y: int,
         hr_second_pass_steps: int) -> HiresPlan | None:
    """The hires pass of a request, or None when its size equals the first pass's (no pass)."""
    upscale_to, truncate = target_size(width, height, hr_scale=hr_scale, hr_resize_x=hr_resize_x,
                                       hr_resize_y=hr_resize_y)
    if upscale_to == (width, height):
        return None
    return HiresPlan(upscale_to=upscale_to, truncate=truncate, steps=hr_second_pass_steps or steps)


def second_pass_schedule(steps: int, denoising_strength: float) -> tuple[int, int]:
    """(total, start): A1111's setup_img2img_steps when the step count is given (always, for hires):
    a `total`-step schedule of which the last `steps` run, from index total - steps. N=20, d=0.7:
    (28, 8). Not diffusers' img2img rule (int(steps * strength) of `steps`)."""
    if steps < 1 or not 0.0 < denoising_strength:
        raise ValueError("hires needs at least one step and a denoising strength above 0")
    total = int(steps / min(denoising_strength, 0.999))
    return total, total - steps


def img2img_strength(total: int, steps: int) -> float:
    """The `strength` that makes a diffusers img2img pipeline of `total` inference steps run exactly
    the last `steps` of them (it runs int(total * strength)); the half keeps float error away."""
    return min(1.0, (steps + 0.5) / total)


def upscale_latents(latents: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """A1111's latent upscale to (w, h) pixels: interpolate to (h // 8, w // 8) latent pixels."""
    interpolation, antialias = LATENT_MODES[mode]
    w, h = size
    return torch.nn.functional.interpolate(latents, size=(h // LATENT_FACTOR, w // LATENT_FACTOR),
                                           mode=interpolation, antialias=antialias)


def crop_latents(latents: torch.Tensor, truncate: tuple[int, int]) -> torch.Tensor:
    """A1111's centre crop of the upscaled latents: [ty//2 : H-(ty+1)//2], [tx//2 : W-(tx+1)//2]."""
    tx, ty = truncate
    return latents[:, :, ty // 2:latents.shape[2] - (ty + 1) // 2, tx // 2:latents.shape[3] - (tx + 1) // 2]


def pixels_to_uint8(decoded: torch.Tensor):
    """A1111's conversion of decoded [-1, 1] pixels [B, 3, H, W] to uint8 images before an upscaler:
    clamp((x + 1) / 2), times 255, truncated (not rounded)."""
    import numpy as np
    from PIL import Image

    unit = torch.clamp((decoded.float() + 1.0) / 2.0, 0.0, 1.0).cpu().numpy()
    return [Image.fromarray((255.0 * np.moveaxis(x, 0, 2)).astype(np.uint8)) for x in unit]
