"""Engine pragmas, migrations, backups and restores, on real SQLite files."""

from __future__ import annotations

import asyncio
import inspect
import logging
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from storage import MigrationError, Store, open_store, repositories, upgrade_database
from storage.db import (
    MIGRATIONS_DIR,
    alembic_config,
    create_migration_engine,
    current_revision,
    head_revision,
    is_busy_error,
)
from storage.models import DATABASE_ONLY_TABLE_PREFIXES, Base

HEAD = "0003"


@pytest_asyncio.fixture(loop_scope="function")
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await open_store(tmp_path / "easel.sqlite3")
    yield store
    await store.close()


def backups_of(db_path: Path) -> list[Path]:
    return sorted(db_path.parent.glob(f"{db_path.name}.bak-*"))


def table_names(db_path: Path) -> set[str]:
    with sqlite3.connect(db_path) as connection:
        return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def seed_rows_at_0001(db_path: Path) -> None:
    """Rows as an older easel (schema 0001) would have written them, with plain sqlite3."""
    upgrade_database(db_path, revision="0001")
    connection = sqlite3.connect(db_path)
    with connection:
        connection.execute(
            "INSERT INTO jobs (owner_id, guild_id, channel_id, frontend, request, checkpoint, batch_key,"
            " cost, status, attempts, created_at)"
            " VALUES (42, 7, 8, 'discord', '{\"prompt\": \"old cat\"}', 'sd15', 'k', 1, 'done', 0, 1700000000.0)"
        )
        connection.execute(
            "INSERT INTO images (job_id, image_index, seed, path, sha256, width, height, bytes, infotext, message_id)"
            " VALUES (1, 0, 123, '/out/1.png', 'ab', 512, 512, 1000, 'old cat\nSteps: 20', 555)"
        )
        connection.execute(
            "INSERT INTO prompt_history (user_id, guild_id, job_id, prompt, negative_prompt, created_at)"
            " VALUES (42, 7, 1, 'old cat on a sofa', '', 1700000000.0)"
        )
        connection.execute("INSERT INTO users (id, settings, created_at) VALUES (42, '{\"steps\": 30}', 1700000000.0)")
    connection.close()


# ---------------------------------------------------------------------------------------------
# Pragmas


