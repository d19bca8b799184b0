"""The job queue as rows: guarded transitions, final statuses, crash recovery, images."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from storage import QueueCapReached, QueueCaps, Store, open_store
from storage.models import Base
from storage.records import ImageRecord, JobRecord, NewImage


@pytest_asyncio.fixture(loop_scope="function")
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await open_store(tmp_path / "easel.sqlite3")
    yield store
    await store.close()


async def new_job(store: Store, *, owner_id: int = 1, guild_id: int | None = 10, **overrides: object) -> JobRecord:
    arguments: dict[str, object] = {
        "owner_id": owner_id,
        "guild_id": guild_id,
        "channel_id": 20,
        "request": {"prompt": "a cat", "steps": 20, "size": (512, 512)},
        "checkpoint": "sd15",
        "batch_key": "sd15:512x512:20",
    }
    arguments.update(overrides)
    return await store.jobs.create(**arguments)  # type: ignore[arg-type]


async def set_status_raw(store: Store, job_id: int, status: str, **columns: object) -> None:
    assignments = ", ".join(f"{name} = :{name}" for name in ["status", *columns])
    async with store.engine.begin() as connection:
        await connection.execute(
            text(f"UPDATE jobs SET {assignments} WHERE id = :id"), {"id": job_id, "status": status, **columns}
        )


# ---------------------------------------------------------------------------------------------
# Records


async def test_create_returns_a_frozen_record_equal_to_get(store: Store) -> None:
    created_before = datetime.now(UTC)
    job = await new_job(
        store,
        application_id=99,
        interaction_token="secret-token",
        interaction_created_at=datetime(2025, 5, 1, 12, 0, tzinfo=UTC),
    )
    assert await store.jobs.get(job.id) == job
    assert dataclasses.is_dataclass(job) and not isinstance(job, Base)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.status = "done"  # type: ignore[misc]
    assert job.status == "queued" and job.attempts == 0 and job.frontend == "discord"
    assert job.request == {"prompt": "a cat", "steps": 20, "size": [512, 512]}
    assert job.created_at.tzinfo is not None and job.created_at.utcoffset() == timedelta(0)
    assert created_before - timedelta(seconds=1) <= job.created_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert job.interaction_created_at == datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    assert "secret-token" not in repr(job)
    assert await store.jobs.get(job.id + 1000) is None


async def test_create_rejects_bad_input(store: Store) -> None:
    with pytest.raises(ValueError, match="frontend"):
        await new_job(store, frontend="irc")
    with pytest.raises(ValueError, match="JSON"):
        await new_job(store, request={"prompt": object()})
    with pytest.raises(ValueError, match="timezone-aware"):
        await new_job(store, interaction_created_at=datetime(2025, 1, 1))


async def test_job_ids_are_never_reused(store: Store) -> None:
    first = await new_job(store)
    async with store.engine.begin() as connection:
        await connection.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": first.id})
    second = await new_job(store)
    assert second.id > first.id


# ---------------------------------------------------------------------------------------------
# Transitions


async def test_transitions_are_guarded_by_the_current_status(store: Store) -> None:
    job = await new_job(store)
    assert await store.jobs.finish(job.id) is False  # not running yet
    assert await store.jobs.start(job.id) is True
    assert await store.jobs.start(job.id) is False  # already running
    running = await store.jobs.get(job.id)
    assert running is not None and running.status == "running" and running.started_at is not None
    assert running.finished_at is None
    assert await store.jobs.finish(job.id) is True
    done = await store.jobs.get(job.id)
    assert done is not None and done.status == "done" and done.finished_at is not None
    assert done.finished_at >= running.started_at
    assert await store.jobs.start(999_999) is False


async def test_transition_sets_fields_and_stamps_finish_time(store: Store) -> None:
    job = await new_job(store)
    assert await store.jobs.transition(job.id, from_status="queued", to_status="failed", error="no such model")
    failed = await store.jobs.get(job.id)
    assert failed is not None
    assert (failed.status, failed.error) == ("failed", "no such model")
    assert failed.finished_at is not None


async def test_terminal_statuses_never_change(store: Store) -> None:
    done = await new_job(store)
    await store.jobs.start(done.id)
    await store.jobs.finish(done.id)
    canceled = await new_job(store)
    assert await store.jobs.cancel(canceled.id, canceled_by=5) is True

    for job_id in (done.id, canceled.id):
        before = await store.jobs.get(job_id)
        assert await store.jobs.cancel(job_id, canceled_by=6) is False
        assert await store.jobs.fail(job_id, "late error") is False
        assert await store.jobs.start(job_id) is False
        assert await store.jobs.finish(job_id) is False
        assert await store.jobs.get(job_id) == before
    with pytest.raises(ValueError, match="terminal"):
        await store.jobs.transition(done.id, from_status={"done"}, to_status="queued")
    record = await store.jobs.get(canceled.id)
    assert record is not None and record.canceled_by == 5


async def test_the_database_itself_refuses_to_change_a_final_status(store: Store) -> None:
    job = await new_job(store)
    await store.jobs.start(job.id)
    await store.jobs.fail(job.id, "out of memory")
    for status in ("queued", "running", "done", "canceled"):
        with pytest.raises(IntegrityError, match="job status is final"):
            await set_status_raw(store, job.id, status)
    # Writing the same status, or other columns, is still allowed (e.g. the posted message id).
    await set_status_raw(store, job.id, "failed")
    assert await store.jobs.set_response_message(job.id, 777) is True
    record = await store.jobs.get(job.id)
    assert record is not None and (record.status, record.response_message_id) == ("failed", 777)


async def test_transition_rejects_unknown_statuses_and_fields(store: Store) -> None:
    job = await new_job(store)
    with pytest.raises(ValueError, match="unknown job status"):
        await store.jobs.transition(job.id, from_status={"queued"}, to_status="paused")
    with pytest.raises(ValueError, match="unknown job status"):
        await store.jobs.transition(job.id, from_status={"waiting"}, to_status="running")
    with pytest.raises(TypeError, match="owner_id"):
        await store.jobs.transition(job.id, from_status={"queued"}, to_status="running", owner_id=2)
    record = await store.jobs.get(job.id)
    assert record is not None and record.status == "queued"


async def test_only_one_of_twenty_concurrent_starts_wins(store: Store) -> None:
    job = await new_job(store)
    results = await asyncio.gather(*(store.jobs.start(job.id) for _ in range(20)))
    assert results.count(True) == 1
    record = await store.jobs.get(job.id)
    assert record is not None and record.status == "running"


async def test_concurrent_cancel_and_fail_of_a_running_job_pick_one_outcome(store: Store) -> None:
    job = await new_job(store)
    await store.jobs.start(job.id)
    attempts = [store.jobs.cancel(job.id, canceled_by=i) for i in range(10)]
    attempts += [store.jobs.fail(job.id, f"error {i}") for i in range(10)]
    results = await asyncio.gather(*attempts)
    assert results.count(True) == 1
    record = await store.jobs.get(job.id)
    assert record is not None
    winner = results.index(True)
    if winner < 10:
        assert (record.status, record.canceled_by, record.error) == ("canceled", winner, None)
    else:
        assert (record.status, record.error) == ("failed", f"error {winner - 10}")


# ---------------------------------------------------------------------------------------------
# Crash recovery


async def test_recover_interrupted_requeues_and_gives_up_at_the_limit(store: Store) -> None:
    fresh = await new_job(store)
    retried = await new_job(store)
    waiting = await new_job(store)
    finished = await new_job(store)
    for job in (fresh, retried, finished):
        await store.jobs.start(job.id)
    await set_status_raw(store, retried.id, "running", attempts=1)
    await store.jobs.finish(finished.id)

    requeued, failed = await store.jobs.recover_interrupted(max_attempts=2)
    assert (requeued, failed) == ([fresh.id], [retried.id])

    requeued_job = await store.jobs.get(fresh.id)
    assert requeued_job is not None
    assert (requeued_job.status, requeued_job.attempts, requeued_job.started_at) == ("queued", 1, None)
    failed_job = await store.jobs.get(retried.id)
    assert failed_job is not None
    assert (failed_job.status, failed_job.attempts, failed_job.error) == ("failed", 2, "interrupted 2 times")
    assert failed_job.finished_at is not None
    waiting_job = await store.jobs.get(waiting.id)
    assert waiting_job is not None and (waiting_job.status, waiting_job.attempts) == ("queued", 0)
    finished_job = await store.jobs.get(finished.id)
    assert finished_job is not None and finished_job.status == "done"

    # Nothing is running any more, so a second pass changes nothing.
    assert await store.jobs.recover_interrupted(max_attempts=2) == ([], [])

    # Interrupted again: the requeued job has now used up both attempts.
    await store.jobs.start(fresh.id)
    assert await store.jobs.recover_interrupted(max_attempts=2) == ([], [fresh.id])


async def test_recover_interrupted_with_one_attempt_never_retries(store: Store) -> None:
    job = await new_job(store)
    await store.jobs.start(job.id)
    assert await store.jobs.recover_interrupted(max_attempts=1) == ([], [job.id])
    record = await store.jobs.get(job.id)
    assert record is not None and record.error == "interrupted 1 times"
    with pytest.raises(ValueError):
        await store.jobs.recover_interrupted(max_attempts=0)


# ---------------------------------------------------------------------------------------------
# Queries


async def test_list_and_count_queued(store: Store) -> None:
    a = await new_job(store, owner_id=1, guild_id=10)
    b = await new_job(store, owner_id=2, guild_id=10)
    c = await new_job(store, owner_id=1, guild_id=None, frontend="cli", channel_id=None)
    d = await new_job(store, owner_id=1, guild_id=11)
    await store.jobs.start(a.id)
    await store.jobs.cancel(d.id)

    assert [job.id for job in await store.jobs.list_queued()] == [b.id, c.id]
    assert await store.jobs.count_queued() == 2
    assert await store.jobs.count_queued(owner_id=1) == 1
    assert await store.jobs.count_queued(owner_id=1, include_running=True) == 2
    assert await store.jobs.count_queued(guild_id=10) == 1
    assert await store.jobs.count_queued(guild_id=10, include_running=True) == 2
    assert await store.jobs.count_queued(owner_id=2, guild_id=11) == 0


async def test_list_for_owner_is_newest_first_and_filters(store: Store) -> None:
    jobs = [await new_job(store, owner_id=1) for _ in range(4)]
    await new_job(store, owner_id=2)
    await store.jobs.cancel(jobs[1].id)
    assert [job.id for job in await store.jobs.list_for_owner(1)] == [job.id for job in reversed(jobs)]
    assert [job.id for job in await store.jobs.list_for_owner(1, limit=2)] == [jobs[3].id, jobs[2].id]
    assert [job.id for job in await store.jobs.list_for_owner(1, statuses={"canceled"})] == [jobs[1].id]
    assert [job.id for job in await store.jobs.list_for_owner(1, statuses="queued", limit=1)] == [jobs[3].id]


async def test_set_response_message(store: Store) -> None:
    job = await new_job(store)
    assert await store.jobs.set_response_message(job.id, 123456789012345678) is True
    record = await store.jobs.get(job.id)
    assert record is not None and record.response_message_id == 123456789012345678
    assert await store.jobs.set_response_message(job.id + 50, 1) is False


# ---------------------------------------------------------------------------------------------
# Images


def image(index: int, **overrides: object) -> NewImage:
    values: dict[str, object] = {
        "index": index,
        "seed": 1000 + index,
        "path": Path(f"/out/{index}.png"),
        "sha256": f"{index:064x}",
        "width": 512,
        "height": 768,
        "bytes": 4096,
        "infotext": f"a cat\nSteps: 20, Seed: {1000 + index}",
    }
    values.update(overrides)
    return NewImage(**values)  # type: ignore[arg-type]


async def test_images_round_trip_and_lookup_by_message(store: Store) -> None:
    job = await new_job(store)
    other = await new_job(store)
    added = await store.images.add_many(job.id, [image(1), image(0)])
    assert [record.index for record in added] == [0, 1]
    assert all(isinstance(record, ImageRecord) and record.job_id == job.id for record in added)
    await store.images.add_many(other.id, [image(0, message_id=5)])

    listed = await store.images.list_for_job(job.id)
    assert listed == added
    assert listed[1].path == Path("/out/1.png") and listed[1].seed == 1001

    assert await store.images.set_message(job.id, 900) == 2
    assert [record.index for record in await store.images.get_by_message(900)] == [0, 1]
    assert await store.images.set_message(job.id, 901, indexes=[1]) == 1
    assert [(r.job_id, r.index) for r in await store.images.get_by_message(901)] == [(job.id, 1)]
    assert await store.images.get_by_message(12345) == []


async def test_image_index_is_unique_per_job(store: Store) -> None:
    job = await new_job(store)
    await store.images.add_many(job.id, [image(0)])
    with pytest.raises(IntegrityError):
        await store.images.add_many(job.id, [image(0)])
    assert len(await store.images.list_for_job(job.id)) == 1


async def test_deleting_a_job_deletes_its_images(store: Store) -> None:
    # Also shows that foreign keys are enforced on the application's connections.
    job = await new_job(store)
    await store.images.add_many(job.id, [image(0), image(1)])
    await store.prompt_history.add(user_id=1, prompt="a cat", job_id=job.id)
    async with store.engine.begin() as connection:
        await connection.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": job.id})
    assert await store.images.list_for_job(job.id) == []
    [entry] = await store.prompt_history.search(1)
    assert entry.job_id is None
    with pytest.raises(IntegrityError):
        await store.images.add_many(424242, [image(0)])


# ---------------------------------------------------------------------------------------------
# Runners: which process runs a job


CLI = "cli:host:4242:ab12cd"


async def test_runner_defaults_to_bot_and_is_kept(store: Store) -> None:
    bot_job = await new_job(store)
    cli_job = await new_job(store, frontend="cli", runner=CLI)
    assert bot_job.runner == "bot"
    assert cli_job.runner == CLI
    assert await store.jobs.get(cli_job.id) == cli_job
    with pytest.raises(ValueError, match="runner"):
        await new_job(store, runner="")


async def test_list_queued_by_runner(store: Store) -> None:
    a = await new_job(store)
    b = await new_job(store, runner=CLI)
    c = await new_job(store)
    d = await new_job(store, runner=CLI)
    await store.jobs.start(d.id)
    assert [job.id for job in await store.jobs.list_queued()] == [a.id, b.id, c.id]
    assert [job.id for job in await store.jobs.list_queued("bot")] == [a.id, c.id]
    assert [job.id for job in await store.jobs.list_queued(runner=CLI)] == [b.id]
    assert await store.jobs.list_queued("cli:gone") == []


async def test_recover_interrupted_touches_only_its_runner(store: Store) -> None:
    bot_job = await new_job(store)
    cli_job = await new_job(store, runner=CLI)
    for job in (bot_job, cli_job):
        await store.jobs.start(job.id)

    # A restarted bot must not take over a live CLI process's job.
    assert await store.jobs.recover_interrupted(max_attempts=3) == ([bot_job.id], [])
    cli_record = await store.jobs.get(cli_job.id)
    assert cli_record is not None and (cli_record.status, cli_record.attempts) == ("running", 0)

    assert await store.jobs.recover_interrupted(1, runner=CLI) == ([], [cli_job.id])
    cli_record = await store.jobs.get(cli_job.id)
    assert cli_record is not None and (cli_record.status, cli_record.error) == ("failed", "interrupted 1 times")
    bot_record = await store.jobs.get(bot_job.id)
    assert bot_record is not None and (bot_record.status, bot_record.attempts) == ("queued", 1)


async def test_active_runners(store: Store) -> None:
    assert await store.jobs.active_runners() == set()
    queued = await new_job(store, runner=CLI)
    running = await new_job(store, runner="cli:other:1:ff")
    await store.jobs.start(running.id)
    finished = await new_job(store, runner="cli:done:2:ee")
    await store.jobs.cancel(finished.id)
    await new_job(store)
    assert await store.jobs.active_runners() == {"bot", CLI, "cli:other:1:ff"}
    await store.jobs.cancel(queued.id)
    assert await store.jobs.active_runners() == {"bot", "cli:other:1:ff"}


async def test_fail_runner_fails_its_queued_and_running_jobs(store: Store) -> None:
    queued = await new_job(store, runner=CLI)
    running = await new_job(store, runner=CLI)
    await store.jobs.start(running.id)
    done = await new_job(store, runner=CLI)
    await store.jobs.start(done.id)
    await store.jobs.finish(done.id)
    other = await new_job(store, runner="bot")

    assert await store.jobs.fail_runner(CLI, "the easel generate process stopped") == [queued.id, running.id]
    for job_id in (queued.id, running.id):
        record = await store.jobs.get(job_id)
        assert record is not None
        assert (record.status, record.error) == ("failed", "the easel generate process stopped")
        assert record.finished_at is not None
    done_record = await store.jobs.get(done.id)
    assert done_record is not None and (done_record.status, done_record.error) == ("done", None)
    other_record = await store.jobs.get(other.id)
    assert other_record is not None and other_record.status == "queued"
    assert await store.jobs.fail_runner(CLI, "again") == []


# ---------------------------------------------------------------------------------------------
# Queue caps, checked in the same transaction as the INSERT


async def test_member_cap_counts_queued_and_running_jobs(store: Store) -> None:
    caps = QueueCaps(per_member=2)
    first = await new_job(store, caps=caps)
    await store.jobs.start(first.id)
    await new_job(store, caps=caps, guild_id=11)  # the member cap spans guilds
    with pytest.raises(QueueCapReached) as caught:
        await new_job(store, caps=caps)
    assert (caught.value.scope, caught.value.count, caught.value.limit) == ("member", 2, 2)
    assert await store.jobs.count_queued(owner_id=1, include_running=True) == 2
    # Another member is not affected; a finished job frees a place.
    await new_job(store, owner_id=2, caps=caps)
    await store.jobs.finish(first.id)
    await new_job(store, caps=caps)


async def test_guild_cap_counts_every_member_of_the_guild(store: Store) -> None:
    caps = QueueCaps(per_member=5, per_guild=2)
    await new_job(store, owner_id=1, guild_id=10, caps=caps)
    await new_job(store, owner_id=2, guild_id=10, caps=caps)
    with pytest.raises(QueueCapReached) as caught:
        await new_job(store, owner_id=3, guild_id=10, caps=caps)
    assert (caught.value.scope, caught.value.count, caught.value.limit) == ("guild", 2, 2)
    # Other guilds, direct messages / the CLI (no guild) and no guild cap are not limited by it.
    await new_job(store, owner_id=3, guild_id=11, caps=caps)
    await new_job(store, owner_id=3, guild_id=None, caps=caps)
    await new_job(store, owner_id=3, guild_id=10, caps=QueueCaps(per_member=5, per_guild=None))
    await new_job(store, owner_id=3, guild_id=10)  # no caps at all


async def test_the_member_cap_is_checked_before_the_guild_cap(store: Store) -> None:
    await new_job(store, owner_id=1, guild_id=10)
    with pytest.raises(QueueCapReached) as caught:
        await new_job(store, owner_id=1, guild_id=10, caps=QueueCaps(per_member=1, per_guild=1))
    assert caught.value.scope == "member"
    assert "limit is 1" in str(caught.value)


def test_queue_caps_are_not_negative() -> None:
    with pytest.raises(ValueError):
        QueueCaps(per_member=-1)
    with pytest.raises(ValueError):
        QueueCaps(per_member=1, per_guild=-1)


@pytest.mark.parametrize("scope", ["member", "guild"])
async def test_twenty_concurrent_creates_cannot_pass_the_cap(store: Store, scope: str) -> None:
    if scope == "member":
        caps, owners = QueueCaps(per_member=5), [1] * 20
    else:
        caps, owners = QueueCaps(per_member=5, per_guild=5), list(range(20))
    results = await asyncio.gather(*(new_job(store, owner_id=owner, caps=caps) for owner in owners),
                                   return_exceptions=True)
    created = [result for result in results if isinstance(result, JobRecord)]
    refused = [result for result in results if isinstance(result, QueueCapReached)]
    assert (len(created), len(refused)) == (5, 15)
    assert {error.scope for error in refused} == {scope}
    assert await store.jobs.count_queued(guild_id=10) == 5


async def test_concurrent_creates_on_two_connections_cannot_pass_the_cap(tmp_path: Path) -> None:
    db_path = tmp_path / "easel.sqlite3"
    first, second = await open_store(db_path), await open_store(db_path)
    try:
        caps = QueueCaps(per_member=5)
        results = await asyncio.gather(*(new_job(store, caps=caps) for _ in range(10) for store in (first, second)),
                                       return_exceptions=True)
        assert sum(isinstance(result, JobRecord) for result in results) == 5
        assert sum(isinstance(result, QueueCapReached) for result in results) == 15
        assert await first.jobs.count_queued(owner_id=1) == 5
        assert await second.jobs.count_queued(owner_id=1) == 5
    finally:
        await first.close()
        await second.close()


def test_storage_does_not_import_generation_or_bot() -> None:
    code = (
        "import sys, storage, storage.errors, storage.repositories\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('generation', 'bot', 'cli'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
