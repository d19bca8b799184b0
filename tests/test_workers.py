"""GPU workers on Celery + Redis: a real Redis server, real `easel worker` processes on the tiny model,
the real service and SQLite store. The bot stays the fair scheduler; workers only run batches."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from conftest import make_config, tiny_request
from generation.engine import Engine
from generation.registry import ModelRegistry
from generation.remote import RemoteExecutor
from generation.service import GenerationService, JobCanceled, JobFailed, JobFinished, JobProgress, JobQueued, \
    JobStarted, TERMINAL_EVENTS
from storage import open_store
from workers_support import WorkerProcess, redis_server, wait_for_workers

pytestmark = pytest.mark.timeout(240)


@contextlib.asynccontextmanager
async def bot(models_dir, data_dir, broker_url, **sections):
    """The bot's side: store, registry, engine (never loads a model here), RemoteExecutor, service."""
    sections.setdefault("workers", {}).update(broker_url=broker_url, heartbeat_s=0.2, lease_s=1.5)
    config = make_config(models_dir, data_dir, **sections)
    store = await open_store(config.data_dir / "easel.db")
    registry = ModelRegistry.from_config(config)
    registry.refresh()
    engine = Engine(config=config, registry=registry)
    executor = RemoteExecutor(config, lora_names=lambda request: [use[0] for use in engine.lora_set(request)])
    await executor.start()
    service = GenerationService(config=config, store=store, engine=engine, executor=executor)
    executor.on_change = service.wake
    try:
        yield service
    finally:
        await service.stop()
        await executor.close()
        await store.close()


@contextlib.contextmanager
def workers(names, *, broker_url, models_dir, data_dir, **options):
    started = [WorkerProcess(name, broker_url=broker_url, models_dir=models_dir, data_dir=data_dir, **options)
               for name in names]
    try:
        yield {worker.name: worker for worker in started}
    finally:
        for worker in started:
            worker.stop()


async def events_until_terminal(subscription, count: int, timeout: float = 120) -> list:
    """Every event until `count` jobs had their terminal event."""
    seen, ended = [], 0

    async def run():
        nonlocal ended
        async for event in subscription:
            seen.append(event)
            if isinstance(event, TERMINAL_EVENTS):
                ended += 1
                if ended == count:
                    return
    await asyncio.wait_for(run(), timeout)
    return seen


@pytest.fixture
def broker():
    with redis_server() as url:
        yield url


async def test_two_workers_serve_three_members_in_fair_order(broker, models_dir, tmp_path):
    with workers(["w1", "w2"], broker_url=broker, models_dir=models_dir, data_dir=tmp_path / "workers"):
        async with bot(models_dir, tmp_path / "bot", broker, queue={"max_batch": 1}) as service:
            await wait_for_workers(service.executor, ["w1", "w2"])
            events = service.subscribe()
            jobs = {}
            for owner, count in ((1, 4), (2, 2), (3, 2)):  # member 1 submits first and most
                for index in range(count):
                    record = await service.submit(tiny_request(seed=100 * owner + index, steps=2), owner_id=owner)
                    jobs[record.id] = owner
            await service.start()
            seen = await events_until_terminal(events, len(jobs))
            started = [jobs[event.job_id] for event in seen if isinstance(event, JobStarted)]
            finished = [event for event in seen if isinstance(event, JobFinished)]
            assert len(finished) == len(jobs) == len(set(event.job_id for event in finished))
            assert sorted(started[:3]) == [1, 2, 3]  # one job of each member before member 1's second
            assert started[3:6].count(1) == 1  # then another round, not member 1's backlog
            assert set(service.executor.ran_on[job] for job in jobs) == {"w1", "w2"}
            for job_id in jobs:
                record = await service.store.jobs.get(job_id)
                assert record.status == "done" and record.attempts == 0
                (image,) = await service.store.images.list_for_job(job_id)
                assert image.path.read_bytes().startswith(b"\x89PNG") and "Seed:" in image.infotext


