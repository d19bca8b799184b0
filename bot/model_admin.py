"""What /owner does to the model folders: rescanning, and adding an uploaded embedding or LoRA safely.

An uploaded embedding is only ever a .safetensors file (never a pickle), at most
MAX_EMBEDDING_BYTES, saved as `<trigger>.safetensors` where the trigger is checked against
generation.embeddings.TRIGGER and must not be an ordinary CLIP word, never replacing an existing
file (written under a temporary name, then linked into place), only while the folder holds fewer
than MAX_UPLOADED_EMBEDDINGS files, and only after its tensor was read, its values were finite and
of bounded norm, and its width matched a checkpoint family's text encoder.

An uploaded LoRA is likewise only ever a .safetensors file, at most MAX_LORA_BYTES (refused from
the attachment's declared size before it is downloaded, and again from the bytes), saved as
`<name>.safetensors` with a one-word name (the embedding rule), never replacing a file nor taking
the name or alias of a LoRA already there, and only after generation.lora_networks read it (known
LoRA/LyCORIS keys and shapes) and its width matched a checkpoint family present. It is checked in
a private temporary folder, then written under a temporary name in loras/ and linked into place,
and the folders are rescanned; a file the scan does not accept is removed again.
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
from generation.lora_networks import LoraError, read_lora_file
from generation.loras import LORA_SUFFIXES, lora_width_from_shapes, not_a_lora_reason, read_lora_shapes, width_label
from generation.registry import embedding_widths, lora_widths

from .context import AppContext

MAX_EMBEDDING_BYTES = 1024 * 1024
MAX_TRIGGER_CHARS = 64
MAX_EMBEDDING_VECTORS = 75  # one prompt chunk
# SD 1.x CLIP token embeddings have L2 norms around 0.4 and trained textual-inversion vectors
# rarely exceed a few units; 25 keeps every real embedding (also SDXL's clip_l + clip_g side by side)
# and refuses values chosen to overflow fp16 activations in the text encoder.
MAX_EMBEDDING_NORM = 25.0
MAX_UPLOADED_EMBEDDINGS = 100  # embedding files in the folder before uploads are refused
MAX_LORA_BYTES = 256 * 1024 * 1024
MAX_LORA_NAME_CHARS = MAX_TRIGGER_CHARS


class LoraUploadError(EaselError):
    """An uploaded LoRA was refused; the message says what to change."""


@dataclass(frozen=True, kw_only=True)
class RefreshSummary:
    checkpoints: int
    skipped_checkpoints: tuple[str, ...]
    embeddings: int
    skipped_embeddings: tuple[str, ...]
    loras: int = 0
    skipped_loras: tuple[str, ...] = ()


async def refresh(app: AppContext) -> RefreshSummary:
    snapshot = await refresh_models(app.registry, app.store)
    return RefreshSummary(
        checkpoints=len(snapshot.checkpoints),
        skipped_checkpoints=tuple(f"{Path(s.path).name}: {s.reason}" for s in snapshot.skipped),
        embeddings=sum(1 for e in snapshot.embeddings if e.usable),
        skipped_embeddings=tuple(f"{e.trigger}: {e.skip_reason}" for e in snapshot.embeddings if not e.usable),
        loras=sum(1 for lora in snapshot.loras if lora.usable),
        skipped_loras=tuple(f"{lora.path.name}: {lora.skip_reason}" for lora in snapshot.loras if not lora.usable),
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
    """Write `data` as <trigger>.safetensors without ever replacing a file (see _write_new_file)."""
    return _write_new_file(folder, f"{trigger}.safetensors", data,
                           exists=EmbeddingError(f"an embedding named {trigger} already exists"))


def _write_new_file(folder: Path, filename: str, data: bytes, *, exists: EaselError) -> Path:
    """Write `data` as folder/filename without ever replacing a file: written and fsync'd under a
    temporary name in the same folder (a dot name ending in .upload, not a model suffix, so a rescan
    never sees it), then hard-linked into place (fails if the name exists), or where links are not
    supported, renamed after a no-overwrite check; raises `exists` when the name is taken. No partial
    file is ever visible under the final name."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    if path.resolve().parent != folder.resolve():
        raise type(exists)("that file name cannot be used")
    stem = Path(filename).stem
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=".upload")
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


# ------------------------------------------------------------------------------------------- LoRAs


