"""What /admin does to the model folders: rescanning, and adding an uploaded embedding safely.

An uploaded embedding is only ever a .safetensors file (never a pickle), at most
MAX_EMBEDDING_BYTES, saved as `<trigger>.safetensors` where the trigger is checked against
generation.embeddings.TRIGGER and must not be an ordinary CLIP word, never replacing an existing
file (written under a temporary name, then linked into place), only while the folder holds fewer
than MAX_UPLOADED_EMBEDDINGS files, and only after its tensor was read, its values were finite and
of bounded norm, and its width matched a checkpoint family's text encoder.
"""

from __future__ import annotations

import asyncio
import errno
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from generation.architectures import sd_clip_tokenizer
from generation.catalog import refresh_models
from generation.embeddings import EMBEDDING_SUFFIXES, TRIGGER, read_embedding_tensor
from generation.errors import EaselError, EmbeddingError
from generation.registry import embedding_widths

from .context import AppContext

MAX_EMBEDDING_BYTES = 1024 * 1024
MAX_TRIGGER_CHARS = 64
MAX_EMBEDDING_VECTORS = 75  # one prompt chunk
# SD 1.x CLIP token embeddings have L2 norms around 0.4 and trained textual-inversion vectors
# rarely exceed a few units; 25 keeps every real embedding (also SDXL's clip_l + clip_g side by side)
# and refuses values chosen to overflow fp16 activations in the text encoder.
MAX_EMBEDDING_NORM = 25.0
MAX_UPLOADED_EMBEDDINGS = 100  # embedding files in the folder before uploads are refused


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


def check_embedding_values(tensor: torch.Tensor) -> None:
    """Every value a finite float and every vector's L2 norm at most MAX_EMBEDDING_NORM."""
    if not tensor.is_floating_point():
        raise EmbeddingError(f"the embedding holds {str(tensor.dtype).removeprefix('torch.')} values; "
                             "it must hold floating-point numbers")
    values = tensor.detach().to(torch.float64)  # float64: a norm of fp16 values cannot overflow here
    if not bool(torch.isfinite(values).all()):
        bad = int((~torch.isfinite(values)).sum())
        raise EmbeddingError(f"the embedding contains NaN or infinite values ({bad} of {values.numel()}); "
                             "the file is damaged or badly trained")
    norms = values.norm(dim=1)
    largest = float(norms.max())
    if largest > MAX_EMBEDDING_NORM:
        vector = int(norms.argmax()) + 1
        raise EmbeddingError(f"vector {vector} of the embedding has length {largest:.4g}; real embeddings stay "
                             f"below {MAX_EMBEDDING_NORM:g}, so this one would break images")


def check_embedding_count(folder: Path) -> None:
    """Refuse another upload once the folder holds MAX_UPLOADED_EMBEDDINGS embedding files."""
    if not folder.is_dir():
        return
    count = sum(1 for entry in folder.iterdir() if entry.suffix.lower() in EMBEDDING_SUFFIXES and entry.is_file())
    if count >= MAX_UPLOADED_EMBEDDINGS:
        raise EmbeddingError(f"there are already {count} embeddings here (at most {MAX_UPLOADED_EMBEDDINGS}); "
                             "remove one before adding another")


def check_trigger_is_unique(trigger: str, tokenizer=None) -> None:
    """Refuse a trigger that is an ordinary word of the CLIP vocabulary (or any single token): the
    embedding would replace that word in every prompt. `tokenizer`: an SD CLIP tokenizer (built
    here when not given; a few hundred milliseconds, so call this in a thread)."""
    tokenizer = tokenizer if tokenizer is not None else sd_clip_tokenizer()
    lowered = trigger.lower()
    if f"{lowered}</w>" in tokenizer.get_vocab() or len(tokenizer.tokenize(trigger)) <= 1:
        raise EmbeddingError(f'the trigger "{trigger}" is an ordinary word; rename the file to something unique '
                             f"like {lowered}-style.safetensors")


def _taken(folder: Path, trigger: str) -> bool:
    if not folder.is_dir():
        return False
    return any(entry.stem == trigger and entry.suffix.lower() in EMBEDDING_SUFFIXES for entry in folder.iterdir())


def _read_tensor(data: bytes, trigger: str):
    """Read the uploaded tensor in a private temporary folder."""
    with tempfile.TemporaryDirectory(prefix="easel-embedding-") as folder:
        candidate = Path(folder) / f"{trigger}.safetensors"
        candidate.write_bytes(data)
        try:
            tensor = read_embedding_tensor(candidate)
        except EmbeddingError as exc:
            raise EmbeddingError(str(exc).split(": ", 1)[-1]) from None
        except Exception:  # a damaged or foreign file; safetensors never runs code
            raise EmbeddingError("that is not a readable .safetensors embedding") from None
    return tensor


def _fsync_folder(folder: Path) -> None:
    """Make a new directory entry durable (POSIX); a no-op where folders cannot be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _write_new(folder: Path, trigger: str, data: bytes) -> Path:
    """Write `data` as <trigger>.safetensors without ever replacing a file: written and fsync'd under
    a temporary name in the same folder (not an embedding suffix, so a rescan never sees it), then
    hard-linked into place (fails if the name exists), or where links are not supported, renamed
    after a no-overwrite check. No partial file is ever visible under the final name."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{trigger}.safetensors"
    if path.resolve().parent != folder.resolve():
        raise EmbeddingError("that file name cannot be used")
    exists = EmbeddingError(f"an embedding named {trigger} already exists")
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{trigger}.", suffix=".upload")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            raise exists from None
        except OSError as exc:  # no hard links on this file system (FAT, some mounts)
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK,
                                 errno.ENOSYS, errno.EACCES):
                raise
            if os.path.lexists(path):
                raise exists from None
            os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    _fsync_folder(folder)
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
    check_embedding_count(folder)
    widths = expected_widths(app)
    tensor = await asyncio.to_thread(_read_tensor, data, trigger)
    vectors, found_width = (int(n) for n in tensor.shape)
    if found_width not in widths:  # the shape first: it says what the file is for
        needs = " or ".join(map(str, sorted(widths)))
        raise EmbeddingError(f"the embedding has width {found_width}, but the checkpoints here need {needs}; "
                             "it was made for another model family")
    if vectors > MAX_EMBEDDING_VECTORS:
        raise EmbeddingError(f"the embedding has {vectors} vectors; at most {MAX_EMBEDDING_VECTORS} fit in a prompt")
    await asyncio.to_thread(check_embedding_values, tensor)
    await asyncio.to_thread(check_trigger_is_unique, trigger)  # builds the tokenizer: last, and off the loop
    path = await asyncio.to_thread(_write_new, folder, trigger, data)
    await refresh_models(app.registry, app.store)
    loaded = app.registry.embedding(trigger)
    if loaded is None or not loaded.usable:
        reason = loaded.skip_reason if loaded is not None else "it was not found after saving"
        await asyncio.to_thread(path.unlink, missing_ok=True)
        await refresh_models(app.registry, app.store)
        raise EaselError(f"the embedding was saved but could not be loaded ({reason}); it was removed again")
    return AddedEmbedding(trigger=trigger, vectors=vectors, width=found_width)