async def test_a_killed_worker_s_job_runs_again_elsewhere_and_is_delivered_once(broker, models_dir, tmp_path):
    with workers(["w1", "w2"], broker_url=broker, models_dir=models_dir, data_dir=tmp_path / "workers") as running:
        async with bot(models_dir, tmp_path / "bot", broker) as service:
            await wait_for_workers(service.executor, ["w1", "w2"])
            await service.start()
            record = await service.submit(tiny_request(seed=7, steps=60, width=512, height=512), owner_id=1)
            events = service.subscribe(record.id)
            seen = []
            async for event in events:
                seen.append(event)
                if isinstance(event, JobProgress) and event.step >= 2:
                    break
            first = service.executor.ran_on[record.id]
            running[first].kill()
            seen += await events_until_terminal(events, 1, timeout=180)
            terminal = [event for event in seen if isinstance(event, TERMINAL_EVENTS)]
            assert [type(event) for event in terminal] == [JobFinished]
            # back in the queue after the lease, then started again on the other worker
            assert [type(event) for event in seen].count(JobStarted) == 2
            assert service.executor.ran_on[record.id] != first
            stored = await service.store.jobs.get(record.id)
            assert stored.status == "done" and stored.attempts == 1
            assert len(await service.store.images.list_for_job(record.id)) == 1


async def test_cancel_reaches_the_worker_within_a_step_and_previews_flow(broker, models_dir, tmp_path):
    with workers(["w1"], broker_url=broker, models_dir=models_dir, data_dir=tmp_path / "workers",
                 config_text="[previews]\nevery_n_steps = 1\n"):
        async with bot(models_dir, tmp_path / "bot", broker) as service:
            await wait_for_workers(service.executor, ["w1"])
            await service.start()
            long = await service.submit(tiny_request(seed=3, steps=60, width=128, height=128), owner_id=1)
            events = service.subscribe(long.id)
            previews = 0
            async for event in events:
                if isinstance(event, JobProgress):
                    previews += event.preview is not None
                    if event.step >= 3:
                        break
            assert previews >= 1
            asked = time.monotonic()
            assert await service.cancel(long.id, by_user_id=1)
            after = await service.submit(tiny_request(seed=4, steps=2), owner_id=2)
            seen = await events_until_terminal(service.subscribe(after.id), 1)
            assert isinstance(seen[-1], JobFinished)
            assert time.monotonic() - asked < 30  # the worker stopped the long job and took the next
            assert (await service.store.jobs.get(long.id)).status == "canceled"


async def test_a_worker_started_later_takes_the_queued_jobs_and_a_restart_loses_nothing(broker, models_dir,
                                                                                       tmp_path):
    async with bot(models_dir, tmp_path / "bot", broker) as service:
        await service.start()
        first = await service.submit(tiny_request(seed=1, steps=60, width=512, height=512), owner_id=1)
        second = await service.submit(tiny_request(seed=2, steps=2), owner_id=2)
        await asyncio.sleep(1.0)
        assert (await service.store.jobs.get(first.id)).status == "queued"  # no worker yet: it waits
        with workers(["late"], broker_url=broker, models_dir=models_dir, data_dir=tmp_path / "workers"):
            async for event in service.subscribe(first.id):
                if isinstance(event, JobProgress):
                    break
            await service.stop()  # the bot goes down while the worker runs the first job
            assert (await service.store.jobs.get(first.id)).status == "running"
            async with bot(models_dir, tmp_path / "bot", broker) as restarted:
                events = restarted.subscribe()
                await restarted.start()
                seen = await events_until_terminal(events, 2, timeout=180)
    finished = {event.job_id for event in seen if isinstance(event, JobFinished)}
    assert finished == {first.id, second.id}
    assert not [event for event in seen if isinstance(event, (JobFailed, JobCanceled))]


