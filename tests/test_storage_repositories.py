"""Checkpoints, embeddings, the hash cache, settings, prompt history and uploads on a real SQLite file."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text

from storage import Store, open_store
from storage.models import Base
from storage.records import (
    CheckpointRecord,
    EmbeddingRecord,
    GuildSettings,
    PromptHistoryEntry,
    UploadRecord,
    UserSettings,
)
from storage.repositories import PromptHistoryRepository, fts5_match_expression


@pytest_asyncio.fixture(loop_scope="function")
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await open_store(tmp_path / "easel.sqlite3")
    yield store
    await store.close()


def checkpoint(name: str, **overrides: object) -> CheckpointRecord:
    values: dict[str, object] = {
        "name": name,
        "path": f"/models/{name}.safetensors",
        "format": "safetensors",
        "architecture": "sd15",
        "sha256": "a" * 64,
        "short_hash": "aaaaaaaaaa",
        "size": 2_000_000_000,
        "mtime": 1700000000.5,
    }
    values.update(overrides)
    return CheckpointRecord(**values)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Checkpoints and embeddings


async def test_checkpoint_sync_adds_updates_removes_and_keeps_enabled(store: Store) -> None:
    report = await store.checkpoints.sync([checkpoint("anime"), checkpoint("photo"), checkpoint("old")])
    assert (report.added, report.updated, report.removed) == (("anime", "old", "photo"), (), ())
    assert await store.checkpoints.set_enabled("photo", False) is True

    report = await store.checkpoints.sync(
        [
            checkpoint("anime"),  # unchanged
            checkpoint("photo", sha256="b" * 64, size=123, enabled=True),  # changed file; scan says enabled
            checkpoint("sdxl", format="diffusers", path="/models/sdxl", architecture="sdxl", vae_path="/vae/x"),
        ]
    )
    assert (report.added, report.updated, report.removed) == (("sdxl",), ("photo",), ("old",))
    assert report.changed

    photo = await store.checkpoints.get("photo")
    assert photo is not None
    assert (photo.sha256, photo.size, photo.enabled) == ("b" * 64, 123, False)  # the admin's choice stands
    assert await store.checkpoints.get("old") is None
    assert [record.name for record in await store.checkpoints.list()] == ["anime", "photo", "sdxl"]
    assert [record.name for record in await store.checkpoints.list(enabled_only=True)] == ["anime", "sdxl"]
    sdxl = await store.checkpoints.get("sdxl")
    assert sdxl == checkpoint(
        "sdxl", format="diffusers", path="/models/sdxl", architecture="sdxl", vae_path="/vae/x"
    )
    assert dataclasses.is_dataclass(sdxl) and not isinstance(sdxl, Base)

    assert not (await store.checkpoints.sync(await store.checkpoints.list())).changed
    assert await store.checkpoints.set_enabled("missing", True) is False


async def test_checkpoint_sync_can_add_a_disabled_model_and_rejects_bad_scans(store: Store) -> None:
    await store.checkpoints.sync([checkpoint("hub", format="hub", path="org/model", sha256=None, enabled=False)])
    hub = await store.checkpoints.get("hub")
    assert hub is not None and not hub.enabled and hub.path == "org/model"
    with pytest.raises(ValueError, match="share the name"):
        await store.checkpoints.sync([checkpoint("a"), checkpoint("a", path="/elsewhere")])
    with pytest.raises(ValueError, match="format"):
        await store.checkpoints.sync([checkpoint("a", format="zip")])
    # A rejected scan changes nothing.
    assert [record.name for record in await store.checkpoints.list()] == ["hub"]


async def test_embedding_sync_and_lookup(store: Store) -> None:
    easy = EmbeddingRecord(trigger="easynegative", path=Path("/emb/easynegative.safetensors"),
                           sha256="c" * 64, vectors=8, width=768, status="loaded")
    broken = EmbeddingRecord(trigger="bad", path=Path("/emb/bad.pt"), sha256=None, vectors=None,
                             width=None, status="skipped", skip_reason="pickle files are not loaded")
    report = await store.embeddings.sync([easy, broken])
    assert report.added == ("bad", "easynegative")
    assert await store.embeddings.get("easynegative") == easy
    assert await store.embeddings.list() == [broken, easy]

    changed = dataclasses.replace(easy, vectors=16)
    report = await store.embeddings.sync([changed])
    assert (report.added, report.updated, report.removed) == ((), ("easynegative",), ("bad",))
    assert await store.embeddings.list() == [changed]
    with pytest.raises(ValueError, match="status"):
        await store.embeddings.sync([dataclasses.replace(easy, status="maybe")])


async def test_hash_cache_is_valid_only_for_the_same_size_and_mtime(store: Store) -> None:
    path = Path("/models/a.safetensors")
    assert await store.hash_cache.get(path, 10, 111) is None
    await store.hash_cache.put(path, 10, 111, "d" * 64)
    assert await store.hash_cache.get(path, 10, 111) == "d" * 64
    assert await store.hash_cache.get(str(path), 10, 111) == "d" * 64
    assert await store.hash_cache.get(path, 11, 111) is None
    assert await store.hash_cache.get(path, 10, 112) is None
    await store.hash_cache.put(path, 11, 112, "e" * 64)
    assert await store.hash_cache.get(path, 11, 112) == "e" * 64
    assert await store.hash_cache.get(path, 10, 111) is None


# ---------------------------------------------------------------------------------------------
# Settings


async def test_user_settings_round_trip(store: Store) -> None:
    assert await store.users.get_settings(1) == {}
    empty = await store.users.get(1)
    assert empty == UserSettings(user_id=1, settings={}, created_at=None)

    assert await store.users.update_settings(1, steps=30, sampler="Euler a", size=(512, 768)) == {
        "steps": 30, "sampler": "Euler a", "size": [512, 768]
    }
    assert await store.users.update_settings(1, steps=None, cfg_scale=6.5) == {
        "sampler": "Euler a", "size": [512, 768], "cfg_scale": 6.5
    }
    assert await store.users.get_settings(1) == {"sampler": "Euler a", "size": [512, 768], "cfg_scale": 6.5}
    assert await store.users.get_settings(2) == {}
    record = await store.users.get(1)
    assert record.created_at is not None and record.settings["cfg_scale"] == 6.5

    with pytest.raises(ValueError, match="JSON"):
        await store.users.update_settings(1, bad={1, 2})
    with pytest.raises(ValueError, match="JSON"):
        await store.users.update_settings(1, bad=float("nan"))
    assert await store.users.get_settings(1) == {"sampler": "Euler a", "size": [512, 768], "cfg_scale": 6.5}


async def test_concurrent_settings_updates_do_not_lose_keys(store: Store) -> None:
    await asyncio.gather(*(store.users.update_settings(7, **{f"key{i}": i}) for i in range(10)))
    assert await store.users.get_settings(7) == {f"key{i}": i for i in range(10)}


async def test_guild_settings_round_trip(store: Store) -> None:
    guild_id = 1100000000000000001
    settings = await store.guilds.update_settings(
        guild_id, allowed_channel_ids=[1200000000000000001], banned_words=["gore"], max_queued_per_user=3
    )
    assert settings["allowed_channel_ids"] == [1200000000000000001]
    await store.guilds.update_settings(guild_id, banned_words=None)
    record = await store.guilds.get(guild_id)
    assert isinstance(record, GuildSettings)
    assert record.settings == {"allowed_channel_ids": [1200000000000000001], "max_queued_per_user": 3}
    assert await store.users.get_settings(guild_id) == {}  # users and guilds are separate tables


async def test_global_settings(store: Store) -> None:
    assert await store.settings.get("motd") is None
    assert await store.settings.get("motd", "hello") == "hello"
    await store.settings.set("motd", "be nice")
    await store.settings.set("limits", {"steps": 50})
    await store.settings.set("motd", "be kind")
    assert await store.settings.get("motd") == "be kind"
    assert await store.settings.all() == {"limits": {"steps": 50}, "motd": "be kind"}
    assert await store.settings.delete("motd") is True
    assert await store.settings.delete("motd") is False
    assert await store.settings.all() == {"limits": {"steps": 50}}


# ---------------------------------------------------------------------------------------------
# Prompt history


@pytest.fixture(params=["fts", "like"])
def search_mode(request: pytest.FixtureRequest) -> str:
    return request.param


def history_of(store: Store, search_mode: str) -> PromptHistoryRepository:
    if search_mode == "fts":
        assert store.prompt_history.uses_fts
        return store.prompt_history
    # Same database, searched the way a SQLite without FTS5 would be.
    return PromptHistoryRepository(store.database, use_fts=False)


async def test_history_search_is_per_user_and_newest_first(store: Store, search_mode: str) -> None:
    history = history_of(store, search_mode)
    first = await history.add(user_id=1, guild_id=5, prompt="a cat in a hat", negative_prompt="blurry")
    second = await history.add(user_id=1, prompt="a dog in the snow")
    third = await history.add(user_id=1, prompt="cats playing chess", job_id=None)
    await history.add(user_id=2, prompt="a cat from someone else")
    assert isinstance(first, PromptHistoryEntry) and first.guild_id == 5 and first.negative_prompt == "blurry"

    assert [entry.id for entry in await history.search(1)] == [third.id, second.id, first.id]
    assert [entry.id for entry in await history.search(1, "cat")] == [third.id, first.id]  # prefix: "cats"
    assert [entry.id for entry in await history.search(1, "CAT HAT")] == [first.id]
    assert [entry.id for entry in await history.search(1, "blurry")] == [first.id]  # negatives count
    assert [entry.id for entry in await history.search(1, "cat", limit=1)] == [third.id]
    assert [entry.id for entry in await history.search(1, "cat", limit=1, offset=1)] == [first.id]
    assert await history.search(1, "zebra") == []
    assert await history.count(1) == 3
    assert await history.count(1, "cat") == 2
    assert await history.count(2, "cat") == 1
    assert await history.search(1, "   ") == await history.search(1)


QUERIES_THAT_BREAK_NAIVE_FTS = [
    '"',
    "'",
    'cat"',
    '"cat',
    "AND",
    "OR NOT",
    "cat AND",
    "NEAR(",
    "*",
    "cat*",
    "prompt:",
    "negative_prompt:cat",
    "(masterpiece:1.2)",
    "-cat",
    "^cat",
    "cat + hat",
    "{prompt}",
    "[x]",
    "100%",
    "a_b",
    "\\",
    "😀",
    "\x00",
]


async def test_history_search_never_fails_on_odd_queries(store: Store, search_mode: str) -> None:
    history = history_of(store, search_mode)
    entry = await history.add(user_id=1, prompt='a cat, (masterpiece:1.2), "quoted" 100% a_b {prompt}')
    await history.add(user_id=1, prompt="something else entirely")
    for query in QUERIES_THAT_BREAK_NAIVE_FTS:
        entries = await history.search(1, query)
        assert await history.count(1, query) == len(entries), query
    # Words taken literally, not as operators or column filters.
    for query in ["(masterpiece:1.2)", "100%", "a_b", "{prompt}", '"quoted"', "cat,"]:
        assert [found.id for found in await history.search(1, query)] == [entry.id], query
    for query in ["OR NOT", "negative_prompt:cat", "😀"]:
        assert await history.search(1, query) == [], query


async def test_history_search_finds_text_with_punctuation_and_quotes(store: Store, search_mode: str) -> None:
    history = history_of(store, search_mode)
    wanted = await history.add(user_id=1, prompt='portrait, (masterpiece:1.2), "golden hour", cat\'s eyes')
    await history.add(user_id=1, prompt="landscape, mountains")
    for query in ["(masterpiece:1.2)", '"golden hour"', "golden", "cat's", "masterpiece", "portrait,"]:
        assert [entry.id for entry in await history.search(1, query)] == [wanted.id], query


def test_fts5_match_expression_quotes_every_word() -> None:
    assert fts5_match_expression("cat hat") == '"cat"* "hat"*'
    assert fts5_match_expression('say "hi"') == '"say"* """hi"""*'
    assert fts5_match_expression("a OR b") == '"a"* "OR"* "b"*'
    assert fts5_match_expression("( ) * :") is None
    assert fts5_match_expression("   ") is None


async def test_fts_index_follows_updates_and_deletes(store: Store) -> None:
    entry = await store.prompt_history.add(user_id=1, prompt="a red fox")
    async with store.engine.begin() as connection:
        await connection.execute(text("UPDATE prompt_history SET prompt = 'a grey wolf' WHERE id = :id"),
                                 {"id": entry.id})
    assert await store.prompt_history.search(1, "fox") == []
    assert [found.prompt for found in await store.prompt_history.search(1, "wolf")] == ["a grey wolf"]
    assert await store.prompt_history.clear(1) == 1
    assert await store.prompt_history.search(1, "wolf") == []
    async with store.engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT count(*) FROM prompt_history_fts WHERE prompt_history_fts MATCH 'wolf'")
        )
        assert rows.scalar() == 0


async def test_history_can_be_limited_to_one_guild(store):
    await store.prompt_history.add(user_id=1, guild_id=10, prompt="a red cat in guild ten")
    await store.prompt_history.add(user_id=1, guild_id=20, prompt="a red dog in guild twenty")
    assert [e.guild_id for e in await store.prompt_history.search(1, "red", guild_id=10)] == [10]
    assert await store.prompt_history.count(1, "red", guild_id=20) == 1
    assert await store.prompt_history.count(1, "red") == 2


# ---------------------------------------------------------------------------------------------
# Per-owner trimming of keyed settings (/info drafts)


def draft(owner_id: int, created_at: str | None, **extra: object) -> dict[str, object]:
    value: dict[str, object] = {"owner_id": owner_id, "given": {"prompt": "a cat"}, **extra}
    if created_at is not None:
        value["created_at"] = created_at
    return value


async def test_trim_owner_keeps_the_newest_of_that_owner(store: Store) -> None:
    await store.settings.set("draft:a", draft(1, "2026-01-01T10:00:00+00:00"))
    await store.settings.set("draft:b", draft(1, "2026-01-03T10:00:00+00:00"))
    await store.settings.set("draft:c", draft(1, "2026-01-02T10:00:00.500000+00:00"))
    await store.settings.set("draft:d", draft(1, "2026-01-02T10:00:00+00:00"))
    await store.settings.set("draft:e", draft(1, None))  # no created_at: counts as oldest
    await store.settings.set("draft:f", draft(2, "2025-01-01T00:00:00+00:00"))  # another owner
    await store.settings.set("other:g", draft(1, "2020-01-01T00:00:00+00:00"))  # another prefix
    await store.settings.set("DRAFT:h", draft(1, "2020-01-01T00:00:00+00:00"))  # the prefix is case-sensitive
    await store.settings.set("draft_count", 3)  # not a JSON object

    assert await store.settings.trim_owner("draft:", 1, 2) == 3
    assert sorted(await store.settings.all()) == ["DRAFT:h", "draft:b", "draft:c", "draft:f", "draft_count", "other:g"]
    assert await store.settings.trim_owner("draft:", 1, 2) == 0
    assert await store.settings.trim_owner("draft:", 1, 5) == 0
    assert await store.settings.trim_owner("draft:", 2, 0) == 1
    assert await store.settings.get("draft:f") is None
    with pytest.raises(ValueError):
        await store.settings.trim_owner("draft:", 1, -1)


async def test_trim_owner_takes_the_prefix_literally(store: Store) -> None:
    await store.settings.set("d%_x", draft(1, "2026-01-01T00:00:00+00:00"))
    await store.settings.set("dzzx", draft(1, "2026-01-02T00:00:00+00:00"))
    assert await store.settings.trim_owner("d%_", 1, 0) == 1
    assert sorted(await store.settings.all()) == ["dzzx"]


# ---------------------------------------------------------------------------------------------
# Uploads


async def set_last_used(store: Store, path: str, when: datetime) -> None:
    async with store.engine.begin() as connection:
        await connection.execute(
            text("UPDATE uploads SET last_used_at = :when WHERE path = :path"), {"when": when.timestamp(), "path": path}
        )


async def job_using(store: Store, status: str, **request: object) -> None:
    job = await store.jobs.create(owner_id=9, request={"prompt": "x", **request}, checkpoint="c", batch_key="k")
    if status in ("running", "done"):
        await store.jobs.start(job.id)
    if status == "done":
        await store.jobs.finish(job.id)
    if status == "canceled":
        await store.jobs.cancel(job.id)


async def test_upload_add_records_and_touches(store: Store) -> None:
    before = datetime.now(UTC)
    first = await store.uploads.add(1, Path("/data/uploads/a.png"), 1000)
    assert isinstance(first, UploadRecord) and dataclasses.is_dataclass(first)
    assert (first.owner_id, first.path, first.bytes) == (1, Path("/data/uploads/a.png"), 1000)
    assert first.created_at == first.last_used_at
    assert before - timedelta(seconds=1) <= first.created_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert first.created_at.utcoffset() == timedelta(0)

    await set_last_used(store, "/data/uploads/a.png", datetime(2020, 1, 1, tzinfo=UTC))
    again = await store.uploads.add(2, "/data/uploads/a.png", 5)  # the same file again
    assert (again.id, again.owner_id, again.bytes, again.created_at) == (first.id, 1, 1000, first.created_at)
    assert again.last_used_at > datetime(2020, 1, 1, tzinfo=UTC)
    assert again.last_used_at >= first.last_used_at
    with pytest.raises(ValueError):
        await store.uploads.add(1, "/data/uploads/b.png", -1)


async def test_upload_usage(store: Store) -> None:
    assert await store.uploads.usage(1) == (0, 0)
    await store.uploads.add(1, "/u/a.png", 1000)
    await store.uploads.add(1, "/u/b.png", 234)
    await store.uploads.add(1, "/u/b.png", 234)
    await store.uploads.add(2, "/u/c.png", 7)
    assert await store.uploads.usage(1) == (2, 1234)
    assert await store.uploads.usage(2) == (1, 7)


async def test_upload_oldest_leaves_out_files_active_jobs_use(store: Store) -> None:
    day = datetime(2026, 1, 1, tzinfo=UTC)
    for i, name in enumerate(["init_q", "mask_r", "init_done", "free1", "free2", "init_canceled"]):
        await store.uploads.add(1, f"/u/{name}.png", 10)
        await set_last_used(store, f"/u/{name}.png", day + timedelta(hours=i))
    await store.uploads.add(2, "/u/theirs.png", 10)
    await set_last_used(store, "/u/theirs.png", day - timedelta(days=1))
    await job_using(store, "queued", init_image="/u/init_q.png")
    await job_using(store, "running", init_image="/u/other.png", mask="/u/mask_r.png")
    await job_using(store, "done", init_image="/u/init_done.png")
    await job_using(store, "canceled", init_image="/u/init_canceled.png")

    oldest = await store.uploads.oldest(1, 10)
    assert [upload.path.name for upload in oldest] == ["init_done.png", "free1.png", "free2.png", "init_canceled.png"]
    assert [upload.path.name for upload in await store.uploads.oldest(1, 2)] == ["init_done.png", "free1.png"]
    assert await store.uploads.oldest(3, 10) == []
    with pytest.raises(ValueError):
        await store.uploads.oldest(1, -1)


async def test_upload_stale_and_remove(store: Store) -> None:
    day = datetime(2026, 1, 1, tzinfo=UTC)
    for i, (owner, name) in enumerate([(1, "old"), (2, "old_in_use"), (2, "old2"), (1, "new")]):
        await store.uploads.add(owner, f"/u/{name}.png", 10)
        await set_last_used(store, f"/u/{name}.png", day + timedelta(days=i))
    await job_using(store, "queued", init_image="/u/x.png", mask="/u/old_in_use.png")

    stale = await store.uploads.stale(day + timedelta(days=3))
    assert [(upload.owner_id, upload.path.name) for upload in stale] == [(1, "old.png"), (2, "old2.png")]
    assert await store.uploads.stale(day) == []
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.uploads.stale(datetime(2026, 1, 1))

    assert await store.uploads.remove([upload.path for upload in stale] + ["/u/never.png"]) == 2
    assert await store.uploads.remove([]) == 0
    assert await store.uploads.usage(1) == (1, 10)
    assert await store.uploads.usage(2) == (1, 10)
    assert [upload.path.name for upload in await store.uploads.stale(day + timedelta(days=10))] == ["new.png"]
