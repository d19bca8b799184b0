"""User images from Discord attachments: checked before download (type, declared size and dimensions)
and after (Pillow with a pixel cap and a format allow-list), then kept as a PNG under uploads/."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import discord

from generation.errors import ImageError
from generation.images import open_user_image

ALLOWED_TYPES = ("image/png", "image/jpeg", "image/webp")
MAX_UPLOAD_BYTES = 10 * 1024 * 1024


def check_declared(attachment: discord.Attachment, *, max_pixels: int, what: str) -> None:
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    if content_type not in ALLOWED_TYPES:
        raise ImageError(f"the {what} must be a PNG, JPEG or WEBP image, not {content_type or 'an unknown file type'}")
    if attachment.size > MAX_UPLOAD_BYTES:
        raise ImageError(f"the {what} is {attachment.size / 1048576:.1f} MiB; at most {MAX_UPLOAD_BYTES // 1048576} MiB")
    if attachment.width and attachment.height and attachment.width * attachment.height > max_pixels:
        raise ImageError(f"the {what} is {attachment.width}x{attachment.height}; at most {max_pixels:,} pixels")


async def save_attachment(attachment: discord.Attachment, folder: Path, *, max_pixels: int, what: str) -> Path:
    check_declared(attachment, max_pixels=max_pixels, what=what)
    try:
        data = await attachment.read()
    except discord.HTTPException:
        raise ImageError(f"could not download the {what}; try uploading it again") from None
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageError(f"the {what} is larger than {MAX_UPLOAD_BYTES // 1048576} MiB")
    return await asyncio.to_thread(_store, data, folder, max_pixels, what)


def _store(data: bytes, folder: Path, max_pixels: int, what: str) -> Path:
    try:
        image = open_user_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        raise ImageError(f"the {what}: {exc}") from None
    buffer = io.BytesIO()
    image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB").save(buffer, format="PNG")
    png = buffer.getvalue()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(png).hexdigest()[:32]}.png"  # content-addressed: never user-named
    if not path.exists():
        path.write_bytes(png)
    return path