async def test_every_connection_gets_the_pragmas(store: Store) -> None:
    # Two connections open at once, so they are two separate DBAPI connections from the pool.
    async with store.engine.connect() as first, store.engine.connect() as second:
        for connection in (first, second):
            assert (await connection.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await connection.exec_driver_sql("PRAGMA synchronous")).scalar() == 2  # FULL
            assert (await connection.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
            assert (await connection.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 5000


async def test_write_transactions_begin_immediate(store: Store) -> None:
    # A write transaction holds the write lock from BEGIN, before it has written anything.
    async with store.database.write() as session:
        await session.execute(Base.metadata.tables["settings"].select())
        other = sqlite3.connect(store.engine.url.database, timeout=0)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        finally:
            other.close()


def test_migration_engine_turns_foreign_keys_off(tmp_path: Path) -> None:
    engine = create_migration_engine(tmp_path / "m.sqlite3")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 0
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# Migrations


async def test_new_database_is_created_at_head_without_backup(tmp_path: Path) -> None:
    db_path = tmp_path / "sub" / "easel.sqlite3"
    store = await open_store(db_path)
    await store.close()
    assert head_revision(alembic_config(db_path)) == HEAD
    assert current_revision(db_path) == HEAD
    assert store.upgrade_backup is None
    assert backups_of(db_path) == []
    assert {"users", "guilds", "jobs", "images", "checkpoints", "embeddings", "file_hashes", "settings",
            "prompt_history", "prompt_history_fts"} <= table_names(db_path)


async def test_reopening_at_head_makes_no_backup(tmp_path: Path) -> None:
    db_path = tmp_path / "easel.sqlite3"
    for _ in range(2):
        store = await open_store(db_path)
        await store.close()
    assert backups_of(db_path) == []


def test_schema_from_migrations_matches_the_models(tmp_path: Path) -> None:
    db_path = tmp_path / "easel.sqlite3"
    upgrade_database(db_path)

    def include_name(name: str | None, type_: str, parent_names: object) -> bool:
        return not (type_ == "table" and name is not None and name.startswith(DATABASE_ONLY_TABLE_PREFIXES))

    engine = create_migration_engine(db_path)
    try:
        with engine.connect() as connection:
            opts = {"compare_type": True, "compare_server_default": True, "include_name": include_name}
            context = MigrationContext.configure(connection, opts=opts)
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_downgrade_to_nothing_and_back(tmp_path: Path) -> None:
    db_path = tmp_path / "easel.sqlite3"
    upgrade_database(db_path)
    config = alembic_config(db_path)
    engine = create_migration_engine(db_path)
    try:
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
            connection.commit()
    finally:
        engine.dispose()
    assert table_names(db_path) <= {"alembic_version", "sqlite_sequence"}
    upgrade_database(db_path)
    assert current_revision(db_path) == HEAD


async def test_upgrade_from_0001_keeps_the_data_and_backs_up_first(tmp_path: Path) -> None:
    db_path = tmp_path / "easel.sqlite3"
    seed_rows_at_0001(db_path)
    assert current_revision(db_path) == "0001"

    store = await open_store(db_path)
    try:
        assert current_revision(db_path) == HEAD
        job = await store.jobs.get(1)
        assert job is not None and job.request == {"prompt": "old cat"} and job.status == "done"
        assert [image.seed for image in await store.images.get_by_message(555)] == [123]
        assert [entry.prompt for entry in await store.prompt_history.search(42, "sofa")] == ["old cat on a sofa"]
        assert await store.users.get_settings(42) == {"steps": 30}
    finally:
        await store.close()

    # The backup is the database as it was before the upgrade.
    [backup] = backups_of(db_path)
    assert store.upgrade_backup == backup
    assert current_revision(backup) == "0001"
    with sqlite3.connect(backup) as connection:
        assert connection.execute("SELECT count(*) FROM jobs").fetchone() == (1,)
    with sqlite3.connect(db_path) as connection:
        indexes = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"ix_images_message_id", "ix_jobs_owner_status", "ix_jobs_guild_status"} <= indexes


def test_failed_upgrade_restores_the_backup(tmp_path: Path) -> None:
    db_path = tmp_path / "easel.sqlite3"
    seed_rows_at_0001(db_path)

    def upgrade_that_breaks_halfway(config: Config, path: Path, revision: str) -> None:
        # Damage the file outside any transaction, the way a non-transactional step would.
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("CREATE TABLE half_done (x)")
        connection.execute("DELETE FROM prompt_history")
        connection.execute("UPDATE alembic_version SET version_num = '0002'")
        connection.close()
        raise RuntimeError("disk on fire")

    with pytest.raises(MigrationError, match="restored from") as caught:
        upgrade_database(db_path, run_upgrade=upgrade_that_breaks_halfway)
    assert "disk on fire" in str(caught.value)

    assert current_revision(db_path) == "0001"
    assert "half_done" not in table_names(db_path)
    with sqlite3.connect(db_path) as connection:
        assert connection.execute("SELECT prompt FROM prompt_history").fetchall() == [("old cat on a sofa",)]
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert len(backups_of(db_path)) == 1


NEXT = "0004"  # a revision after the project's head, for scripts made by the tests


def migrations_with_next(tmp_path: Path, name: str, upgrade_body: str) -> Path:
    """A copy of the project's migrations plus a revision NEXT whose upgrade() runs `upgrade_body`."""
    scripts = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / f"{NEXT}_{name}.py").write_text(
        f'revision = "{NEXT}"\n'
        f'down_revision = "{HEAD}"\n'
        "branch_labels = None\n"
        "depends_on = None\n"
        "from alembic import op\n"
        "def upgrade():\n"
        f"{upgrade_body}"
        "def downgrade():\n"
        "    pass\n"
    )
    return scripts


def test_broken_migration_script_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    db_path = tmp_path / "easel.sqlite3"
    seed_rows_at_0001(db_path)
    upgrade_database(db_path)
    scripts = migrations_with_next(tmp_path, "broken",
                                   '    op.execute("CREATE TABLE broken (x)")\n'
                                   '    op.execute("DELETE FROM jobs")\n'
                                   '    raise RuntimeError("bad migration")\n')

    with pytest.raises(MigrationError, match="bad migration"):
        upgrade_database(db_path, script_location=scripts)

    assert current_revision(db_path) == HEAD
    assert "broken" not in table_names(db_path)
    with sqlite3.connect(db_path) as connection:
        assert connection.execute("SELECT count(*) FROM jobs").fetchone() == (1,)
        assert connection.execute("SELECT count(*) FROM images").fetchone() == (1,)


