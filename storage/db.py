"""Engines, connection pragmas, transactions and schema upgrades for the SQLite database.

Every connection runs in WAL mode with synchronous=FULL (committed work survives power loss),
foreign keys on and a 5 s busy timeout. SQLAlchemy, not the sqlite3 driver, emits BEGIN: the
driver's legacy mode skips BEGIN before SELECT and DDL, which breaks read-then-write
transactions and transactional migrations. Writes use BEGIN IMMEDIATE so that two writers
queue on the busy timeout instead of failing halfway through with SQLITE_BUSY.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_MS: Final = 5000
# Execution option read by the "begin" listener: "DEFERRED" (reads) or "IMMEDIATE" (writes).
BEGIN_MODE_OPTION: Final = "easel_sqlite_begin"
_BEGIN_MODES: Final = frozenset({"DEFERRED", "IMMEDIATE"})


class MigrationError(RuntimeError):
    """The database could not be brought to the schema this version of easel needs."""


# ---------------------------------------------------------------------------------------------
# Connections


def _connection_pragmas(*, foreign_keys: bool) -> tuple[str, ...]:
    return (
        f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",  # first, so the journal mode switch waits too
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=FULL",
        f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}",
    )


def _install_listeners(sync_engine: Engine, *, foreign_keys: bool) -> None:
    pragmas = _connection_pragmas(foreign_keys=foreign_keys)

    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Take BEGIN away from the driver; on_begin below emits it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in pragmas:
                cursor.execute(pragma)
        finally:
            cursor.close()

    def on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(BEGIN_MODE_OPTION, "DEFERRED")
        if mode not in _BEGIN_MODES:
            raise ValueError(f"unknown SQLite BEGIN mode {mode!r}")
        connection.exec_driver_sql(f"BEGIN {mode}")

    event.listen(sync_engine, "connect", on_connect)
    event.listen(sync_engine, "begin", on_begin)


def create_async_sqlite_engine(db_path: Path) -> AsyncEngine:
    """The engine the application uses (aiosqlite), with the pragmas and BEGIN handling above."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{Path(db_path)}")
    _install_listeners(engine.sync_engine, foreign_keys=True)
    return engine


def create_migration_engine(db_path: Path) -> Engine:
    """A synchronous engine for Alembic.

    Foreign keys are OFF while migrating: SQLite rebuilds a table by copy-drop-rename, and
    with enforcement on, dropping `jobs` would cascade-delete every image. The upgrade runs
    `PRAGMA foreign_key_check` before it commits instead. Migrations take the write lock
    up front (BEGIN IMMEDIATE) and run in one transaction.
    """
    engine = create_engine(
        f"sqlite:///{Path(db_path)}",
        poolclass=NullPool,
        execution_options={BEGIN_MODE_OPTION: "IMMEDIATE"},
    )
    _install_listeners(engine, foreign_keys=False)
    return engine


