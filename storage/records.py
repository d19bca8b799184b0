"""Plain, frozen values that repositories return; never ORM rows.

Timestamps are timezone-aware UTC ``datetime`` objects everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

JobStatus = Literal["queued", "running", "done", "failed", "canceled"]
Frontend = Literal["discord", "cli"]
CheckpointFormat = Literal["diffusers", "safetensors", "ckpt", "hub"]
EmbeddingStatus = Literal["loaded", "skipped"]

JOB_STATUSES: Final = frozenset({"queued", "running", "done", "failed", "canceled"})
TERMINAL_STATUSES: Final = frozenset({"done", "failed", "canceled"})
ACTIVE_STATUSES: Final = frozenset({"queued", "running"})
FRONTENDS: Final = frozenset({"discord", "cli"})
CHECKPOINT_FORMATS: Final = frozenset({"diffusers", "safetensors", "ckpt", "hub"})
EMBEDDING_STATUSES: Final = frozenset({"loaded", "skipped"})


@dataclass(frozen=True, kw_only=True)
class JobRecord:
    id: int
    owner_id: int
    guild_id: int | None
    channel_id: int | None
    frontend: str
    # "bot" (any bot process may run it) or the id of the CLI process that owns it.
    runner: str
    request: dict[str, Any]
    checkpoint: str
    batch_key: str
    cost: int
    status: str
    attempts: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    canceled_by: int | None
    application_id: int | None
    # An interaction token lets anyone answer the interaction for 15 minutes: keep it out of logs.
    interaction_token: str | None = field(repr=False)
    interaction_created_at: datetime | None
    response_message_id: int | None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True, kw_only=True)
class QueueCaps:
    """Limits on active (queued + running) jobs that `JobRepository.create` checks atomically:
    per member (over all guilds), and per guild when `per_guild` is not None."""

    per_member: int
    per_guild: int | None = None

    def __post_init__(self) -> None:
        if self.per_member < 0 or (self.per_guild is not None and self.per_guild < 0):
            raise ValueError("queue caps must not be negative")


@dataclass(frozen=True, kw_only=True)
class NewImage:
    """An image to record for a job; `ImageRepository.add_many` also accepts `ImageRecord`s."""

    index: int
    seed: int
    path: Path
    sha256: str
    width: int
    height: int
    bytes: int
    infotext: str
    message_id: int | None = None


@dataclass(frozen=True, kw_only=True)
class ImageRecord:
    id: int
    job_id: int
    index: int
    seed: int
    path: Path
    sha256: str
    width: int
    height: int
    bytes: int
    infotext: str
    message_id: int | None


@dataclass(frozen=True, kw_only=True)
class UploadRecord:
    """A member's uploaded file (init image or mask) kept on disk by the bot."""

    id: int
    owner_id: int
    path: Path
    bytes: int
    created_at: datetime
    last_used_at: datetime


@dataclass(frozen=True, kw_only=True)
class CheckpointRecord:
    """A model the bot can load. `path` is a file or folder, or a hub repo id when format is "hub"."""

    name: str
    path: str
    format: str
    architecture: str | None = None
    sha256: str | None = None
    short_hash: str | None = None
    size: int | None = None
    mtime: float | None = None
    vae_path: str | None = None
    enabled: bool = True


@dataclass(frozen=True, kw_only=True)
class EmbeddingRecord:
    trigger: str
    path: Path
    sha256: str | None
    vectors: int | None
    width: int | None
    status: str
    skip_reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class UserSettings:
    user_id: int
    settings: dict[str, Any]
    created_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class GuildSettings:
    guild_id: int
    settings: dict[str, Any]
    created_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class PromptHistoryEntry:
    id: int
    user_id: int
    guild_id: int | None
    job_id: int | None
    prompt: str
    negative_prompt: str
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class SyncReport:
    """What a `sync` changed, by name (checkpoints) or trigger (embeddings)."""

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)