def test_rebuilding_a_parent_table_in_a_migration_keeps_its_children(tmp_path: Path) -> None:
    # SQLite changes a column by copy-drop-rename; with foreign keys on, dropping `jobs`
    # would cascade-delete every image. Migrations run with them off for that reason.
    db_path = tmp_path / "easel.sqlite3"
    seed_rows_at_0001(db_path)
    upgrade_database(db_path)
    scripts = migrations_with_next(tmp_path, "rebuild_jobs",
                                   '    with op.batch_alter_table("jobs", recreate="always"):\n'
                                   "        pass\n")
    upgrade_database(db_path, script_location=scripts)
    assert current_revision(db_path) == NEXT
    with sqlite3.connect(db_path) as connection:
        assert connection.execute("SELECT count(*) FROM jobs").fetchone() == (1,)
        assert connection.execute("SELECT count(*) FROM images").fetchone() == (1,)
        assert connection.execute("SELECT job_id FROM prompt_history").fetchall() == [(1,)]


def test_failed_creation_leaves_no_half_made_file(tmp_path: Path) -> None:
    db_path = tmp_path / "easel.sqlite3"

    def create_then_fail(config: Config, path: Path, revision: str) -> None:
        connection = sqlite3.connect(path)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE users (id)")
        connection.close()
        raise RuntimeError("no space left")

    with pytest.raises(MigrationError, match="no space left"):
        upgrade_database(db_path, run_upgrade=create_then_fail)
    assert list(tmp_path.iterdir()) == []
    upgrade_database(db_path)
    assert current_revision(db_path) == HEAD


def test_database_from_a_newer_version_is_refused_untouched(tmp_path: Path) -> None:
    db_path = tmp_path / "easel.sqlite3"
    upgrade_database(db_path)
    with sqlite3.connect(db_path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(MigrationError, match="newer version"):
        upgrade_database(db_path)
    assert backups_of(db_path) == []
    assert current_revision(db_path) == "9999"


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    db_path = tmp_path / "easel.sqlite3"
    db_path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(MigrationError, match="not a readable SQLite database"):
        upgrade_database(db_path)


async def test_open_store_runs_the_upgrade_off_the_event_loop(tmp_path: Path) -> None:
    # Opening two stores at once must not deadlock: the sync upgrade runs in a worker thread.
    stores = await asyncio.wait_for(
        asyncio.gather(open_store(tmp_path / "a.sqlite3"), open_store(tmp_path / "b.sqlite3")), timeout=30
    )
    for store in stores:
        await store.close()


async def test_history_search_falls_back_to_like_without_the_fts_table(tmp_path: Path) -> None:
    db_path = tmp_path / "easel.sqlite3"
    store = await open_store(db_path)
    await store.prompt_history.add(user_id=1, prompt="a red fox, (masterpiece:1.2)")
    await store.close()
    with sqlite3.connect(db_path) as connection:
        for trigger in ("insert", "delete", "update"):
            connection.execute(f"DROP TRIGGER prompt_history_fts_{trigger}")
        connection.execute("DROP TABLE prompt_history_fts")

    store = await open_store(db_path)
    try:
        assert store.prompt_history.uses_fts is False
        await store.prompt_history.add(user_id=1, prompt="a blue fox")
        assert [entry.prompt for entry in await store.prompt_history.search(1, "fox")] == [
            "a blue fox",
            "a red fox, (masterpiece:1.2)",
        ]
        assert await store.prompt_history.count(1, "(masterpiece:1.2)") == 1
        assert await store.prompt_history.count(1, "100%") == 0
    finally:
        await store.close()


def test_migration_files_sit_where_the_package_data_globs_find_them() -> None:
    # pyproject ships storage/migrations/*.ini, *.mako and versions/*.py as package data;
    # env.py ships as a module of the storage.migrations package.
    assert (MIGRATIONS_DIR / "__init__.py").is_file()
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert (MIGRATIONS_DIR / "alembic.ini").is_file()
    versions = sorted(path.name for path in (MIGRATIONS_DIR / "versions").glob("*.py"))
    assert versions == ["0001_initial_schema.py", "0002_lookup_indexes.py", "0003_job_runner_and_uploads.py"]


# ---------------------------------------------------------------------------------------------
# Revision 0003: jobs.runner and uploads


def trigger_names(db_path: Path) -> set[str]:
    with sqlite3.connect(db_path) as connection:
        return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}


