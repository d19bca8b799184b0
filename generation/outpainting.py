"""Outpainting, as members of Midjourney-like bots know it: "Zoom out" 1.5x / 2x and "Pan" left, right,
up or down. Pure PIL, no model: a larger canvas with the picture on it, the new area pre-filled, and a
mask that is white exactly over the new area. The inpaint pipeline then paints the new area.

Geometry (`plan_canvas`):

- Zoom out z (1.5 or 2): the canvas is z times the picture in each dimension, the picture centred.
- Pan: the canvas grows by half the picture's width (left/right) or height (up/down) on that side.

Rounding: a canvas side is rounded UP to a multiple of 8 (what the model needs); the picture itself
is never scaled or moved by a fraction of a pixel, so it stays pixel-exact, and every pixel of
rounding goes to the new area. For a zoom the picture's top-left corner is put at the centred
position rounded to the nearest multiple of 8 (down on a tie; at most 4 px off centre), so its edge
falls where the latent mask (1/8 the size) has one; for a picture whose sides are multiples of 8
(every result) both edges do; for a pan the picture sits against the far side, and the
other dimension's remainder (a picture whose side is no multiple of 8) goes below / to the right.

Pre-fill ("fill" in A1111's masked content): A1111's own fill, the picture's colours blurred
outwards from its edges at decreasing radii (256, 64, 16, 4, 2, 0 px), so the new area starts
as soft edge colours rather than flat grey. The picture's pixels are pasted back unchanged.

Mask blur: 0 (`OUTPAINT_MASK_BLUR`). A1111's overlay pastes the original back through the blurred
mask's inverse, so a blur of r pixels would let the new paint reach r pixels into the picture; with 0
the picture's area of the result is exactly the picture. (The other way, shrinking the white part by
the blur radius, would leave a band of the blurred pre-fill visible in the new area.) The seam stays
soft anyway: the sampler sees the whole canvas, and the new area is painted to match the kept latents.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageFilter, ImageOps

from .errors import EaselError

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
ZOOMS: tuple[float, ...] = (1.5, 2.0)
PAN_GROWTH = 0.5  # a pan adds half the picture's width or height on that side
OUTPAINT_MASK_BLUR = 0  # the picture's area stays pixel-exact through A1111's overlay (see above)
OUTPAINT_STRENGTH = 1.0
OUTPAINT_MASKED_CONTENT = "fill"
# A1111's fill: (blur radius, times composited), widest first.
_FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))


class OutpaintError(EaselError):
    """An outpaint that cannot be done (a member-facing message)."""


@dataclass(frozen=True)
class CanvasPlan:
    """Where a picture of `source` size goes on the new canvas."""

    source_width: int
    source_height: int
    width: int  # the canvas
    height: int
    left: int  # the picture's top-left corner on the canvas
    top: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The picture's area on the canvas (left, top, right, bottom): the mask is black exactly here."""
        return self.left, self.top, self.left + self.source_width, self.top + self.source_height


def _up8(value: float) -> int:
    return math.ceil(value / 8) * 8  # value is w * 1.5, w * 2 or w: exact in floating point


