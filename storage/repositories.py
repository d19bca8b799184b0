"""Async repositories. Each method runs in its own short transaction and returns records
(storage/records.py), never ORM rows, so nothing outside storage holds a session."""

from __future__ import annotations

import builtins
import json
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    ColumnElement,
    Integer,
    Text,
    and_,
    cast,
    column,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from storage.db import Database
from storage.errors import QueueCapReached
from storage.models import (
    Checkpoint,
    Embedding,
    FileHash,
    Guild,
    Image,
    Job,
    PromptHistory,
    Setting,
    Upload,
    User,
    utcnow,
)
from storage.records import (
    ACTIVE_STATUSES,
    CHECKPOINT_FORMATS,
    EMBEDDING_STATUSES,
    FRONTENDS,
    JOB_STATUSES,
    TERMINAL_STATUSES,
    CheckpointRecord,
    EmbeddingRecord,
    GuildSettings,
    ImageRecord,
    JobRecord,
    NewImage,
    PromptHistoryEntry,
    QueueCaps,
    SyncReport,
    UploadRecord,
    UserSettings,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def _json_value(value: Any, *, what: str) -> Any:
    """The value as it will read back from the database (tuples become lists, keys strings)."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be plain JSON data (dict, list, str, number, bool, None): {exc}") from exc


def _require_aware(value: datetime | None, *, what: str) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{what} must be a timezone-aware datetime (use datetime.now(UTC))")


def _status_set(statuses: str | Collection[str], *, what: str) -> frozenset[str]:
    # A bare string is a Collection of characters; take it to mean one status.
    result = frozenset({statuses} if isinstance(statuses, str) else statuses)
    unknown = result - JOB_STATUSES
    if unknown:
        raise ValueError(f"unknown job status in {what}: {sorted(unknown)}")
    return result


# ---------------------------------------------------------------------------------------------
# Jobs and images


def _job_record(row: Job) -> JobRecord:
    return JobRecord(
        id=row.id,
        owner_id=row.owner_id,
        guild_id=row.guild_id,
        channel_id=row.channel_id,
        frontend=row.frontend,
        runner=row.runner,
        request=dict(row.request),
        checkpoint=row.checkpoint,
        batch_key=row.batch_key,
        cost=row.cost,
        status=row.status,
        attempts=row.attempts,
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        canceled_by=row.canceled_by,
        application_id=row.application_id,
        interaction_token=row.interaction_token,
        interaction_created_at=row.interaction_created_at,
        response_message_id=row.response_message_id,
    )


def _require_runner(runner: str) -> None:
    if not isinstance(runner, str) or not runner:
        raise ValueError("runner must be a non-empty string")


def _row_count(statement: Any) -> Callable[[AsyncSession], Awaitable[int]]:
    """For `Database.run_write`: run `statement`; how many rows it changed."""

    async def run(session: AsyncSession) -> int:
        return (await session.execute(statement)).rowcount

    return run


def _changes_one_row(statement: Any) -> Callable[[AsyncSession], Awaitable[bool]]:
    """For `Database.run_write`: run `statement`; whether it changed exactly one row."""

    async def run(session: AsyncSession) -> bool:
        return (await session.execute(statement)).rowcount == 1

    return run


async def _count_active(session: AsyncSession, *conditions: ColumnElement[bool]) -> int:
    statement = select(func.count()).select_from(Job).where(Job.status.in_(ACTIVE_STATUSES), *conditions)
    return int(await session.scalar(statement) or 0)


async def _check_caps(session: AsyncSession, caps: QueueCaps, *, owner_id: int, guild_id: int | None) -> None:
    mine = await _count_active(session, Job.owner_id == owner_id)
    if mine >= caps.per_member:
        raise QueueCapReached("member", mine, caps.per_member)
    if caps.per_guild is not None and guild_id is not None:
        theirs = await _count_active(session, Job.guild_id == guild_id)
        if theirs >= caps.per_guild:
            raise QueueCapReached("guild", theirs, caps.per_guild)


class JobRepository:
    """The queue as rows. A status change is one guarded UPDATE that reports whether it happened;
    done/failed/canceled are final (a trigger enforces that in the database too)."""

    # Columns `transition` may set along with the status.
    TRANSITION_FIELDS = frozenset(
        {
            "error",
            "started_at",
            "finished_at",
            "canceled_by",
            "attempts",
            "response_message_id",
            "interaction_token",
        }
    )

    def __init__(self, db: Database):
        self._db = db

    async def create(
        self,
        *,
        owner_id: int,
        request: Mapping[str, Any],
        checkpoint: str,
        batch_key: str,
        cost: int = 1,
        frontend: str = "discord",
        guild_id: int | None = None,
        channel_id: int | None = None,
        application_id: int | None = None,
        interaction_token: str | None = None,
        interaction_created_at: datetime | None = None,
        response_message_id: int | None = None,
        runner: str = "bot",
        caps: QueueCaps | None = None,
    ) -> JobRecord:
        """Queue a job. `request` is the full generation request as a JSON-able dict.

        `runner`: "bot" (any bot process runs it) or the id of the CLI process that will.
        With `caps`, counting the owner's (and the guild's) queued and running jobs and the
        INSERT are one write transaction, so concurrent submits cannot pass a cap; a job that
        would reach past one raises QueueCapReached (member checked first) and is not stored.
        """
        if frontend not in FRONTENDS:
            raise ValueError(f"frontend must be one of {sorted(FRONTENDS)}, not {frontend!r}")
        if cost < 0:
            raise ValueError("cost must not be negative")
        _require_runner(runner)
        _require_aware(interaction_created_at, what="interaction_created_at")
        values = dict(
            owner_id=owner_id,
            guild_id=guild_id,
            channel_id=channel_id,
            application_id=application_id,
            interaction_token=interaction_token,
            interaction_created_at=interaction_created_at,
            response_message_id=response_message_id,
            frontend=frontend,
            runner=runner,
            request=_json_value(dict(request), what="the job request"),
            checkpoint=checkpoint,
            batch_key=batch_key,
            cost=cost,
            status="queued",
            attempts=0,
        )

        async def insert(session: AsyncSession) -> JobRecord:
            if caps is not None:
                await _check_caps(session, caps, owner_id=owner_id, guild_id=guild_id)
            row = Job(**values, created_at=utcnow())
            session.add(row)
            await session.flush()
            # Reload so the record carries exactly what `get` will return (timestamps included).
            await session.refresh(row)
            return _job_record(row)

        return await self._db.run_write(insert)

    async def get(self, job_id: int) -> JobRecord | None:
        async with self._db.read() as session:
            row = await session.get(Job, job_id)
            return None if row is None else _job_record(row)

    async def transition(
        self,
        job_id: int,
        *,
        from_status: str | Collection[str],
        to_status: str,
        **fields: Any,
    ) -> bool:
        """Set `to_status` (and `fields`) only if the job is now in one of `from_status`.

        One atomic UPDATE ... WHERE id = ? AND status IN (...); returns whether it changed a row.
        Moving to a terminal status stamps finished_at unless `fields` sets it.
        """
        allowed_from = _status_set(from_status, what="from_status")
        _status_set(to_status, what="to_status")
        if allowed_from & TERMINAL_STATUSES:
            raise ValueError(f"terminal statuses never change: {sorted(allowed_from & TERMINAL_STATUSES)}")
        unknown = fields.keys() - self.TRANSITION_FIELDS
        if unknown:
            raise TypeError(f"transition cannot set {sorted(unknown)}")
        for name in ("started_at", "finished_at"):
            _require_aware(fields.get(name), what=name)
        values: dict[str, Any] = {"status": to_status, **fields}
        if to_status in TERMINAL_STATUSES:
            values.setdefault("finished_at", utcnow())
        statement = (
            update(Job)
            .where(Job.id == job_id, Job.status.in_(allowed_from))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return await self._db.run_write(_changes_one_row(statement))

    async def start(self, job_id: int) -> bool:
        return await self.transition(job_id, from_status={"queued"}, to_status="running", started_at=utcnow())

    async def finish(self, job_id: int) -> bool:
        return await self.transition(job_id, from_status={"running"}, to_status="done", error=None)

    async def complete(self, job_id: int, images: Iterable[NewImage]) -> builtins.list[ImageRecord] | None:
        """running -> done and the job's image rows in ONE transaction, so a crash never leaves half of it.

        Returns the image records, or None when the job was no longer running (canceled meanwhile)."""
        images = builtins.list(images)
        statement = (
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(status="done", error=None, finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )

        async def finish(session: AsyncSession) -> builtins.list[ImageRecord] | None:
            result = await session.execute(statement)
            if result.rowcount != 1:
                return None
            return await _add_images(session, job_id, images)

        return await self._db.run_write(finish)

    async def fail(
        self, job_id: int, error: str, *, from_status: Collection[str] = ACTIVE_STATUSES
    ) -> bool:
        return await self.transition(job_id, from_status=from_status, to_status="failed", error=error)

    async def cancel(
        self,
        job_id: int,
        *,
        canceled_by: int | None = None,
        from_status: Collection[str] = ACTIVE_STATUSES,
    ) -> bool:
        return await self.transition(
            job_id, from_status=from_status, to_status="canceled", canceled_by=canceled_by
        )

    async def recover_interrupted(
        self, max_attempts: int, runner: str = "bot"
    ) -> tuple[builtins.list[int], builtins.list[int]]:
        """After a crash, put `runner`'s jobs left 'running' back in the queue, counting the attempt.

        A job whose attempts reach `max_attempts` fails instead, with "interrupted N times".
        `max_attempts` is the total number of tries a job gets (1: never retried).
        Returns (requeued ids, failed ids), each ascending; one transaction.
        """
        _require_runner(runner)
        return await self._requeue_running(and_(Job.status == "running", Job.runner == runner), max_attempts)

    async def requeue_lost(self, job_id: int, max_attempts: int) -> bool | None:
        """A running job whose device went away: queued again with the attempt counted (True), or
        failed "interrupted N times" once attempts reach `max_attempts` (False); None when it was
        not running (canceled or over meanwhile). One transaction, as `recover_interrupted`."""
        requeued, failed = await self._requeue_running(and_(Job.status == "running", Job.id == job_id), max_attempts)
        return True if requeued else (False if failed else None)

    async def _requeue_running(self, interrupted, max_attempts: int) -> tuple[builtins.list[int], builtins.list[int]]:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        next_attempts = Job.attempts + 1
        give_up = (
            update(Job)
            .where(interrupted, next_attempts >= max_attempts)
            .values(
                status="failed",
                attempts=next_attempts,
                error=literal("interrupted ", Text) + cast(next_attempts, Text) + literal(" times", Text),
                finished_at=utcnow(),
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        requeue = (
            update(Job)
            .where(interrupted)
            .values(status="queued", attempts=next_attempts, started_at=None)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )

        async def recover(session: AsyncSession) -> tuple[builtins.list[int], builtins.list[int]]:
            failed = sorted((await session.execute(give_up)).scalars())
            requeued = sorted((await session.execute(requeue)).scalars())
            return requeued, failed

        return await self._db.run_write(recover)

    async def list_queued(self, runner: str | None = None) -> builtins.list[JobRecord]:
        """Every queued job (only `runner`'s when given), oldest first (to rebuild the scheduler)."""
        statement = select(Job).where(Job.status == "queued").order_by(Job.id)
        if runner is not None:
            statement = statement.where(Job.runner == runner)
        async with self._db.read() as session:
            return [_job_record(row) for row in await session.scalars(statement)]

    async def active_runners(self) -> builtins.set[str]:
        """The runners of all queued and running jobs."""
        statement = select(Job.runner).where(Job.status.in_(ACTIVE_STATUSES)).distinct()
        async with self._db.read() as session:
            return builtins.set(await session.scalars(statement))

    async def fail_runner(self, runner: str, reason: str) -> builtins.list[int]:
        """Fail every queued or running job of `runner` with error `reason` (e.g. its process
        died); returns their ids, ascending. One transaction."""
        _require_runner(runner)
        statement = (
            update(Job)
            .where(Job.runner == runner, Job.status.in_(ACTIVE_STATUSES))
            .values(status="failed", error=reason, finished_at=utcnow())
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )

        async def fail_all(session: AsyncSession) -> builtins.list[int]:
            return sorted((await session.execute(statement)).scalars())

        return await self._db.run_write(fail_all)

    async def count_queued(
        self,
        *,
        owner_id: int | None = None,
        guild_id: int | None = None,
        include_running: bool = False,
    ) -> int:
        statuses = ACTIVE_STATUSES if include_running else {"queued"}
        statement = select(func.count()).select_from(Job).where(Job.status.in_(statuses))
        if owner_id is not None:
            statement = statement.where(Job.owner_id == owner_id)
        if guild_id is not None:
            statement = statement.where(Job.guild_id == guild_id)
        async with self._db.read() as session:
            return int(await session.scalar(statement) or 0)

    async def list_for_owner(
        self,
        owner_id: int,
        statuses: str | Collection[str] | None = None,
        limit: int = 20,
    ) -> builtins.list[JobRecord]:
        """The owner's jobs, newest first."""
        statement = select(Job).where(Job.owner_id == owner_id).order_by(Job.id.desc()).limit(limit)
        if statuses is not None:
            statement = statement.where(Job.status.in_(_status_set(statuses, what="statuses")))
        async with self._db.read() as session:
            return [_job_record(row) for row in await session.scalars(statement)]

    async def set_response_message(self, job_id: int, message_id: int | None) -> bool:
        statement = (
            update(Job)
            .where(Job.id == job_id)
            .values(response_message_id=message_id)
            .execution_options(synchronize_session=False)
        )
        return await self._db.run_write(_changes_one_row(statement))


def _image_record(row: Image) -> ImageRecord:
    return ImageRecord(
        id=row.id,
        job_id=row.job_id,
        index=row.image_index,
        seed=row.seed,
        path=Path(row.path),
        sha256=row.sha256,
        width=row.width,
        height=row.height,
        bytes=row.bytes,
        infotext=row.infotext,
        message_id=row.message_id,
    )


def _image_row(job_id: int, image: NewImage | ImageRecord) -> Image:
    return Image(
        job_id=job_id,
        image_index=image.index,
        seed=image.seed,
        path=os.fspath(image.path),
        sha256=image.sha256,
        width=image.width,
        height=image.height,
        bytes=image.bytes,
        infotext=image.infotext,
        message_id=image.message_id,
    )


async def _add_images(
    session: AsyncSession, job_id: int, images: Iterable[NewImage | ImageRecord]
) -> builtins.list[ImageRecord]:
    rows = [_image_row(job_id, image) for image in images]
    session.add_all(rows)
    await session.flush()
    return sorted((_image_record(row) for row in rows), key=lambda record: record.index)


class ImageRepository:
    def __init__(self, db: Database):
        self._db = db

    async def add_many(
        self, job_id: int, images: Iterable[NewImage | ImageRecord]
    ) -> builtins.list[ImageRecord]:
        """Record a job's images (the `id`/`job_id` of an ImageRecord passed in are ignored)."""
        images = builtins.list(images)

        async def add(session: AsyncSession) -> builtins.list[ImageRecord]:
            return await _add_images(session, job_id, images)

        return await self._db.run_write(add)

    async def list_for_job(self, job_id: int) -> builtins.list[ImageRecord]:
        async with self._db.read() as session:
            rows = await session.scalars(
                select(Image).where(Image.job_id == job_id).order_by(Image.image_index)
            )
            return [_image_record(row) for row in rows]

    async def get_by_message(self, message_id: int) -> builtins.list[ImageRecord]:
        """The images posted in one Discord message (a message may carry several), by index."""
        async with self._db.read() as session:
            rows = await session.scalars(
                select(Image).where(Image.message_id == message_id).order_by(Image.job_id, Image.image_index)
            )
            return [_image_record(row) for row in rows]

    async def undelivered_job_ids(self, *, frontend: str = "discord") -> builtins.list[int]:
        """Done jobs whose images were never posted (the process stopped between finishing and posting)."""
        statement = (
            select(Job.id)
            .join(Image, Image.job_id == Job.id)
            .where(Job.status == "done", Job.frontend == frontend, Image.message_id.is_(None))
            .group_by(Job.id)
            .order_by(Job.id)
        )
        async with self._db.read() as session:
            return builtins.list(await session.scalars(statement))

    async def set_message(
        self, job_id: int, message_id: int | None, *, indexes: Collection[int] | None = None
    ) -> int:
        """Note which message shows the job's images (all, or those at `indexes`); returns the count."""
        statement = update(Image).where(Image.job_id == job_id).values(message_id=message_id)
        if indexes is not None:
            statement = statement.where(Image.image_index.in_(builtins.list(indexes)))
        return await self._db.run_write(_row_count(statement.execution_options(synchronize_session=False)))


# ---------------------------------------------------------------------------------------------
# Uploads


def _upload_record(row: Upload) -> UploadRecord:
    return UploadRecord(
        id=row.id,
        owner_id=row.owner_id,
        path=Path(row.path),
        bytes=row.bytes,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
    )


def _upload_unreferenced() -> ColumnElement[bool]:
    """No queued or running job names the upload as its request's init_image or mask."""
    referencing = (
        select(Job.id)
        .where(
            Job.status.in_(ACTIVE_STATUSES),
            or_(
                func.json_extract(Job.request, "$.init_image") == Upload.path,
                func.json_extract(Job.request, "$.mask") == Upload.path,
            ),
        )
        .correlate(Upload)
    )
    return ~referencing.exists()


class UploadRepository:
    """Members' uploaded files (init images, masks) by path, for per-member quotas and clean-up.
    Rows only: callers save and delete the files. A path is the string jobs' requests use."""

    def __init__(self, db: Database):
        self._db = db

    async def add(self, owner_id: int, path: str | os.PathLike[str], bytes: int) -> UploadRecord:
        """Record an upload; if `path` is already recorded, only its last_used_at becomes now."""
        if bytes < 0:
            raise ValueError("bytes must not be negative")
        key = os.fspath(path)

        async def upsert(session: AsyncSession) -> UploadRecord:
            now = utcnow()
            statement = sqlite_insert(Upload).values(
                owner_id=owner_id, path=key, bytes=bytes, created_at=now, last_used_at=now
            )
            statement = statement.on_conflict_do_update(
                index_elements=[Upload.path], set_={"last_used_at": statement.excluded.last_used_at}
            )
            await session.execute(statement)
            row = await session.scalar(
                select(Upload).where(Upload.path == key).execution_options(populate_existing=True)
            )
            assert row is not None
            return _upload_record(row)

        return await self._db.run_write(upsert)

    async def usage(self, owner_id: int) -> tuple[int, int]:
        """(files, bytes) recorded for the owner."""
        statement = select(func.count(), func.coalesce(func.sum(Upload.bytes), 0)).where(
            Upload.owner_id == owner_id
        )
        async with self._db.read() as session:
            files, total = (await session.execute(statement)).one()
            return int(files), int(total)

    async def oldest(self, owner_id: int, limit: int) -> builtins.list[UploadRecord]:
        """The owner's uploads, least recently used first, leaving out those a queued or running
        job uses; at most `limit`."""
        if limit < 0:
            raise ValueError("limit must not be negative")
        statement = (
            select(Upload)
            .where(Upload.owner_id == owner_id, _upload_unreferenced())
            .order_by(Upload.last_used_at, Upload.id)
            .limit(limit)
        )
        async with self._db.read() as session:
            return [_upload_record(row) for row in await session.scalars(statement)]

    async def stale(self, used_before: datetime) -> builtins.list[UploadRecord]:
        """Uploads last used before `used_before` that no queued or running job uses, oldest first."""
        _require_aware(used_before, what="used_before")
        statement = (
            select(Upload)
            .where(Upload.last_used_at < used_before, _upload_unreferenced())
            .order_by(Upload.last_used_at, Upload.id)
        )
        async with self._db.read() as session:
            return [_upload_record(row) for row in await session.scalars(statement)]

    async def remove(self, paths: Iterable[str | os.PathLike[str]]) -> int:
        """Delete the rows of these paths (not the files); returns how many went."""
        keys = sorted({os.fspath(path) for path in paths})
        if not keys:
            return 0
        statement = delete(Upload).where(Upload.path.in_(keys)).execution_options(synchronize_session=False)
        return await self._db.run_write(_row_count(statement))


# ---------------------------------------------------------------------------------------------
# Model files


_CHECKPOINT_SCAN_FIELDS = ("path", "sha256", "short_hash", "format", "architecture", "size", "mtime", "vae_path")


def _checkpoint_record(row: Checkpoint) -> CheckpointRecord:
    return CheckpointRecord(
        name=row.name,
        path=row.path,
        format=row.format,
        architecture=row.architecture,
        sha256=row.sha256,
        short_hash=row.short_hash,
        size=row.size,
        mtime=row.mtime,
        vae_path=row.vae_path,
        enabled=row.enabled,
    )


def _checkpoint_scan_values(record: CheckpointRecord) -> dict[str, Any]:
    if record.format not in CHECKPOINT_FORMATS:
        raise ValueError(f"checkpoint {record.name!r}: format must be one of {sorted(CHECKPOINT_FORMATS)}")
    return {
        "path": os.fspath(record.path),
        "sha256": record.sha256,
        "short_hash": record.short_hash,
        "format": record.format,
        "architecture": record.architecture,
        "size": record.size,
        "mtime": record.mtime,
        "vae_path": None if record.vae_path is None else os.fspath(record.vae_path),
    }


def _unique_keys(keys: Iterable[str], *, what: str) -> None:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise ValueError(f"two {what} share the name {key!r}")
        seen.add(key)


async def _sync_rows(db: Database, model: type, key: str, found: Mapping[str, Any],
                     values_of: Callable[[Any], dict[str, Any]],
                     new_only: Callable[[Any], dict[str, Any]] = lambda record: {}) -> SyncReport:
    """Make `model`'s table match a folder scan keyed by column `key`: add new keys, update changed
    rows (only the columns `values_of` returns), delete keys not found. One transaction."""
    column = getattr(model, key)

    async def sync(session: AsyncSession) -> SyncReport:
        added: builtins.list[str] = []
        updated: builtins.list[str] = []
        existing = {getattr(row, key): row for row in await session.scalars(select(model))}
        for name, record in sorted(found.items()):
            values = values_of(record)
            row = existing.get(name)
            if row is None:
                session.add(model(**{key: name}, **new_only(record), **values))
                added.append(name)
            elif any(getattr(row, column_name) != value for column_name, value in values.items()):
                for column_name, value in values.items():
                    setattr(row, column_name, value)
                updated.append(name)
        removed = sorted(existing.keys() - found.keys())
        if removed:
            await session.execute(
                delete(model).where(column.in_(removed)).execution_options(synchronize_session=False)
            )
        return SyncReport(added=tuple(added), updated=tuple(updated), removed=tuple(removed))

    return await db.run_write(sync)


class CheckpointRepository:
    def __init__(self, db: Database):
        self._db = db

    async def sync(self, found: Iterable[CheckpointRecord]) -> SyncReport:
        """Make the table match a folder scan: add new names, update changed ones, delete those
        not found. An existing row keeps its `enabled` flag (an admin's choice, not the scan's)."""
        found_list = builtins.list(found)
        _unique_keys((record.name for record in found_list), what="checkpoints")
        found_by_name = {record.name: record for record in found_list}
        # `enabled` is written for new rows only: on existing ones it is an admin's choice.
        return await _sync_rows(self._db, Checkpoint, "name", found_by_name, _checkpoint_scan_values,
                                new_only=lambda record: {"enabled": record.enabled})

    async def list(self, *, enabled_only: bool = False) -> builtins.list[CheckpointRecord]:
        statement = select(Checkpoint).order_by(Checkpoint.name)
        if enabled_only:
            statement = statement.where(Checkpoint.enabled.is_(True))
        async with self._db.read() as session:
            return [_checkpoint_record(row) for row in await session.scalars(statement)]

    async def get(self, name: str) -> CheckpointRecord | None:
        async with self._db.read() as session:
            row = await session.scalar(select(Checkpoint).where(Checkpoint.name == name))
            return None if row is None else _checkpoint_record(row)

    async def set_enabled(self, name: str, enabled: bool) -> bool:
        """Returns False when no checkpoint has that name."""
        statement = (
            update(Checkpoint)
            .where(Checkpoint.name == name)
            .values(enabled=enabled)
            .execution_options(synchronize_session=False)
        )
        return await self._db.run_write(_changes_one_row(statement))


def _embedding_record(row: Embedding) -> EmbeddingRecord:
    return EmbeddingRecord(
        trigger=row.trigger,
        path=Path(row.path),
        sha256=row.sha256,
        vectors=row.vectors,
        width=row.width,
        status=row.status,
        skip_reason=row.skip_reason,
    )


def _embedding_values(record: EmbeddingRecord) -> dict[str, Any]:
    if record.status not in EMBEDDING_STATUSES:
        raise ValueError(f"embedding {record.trigger!r}: status must be one of {sorted(EMBEDDING_STATUSES)}")
    return {
        "path": os.fspath(record.path),
        "sha256": record.sha256,
        "vectors": record.vectors,
        "width": record.width,
        "status": record.status,
        "skip_reason": record.skip_reason,
    }


class EmbeddingRepository:
    def __init__(self, db: Database):
        self._db = db

    async def sync(self, found: Iterable[EmbeddingRecord]) -> SyncReport:
        """Make the table match a folder scan (add, update, delete by trigger)."""
        found_list = builtins.list(found)
        _unique_keys((record.trigger for record in found_list), what="embeddings")
        found_by_trigger = {record.trigger: record for record in found_list}
        return await _sync_rows(self._db, Embedding, "trigger", found_by_trigger, _embedding_values)

    async def list(self) -> builtins.list[EmbeddingRecord]:
        async with self._db.read() as session:
            rows = await session.scalars(select(Embedding).order_by(Embedding.trigger))
            return [_embedding_record(row) for row in rows]

    async def get(self, trigger: str) -> EmbeddingRecord | None:
        async with self._db.read() as session:
            row = await session.scalar(select(Embedding).where(Embedding.trigger == trigger))
            return None if row is None else _embedding_record(row)


class HashCache:
    """sha256 of files by path, valid while size and mtime_ns are unchanged (hashing a 7 GB
    checkpoint takes tens of seconds; a restart should not repeat it)."""

    def __init__(self, db: Database):
        self._db = db

    async def get(self, path: str | os.PathLike[str], size: int, mtime_ns: int) -> str | None:
        async with self._db.read() as session:
            row = await session.get(FileHash, os.fspath(path))
            if row is None or row.size != size or row.mtime_ns != mtime_ns:
                return None
            return row.sha256

    async def put(self, path: str | os.PathLike[str], size: int, mtime_ns: int, sha256: str) -> None:
        values = {"path": os.fspath(path), "size": size, "mtime_ns": mtime_ns, "sha256": sha256}
        statement = sqlite_insert(FileHash).values(**values)
        statement = statement.on_conflict_do_update(
            index_elements=[FileHash.path],
            set_={"size": size, "mtime_ns": mtime_ns, "sha256": sha256},
        )
        await self._db.run_write(_row_count(statement))


# ---------------------------------------------------------------------------------------------
# Settings


OwnerModel = TypeVar("OwnerModel", User, Guild)


class _SettingsByOwner(Generic[OwnerModel]):
    """A JSON settings dict per Discord user or guild; a missing row reads as {}."""

    def __init__(self, db: Database, model: type[OwnerModel]):
        self._db = db
        self._model = model

    async def _get_row_values(self, owner_id: int) -> tuple[dict[str, Any], datetime | None]:
        async with self._db.read() as session:
            row = await session.get(self._model, owner_id)
            if row is None:
                return {}, None
            return dict(row.settings), row.created_at

    async def get_settings(self, owner_id: int) -> dict[str, Any]:
        settings, _ = await self._get_row_values(owner_id)
        return settings

    async def update_settings(self, owner_id: int, **changes: Any) -> dict[str, Any]:
        """Merge `changes` into the stored settings; a None value removes that key.
        Returns the settings as stored."""
        changes = _json_value(changes, what="settings")

        async def merge(session: AsyncSession) -> dict[str, Any]:
            row = await session.get(self._model, owner_id)
            if row is None:
                row = self._model(id=owner_id, settings={}, created_at=utcnow())
                session.add(row)
            settings = dict(row.settings)
            for key, value in changes.items():
                if value is None:
                    settings.pop(key, None)
                else:
                    settings[key] = value
            row.settings = settings  # a new dict, so the ORM sees the change
            return dict(settings)

        return await self._db.run_write(merge)


class UserRepository(_SettingsByOwner[User]):
    def __init__(self, db: Database):
        super().__init__(db, User)

    async def get(self, user_id: int) -> UserSettings:
        settings, created_at = await self._get_row_values(user_id)
        return UserSettings(user_id=user_id, settings=settings, created_at=created_at)


class GuildRepository(_SettingsByOwner[Guild]):
    def __init__(self, db: Database):
        super().__init__(db, Guild)

    async def get(self, guild_id: int) -> GuildSettings:
        settings, created_at = await self._get_row_values(guild_id)
        return GuildSettings(guild_id=guild_id, settings=settings, created_at=created_at)


class SettingsRepository:
    """Global key/value settings (JSON values)."""

    def __init__(self, db: Database):
        self._db = db

    async def get(self, key: str, default: Any = None) -> Any:
        async with self._db.read() as session:
            row = await session.get(Setting, key)
            return default if row is None else row.value

    async def set(self, key: str, value: Any) -> None:
        value = _json_value(value, what=f"setting {key!r}")
        statement = sqlite_insert(Setting).values(key=key, value=value)
        statement = statement.on_conflict_do_update(
            index_elements=[Setting.key], set_={"value": statement.excluded.value}
        )
        await self._db.run_write(_row_count(statement))

    async def delete(self, key: str) -> bool:
        statement = delete(Setting).where(Setting.key == key).execution_options(synchronize_session=False)
        return await self._db.run_write(_changes_one_row(statement))

    async def all(self) -> dict[str, Any]:
        async with self._db.read() as session:
            return {row.key: row.value for row in await session.scalars(select(Setting).order_by(Setting.key))}

    async def delete_stale(self, prefix: str, *, created_before: datetime) -> int:
        """Delete the `prefix*` settings whose JSON `created_at` (ISO 8601, UTC) is older than
        `created_before`; returns how many went."""
        statement = (
            delete(Setting)
            .where(_has_prefix(prefix),
                   func.json_extract(Setting.value, "$.created_at") < created_before.isoformat())
            .execution_options(synchronize_session=False)
        )
        return await self._db.run_write(_row_count(statement))

    async def trim_owner(self, prefix: str, owner_id: int, keep: int) -> int:
        """Of the `prefix*` settings whose JSON value has this "owner_id", keep the `keep` newest
        by the value's "created_at" (ISO 8601 UTC strings, compared as text; a value without one
        counts as oldest) and delete the rest; returns how many went. One statement."""
        if keep < 0:
            raise ValueError("keep must not be negative")
        owned = and_(_has_prefix(prefix), func.json_extract(Setting.value, "$.owner_id") == owner_id)
        newest = (
            select(Setting.key)
            .where(owned)
            .order_by(func.json_extract(Setting.value, "$.created_at").desc(), Setting.key.desc())
            .limit(keep)
        )
        statement = (
            delete(Setting)
            .where(owned, Setting.key.not_in(newest))
            .execution_options(synchronize_session=False)
        )
        return await self._db.run_write(_row_count(statement))


def _has_prefix(prefix: str) -> ColumnElement[bool]:
    # Not LIKE: SQLite's LIKE ignores ASCII case.
    return func.substr(Setting.key, 1, len(prefix)) == prefix


# ---------------------------------------------------------------------------------------------
# Prompt history


def fts5_match_expression(query: str) -> str | None:
    """Turn what a user typed into an FTS5 query that cannot be a syntax error.

    Each whitespace-separated word becomes a double-quoted string (inner quotes doubled) with
    a prefix star, so AND/OR/NEAR, column filters, parentheses and stray quotes are plain text.
    All words must match. Words without a letter or digit are dropped, since the tokenizer
    would drop them too; None means nothing searchable was left.
    """
    words = [word for word in query.split() if any(char.isalnum() for char in word)]
    if not words:
        return None
    return " ".join('"' + word.replace('"', '""') + '"*' for word in words)


def _like_pattern(word: str) -> str:
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _like_filter(query: str) -> ColumnElement[bool]:
    """Every word must appear in the prompt or the negative prompt (ASCII case-insensitive)."""
    return and_(
        *(
            or_(
                PromptHistory.prompt.like(_like_pattern(word), escape="\\"),
                PromptHistory.negative_prompt.like(_like_pattern(word), escape="\\"),
            )
            for word in query.split()
        )
    )


def _history_entry(row: PromptHistory) -> PromptHistoryEntry:
    return PromptHistoryEntry(
        id=row.id,
        user_id=row.user_id,
        guild_id=row.guild_id,
        job_id=row.job_id,
        prompt=row.prompt,
        negative_prompt=row.negative_prompt,
        created_at=row.created_at,
    )


class PromptHistoryRepository:
    """Each user's past prompts, searchable. Uses the FTS5 index when the database has one
    (revision 0001 makes it if SQLite has FTS5) and LIKE otherwise."""

    def __init__(self, db: Database, *, use_fts: bool):
        self._db = db
        self.uses_fts = use_fts

    async def add(
        self,
        *,
        user_id: int,
        prompt: str,
        negative_prompt: str = "",
        guild_id: int | None = None,
        job_id: int | None = None,
    ) -> PromptHistoryEntry:
        values = dict(
            user_id=user_id,
            guild_id=guild_id,
            job_id=job_id,
            prompt=prompt,
            negative_prompt=negative_prompt or "",
        )

        async def add(session: AsyncSession) -> PromptHistoryEntry:
            row = PromptHistory(**values, created_at=utcnow())
            session.add(row)
            await session.flush()
            await session.refresh(row)
            return _history_entry(row)

        return await self._db.run_write(add)

    def _filters(self, user_id: int, query: str | None, *, fts: bool,
                 guild_id: int | None = None) -> builtins.list[ColumnElement[bool]]:
        filters: builtins.list[ColumnElement[bool]] = [PromptHistory.user_id == user_id]
        if guild_id is not None:
            filters.append(PromptHistory.guild_id == guild_id)
        if query is None or not query.strip():
            return filters
        match = fts5_match_expression(query) if fts else None
        if match is None:
            filters.append(_like_filter(query))
        else:
            matching_ids = (
                text("SELECT rowid FROM prompt_history_fts WHERE prompt_history_fts MATCH :match")
                .bindparams(match=match)
                .columns(column("rowid", Integer))
            )
            filters.append(PromptHistory.id.in_(matching_ids))
        return filters

    async def search(
        self, user_id: int, query: str | None = None, *, limit: int = 20, offset: int = 0,
        guild_id: int | None = None,
    ) -> builtins.list[PromptHistoryEntry]:
        """The user's prompts (in one guild, when given) containing every word of `query`
        (prefixes count), newest first."""

        async def run(fts: bool) -> builtins.list[PromptHistoryEntry]:
            statement = (
                select(PromptHistory)
                .where(*self._filters(user_id, query, fts=fts, guild_id=guild_id))
                .order_by(PromptHistory.created_at.desc(), PromptHistory.id.desc())
                .limit(limit)
                .offset(offset)
            )
            async with self._db.read() as session:
                return [_history_entry(row) for row in await session.scalars(statement)]

        return await self._with_fallback(run)

    async def count(self, user_id: int, query: str | None = None, *, guild_id: int | None = None) -> int:
        async def run(fts: bool) -> int:
            statement = (
                select(func.count())
                .select_from(PromptHistory)
                .where(*self._filters(user_id, query, fts=fts, guild_id=guild_id))
            )
            async with self._db.read() as session:
                return int(await session.scalar(statement) or 0)

        return await self._with_fallback(run)

    async def _with_fallback(self, run: Callable[[bool], Awaitable[_T]]) -> _T:
        if not self.uses_fts:
            return await run(False)
        try:
            return await run(True)
        except OperationalError:
            # The quoting above should make this unreachable; a search must still never crash.
            log.warning("full-text search failed; falling back to LIKE", exc_info=True)
            return await run(False)

    async def clear(self, user_id: int) -> int:
        """Forget a user's history; returns how many entries were deleted."""
        statement = (
            delete(PromptHistory)
            .where(PromptHistory.user_id == user_id)
            .execution_options(synchronize_session=False)
        )
        return await self._db.run_write(_row_count(statement))
