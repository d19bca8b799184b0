"""Images members upload (init images, masks): checked before download, decoded off the event
loop with a pixel cap, kept as PNG under `<data>/uploads/<member>/<sha256>.png`, with a
per-member quota and a retention period.

Nothing here knows Discord: a frontend hands over an `ImageInput` (what the upload declares,
and how to read it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Protocol

from .config import Config
from .errors import ImageError
from .images import open_user_image

log = logging.getLogger(__name__)

ALLOWED_TYPES = ("image/png", "image/jpeg", "image/webp")
PRUNE_EVERY = timedelta(hours=1)  # a running bot looks for expired uploads at most this often
MAX_UPLOAD_BYTES = 10 * 1024 * 1024


class ImageInput(Protocol):
    """An image a member sent, before it is downloaded: what it declares, and how to read it."""

    content_type: str | None
    size: int
    width: int | None
    height: int | None

    async def read(self) -> bytes: ...


def check_declared(image: ImageInput, *, max_pixels: int, what: str) -> None:
    """Type, size and dimensions as the upload declares them: refused before a byte is downloaded."""
    content_type = (image.content_type or "").split(";")[0].strip().lower()
    if content_type not in ALLOWED_TYPES:
        raise ImageError(f"the {what} must be a PNG, JPEG or WEBP image, not {content_type or 'an unknown file type'}")
    if image.size > MAX_UPLOAD_BYTES:
        raise ImageError(f"the {what} is {image.size / 1048576:.1f} MiB; at most {MAX_UPLOAD_BYTES // 1048576} MiB")
    if image.width and image.height and image.width * image.height > max_pixels:
        raise ImageError(f"the {what} is {image.width}x{image.height}; at most {max_pixels:,} pixels")


async def read_checked(image: ImageInput, *, max_pixels: int, what: str) -> bytes:
    check_declared(image, max_pixels=max_pixels, what=what)
    try:
        data = await image.read()
    except OSError:
        raise ImageError(f"could not read the {what}; try uploading it again") from None
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageError(f"the {what} is larger than {MAX_UPLOAD_BYTES // 1048576} MiB")
    return data


class FileImage:
    """An image file the operator names on the command line, as an ImageInput."""

    def __init__(self, path: Path):
        self.path = Path(path)
        suffix = self.path.suffix.lower().lstrip(".")
        self.content_type = f"image/{'jpeg' if suffix == 'jpg' else suffix}"
        try:
            self.size = self.path.stat().st_size
        except OSError:
            raise ImageError(f"cannot read {self.path}") from None
        self.width = self.height = None

    async def read(self) -> bytes:
        return await asyncio.to_thread(self.path.read_bytes)


def upload_pixel_limit(config: Config) -> int:
    """Uploads may be larger than generated images (they are resized), within reason."""
    return config.limits.max_pixels * 4


class UploadStore:
    """Saved uploads, their quota and retention. Files are content-addressed per member, written
    under a temporary name and renamed, and recorded in the database (`store.uploads`)."""

    def __init__(self, *, config: Config, store):
        self.folder = config.uploads_dir.resolve()  # stored paths are compared as strings
        self.retention = config.retention
        self.max_pixels = upload_pixel_limit(config)
        self._store = store
        self._pruned_at: datetime | None = None

    async def save(self, image: ImageInput, *, owner_id: int, what: str) -> tuple[Path, bool]:
        """Download, check and keep one upload; (its path, whether this call created the file)."""
        data = await read_checked(image, max_pixels=self.max_pixels, what=what)
        png = await asyncio.to_thread(_as_png, data, self.max_pixels, what)
        return await self.keep_png(png, owner_id=owner_id)

    async def keep_png(self, png: bytes, *, owner_id: int) -> tuple[Path, bool]:
        """Keep a PNG made for the member (already checked, or made by the bot) as their upload;
        (its path, whether this call created the file)."""
        return (await self.keep_pngs([png], owner_id=owner_id))[0]

    async def keep_pngs(self, pngs: list[bytes], *, owner_id: int) -> list[tuple[Path, bool]]:
        """Keep PNGs made for a member (an outpaint's canvas and mask) as that member's uploads,
        under the quota and retention of `save`. Room is made for all of them first, so keeping
        the second never deletes the first. (path, whether this call created the file) each."""
        now = datetime.now(timezone.utc)
        if self._pruned_at is None or now - self._pruned_at > PRUNE_EVERY:
            await self.prune(now)
        await self._make_room(owner_id, len(pngs))
        kept = []
        for png in pngs:
            path, created = await asyncio.to_thread(_write_new, self.folder / str(owner_id), png)
            await self._store.uploads.add(owner_id, str(path), len(png))
            kept.append((path, created))
        return kept

    async def discard(self, path: Path) -> None:
        """Remove an upload that no job ended up using."""
        await self._store.uploads.remove([str(path)])
        await asyncio.to_thread(Path(path).unlink, missing_ok=True)

    def stored(self, path: str | Path, *, what: str) -> Path:
        """A path taken from a stored job (a reroll): it must be one of ours and still exist."""
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.folder.resolve()):
            raise ImageError(f"the {what} of that job is not an upload of this bot")
        if not resolved.is_file():
            raise ImageError(f"the {what} of that job is no longer kept; upload it again with a new command")
        return resolved

    async def _make_room(self, owner_id: int, count: int) -> None:
        """The member's oldest unused uploads go, so that `count` more fit in the quota."""
        files, _ = await self._store.uploads.usage(owner_id)
        excess = files - self.retention.max_uploads_per_member + count
        if excess <= 0:
            return
        oldest = await self._store.uploads.oldest(owner_id, excess)
        if len(oldest) < excess:
            raise ImageError(f"you have {files} uploaded images waiting in jobs; the limit is "
                             f"{self.retention.max_uploads_per_member}. Wait for some to finish.")
        await self._delete([record.path for record in oldest])

    async def prune(self, now: datetime | None = None) -> int:
        """Delete uploads unused for `[retention] uploads_days` (never one a queued or running job needs)."""
        now = now or datetime.now(timezone.utc)
        self._pruned_at = now
        stale = await self._store.uploads.stale(now - timedelta(days=self.retention.uploads_days))
        await self._delete([record.path for record in stale])
        return len(stale)

    async def _delete(self, paths: list[str]) -> None:
        if not paths:
            return
        await self._store.uploads.remove(paths)
        await asyncio.to_thread(_unlink_all, [Path(p) for p in paths])


def _as_png(data: bytes, max_pixels: int, what: str) -> bytes:
    try:
        image = open_user_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        raise ImageError(f"the {what}: {exc}") from None
    from .infotext import png_with_infotext, read_infotext

    try:  # A1111's parameters stay with the picture (an upscale keeps them); anything else is dropped
        parameters = read_infotext(data, max_pixels=max_pixels) or ""
    except ImageError:
        parameters = ""
    return png_with_infotext(image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB"), parameters)


def _write_new(folder: Path, png: bytes) -> tuple[Path, bool]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(png).hexdigest()[:32]}.png"  # content-addressed: never member-named
    if path.exists():
        return path, False
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as file:
        file.write(png)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)  # readers never see half a file
    return path, True


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not delete upload %s: %s", path, exc)