def _centred8(room: int) -> int:
    """Where the picture starts when `room` pixels are shared out around it: room / 2 rounded to
    the nearest multiple of 8 (down on a tie), within [0, room]."""
    return min(room, max(0, -((8 - room) // 16) * 8))  # ceil((room / 2 - 4) / 8) * 8


def describe_move(*, direction: str | None = None, zoom: float | None = None) -> str:
    if zoom is not None:
        return f"zooming out {zoom:g}x"
    return f"panning {direction}"


def check_move(*, direction: str | None = None, zoom: float | None = None) -> tuple[str | None, float | None]:
    """Exactly one of a direction or a zoom, from the known choices. Returns them normalised."""
    if (direction is None) == (zoom is None):
        raise OutpaintError("choose either a zoom (1.5 or 2) or a direction (left, right, up or down), not both")
    if direction is not None:
        direction = str(direction).lower()
        if direction not in DIRECTIONS:
            raise OutpaintError(f"the direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
        return direction, None
    try:
        zoom = float(zoom)
    except (TypeError, ValueError):
        raise OutpaintError("the zoom must be 1.5 or 2") from None
    if zoom not in ZOOMS:
        raise OutpaintError(f"the zoom must be 1.5 or 2, not {zoom:g}")
    return None, zoom


def plan_canvas(width: int, height: int, *, direction: str | None = None, zoom: float | None = None,
                max_width: int | None = None, max_height: int | None = None, max_pixels: int | None = None,
                min_size: int | None = None) -> CanvasPlan:
    """The canvas for a picture of width x height (see the module's rounding rule). A canvas over a
    limit (or under `min_size`) is refused with an OutpaintError naming the size and the limit."""
    direction, zoom = check_move(direction=direction, zoom=zoom)
    if width < 1 or height < 1:
        raise OutpaintError("the image is empty")
    if zoom is not None:
        canvas_width, canvas_height = _up8(width * zoom), _up8(height * zoom)
        left, top = _centred8(canvas_width - width), _centred8(canvas_height - height)
    elif direction in ("left", "right"):
        canvas_width, canvas_height = _up8(width * (1 + PAN_GROWTH)), _up8(height)
        left, top = (canvas_width - width if direction == "left" else 0), 0
    else:
        canvas_width, canvas_height = _up8(width), _up8(height * (1 + PAN_GROWTH))
        left, top = 0, (canvas_height - height if direction == "up" else 0)
    plan = CanvasPlan(source_width=width, source_height=height, width=canvas_width, height=canvas_height,
                      left=left, top=top)
    _check_limits(plan, describe_move(direction=direction, zoom=zoom), max_width=max_width,
                  max_height=max_height, max_pixels=max_pixels, min_size=min_size)
    return plan


def _check_limits(plan: CanvasPlan, move: str, *, max_width, max_height, max_pixels, min_size) -> None:
    what = (f"{move} makes the {plan.source_width}x{plan.source_height} image "
            f"{plan.width}x{plan.height}")
    if (max_width is not None and plan.width > max_width) or (max_height is not None and plan.height > max_height):
        limit = f"{max_width or 'any'}x{max_height or 'any'}"
        raise OutpaintError(f"{what}; the limit here is {limit}. Outpaint a smaller image")
    if max_pixels is not None and plan.width * plan.height > max_pixels:
        raise OutpaintError(f"{what}, {plan.width * plan.height:,} pixels; the limit here is {max_pixels:,} "
                            f"pixels. Outpaint a smaller image")
    if min_size is not None and (plan.width < min_size or plan.height < min_size):
        raise OutpaintError(f"{what}; images must be at least {min_size}x{min_size}. Use a larger image")


def a1111_fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill" (modules/images.py `fill`): the unmasked colours blurred into the masked area
    at decreasing radii (premultiplied alpha, so only real pixels spread). RGB out."""
    image_mod = Image.new("RGBA", image.size)
    image_masked = Image.new("RGBa", image.size)
    image_masked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in _FILL_PASSES:
        blurred = image_masked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            image_mod.alpha_composite(blurred)
    return image_mod.convert("RGB")


def extend_canvas(image: Image.Image, *, direction: str | None = None, zoom: float | None = None,
                  max_width: int | None = None, max_height: int | None = None, max_pixels: int | None = None,
                  min_size: int | None = None) -> tuple[Image.Image, Image.Image]:
    """(canvas, mask) for zooming out (`zoom` 1.5 or 2) or panning (`direction`). The canvas is RGB
    with the picture pixel-exact at `plan_canvas(...).box` and the new area pre-filled with A1111's
    fill; the mask is "L", 255 exactly over the new area and 0 over the picture."""
    plan = plan_canvas(image.width, image.height, direction=direction, zoom=zoom, max_width=max_width,
                       max_height=max_height, max_pixels=max_pixels, min_size=min_size)
    source = image.convert("RGB")
    canvas = Image.new("RGB", (plan.width, plan.height), (0, 0, 0))
    canvas.paste(source, (plan.left, plan.top))
    mask = Image.new("L", (plan.width, plan.height), 255)
    mask.paste(0, plan.box)
    canvas = a1111_fill(canvas, mask)
    canvas.paste(source, (plan.left, plan.top))  # exact, whatever the blur did
    return canvas, mask


def outpaint_fields(plan: CanvasPlan) -> dict[str, Any]:
    """The inpaint options of an outpaint of this canvas (Ask / GenerationRequest field names)."""
    return dict(mode="inpaint", width=plan.width, height=plan.height, strength=OUTPAINT_STRENGTH,
                masked_content=OUTPAINT_MASKED_CONTENT, mask_blur=OUTPAINT_MASK_BLUR, mask_invert=False,
                only_masked=False)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


__all__ = ["CanvasPlan", "DIRECTIONS", "OUTPAINT_MASK_BLUR", "OutpaintError", "ZOOMS", "a1111_fill",
           "check_move", "describe_move", "extend_canvas", "outpaint_fields", "plan_canvas", "png_bytes"]