async def test_affinity_across_two_workers_loads_fewer_checkpoints(broker, models_dir, tmp_path):
    """Two members, each on their own checkpoint, two workers that keep one pipeline each: with
    affinity each worker settles on one checkpoint; without, they keep swapping."""
    async def loads(prefer: bool, folder: str) -> int:
        names = [f"{folder}-a", f"{folder}-b"]
        with workers(names, broker_url=broker, models_dir=models_dir, data_dir=tmp_path / folder,
                     config_text="[models]\npipeline_cache_size = 1\n"):
            lookahead = 4 if prefer else 0
            async with bot(models_dir, tmp_path / folder, broker,
                           queue={"max_batch": 1, "affinity_lookahead": lookahead, "per_user_queued": 20}) as service:
                service.executor.prefer_loaded = prefer
                await wait_for_workers(service.executor, names)
                events = service.subscribe()
                for index in range(8):
                    for owner, checkpoint in ((1, "tiny"), (2, "tiny.safetensors")):
                        await service.submit(tiny_request(seed=index, steps=2, checkpoint=checkpoint), owner_id=owner)
                await service.start()
                await events_until_terminal(events, 16)
                await service.executor.poll()
                return sum(service.executor.workers[name].loads for name in names)

    with_affinity = await loads(True, "with")
    without = await loads(False, "without")
    assert with_affinity < without


async def test_a_model_no_live_worker_has_fails_with_a_clear_reason(broker, models_dir, tmp_path):
    partial = tmp_path / "partial-models"
    (partial / "checkpoints").mkdir(parents=True)
    (partial / "checkpoints" / "tiny").symlink_to(models_dir / "checkpoints" / "tiny")
    with workers(["w1"], broker_url=broker, models_dir=partial, data_dir=tmp_path / "workers"):
        async with bot(models_dir, tmp_path / "bot", broker) as service:
            await wait_for_workers(service.executor, ["w1"])
            await service.start()
            events = service.subscribe()  # first: the missing one may fail while the second is submitted
            missing = await service.submit(tiny_request(seed=1, steps=2, checkpoint="tiny.safetensors"), owner_id=1)
            present = await service.submit(tiny_request(seed=2, steps=2, checkpoint="tiny"), owner_id=2)
            seen = await events_until_terminal(events, 2)
            by_job = {event.job_id: event for event in seen if isinstance(event, TERMINAL_EVENTS)}
            assert isinstance(by_job[present.id], JobFinished)
            assert isinstance(by_job[missing.id], JobFailed)
            assert "no GPU worker has checkpoint 'tiny.safetensors'" in by_job[missing.id].reason


async def test_admin_workers_and_metrics_show_the_pool(broker, models_dir, tmp_path):
    """/admin workers on the fake Discord and /metrics over HTTP, with one real worker."""
    import aiohttp

    from discord_support import easel_on_fake_discord
    from workers_support import free_port

    port = free_port()
    with workers(["shown"], broker_url=broker, models_dir=models_dir, data_dir=tmp_path / "workers"):
        async with easel_on_fake_discord(models_dir, tmp_path / "bot", metrics={"port": port},
                                         workers={"broker_url": broker, "heartbeat_s": 0.2, "lease_s": 1.5}) as env:
            await wait_for_workers(env.app.service.executor, ["shown"])
            done = await env.fake.invoke_command("imagine", {"prompt": "a cat", "steps": 2}, user=env.alice,
                                                 guild=env.guild, channel=env.channel)
            await done.wait_for_reply(lambda m: bool(m.attachments), timeout=60)
            shown = await env.fake.invoke_command("admin", {}, subcommand="workers", user=env.mod, guild=env.guild,
                                                  channel=env.channel)
            message = await shown.wait_for_reply(lambda m: bool(m.embeds))
            text = message.embeds[0]["title"] + message.embeds[0]["description"]
            assert "GPU workers (1, 0 busy)" in text and "**shown** 🟢 idle on cpu · tiny" in text
            await asyncio.sleep(1.2)  # one observation of the pool
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    body = await response.text()
            assert 'easel_worker_up{worker="shown"} 1.0' in body
            assert 'easel_jobs_total{status="finished"} 1.0' in body
