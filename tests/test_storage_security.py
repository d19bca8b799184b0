"""The database file, its -wal/-shm files and upgrade backups are private to their owner (0600)."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import open_store, upgrade_database
from storage.db import secure_file

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


@pytest.fixture(params=[0o022, 0o000, 0o277])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """A permissive umask, none at all, and one that would take the owner's write bit."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def side_files(db_path: Path) -> list[Path]:
    return [Path(f"{db_path}-wal"), Path(f"{db_path}-shm")]


async def test_a_new_database_and_its_wal_files_are_private(tmp_path: Path, umask: int) -> None:
    db_path = tmp_path / "easel.sqlite3"
    store = await open_store(db_path)
    try:
        await store.jobs.create(owner_id=1, request={}, checkpoint="c", batch_key="k")
        for path in (db_path, *side_files(db_path)):
            assert path.exists(), path
            assert mode(path) == 0o600, path
    finally:
        await store.close()
    assert mode(db_path) == 0o600


async def test_an_existing_world_readable_database_is_made_private(tmp_path: Path) -> None:
    db_path = tmp_path / "easel.sqlite3"
    store = await open_store(db_path)
    await store.close()
    os.chmod(db_path, 0o644)
    store = await open_store(db_path)
    try:
        await store.settings.set("k", 1)
        for path in (db_path, *side_files(db_path)):
            assert mode(path) == 0o600, path
    finally:
        await store.close()


async def test_wider_leftover_wal_files_are_made_private(tmp_path: Path) -> None:
    # -wal/-shm left by a crash keep their old mode when SQLite reopens them.
    db_path = tmp_path / "easel.sqlite3"
    upgrade_database(db_path)
    keeper = sqlite3.connect(db_path)  # keeps -wal and -shm in place
    try:
        keeper.execute("INSERT INTO settings (key, value) VALUES ('a', '1')")
        keeper.commit()
        for path in (db_path, *side_files(db_path)):
            os.chmod(path, 0o666)
        store = await open_store(db_path)
        try:
            for path in (db_path, *side_files(db_path)):
                assert mode(path) == 0o600, path
        finally:
            await store.close()
    finally:
        keeper.close()


async def test_upgrade_backups_are_private(tmp_path: Path, umask: int) -> None:
    db_path = tmp_path / "easel.sqlite3"
    upgrade_database(db_path, revision="0002")
    os.chmod(db_path, 0o644)
    store = await open_store(db_path)
    try:
        backup = store.upgrade_backup
        assert backup is not None and backup.exists()
        assert mode(backup) == 0o600
        assert mode(db_path) == 0o600
        for path in side_files(backup):  # journal side files, if the copy left any
            if path.exists():
                assert mode(path) == 0o600
    finally:
        await store.close()


def test_a_failed_upgrade_restores_into_a_private_file(tmp_path: Path) -> None:
    db_path = tmp_path / "easel.sqlite3"
    upgrade_database(db_path, revision="0002")

    def fail(config: object, path: Path, revision: str) -> None:
        os.chmod(path, 0o644)
        raise RuntimeError("boom")

    with pytest.raises(Exception, match="boom"):
        upgrade_database(db_path, run_upgrade=fail)
    assert mode(db_path) == 0o600
    [backup] = tmp_path.glob("easel.sqlite3.bak-*")
    assert mode(backup) == 0o600


def test_secure_file_creates_and_narrows(tmp_path: Path, umask: int) -> None:
    new = tmp_path / "new"
    secure_file(new)
    assert new.read_bytes() == b"" and mode(new) == 0o600
    old = tmp_path / "old"
    old.write_text("keep me")
    os.chmod(old, 0o755)
    secure_file(old)
    assert old.read_text() == "keep me" and mode(old) == 0o600
