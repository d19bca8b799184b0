"""ORM mapping of the schema. Alembic revisions in migrations/versions own the real DDL;
tests compare the two so they cannot drift apart. Rows never leave storage: repositories
turn them into records (storage/records.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Named constraints keep Alembic's batch (copy-and-move) migrations on SQLite predictable.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCTimestamp(TypeDecorator[datetime]):
    """Aware UTC datetime in Python, REAL epoch seconds in SQLite (sortable, compact, unambiguous)."""

    impl = Float
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> float | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware (use datetime.now(UTC))")
        return value.timestamp()

    def process_result_value(self, value: float | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return datetime.fromtimestamp(value, tz=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    # INTEGER PRIMARY KEY aliases SQLite's rowid; Discord snowflakes fit its signed 64 bits.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCTimestamp, nullable=False, default=utcnow)


class Guild(Base):
    __tablename__ = "guilds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCTimestamp, nullable=False, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed', 'canceled')", name="status"
        ),
        CheckConstraint("frontend IN ('discord', 'cli')", name="frontend"),
        CheckConstraint("cost >= 0", name="cost"),
        Index("ix_jobs_status_id", "status", "id"),
        Index("ix_jobs_owner_status", "owner_id", "status"),
        Index("ix_jobs_guild_status", "guild_id", "status"),
        Index("ix_jobs_status_runner", "status", "runner"),
        # AUTOINCREMENT: ids are never reused, so a button that says "job:17" after a restart
        # can only mean that job.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    channel_id: Mapped[int | None] = mapped_column(BigInteger)
    application_id: Mapped[int | None] = mapped_column(BigInteger)
    interaction_token: Mapped[str | None] = mapped_column(Text)
    interaction_created_at: Mapped[datetime | None] = mapped_column(UTCTimestamp)
    response_message_id: Mapped[int | None] = mapped_column(BigInteger)
    frontend: Mapped[str] = mapped_column(Text, nullable=False)
    # "bot": any bot process runs it (a restarted bot takes it over); "cli:...": that CLI process only.
    runner: Mapped[str] = mapped_column(Text, nullable=False, default="bot", server_default="bot")
    request: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    checkpoint: Mapped[str] = mapped_column(Text, nullable=False)
    batch_key: Mapped[str] = mapped_column(Text, nullable=False)
    cost: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCTimestamp, nullable=False, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCTimestamp)
    finished_at: Mapped[datetime | None] = mapped_column(UTCTimestamp)
    canceled_by: Mapped[int | None] = mapped_column(BigInteger)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("job_id", "image_index"),
        Index("ix_images_message_id", "message_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
    )
    # "index" is an SQL keyword; the record calls it `index`.
    image_index: Mapped[int] = mapped_column(Integer, nullable=False)
    seed: Mapped[int] = mapped_column(BigInteger, nullable=False)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    sha256: Mapped[str] = mapped_column(Text, nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    bytes: Mapped[int] = mapped_column(Integer, nullable=False)
    infotext: Mapped[str] = mapped_column(Text, nullable=False)
    message_id: Mapped[int | None] = mapped_column(BigInteger)


class Upload(Base):
    """A member's uploaded file (init image or mask) saved by the bot; `path` as jobs' requests name it."""

    __tablename__ = "uploads"
    __table_args__ = (
        CheckConstraint("bytes >= 0", name="bytes"),
        Index("ix_uploads_owner_last_used", "owner_id", "last_used_at"),
        Index("ix_uploads_last_used", "last_used_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    path: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    bytes: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCTimestamp, nullable=False, default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(UTCTimestamp, nullable=False, default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (
        CheckConstraint("format IN ('diffusers', 'safetensors', 'ckpt', 'hub')", name="format"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    sha256: Mapped[str | None] = mapped_column(Text)
    short_hash: Mapped[str | None] = mapped_column(Text)
    format: Mapped[str] = mapped_column(Text, nullable=False)
    architecture: Mapped[str | None] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    size: Mapped[int | None] = mapped_column(BigInteger)
    mtime: Mapped[float | None] = mapped_column(Float)
    vae_path: Mapped[str | None] = mapped_column(Text)


class Embedding(Base):
    __tablename__ = "embeddings"
    __table_args__ = (CheckConstraint("status IN ('loaded', 'skipped')", name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trigger: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    sha256: Mapped[str | None] = mapped_column(Text)
    vectors: Mapped[int | None] = mapped_column(Integer)
    width: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    skip_reason: Mapped[str | None] = mapped_column(Text)


class FileHash(Base):
    __tablename__ = "file_hashes"

    path: Mapped[str] = mapped_column(Text, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    mtime_ns: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(Text, nullable=False)


class Setting(Base):
    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[Any] = mapped_column(JSON(none_as_null=False), nullable=True)


class PromptHistory(Base):
    __tablename__ = "prompt_history"
    __table_args__ = (Index("ix_prompt_history_user_created", "user_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    job_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("jobs.id", ondelete="SET NULL")
    )
    prompt: Mapped[str] = mapped_column(Text, nullable=False)
    negative_prompt: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(UTCTimestamp, nullable=False, default=utcnow)


# Objects that exist only in the database (created by revision 0001), so autogenerate and the
# schema comparison test leave them alone.
DATABASE_ONLY_TABLE_PREFIXES = ("prompt_history_fts", "sqlite_")