def job_columns(db_path: Path) -> list[str]:
    with sqlite3.connect(db_path) as connection:
        return [row[1] for row in connection.execute("PRAGMA table_info(jobs)")]


async def test_upgrade_from_0002_gives_existing_jobs_the_bot_runner(tmp_path: Path) -> None:
    db_path = tmp_path / "easel.sqlite3"
    seed_rows_at_0001(db_path)
    upgrade_database(db_path, revision="0002")
    with sqlite3.connect(db_path) as connection:
        connection.execute(
            "INSERT INTO jobs (owner_id, frontend, request, checkpoint, batch_key, cost, status, attempts,"
            " created_at, started_at) VALUES (43, 'discord', '{\"prompt\": \"dog\"}', 'sd15', 'k', 1, 'running', 0,"
            " 1700000001.0, 1700000002.0)"
        )
    connection.close()

    store = await open_store(db_path)
    try:
        assert current_revision(db_path) == "0003"
        assert store.upgrade_backup is not None and current_revision(store.upgrade_backup) == "0002"
        old = await store.jobs.get(1)
        interrupted = await store.jobs.get(2)
        assert old is not None and (old.runner, old.status) == ("bot", "done")
        assert interrupted is not None and interrupted.runner == "bot"
        # The restarted bot takes the interrupted job over.
        assert await store.jobs.recover_interrupted(max_attempts=3) == ([2], [])
        assert await store.jobs.active_runners() == {"bot"}
        assert await store.uploads.usage(42) == (0, 0)
    finally:
        await store.close()
    # ADD COLUMN, not a table rebuild: the trigger that keeps final statuses final is still there.
    assert "jobs_terminal_status_is_final" in trigger_names(db_path)
    with sqlite3.connect(db_path) as connection:
        with pytest.raises(sqlite3.IntegrityError, match="final"):
            connection.execute("UPDATE jobs SET status = 'queued' WHERE id = 1")
        indexes = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    connection.close()
    assert {"ix_jobs_status_runner", "ix_uploads_owner_last_used", "ix_uploads_last_used"} <= indexes


async def test_downgrade_from_0003_to_0002_keeps_the_jobs(tmp_path: Path) -> None:
    db_path = tmp_path / "easel.sqlite3"
    store = await open_store(db_path)
    try:
        job = await store.jobs.create(owner_id=1, request={"prompt": "x"}, checkpoint="c", batch_key="k",
                                      frontend="cli", runner="cli:h:1:x")
        await store.uploads.add(1, "/data/uploads/a.png", 10)
    finally:
        await store.close()

    config = alembic_config(db_path)
    engine = create_migration_engine(db_path)
    try:
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0002")
            connection.commit()
    finally:
        engine.dispose()
    assert current_revision(db_path) == "0002"
    assert "runner" not in job_columns(db_path)
    assert "uploads" not in table_names(db_path)
    assert "jobs_terminal_status_is_final" in trigger_names(db_path)

    store = await open_store(db_path)  # and up again
    try:
        again = await store.jobs.get(job.id)
        assert again is not None and again.runner == "bot" and again.request == {"prompt": "x"}
    finally:
        await store.close()


# ---------------------------------------------------------------------------------------------
# Busy timeout and retried writes