class Database:
    """Short transactions on one engine: `read()` for queries, `write()` for changes."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self._read_sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._write_sessions = async_sessionmaker(
            engine.execution_options(**{BEGIN_MODE_OPTION: "IMMEDIATE"}), expire_on_commit=False
        )

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._read_sessions.begin() as session:
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """Commits when the block ends, rolls back if it raises."""
        async with self._write_sessions.begin() as session:
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()


# ---------------------------------------------------------------------------------------------
# Schema upgrades


def alembic_config(db_path: Path, *, script_location: Path | None = None) -> Config:
    """An Alembic config built in code; no alembic.ini is read at runtime."""
    config = Config()
    config.set_main_option("script_location", str(script_location or MIGRATIONS_DIR))
    # Only for the developer CLI path in env.py; the app hands env.py a connection instead.
    config.set_main_option("sqlalchemy.url", f"sqlite:///{Path(db_path)}")
    return config


def head_revision(config: Config) -> str:
    heads = ScriptDirectory.from_config(config).get_heads()
    if len(heads) != 1:
        raise MigrationError(f"the migration scripts have {len(heads)} heads; expected one")
    return heads[0]


def current_revision(db_path: Path) -> str | None:
    """The revision stamped in the database, or None for a new or empty file."""
    if not _database_has_content(db_path):
        return None
    engine = create_migration_engine(db_path)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def _database_has_content(db_path: Path) -> bool:
    return db_path.exists() and db_path.stat().st_size > 0


def _run_upgrade(config: Config, db_path: Path, revision: str) -> None:
    """Apply the migrations on one connection, in one transaction."""
    engine = create_migration_engine(db_path)
    try:
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if violations:
                raise MigrationError(f"the upgrade left broken foreign keys: {violations[:5]}")
            connection.commit()
    finally:
        config.attributes.pop("connection", None)
        engine.dispose()


def _copy_database(source: Path, target: Path) -> None:
    """Copy with SQLite's online backup API: a consistent copy that includes the WAL's contents."""
    src = sqlite3.connect(source)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def _backup_path(db_path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return db_path.with_name(f"{db_path.name}.bak-{stamp}")


# Alembic's `context` and `op` are process-wide proxies, so two upgrades running at once in
# different threads would share one migration context. This lock guards that global of
# Alembic's; it holds no state of ours.
_ALEMBIC_LOCK: Final = threading.Lock()


def upgrade_database(
    db_path: Path,
    *,
    revision: str = "head",
    script_location: Path | None = None,
    run_upgrade: Callable[[Config, Path, str], None] | None = None,
) -> Path | None:
    """Bring the database file to `revision`, creating it if needed.

    An existing database that is behind is first copied to `<db>.bak-<UTC timestamp>`; if the
    upgrade fails, that copy is written back and MigrationError is raised. Returns the backup's
    path (kept after success, for the operator) or None when no upgrade of existing data ran.
    """
    with _ALEMBIC_LOCK:
        return _upgrade_database(
            Path(db_path), revision=revision, script_location=script_location, run_upgrade=run_upgrade
        )


def _upgrade_database(
    db_path: Path,
    *,
    revision: str,
    script_location: Path | None,
    run_upgrade: Callable[[Config, Path, str], None] | None,
) -> Path | None:
    db_path.parent.mkdir(parents=True, exist_ok=True)
    config = alembic_config(db_path, script_location=script_location)
    script = ScriptDirectory.from_config(config)
    target = head_revision(config) if revision == "head" else revision
    apply = run_upgrade or _run_upgrade

    try:
        current = current_revision(db_path)
    except DBAPIError as exc:
        raise MigrationError(f"{db_path} is not a readable SQLite database: {exc.orig}") from exc
    if current == target:
        return None
    if current is not None:
        try:
            script.get_revision(current)
        except CommandError as exc:
            raise MigrationError(
                f"{db_path} is at schema revision {current!r}, which this version of easel does "
                "not know; it was probably written by a newer version. Run that version, or "
                "restore an older backup."
            ) from exc

    backup: Path | None = None
    if _database_has_content(db_path):
        backup = _backup_path(db_path)
        _copy_database(db_path, backup)
        log.info("upgrading %s from %s to %s; backup at %s", db_path, current, target, backup)

    existed = db_path.exists()
    try:
        apply(config, db_path, target)
    except Exception as exc:
        if backup is None:
            if not existed:
                # Leave no half-made file behind; the next start tries again from nothing.
                for leftover in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
                    leftover.unlink(missing_ok=True)
            raise MigrationError(f"creating the database {db_path} failed: {exc}") from exc
        try:
            _copy_database(backup, db_path)
        except Exception as restore_exc:
            raise MigrationError(
                f"upgrading {db_path} failed ({exc}) and restoring the backup failed too "
                f"({restore_exc}). Stop the bot and copy {backup} over {db_path} by hand."
            ) from exc
        raise MigrationError(
            f"upgrading {db_path} from schema {current} to {target} failed: {exc}. "
            f"The database was restored from {backup}, which is kept."
        ) from exc
    return backup
