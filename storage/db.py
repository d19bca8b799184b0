"""Engines, connection pragmas, transactions and schema upgrades for the SQLite database.

Every connection runs in WAL mode with synchronous=FULL (committed work survives power loss),
foreign keys on and a busy timeout (5 s by default). SQLAlchemy, not the sqlite3 driver, emits
BEGIN: the driver's legacy mode skips BEGIN before SELECT and DDL, which breaks read-then-write
transactions and transactional migrations. Writes use BEGIN IMMEDIATE so that two writers
queue on the busy timeout instead of failing halfway through with SQLITE_BUSY; a write still
locked out after it is retried whole (`Database.run_write`). The database file, its -wal/-shm
files and upgrade backups are readable and writable by their owner only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from typing import TYPE_CHECKING
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:  # Alembic is imported only when a schema change has to run (a fast start otherwise)
    from alembic.config import Config

log = logging.getLogger(__name__)

_T = TypeVar("_T")

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_MS: Final = 5000
# A write still locked out after the busy timeout is retried after 0.05 s, 0.1 s, 0.2 s, ...
# (each with jitter) until this much time has passed since its first try.
WRITE_RETRY_BUDGET_S: Final = 15.0
WRITE_RETRY_FIRST_DELAY_S: Final = 0.05
WRITE_RETRY_MAX_DELAY_S: Final = 2.0
FILE_MODE: Final = 0o600
# Execution option read by the "begin" listener: "DEFERRED" (reads) or "IMMEDIATE" (writes).
BEGIN_MODE_OPTION: Final = "easel_sqlite_begin"
_BEGIN_MODES: Final = frozenset({"DEFERRED", "IMMEDIATE"})


class MigrationError(RuntimeError):
    """The database could not be brought to the schema this version of easel needs."""


# ---------------------------------------------------------------------------------------------
# Files


def secure_file(path: Path) -> None:
    """Create `path` if missing, and make it readable and writable by its owner only (0600),
    whatever the umask. SQLite gives the -wal, -shm and -journal files it creates the mode of
    the main file, so doing this before SQLite opens a database covers those too."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
    except FileExistsError:
        pass
    os.chmod(path, FILE_MODE)  # the umask may have taken bits away; an older file may have more


def secure_database_files(db_path: Path) -> None:
    """`secure_file` for the database, and chmod 0600 on its -wal/-shm/-journal files if present."""
    secure_file(db_path)
    for suffix in ("-wal", "-shm", "-journal"):
        try:
            os.chmod(f"{db_path}{suffix}", FILE_MODE)
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------------------------------------
# Connections


def _connection_pragmas(*, foreign_keys: bool, busy_timeout_ms: int) -> tuple[str, ...]:
    return (
        f"PRAGMA busy_timeout={int(busy_timeout_ms)}",  # first, so the journal mode switch waits too
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=FULL",
        f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}",
    )


def _install_listeners(sync_engine: Engine, *, foreign_keys: bool, busy_timeout_ms: int) -> None:
    pragmas = _connection_pragmas(foreign_keys=foreign_keys, busy_timeout_ms=busy_timeout_ms)

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


