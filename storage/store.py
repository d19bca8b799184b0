"""`open_store`: upgrade the database, then hand out the repositories on one engine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType

from sqlalchemy import text

from storage.db import (
    BUSY_TIMEOUT_MS,
    WRITE_RETRY_BUDGET_S,
    Database,
    create_async_sqlite_engine,
    upgrade_database,
)
from storage.repositories import (
    CheckpointRepository,
    EmbeddingRepository,
    GuildRepository,
    HashCache,
    ImageRepository,
    JobRepository,
    PromptHistoryRepository,
    SettingsRepository,
    UploadRepository,
    UserRepository,
)


class Store:
    """The database and its repositories. Make one with `open_store`; `close()` when done."""

    def __init__(self, database: Database, *, prompt_history_fts: bool, upgrade_backup: Path | None = None):
        self.database = database
        self.engine = database.engine
        # Where open_store copied the database before upgrading it (None: no upgrade ran).
        self.upgrade_backup = upgrade_backup
        self.jobs = JobRepository(database)
        self.images = ImageRepository(database)
        self.checkpoints = CheckpointRepository(database)
        self.embeddings = EmbeddingRepository(database)
        self.hash_cache = HashCache(database)
        self.users = UserRepository(database)
        self.guilds = GuildRepository(database)
        self.settings = SettingsRepository(database)
        self.prompt_history = PromptHistoryRepository(database, use_fts=prompt_history_fts)
        self.uploads = UploadRepository(database)

    async def close(self) -> None:
        await self.database.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


async def _has_table(database: Database, name: str) -> bool:
    async with database.read() as session:
        found = await session.scalar(
            text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name"), {"name": name}
        )
        return found is not None


async def open_store(
    db_path: Path,
    *,
    busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    write_retry_budget_s: float = WRITE_RETRY_BUDGET_S,
) -> Store:
    """Migrate `db_path` to the newest schema (see `upgrade_database`: an existing database is
    backed up first and restored if the upgrade fails), then open it.

    `busy_timeout_ms`: how long one statement waits for a lock; `write_retry_budget_s`: how long
    a locked-out write keeps being retried (see `Database.run_write`).
    Raises storage.db.MigrationError when the database cannot be upgraded.
    """
    db_path = Path(db_path)
    backup = await asyncio.to_thread(upgrade_database, db_path)
    database = Database(
        create_async_sqlite_engine(db_path, busy_timeout_ms=busy_timeout_ms),
        write_retry_budget_s=write_retry_budget_s,
    )
    try:
        fts = await _has_table(database, "prompt_history_fts")
    except BaseException:
        await database.dispose()
        raise
    return Store(database, prompt_history_fts=fts, upgrade_backup=backup)