def lora_name(filename: str) -> str:
    """The name an uploaded LoRA would get (`<lora:NAME:1>`): its stem, if it is a safe single word."""
    if "/" in filename or "\\" in filename or "\x00" in filename:
        raise LoraUploadError("the file name must not contain a path")
    stem, dot, suffix = filename.rpartition(".")
    if not dot or suffix.lower() != "safetensors":
        raise LoraUploadError("only .safetensors LoRAs can be uploaded (.pt and .ckpt files are pickles)")
    if not stem or stem.startswith(".") or not TRIGGER.match(stem) or len(stem) > MAX_LORA_NAME_CHARS:
        raise LoraUploadError(f"the file name becomes the LoRA's name: use one word of at most {MAX_LORA_NAME_CHARS} "
                              "letters, digits, _ . + or -, like my-style.safetensors")
    return stem


def check_lora_size(size: int) -> None:
    """Refuse a LoRA over MAX_LORA_BYTES (call it with the declared size before downloading) or an empty one."""
    if size > MAX_LORA_BYTES:
        raise LoraUploadError(f"the file is {size / 2**20:.1f} MiB; LoRAs may be at most {MAX_LORA_BYTES // 2**20} MiB")
    if size <= 0:
        raise LoraUploadError("the file is empty")


def expected_lora_widths(app: AppContext) -> set[int]:
    """The widths an uploaded LoRA may have: the cross-attention width of a checkpoint family present."""
    widths = lora_widths(app.registry.checkpoints)
    if not widths:
        raise LoraUploadError("no checkpoint here has a known model family to check LoRAs against")
    return widths


def _lora_taken(app: AppContext, name: str) -> bool:
    folder = app.config.loras_dir
    if folder.is_dir() and any(entry.stem == name and entry.suffix.lower() in LORA_SUFFIXES
                               for entry in folder.iterdir()):
        return True
    return any(name in (lora.name, lora.alias) for lora in app.registry.loras)


def _check_lora(data: bytes, name: str) -> int | None:
    """Read the upload in a private temporary folder as generation.lora_networks would apply it,
    and return its width (None: unknown), judged from the header as the folder scan judges it (the
    parsed file's own width() where the header tells nothing). Raises LoraUploadError saying what
    is wrong."""
    with tempfile.TemporaryDirectory(prefix="easel-lora-") as folder:
        candidate = Path(folder) / f"{name}.safetensors"
        candidate.write_bytes(data)
        try:
            shapes = read_lora_shapes(candidate)
        except Exception:  # a damaged or foreign file; reading a safetensors header never runs code
            raise LoraUploadError("that is not a readable .safetensors LoRA") from None
        if (reason := not_a_lora_reason(shapes)) is not None:
            raise LoraUploadError(f"that is {reason}")
        try:
            network = read_lora_file(candidate, allow_pickle=False)
        except LoraError as exc:
            raise LoraUploadError(str(exc).replace(str(candidate), candidate.name)) from None
        except Exception:
            raise LoraUploadError("that is not a readable .safetensors LoRA") from None
        width = lora_width_from_shapes(shapes)
        return width if width is not None else network.width()


@dataclass(frozen=True, kw_only=True)
class AddedLora:
    name: str
    width: int
    family: str
    short_hash: str
    alias: str | None


async def add_lora(app: AppContext, *, filename: str, data: bytes) -> AddedLora:
    """Check, save and list an uploaded LoRA; raises EaselError saying what to change."""
    name = lora_name(filename)
    check_lora_size(len(data))
    if await asyncio.to_thread(_lora_taken, app, name):
        raise LoraUploadError(f"a LoRA named {name} already exists; rename the file")
    widths = expected_lora_widths(app)
    width = await asyncio.to_thread(_check_lora, data, name)
    if width is None:
        raise LoraUploadError("cannot tell which model family this LoRA is for (it changes neither the UNet's "
                              "cross-attention nor a text encoder)")
    if width not in widths:
        needs = " or ".join(width_label(w) for w in sorted(widths))
        raise LoraUploadError(f"this LoRA was made for {width_label(width)} (width {width}), but the checkpoints here "
                              f"are {needs}")
    folder = app.config.loras_dir
    path = await asyncio.to_thread(_write_new_file, folder, f"{name}.safetensors", data,
                                   exists=LoraUploadError(f"a LoRA named {name} already exists"))
    await refresh_models(app.registry, app.store)
    added = next((lora for lora in app.registry.loras if lora.path.name == path.name and lora.name == name), None)
    if added is None or not added.usable:
        reason = added.skip_reason if added is not None else "it was not found after saving"
        await asyncio.to_thread(path.unlink, missing_ok=True)
        await refresh_models(app.registry, app.store)
        raise EaselError(f"the LoRA was saved but could not be used ({reason}); it was removed again")
    return AddedLora(name=name, width=width, family=width_label(width), short_hash=added.short_hash, alias=added.alias)
