"""Opening images that come from users: format allow-list and a pixel cap checked before decoding."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from .errors import ImageError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")


def open_user_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode PNG/JPEG/WEBP bytes; refuse other formats and images over `max_pixels` before decoding them."""
    try:
        image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except Exception:
        raise ImageError("that file is not a PNG, JPEG or WEBP image") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"the image is {width}x{height}; at most {max_pixels:,} pixels are accepted")
    try:
        image.load()
    except Exception:
        raise ImageError("the image file is damaged or truncated") from None
    return image


def load_user_image(path: Path, *, max_pixels: int) -> Image.Image:
    try:
        data = path.read_bytes()
    except OSError:
        raise ImageError(f"cannot read image {path.name}") from None
    return open_user_image(data, max_pixels=max_pixels)


def mask_from_alpha(path: Path, *, max_pixels: int) -> bytes | None:
    """A mask (PNG, white = repaint) from an image's transparency, as phone editors export an erased
    area; None when the image has no transparent pixel. Transparent means alpha <= 128, the
    threshold A1111 uses to binarise masks."""
    image = load_user_image(path, max_pixels=max_pixels)
    if "A" not in image.getbands() and "transparency" not in image.info:
        return None
    alpha = image.convert("RGBA").getchannel("A")
    mask = alpha.point(lambda value: 255 if value <= 128 else 0)
    if mask.getbbox() is None:
        return None
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()
