"""What models exist: checkpoints and embeddings found on disk, resolved by name."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import HUB_ID, CheckpointInfo, SkippedFile, hub_checkpoint, scan_checkpoints
from .embeddings import EmbeddingInfo, scan_embeddings
from .errors import ModelNotFound
from .hashing import HashCache

from .architectures import ARCHITECTURES

# The width an embedding of each architecture has: SDXL's clip_l + clip_g vectors count together.
TEXT_ENCODER_WIDTH = {name: architecture.cross_attention_width for name, architecture in ARCHITECTURES.items()}


def embedding_widths(checkpoints) -> set[int]:
    """The embedding widths the checkpoints' families take (a request checks its own checkpoint's)."""
    return {TEXT_ENCODER_WIDTH[c.architecture] for c in checkpoints if c.architecture in TEXT_ENCODER_WIDTH}


@dataclass(frozen=True)
class ModelSnapshot:
    """One consistent scan; replaced as a whole on refresh so readers never see half of one."""

    checkpoints: tuple[CheckpointInfo, ...] = ()
    skipped: tuple[SkippedFile, ...] = ()
    embeddings: tuple[EmbeddingInfo, ...] = ()


class ModelRegistry:
    def __init__(self, *, checkpoints_dir: Path, embeddings_dir: Path, default_checkpoint: str = "",
                 allow_pickle: bool = False, allow_hub: bool = True, hash_cache: HashCache | None = None):
        self.checkpoints_dir = checkpoints_dir
        self.embeddings_dir = embeddings_dir
        self._default = default_checkpoint
        self._allow_pickle = allow_pickle
        self._allow_hub = allow_hub
        self._hash_cache = hash_cache
        self._snapshot = ModelSnapshot()

    @classmethod
    def from_config(cls, config, hash_cache: HashCache | None = None) -> "ModelRegistry":
        return cls(checkpoints_dir=config.checkpoints_dir, embeddings_dir=config.embeddings_dir,
                   default_checkpoint=config.models.default_checkpoint, allow_pickle=config.models.allow_pickle_checkpoints,
                   allow_hub=config.models.allow_hub_checkpoints, hash_cache=hash_cache)

    @property
    def snapshot(self) -> ModelSnapshot:
        return self._snapshot

    def refresh(self, *, hash_cache: HashCache | None = None) -> ModelSnapshot:
        """Rescan both folders; `hash_cache` (else the registry's own) spares rehashing unchanged files."""
        hash_cache = hash_cache or self._hash_cache
        checkpoints, skipped = scan_checkpoints(self.checkpoints_dir, allow_pickle=self._allow_pickle, hash_cache=hash_cache)
        embeddings = scan_embeddings(self.embeddings_dir, expected_widths=embedding_widths(checkpoints),
                                     hash_cache=hash_cache)
        self._snapshot = ModelSnapshot(tuple(checkpoints), tuple(skipped), tuple(embeddings))
        return self._snapshot

    def _default_of(self, checkpoints) -> CheckpointInfo | None:
        if self._default:
            for info in checkpoints:
                if info.name == self._default:
                    return info
            if self._allow_hub and HUB_ID.match(self._default):
                return hub_checkpoint(self._default)
            return None
        return checkpoints[0] if checkpoints else None

    @property
    def checkpoints(self) -> tuple[CheckpointInfo, ...]:
        return self._snapshot.checkpoints

    @property
    def embeddings(self) -> tuple[EmbeddingInfo, ...]:
        return self._snapshot.embeddings

    def default_name(self) -> str:
        default = self._default_of(self._snapshot.checkpoints)
        if default is None:
            if self._default:
                raise ModelNotFound(f"the default checkpoint {self._default!r} is not in {self.checkpoints_dir}")
            raise ModelNotFound(f"no checkpoints found in {self.checkpoints_dir}")
        return default.name

    def resolve(self, name: str = "") -> CheckpointInfo:
        """A checkpoint by name; empty means the default. Names never become paths outside the folder."""
        if not name:
            name = self.default_name()
        for info in self._snapshot.checkpoints:
            if info.name == name:
                return info
        if "/" in name and self._allow_hub and HUB_ID.match(name) and ".." not in name:
            return hub_checkpoint(name)
        known = [info.name for info in self._snapshot.checkpoints]
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else (f"; available: {', '.join(known[:10])}" if known else "")
        raise ModelNotFound(f"unknown checkpoint {name!r}{hint}")

    def add_external(self, info: CheckpointInfo) -> str:
        """A checkpoint the operator named by path (CLI only, never from Discord); returns its name."""
        others = tuple(c for c in self._snapshot.checkpoints if c.name != info.name)
        self._snapshot = ModelSnapshot((info,) + others, self._snapshot.skipped, self._snapshot.embeddings)
        return info.name

    def embedding(self, trigger: str) -> EmbeddingInfo | None:
        return next((e for e in self._snapshot.embeddings if e.trigger == trigger), None)