def hold_write_lock(db_path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection holding the database's write lock (BEGIN EXCLUSIVE) with an
    uncommitted insert; rollback() or close() lets go."""
    holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO settings (key, value) VALUES ('held', '1')")
    return holder


async def test_busy_timeout_is_an_argument_of_the_store(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "easel.sqlite3", busy_timeout_ms=50, write_retry_budget_s=1.5)
    try:
        async with store.engine.connect() as connection:
            assert (await connection.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 50
        assert store.database.write_retry_budget_s == 1.5
    finally:
        await store.close()


async def test_a_write_outlasts_a_lock_held_past_the_busy_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db_path = tmp_path / "easel.sqlite3"
    store = await open_store(db_path, busy_timeout_ms=50)
    holder = hold_write_lock(db_path)
    try:
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, holder.rollback)
        started = loop.time()
        with caplog.at_level(logging.INFO, logger="storage.db"):
            job = await store.jobs.create(owner_id=1, request={}, checkpoint="c", batch_key="k")
        assert loop.time() - started >= 0.45  # it really waited for the lock...
        retries = [record for record in caplog.records if "retrying" in record.getMessage()]
        assert len(retries) >= 2  # ...over several tries of 50 ms each
        assert await store.jobs.get(job.id) == job
        assert await store.settings.get("held") is None
    finally:
        holder.close()
        await store.close()


async def test_a_write_gives_up_when_the_retry_budget_is_spent(tmp_path: Path) -> None:
    db_path = tmp_path / "easel.sqlite3"
    store = await open_store(db_path, busy_timeout_ms=50, write_retry_budget_s=0.4)
    holder = hold_write_lock(db_path)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(OperationalError, match="database is locked"):
            await store.jobs.create(owner_id=1, request={}, checkpoint="c", batch_key="k")
        assert 0.1 <= loop.time() - started < 5.0
    finally:
        holder.close()
    try:
        assert await store.jobs.count_queued() == 0
        await store.jobs.create(owner_id=1, request={}, checkpoint="c", batch_key="k")  # lock gone: works
    finally:
        await store.close()


async def test_reads_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    # WAL: readers see the last commit while another connection holds the write lock, so reads
    # need no retry. A second store opens fresh connections (pragmas included) during the lock.
    db_path = tmp_path / "easel.sqlite3"
    store = await open_store(db_path, busy_timeout_ms=50, write_retry_budget_s=0.2)
    job = await store.jobs.create(owner_id=1, request={}, checkpoint="c", batch_key="k")
    await store.close()
    holder = hold_write_lock(db_path)
    try:
        store = await asyncio.wait_for(open_store(db_path, busy_timeout_ms=50, write_retry_budget_s=0.2), 5)
    except BaseException:
        holder.close()
        raise
    try:
        assert await store.jobs.get(job.id) == job
        assert [record.id for record in await store.jobs.list_queued()] == [job.id]
        assert await store.settings.get("held") is None
        assert await store.uploads.usage(1) == (0, 0)
    finally:
        holder.close()
        await store.close()


async def test_run_write_reruns_the_whole_transaction_after_a_busy_error(store: Store) -> None:
    calls = 0

    async def write(session: AsyncSession) -> int:
        nonlocal calls
        calls += 1
        await session.execute(text("INSERT INTO settings (key, value) VALUES (:key, '1')"), {"key": f"try{calls}"})
        if calls < 3:
            raise sqlite3.OperationalError("database is locked")
        return calls

    assert await store.database.run_write(write) == 3
    # The failed tries rolled back; only the last one's work is kept.
    assert await store.settings.all() == {"try3": 1}


async def test_run_write_does_not_retry_other_errors(store: Store) -> None:
    calls = 0

    async def write(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        await session.execute(text("INSERT INTO no_such_table VALUES (1)"))

    with pytest.raises(OperationalError, match="no such table"):
        await store.database.run_write(write)
    assert calls == 1


def test_busy_errors_are_recognized() -> None:
    assert is_busy_error(sqlite3.OperationalError("database is locked"))
    assert is_busy_error(OperationalError("BEGIN", {}, sqlite3.OperationalError("database is busy")))
    assert not is_busy_error(sqlite3.OperationalError("no such table: x"))
    assert not is_busy_error(sqlite3.IntegrityError("database is locked"))
    assert not is_busy_error(RuntimeError("database is locked"))


def test_every_repository_write_is_retried() -> None:
    # Repositories write only through Database.run_write, never the unretried Database.write.
    source = inspect.getsource(repositories)
    assert ".write()" not in source
    assert "engine.begin" not in source and "engine.connect" not in source


def test_a_current_database_opens_without_alembic(tmp_path):
    """The schema head is known without Alembic, and a current database is opened by a process
    that never imports it (what keeps `easel generate`'s start-up short)."""
    import subprocess
    import sys

    from storage.db import SCHEMA_HEAD, stamped_revision

    db_path = tmp_path / "easel.db"
    assert head_revision(alembic_config(db_path)) == SCHEMA_HEAD
    upgrade_database(db_path)
    assert stamped_revision(db_path) == SCHEMA_HEAD
    probe = ("import sys, asyncio; from storage import open_store\n"
             f"store = asyncio.run(open_store({str(db_path)!r}))\n"
             "print('alembic' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
