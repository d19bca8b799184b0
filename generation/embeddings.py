"""Textual-inversion embeddings: scanning embeddings/, checking widths, loading into a pipeline on use."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable

import torch

from .errors import EmbeddingError
from .hashing import HashCache, sha256_file

EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
TRIGGER = re.compile(r"^[\w.+-]+$")


@dataclass(frozen=True)
class EmbeddingInfo:
    trigger: str
    path: str
    sha256: str | None
    vectors: int
    width: int
    skip_reason: str | None = None

    @property
    def usable(self) -> bool:
        return self.skip_reason is None

    @property
    def ti_hash(self) -> str:
        """Infotext `TI hashes` value: the first 12 hex chars of the file's sha256."""
        return (self.sha256 or "")[:12]


def read_embedding_tensor(path: Path) -> torch.Tensor:
    """The [vectors, width] tensor of an A1111 (.pt string_to_param / .safetensors emb_params) or diffusers file.

    Pickled .pt/.bin files come only from the operator's folder and are read with weights_only=True.
    """
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    elif suffix in (".pt", ".bin"):
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise EmbeddingError(f"{path.name}: unsupported embedding format")
    if isinstance(state, torch.Tensor):
        tensor = state
    elif isinstance(state, dict) and isinstance(state.get("string_to_param"), dict):
        params = state["string_to_param"]
        if "*" not in params:
            raise EmbeddingError(f"{path.name}: A1111 file without a '*' vector")
        tensor = params["*"]
    elif isinstance(state, dict) and "clip_l" in state and "clip_g" in state:
        # SDXL: one vector per text encoder; kept side by side as [vectors, clip_l + clip_g]
        clip_l, clip_g = state["clip_l"], state["clip_g"]
        if not all(isinstance(t, torch.Tensor) and t.ndim == 2 for t in (clip_l, clip_g)) or clip_l.shape[0] != clip_g.shape[0]:
            raise EmbeddingError(f"{path.name}: clip_l and clip_g must be [vectors, width] with equal vectors")
        tensor = torch.cat([clip_l, clip_g], dim=1)
    elif isinstance(state, dict) and "emb_params" in state:
        tensor = state["emb_params"]
    elif isinstance(state, dict) and len(state) == 1 and isinstance(next(iter(state.values())), torch.Tensor):
        tensor = next(iter(state.values()))
    else:
        raise EmbeddingError(f"{path.name}: not an embedding (expected one tensor, emb_params or string_to_param)")
    if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (1, 2) or tensor.numel() == 0:
        raise EmbeddingError(f"{path.name}: the embedding tensor must have shape [vectors, width]")
    return tensor.reshape(1, -1) if tensor.ndim == 1 else tensor


def scan_embeddings(folder: Path, *, expected_widths: Collection[int] | None,
                    hash_cache: HashCache | None = None) -> list[EmbeddingInfo]:
    """Every embedding file in `folder`; those that cannot be used carry a skip reason. An embedding
    is usable when its width is one of `expected_widths` (the checkpoints' families; None: any)."""
    found: list[EmbeddingInfo] = []
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if not path.is_file() or path.suffix.lower() not in EMBEDDING_SUFFIXES:
            continue
        trigger = path.stem
        try:
            sha = sha256_file(path, hash_cache)
        except OSError as exc:
            found.append(EmbeddingInfo(trigger, str(path), None, 0, 0, f"unreadable: {exc}"))
            continue
        if not TRIGGER.match(trigger):
            found.append(EmbeddingInfo(trigger, str(path), sha, 0, 0, "file name must be one word (letters, digits, _ . + -)"))
            continue
        if any(e.trigger == trigger for e in found):
            found.append(EmbeddingInfo(trigger, str(path), sha, 0, 0, "another file has the same trigger word"))
            continue
        try:
            tensor = read_embedding_tensor(path)
        except EmbeddingError as exc:
            found.append(EmbeddingInfo(trigger, str(path), sha, 0, 0, str(exc).split(": ", 1)[-1]))
            continue
        except Exception as exc:  # corrupt file, refused pickle content, ...
            found.append(EmbeddingInfo(trigger, str(path), sha, 0, 0, f"unreadable: {type(exc).__name__}"))
            continue
        vectors, width = tensor.shape
        reason = None
        if expected_widths and width not in expected_widths:
            reason = width_mismatch(width, expected_widths)
        found.append(EmbeddingInfo(trigger, str(path), sha, int(vectors), int(width), reason))
    return found


def width_mismatch(width: int, expected_widths: Collection[int]) -> str:
    """Why an embedding of `width` fits none of the checkpoints' text encoders."""
    if len(expected_widths) == 1:
        return f"width {width} does not match the text encoder's {next(iter(expected_widths))}"
    return f"width {width} fits none of the checkpoints here (they need {' or '.join(map(str, sorted(expected_widths)))})"


def triggers_in(text: str, embeddings: Iterable[EmbeddingInfo]) -> list[EmbeddingInfo]:
    """Embeddings whose trigger word appears in `text` as a whole word."""
    used = []
    for embedding in embeddings:
        if re.search(rf"(?<![\w.+-]){re.escape(embedding.trigger)}(?![\w.+-])", text):
            used.append(embedding)
    return used


def ensure_loaded(pipe, embeddings: Iterable[EmbeddingInfo], loaded: set[str]) -> None:
    """Load each embedding into the pipeline's tokenizer(s) and text encoder(s) once; `loaded` tracks which are in."""
    towers = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL
        towers.append((pipe.tokenizer_2, pipe.text_encoder_2))
    widths = [encoder.config.hidden_size for _, encoder in towers]
    width = sum(widths)
    for embedding in embeddings:
        if embedding.trigger in loaded:
            continue
        if not embedding.vectors:  # unreadable; a width judged against another checkpoint is checked below
            raise EmbeddingError(f"embedding {embedding.trigger} cannot be used: {embedding.skip_reason}")
        tensor = read_embedding_tensor(Path(embedding.path))
        if tensor.shape[1] != width:
            raise EmbeddingError(
                f"embedding {embedding.trigger} has width {tensor.shape[1]}, this checkpoint's text encoder needs {width}"
            )
        for (tokenizer, encoder), part in zip(towers, tensor.split(widths, dim=1)):
            pipe.load_textual_inversion(part.to(encoder.dtype), token=embedding.trigger, tokenizer=tokenizer,
                                        text_encoder=encoder)
        # the prompt encoder tokenizes once and feeds both SDXL encoders the same ids
        if len({tuple(tokenizer.convert_tokens_to_ids([embedding.trigger])) for tokenizer, _ in towers}) != 1:
            raise EmbeddingError(f"embedding {embedding.trigger} got different token ids in the two tokenizers")
        loaded.add(embedding.trigger)
