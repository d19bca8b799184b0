"""What /admin does to the model folders: rescanning, and adding an uploaded embedding safely.

An uploaded embedding is only ever a .safetensors file (never a pickle), at most
MAX_EMBEDDING_BYTES, saved as `<trigger>.safetensors` where the trigger is checked against
generation.embeddings.TRIGGER, never replacing an existing file, and only after its tensor was
read and its width matched the default checkpoint's text encoder.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from generation.catalog import refresh_models
from generation.embeddings import EMBEDDING_SUFFIXES, TRIGGER, read_embedding_tensor
from generation.errors import EaselError, EmbeddingError
from generation.registry import embedding_widths

from .context import AppContext

MAX_EMBEDDING_BYTES = 1024 * 1024
MAX_TRIGGER_CHARS = 64
MAX_EMBEDDING_VECTORS = 75  # one prompt chunk


@dataclass(frozen=True, kw_only=True)
class RefreshSummary:
    checkpoints: int
    skipped_checkpoints: tuple[str, ...]
    embeddings: int
    skipped_embeddings: tuple[str, ...]


async def refresh(app: AppContext) -> RefreshSummary:
    snapshot = await refresh_models(app.registry, app.store)
    return RefreshSummary(
        checkpoints=len(snapshot.checkpoints),
        skipped_checkpoints=tuple(f"{Path(s.path).name}: {s.reason}" for s in snapshot.skipped),
        embeddings=sum(1 for e in snapshot.embeddings if e.usable),
        skipped_embeddings=tuple(f"{e.trigger}: {e.skip_reason}" for e in snapshot.embeddings if not e.usable),
    )


def embedding_trigger(filename: str) -> str:
    """The trigger word an uploaded file would get: its stem, if it is a safe single word."""
    if "/" in filename or "\\" in filename or "\x00" in filename:
        raise EmbeddingError("the file name must not contain a path")
    stem, dot, suffix = filename.rpartition(".")
    if not dot or suffix.lower() != "safetensors":
        raise EmbeddingError("only .safetensors embeddings can be uploaded (.pt and .bin files are pickles)")
    if not stem or stem.startswith(".") or not TRIGGER.match(stem) or len(stem) > MAX_TRIGGER_CHARS:
        raise EmbeddingError(f"the file name becomes the trigger word: use one word of at most {MAX_TRIGGER_CHARS} "
                             "letters, digits, _ . + or -, like my-style.safetensors")
    return stem


def check_upload_size(size: int) -> None:
    if size > MAX_EMBEDDING_BYTES:
        raise EmbeddingError(f"the file is {size / 1024:.0f} KiB; embeddings may be at most "
                             f"{MAX_EMBEDDING_BYTES // 1024} KiB")
    if size == 0:
        raise EmbeddingError("the file is empty")


def expected_widths(app: AppContext) -> set[int]:
    """The widths an uploaded embedding may have: one of the checkpoints' families."""
    widths = embedding_widths(app.registry.checkpoints)
    if not widths:
        raise EmbeddingError("no checkpoint here has a known text encoder to check embeddings against")
    return widths


def _taken(folder: Path, trigger: str) -> bool:
    if not folder.is_dir():
        return False
    return any(entry.stem == trigger and entry.suffix.lower() in EMBEDDING_SUFFIXES for entry in folder.iterdir())


def _read_shape(data: bytes, trigger: str) -> tuple[int, int]:
    with tempfile.TemporaryDirectory(prefix="easel-embedding-") as folder:
        candidate = Path(folder) / f"{trigger}.safetensors"
        candidate.write_bytes(data)
        try:
            tensor = read_embedding_tensor(candidate)
        except EmbeddingError as exc:
            raise EmbeddingError(str(exc).split(": ", 1)[-1]) from None
        except Exception:  # a damaged or foreign file; safetensors never runs code
            raise EmbeddingError("that is not a readable .safetensors embedding") from None
    vectors, width = tensor.shape
    return int(vectors), int(width)


def _write_new(folder: Path, trigger: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{trigger}.safetensors"
    if path.resolve().parent != folder.resolve():
        raise EmbeddingError("that file name cannot be used")
    try:
        with open(path, "xb") as file:  # "x": never replace a file, even one that appeared just now
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except FileExistsError:
        raise EmbeddingError(f"an embedding named {trigger} already exists") from None
    return path


@dataclass(frozen=True, kw_only=True)
class AddedEmbedding:
    trigger: str
    vectors: int
    width: int


async def add_embedding(app: AppContext, *, filename: str, data: bytes) -> AddedEmbedding:
    """Check, save and load an uploaded embedding; raises EaselError saying what to change."""
    trigger = embedding_trigger(filename)
    check_upload_size(len(data))
    folder = app.config.embeddings_dir
    if _taken(folder, trigger) or app.registry.embedding(trigger) is not None:
        raise EmbeddingError(f"an embedding named {trigger} already exists; rename the file")
    widths = expected_widths(app)
    vectors, found_width = await asyncio.to_thread(_read_shape, data, trigger)
    if found_width not in widths:
        needs = " or ".join(map(str, sorted(widths)))
        raise EmbeddingError(f"the embedding has width {found_width}, but the checkpoints here need {needs}; "
                             "it was made for another model family")
    if vectors > MAX_EMBEDDING_VECTORS:
        raise EmbeddingError(f"the embedding has {vectors} vectors; at most {MAX_EMBEDDING_VECTORS} fit in a prompt")
    path = await asyncio.to_thread(_write_new, folder, trigger, data)
    await refresh_models(app.registry, app.store)
    loaded = app.registry.embedding(trigger)
    if loaded is None or not loaded.usable:
        reason = loaded.skip_reason if loaded is not None else "it was not found after saving"
        await asyncio.to_thread(path.unlink, missing_ok=True)
        await refresh_models(app.registry, app.store)
        raise EaselError(f"the embedding was saved but could not be loaded ({reason}); it was removed again")
    return AddedEmbedding(trigger=trigger, vectors=vectors, width=found_width)
