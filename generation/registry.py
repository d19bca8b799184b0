"""What models exist: checkpoints, embeddings and LoRAs found on disk, resolved by name."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import HUB_ID, CheckpointInfo, SkippedFile, hub_checkpoint, scan_checkpoints
from .embeddings import EmbeddingInfo, scan_embeddings
from .errors import ModelNotFound
from .hashing import HashCache
from .loras import LoraInfo, scan_loras

from .architectures import ARCHITECTURES

# The width an embedding of each architecture has: SDXL's clip_l + clip_g vectors count together.
TEXT_ENCODER_WIDTH = {name: architecture.cross_attention_width for name, architecture in ARCHITECTURES.items()}


def embedding_widths(checkpoints) -> set[int]:
    """The embedding widths the checkpoints' families take (a request checks its own checkpoint's)."""
    return {TEXT_ENCODER_WIDTH[c.architecture] for c in checkpoints if c.architecture in TEXT_ENCODER_WIDTH}


# A LoRA's width is its UNet's cross-attention width, which is the embedding width of the same family.
lora_widths = embedding_widths


@dataclass(frozen=True)
class ModelSnapshot:
    """One consistent scan; replaced as a whole on refresh so readers never see half of one."""

    checkpoints: tuple[CheckpointInfo, ...] = ()
    skipped: tuple[SkippedFile, ...] = ()
    embeddings: tuple[EmbeddingInfo, ...] = ()
    loras: tuple[LoraInfo, ...] = ()
    upscalers: tuple = ()  # UpscalerInfo: the built-in ones, then models/upscalers/


class ModelRegistry:
    def __init__(self, *, checkpoints_dir: Path, embeddings_dir: Path, default_checkpoint: str = "",
                 allow_pickle: bool = False, allow_hub: bool = True, hash_cache: HashCache | None = None,
                 loras_dir: Path | None = None, upscalers_dir: Path | None = None):
        self.checkpoints_dir = checkpoints_dir
        self.embeddings_dir = embeddings_dir
        self.loras_dir = loras_dir  # None: no LoRAs
        self.upscalers_dir = upscalers_dir  # None: only the built-in upscalers
        self._default = default_checkpoint
        self._allow_pickle = allow_pickle
        self._allow_hub = allow_hub
        self._hash_cache = hash_cache
        self._snapshot = ModelSnapshot()

    @classmethod
    def from_config(cls, config, hash_cache: HashCache | None = None) -> "ModelRegistry":
        return cls(checkpoints_dir=config.checkpoints_dir, embeddings_dir=config.embeddings_dir,
                   default_checkpoint=config.models.default_checkpoint, allow_pickle=config.models.allow_pickle_checkpoints,
                   allow_hub=config.models.allow_hub_checkpoints, hash_cache=hash_cache, loras_dir=config.loras_dir,
                   upscalers_dir=config.upscalers_dir)

    @property
    def snapshot(self) -> ModelSnapshot:
        return self._snapshot

    def refresh(self, *, hash_cache: HashCache | None = None) -> ModelSnapshot:
        """Rescan the folders; `hash_cache` (else the registry's own) spares rehashing unchanged files."""
        hash_cache = hash_cache or self._hash_cache
        checkpoints, skipped = scan_checkpoints(self.checkpoints_dir, allow_pickle=self._allow_pickle, hash_cache=hash_cache)
        embeddings = scan_embeddings(self.embeddings_dir, expected_widths=embedding_widths(checkpoints),
                                     hash_cache=hash_cache)
        loras = scan_loras(self.loras_dir, allow_pickle=self._allow_pickle, hash_cache=hash_cache,
                           expected_widths=lora_widths(checkpoints)) if self.loras_dir is not None else []
        from .upscalers import scan_upscalers

        upscalers = scan_upscalers(self.upscalers_dir, allow_pickle=self._allow_pickle)
        self._snapshot = ModelSnapshot(tuple(checkpoints), tuple(skipped), tuple(embeddings), tuple(loras),
                                       tuple(upscalers))
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

    @property
    def loras(self) -> tuple[LoraInfo, ...]:
        return self._snapshot.loras

    @property
    def upscalers(self) -> tuple:
        """UpscalerInfo of every upscaler, usable or not, in A1111's order (built-in ones first)."""
        if not self._snapshot.upscalers:
            from .upscalers import scan_upscalers

            return tuple(scan_upscalers(None, allow_pickle=False))  # before the first refresh: the built-in ones
        return self._snapshot.upscalers

    def upscaler(self, name: str):
        """A usable upscaler by name (as A1111 lists them); ModelNotFound with a hint otherwise."""
        found = next((info for info in self.upscalers if info.name == name), None)
        if found is not None and found.usable:
            return found
        if found is not None:
            raise ModelNotFound(f"upscaler {name!r} cannot be used: {found.skip_reason}")
        known = [info.name for info in self.upscalers if info.usable]
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; available: {', '.join(known[:10])}"
        raise ModelNotFound(f"unknown upscaler {name!r}{hint}")

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
        self._snapshot = dataclasses.replace(self._snapshot, checkpoints=(info,) + others)
        return info.name

    def embedding(self, trigger: str) -> EmbeddingInfo | None:
        return next((e for e in self._snapshot.embeddings if e.trigger == trigger), None)

    def lora(self, name: str) -> LoraInfo | None:
        """A LoRA as `<lora:NAME:...>` names it: by file name, else by alias (A1111: both
        case-sensitive). An alias two files share finds neither. Skipped LoRAs are found too, so
        the caller can say why one cannot be used."""
        loras = self._snapshot.loras
        found = next((info for info in loras if info.name == name), None)
        if found is not None:
            return found
        aliased = [info for info in loras if info.alias == name]
        return aliased[0] if len(aliased) == 1 else None

    def lora_by_hash(self, short_hash: str) -> LoraInfo | None:
        """The LoRA with this short hash (12 hex digits, as in infotext's `Lora hashes`) or full
        hash, any case; a usable one first when several files share it."""
        wanted = short_hash.strip().lower()
        if not wanted:
            return None
        matches = [info for info in self._snapshot.loras if wanted in (info.short_hash, info.hash)]
        return next((info for info in matches if info.usable), matches[0] if matches else None)