def create_async_sqlite_engine(db_path: Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> AsyncEngine:
    """The engine the application uses (aiosqlite), with the pragmas and BEGIN handling above.
    Creates the file (0600) if it does not exist."""
    if busy_timeout_ms < 0:
        raise ValueError("busy_timeout_ms must not be negative")
    secure_database_files(Path(db_path))
    engine = create_async_engine(f"sqlite+aiosqlite:///{Path(db_path)}")
    _install_listeners(engine.sync_engine, foreign_keys=True, busy_timeout_ms=busy_timeout_ms)
    return engine


def create_migration_engine(db_path: Path) -> Engine:
    """A synchronous engine for Alembic.

    Foreign keys are OFF while migrating: SQLite rebuilds a table by copy-drop-rename, and
    with enforcement on, dropping `jobs` would cascade-delete every image. The upgrade runs
    `PRAGMA foreign_key_check` before it commits instead. Migrations take the write lock
    up front (BEGIN IMMEDIATE) and run in one transaction. Creates the file (0600) if needed.
    """
    secure_database_files(Path(db_path))
    engine = create_engine(
        f"sqlite:///{Path(db_path)}",
        poolclass=NullPool,
        execution_options={BEGIN_MODE_OPTION: "IMMEDIATE"},
    )
    _install_listeners(engine, foreign_keys=False, busy_timeout_ms=BUSY_TIMEOUT_MS)
    return engine


def is_busy_error(exc: BaseException) -> bool:
    """Whether `exc` is SQLite's "database is locked/busy" (SQLITE_BUSY or SQLITE_LOCKED),
    raised by sqlite3 or wrapped by SQLAlchemy."""
    if isinstance(exc, OperationalError):
        exc = exc.orig
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    message = str(exc)
    return "database is locked" in message or "database is busy" in message


class Database:
    """Short transactions on one engine: `read()` for queries, `run_write()` for changes.

    In WAL mode readers never wait for the writer, so reads are not retried.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        write_retry_budget_s: float = WRITE_RETRY_BUDGET_S,
        write_retry_first_delay_s: float = WRITE_RETRY_FIRST_DELAY_S,
    ):
        self.engine = engine
        self.write_retry_budget_s = write_retry_budget_s
        self.write_retry_first_delay_s = write_retry_first_delay_s
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
        """One write transaction (BEGIN IMMEDIATE): commits when the block ends, rolls back if it
        raises. Not retried; repositories use `run_write`."""
        async with self._write_sessions.begin() as session:
            yield session

    async def run_write(self, fn: Callable[[AsyncSession], Awaitable[_T]]) -> _T:
        """`fn(session)` in one write transaction, committed when it returns; its result.

        If the database is still locked after the busy timeout, the transaction has rolled back
        and `fn` runs again in a new one after 0.05 s, 0.1 s, 0.2 s, ... (jittered, at most 2 s
        each), until `write_retry_budget_s` since the first try is spent; then the error is
        raised. `fn` may therefore run more than once: it must change nothing outside `session`.
        """
        started = time.monotonic()
        delay = self.write_retry_first_delay_s
        attempt = 1
        while True:
            try:
                async with self.write() as session:
                    return await fn(session)
            except (OperationalError, sqlite3.OperationalError) as exc:
                if not is_busy_error(exc):
                    raise
                wait = delay * random.uniform(0.5, 1.5)
                if time.monotonic() - started + wait > self.write_retry_budget_s:
                    log.warning("database still locked after %d tries; giving up", attempt)
                    raise
                log.info("database locked (try %d); retrying in %.2f s", attempt, wait)
                await asyncio.sleep(wait)
                delay = min(delay * 2, WRITE_RETRY_MAX_DELAY_S)
                attempt += 1

    async def dispose(self) -> None:
        await self.engine.dispose()


# ---------------------------------------------------------------------------------------------
# Schema upgrades


# The newest migration's revision: a database stamped with it needs no Alembic at all (tests check
# this against Alembic's own head, so a new migration cannot forget it).
SCHEMA_HEAD: Final = "0003"


def stamped_revision(db_path: Path) -> str | None:
    """The revision stamped in the database, read with sqlite3 alone; None when there is none or
    it cannot be read (then the full Alembic path decides)."""
    if not _database_has_content(db_path):
        return None
    try:
        connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1.0)
        try:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            connection.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def alembic_config(db_path: Path, *, script_location: Path | None = None) -> "Config":
    """An Alembic config built in code; no alembic.ini is read at runtime."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(script_location or MIGRATIONS_DIR))
    # Only for the developer CLI path in env.py; the app hands env.py a connection instead.
    config.set_main_option("sqlalchemy.url", f"sqlite:///{Path(db_path)}")
    return config


def head_revision(config: "Config") -> str:
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(config).get_heads()
    if len(heads) != 1:
        raise MigrationError(f"the migration scripts have {len(heads)} heads; expected one")
    return heads[0]


def current_revision(db_path: Path) -> str | None:
    """The revision stamped in the database, or None for a new or empty file."""
    if not _database_has_content(db_path):
        return None
    from alembic.runtime.migration import MigrationContext

    engine = create_migration_engine(db_path)
    try:
        # A plain read (BEGIN DEFERRED), so that a start does not wait for another process's write.
        with engine.connect().execution_options(**{BEGIN_MODE_OPTION: "DEFERRED"}) as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def _database_has_content(db_path: Path) -> bool:
    return db_path.exists() and db_path.stat().st_size > 0


def _run_upgrade(config: "Config", db_path: Path, revision: str) -> None:
    """Apply the migrations on one connection, in one transaction."""
    from alembic import command

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
    """Copy with SQLite's online backup API: a consistent copy that includes the WAL's contents.
    The target (created if needed) and its side files are made 0600 before SQLite opens it."""
    src = sqlite3.connect(source)
    try:
        secure_database_files(target)
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
    run_upgrade: Callable[["Config", Path, str], None] | None = None,
) -> Path | None:
    """Bring the database file to `revision`, creating it if needed.

    An existing database that is behind is first copied to `<db>.bak-<UTC timestamp>`; if the
    upgrade fails, that copy is written back and MigrationError is raised. Returns the backup's
    path (kept after success, for the operator) or None when no upgrade of existing data ran.
    The database, its -wal/-shm files and the backup are made 0600 (owner read/write only).
    """
    db_path = Path(db_path)
    if revision == "head" and script_location is None and stamped_revision(db_path) == SCHEMA_HEAD:
        secure_database_files(db_path)
        return None  # current: no Alembic import, no migration work
    with _ALEMBIC_LOCK:
        return _upgrade_database(
            Path(db_path), revision=revision, script_location=script_location, run_upgrade=run_upgrade
        )


def _upgrade_database(
    db_path: Path,
    *,
    revision: str,
    script_location: Path | None,
    run_upgrade: Callable[["Config", Path, str], None] | None,
) -> Path | None:
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    db_path.parent.mkdir(parents=True, exist_ok=True)
    existed = db_path.exists()
    # Before SQLite touches the file, so its -wal and -shm files get the same 0600 mode.
    secure_database_files(db_path)
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
