"""The queue service on the real store, executor and tiny model: lifecycle, fairness, caps, cancel, batching."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_request
from generation.engine import Engine
from generation.infotext import read_infotext
from generation.pipelines import DeviceSpec, PipelineCache
from generation.service import (JobCanceled, JobFinished, JobProgress, JobQueued, JobStarted,
                                NotAllowed, QueueLimitReached, ReplyTarget)


async def collect_until_done(subscription, timeout=60):
    events = []
    async def run():
        async for event in subscription:
            events.append(event)
    await asyncio.wait_for(run(), timeout)
    return events


async def test_submit_runs_to_finished_with_files_rows_and_events(make_service):
    service = await make_service()
    record = await service.submit(tiny_request(seed=-1, count=2), owner_id=1, target=ReplyTarget(frontend="cli"))
    assert record.status == "queued" and record.request["seed"] >= 0  # seed fixed at submit: reruns match
    events = await collect_until_done(service.subscribe(record.id))
    kinds = [type(e) for e in events]
    assert JobStarted in kinds and JobProgress in kinds and kinds[-1] is JobFinished
    finished = events[-1]
    assert [image.seed for image in finished.images] == [record.request["seed"], record.request["seed"] + 1]
    for image in finished.images:
        data = image.path.read_bytes()
        assert "Steps: 4" in read_infotext(data)
    stored = await service.store.jobs.get(record.id)
    assert stored.status == "done"
    assert len(await service.store.images.list_for_job(record.id)) == 2
    history = await service.history(1, "red")
    assert [entry.prompt for entry in history] == ["a red cat"]


async def test_light_user_is_served_before_a_heavy_backlog(make_service):
    service = await make_service(start=False)
    heavy = [await service.submit(tiny_request(seed=i, prompt=f"heavy {i}"), owner_id=1) for i in range(5)]
    light = await service.submit(tiny_request(seed=99, prompt="light"), owner_id=2)
    assert service.position(light.id) == 2
    listener = service.subscribe()
    await service.start()
    await service.wait_idle()
    order = []
    while not listener.queue.empty():
        event = listener.queue.get_nowait()
        if isinstance(event, JobFinished):
            order.append(event.job_id)
    assert order.index(light.id) <= 1  # second at worst (it may share the first batch)
    assert len(order) == 6


async def test_caps_refuse_with_the_limit(make_service):
    service = await make_service(start=False, queue={"per_user_queued": 2, "per_guild_queued": 3})
    target = ReplyTarget(frontend="discord", guild_id=10, channel_id=11)
    await service.submit(tiny_request(), owner_id=1, target=target)
    await service.submit(tiny_request(), owner_id=1, target=target)
    with pytest.raises(QueueLimitReached, match="you already have 2 jobs waiting; the limit is 2"):
        await service.submit(tiny_request(), owner_id=1, target=target)
    await service.submit(tiny_request(), owner_id=2, target=target)
    with pytest.raises(QueueLimitReached, match="this server already has 3 jobs waiting; the limit is 3"):
        await service.submit(tiny_request(), owner_id=3, target=target)
    await service.store.guilds.update_settings(20, max_queued_per_member=1)
    other = ReplyTarget(frontend="discord", guild_id=20, channel_id=21)
    await service.submit(tiny_request(), owner_id=5, target=other)
    with pytest.raises(QueueLimitReached, match="the limit is 1"):
        await service.submit(tiny_request(), owner_id=5, target=other)


async def test_cancel_queued_and_running(make_service):
    service = await make_service(start=False)
    running = await service.submit(tiny_request(steps=40, width=128, height=128), owner_id=1)
    queued = await service.submit(tiny_request(seed=5), owner_id=1)
    with pytest.raises(NotAllowed, match="only the member who asked for it or a moderator"):
        await service.cancel(queued.id, by_user_id=2)
    assert await service.cancel(queued.id, by_user_id=1)
    assert (await service.store.jobs.get(queued.id)).status == "canceled"
    assert queued.id not in [job.job_id for job in service.queued_jobs()]

    events = service.subscribe(running.id)
    await service.start()
    async for event in events:
        if isinstance(event, JobProgress) and event.step >= 2:
            assert await service.cancel(running.id, by_user_id=99, moderator=True)
        if isinstance(event, JobCanceled):
            assert event.reason == "canceled by a moderator"
    await service.wait_idle()
    record = await service.store.jobs.get(running.id)
    assert record.status == "canceled" and record.canceled_by == 99
    assert await service.store.images.list_for_job(running.id) == []
    assert not await service.cancel(running.id, by_user_id=1)  # terminal: nothing changes


async def test_compatible_jobs_of_different_users_batch_and_match_alone(make_service, engine):
    service = await make_service(start=False)
    requests = [tiny_request(prompt=f"prompt {i}", seed=100 + i) for i in range(3)]
    records = [await service.submit(r, owner_id=i + 1) for i, r in enumerate(requests)]
    odd = await service.submit(tiny_request(steps=5, seed=7), owner_id=9)  # different steps: not batchable
    listener = service.subscribe()
    await service.start()
    await service.wait_idle()
    assert sorted(map(len, service.executor.batches)) == [1, 3]
    finished = {}
    while not listener.queue.empty():
        event = listener.queue.get_nowait()
        if isinstance(event, JobFinished):
            finished[event.job_id] = event.images
    assert set(finished) == {r.id for r in records} | {odd.id}
    for record, request in zip(records, requests):
        alone = engine.generate(request)[0].image
        got = Image.open(finished[record.id][0].path)
        assert np.abs(np.asarray(got, dtype=int) - np.asarray(alone, dtype=int)).max() <= 1


async def test_many_users_submit_concurrently_each_done_once(make_service):
    service = await make_service(queue={"per_user_queued": 10})
    records = await asyncio.gather(*[service.submit(tiny_request(seed=i, steps=2), owner_id=i % 7) for i in range(21)])
    assert len({r.id for r in records}) == 21
    await service.wait_idle(timeout=120)
    for record in records:
        assert (await service.store.jobs.get(record.id)).status == "done"
        assert len(await service.store.images.list_for_job(record.id)) == 1


async def test_positions_are_published_when_they_change(make_service):
    service = await make_service(start=False)
    a = await service.submit(tiny_request(seed=1), owner_id=1)
    b = await service.submit(tiny_request(seed=2), owner_id=1)
    listener = service.subscribe(b.id)
    c = await service.submit(tiny_request(seed=3), owner_id=2)  # overtakes b: b moves from 2 to 3
    assert service.position(b.id) == 3 and service.position(c.id) == 2  # exact at once
    event = await asyncio.wait_for(listener.queue.get(), 5)
    assert event == JobQueued(b.id, 3)  # announced once, coalesced: the passing place 2 never went out
    await asyncio.sleep(0.5)
    assert listener.queue.empty()


async def test_restart_rebuilds_the_queue_from_the_database(make_service, tmp_path):
    first = await make_service(start=False)
    records = [await first.submit(tiny_request(seed=i), owner_id=i) for i in range(3)]
    await first.stop()
    second = await make_service()
    await second.wait_idle()
    for record in records:
        assert (await second.store.jobs.get(record.id)).status == "done"


async def test_checkpoint_affinity_cuts_model_loads(make_service, registry, base_config):
    """Two checkpoints interleaved across users, room for one loaded pipeline: affinity loads less."""
    from generation.scheduler import FifoScheduler

    async def loads_with(scheduler_class, lookahead):
        engine = Engine(config=base_config, registry=registry,
                        cache=PipelineCache(capacity=1, device=DeviceSpec.choose("cpu")))
        service = await make_service(start=False, engine=engine, queue={"affinity_lookahead": lookahead,
                                                                        "per_user_queued": 10})
        service._scheduler_class = scheduler_class
        for i in range(8):
            checkpoint = "tiny" if i % 2 == 0 else "tiny.safetensors"
            await service.submit(tiny_request(checkpoint=checkpoint, seed=i, steps=1, prompt=f"p{i}"), owner_id=i % 4)
        await service.start()
        await service.wait_idle()
        return engine.cache.loads

    from generation.scheduler import FairScheduler

    with_affinity = await loads_with(FairScheduler, 4)
    without = await loads_with(FifoScheduler, 0)
    assert with_affinity < without
    assert with_affinity <= 3


async def test_positions_move_up_as_soon_as_a_batch_is_picked(make_service):
    service = await make_service(start=False)
    gate = asyncio.Event()
    original = service._run_batch

    async def held(batch, device):
        await gate.wait()
        await original(batch, device)

    service._run_batch = held
    first = await service.submit(tiny_request(seed=1), owner_id=1)
    second = await service.submit(tiny_request(seed=2), owner_id=1)
    assert (service.position(first.id), service.position(second.id)) == (1, 2)
    await service.start()
    for _ in range(1000):
        if service.position(second.id) == 1:
            break
        await asyncio.sleep(0.01)
    assert (service.position(first.id), service.position(second.id)) == (0, 1)  # picked, not started yet
    gate.set()
    await service.wait_idle()
