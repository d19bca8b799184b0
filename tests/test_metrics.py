"""The Prometheus endpoint on a real service (tiny model, SQLite store), scraped over HTTP and read with
prometheus_client's own parser: job counts and times, queue gauges after a restart, workers, config."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import tiny_request
from generation.config import ConfigError, MetricsConfig, config_from_mapping
from generation.metrics import Metrics, WorkerView
from generation.service import JobCanceled, JobFinished, JobQueued, JobStarted
from storage import open_store


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def value(text: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise KeyError(f"{name}{labels} is not in the scrape")


async def scrape(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}{path}") as response:
            return response.status, response.headers.get("Content-Type", ""), await response.text()


async def scrape_until(port: int, ready, timeout: float = 10.0) -> str:
    """The first scrape for which ready(text) holds (the queue gauges follow the database a moment later)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        _, _, text = await scrape(port)
        if ready(text):
            return text
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the metrics never got there:\n" + text)
        await asyncio.sleep(0.02)


async def test_a_real_service_scraped_over_http(make_service):
    service = await make_service(start=False)
    metrics = Metrics(min_refresh_interval_s=0.0)
    await metrics.seed(service.store, runner=service.runner)
    follower = asyncio.create_task(metrics.follow(service))
    await asyncio.sleep(0)  # subscribed before the first submit
    port = free_port()
    server = await metrics.serve("127.0.0.1", port)
    try:
        assert server.port == port
        jobs = [await service.submit(tiny_request(seed=i, steps=2), owner_id=1) for i in (1, 2)]
        extra = await service.submit(tiny_request(seed=3, steps=2), owner_id=2)
        await scrape_until(port, lambda text: value(text, "easel_queue_length") == 3)
        assert await service.cancel(extra.id, by_user_id=2)  # still queued: the service was not started
        await service.start()
        await service.wait_idle()

        text = await scrape_until(port, lambda text: value(text, "easel_jobs_total", status="finished") == 2
                                  and value(text, "easel_queue_length") == 0
                                  and value(text, "easel_jobs_running") == 0)
        assert value(text, "easel_jobs_total", status="canceled") == 1
        assert value(text, "easel_jobs_total", status="failed") == 0
        assert value(text, "easel_jobs_submitted_total") == 3
        assert value(text, "easel_job_wait_seconds_count") == 2  # the canceled job never started
        assert value(text, "easel_job_run_seconds_count") == 2
        assert value(text, "easel_job_run_seconds_sum") > 0
        assert value(text, "easel_job_run_seconds_bucket", le="+Inf") == 2
        for job in jobs:
            assert (await service.store.jobs.get(job.id)).status == "done"

        status, content_type, _ = await scrape(port)
        assert status == 200 and content_type.startswith("text/plain") and "version=" in content_type
        for path in ("/", "/metrics/x", "/favicon.ico"):
            assert (await scrape(port, path))[0] == 404
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await server.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await scrape(port)  # closed


async def test_seed_after_a_restart_reports_the_stored_queue(make_service):
    service = await make_service(start=False)  # not started: its jobs stay queued
    records = [await service.submit(tiny_request(seed=i, steps=2), owner_id=i) for i in range(3)]
    assert await service.store.jobs.start(records[0].id)  # one running (in another process, say)

    clock = iter([100.0, 104.5, 110.0]).__next__
    metrics = Metrics(clock=clock)
    restarted = await open_store(service.config.data_dir / "easel.db")  # a new process on the same database
    try:
        await metrics.seed(restarted, runner="bot")  # clock: 100.0
    finally:
        await restarted.close()
    text = metrics.render().decode()
    assert value(text, "easel_queue_length") == 2
    assert value(text, "easel_jobs_running") == 1
    assert value(text, "easel_jobs_submitted_total") == 0

    # jobs queued before the restart are not submitted again when their position changes...
    metrics.observe_event(JobQueued(records[1].id, 1))  # clock: 104.5
    # ...and their wait counts from the seed
    metrics.observe_event(JobStarted(records[1].id))  # clock: 110.0
    text = metrics.render().decode()
    assert value(text, "easel_jobs_submitted_total") == 0
    assert value(text, "easel_job_wait_seconds_count") == 1
    assert value(text, "easel_job_wait_seconds_sum") == pytest.approx(10.0)


def test_events_count_each_job_once_and_time_it():
    now = [0.0]
    metrics = Metrics(clock=lambda: now[0])
    metrics.observe_event(JobQueued(7, 1))
    now[0] = 3.0
    metrics.observe_event(JobQueued(7, 2))  # moved: not a new job
    metrics.observe_event(JobStarted(7))
    now[0] = 45.0
    metrics.observe_event(JobFinished(7, ()))
    metrics.observe_event(JobCanceled(7, "late"))  # one final event per job
    text = metrics.render().decode()
    assert value(text, "easel_jobs_submitted_total") == 1
    assert value(text, "easel_jobs_total", status="finished") == 1
    assert value(text, "easel_jobs_total", status="canceled") == 0
    assert value(text, "easel_job_wait_seconds_sum") == 3.0
    assert value(text, "easel_job_run_seconds_sum") == 42.0
    assert value(text, "easel_job_run_seconds_bucket", le="30.0") == 0
    assert value(text, "easel_job_run_seconds_bucket", le="60.0") == 1


def test_workers_accumulate_busy_seconds_and_go_down_when_gone():
    now = [1000.0]
    metrics = Metrics(clock=lambda: now[0])
    metrics.observe_workers([WorkerView("gpu-a", busy=True, device="cuda:0"), WorkerView("gpu-b", busy=False)])
    now[0] = 1010.0
    metrics.observe_workers([WorkerView("gpu-a", busy=True), WorkerView("gpu-b", busy=True)])
    now[0] = 1012.5
    metrics.observe_workers([WorkerView("gpu-a", busy=False)])  # gpu-b is gone
    text = metrics.render().decode()
    assert value(text, "easel_worker_busy_seconds_total", worker="gpu-a") == 12.5
    assert value(text, "easel_worker_busy_seconds_total", worker="gpu-b") == 0  # idle until it vanished
    assert value(text, "easel_worker_up", worker="gpu-a") == 1
    assert value(text, "easel_worker_up", worker="gpu-b") == 0
    metrics.observe_workers([WorkerView("gpu-a", busy=False)], now=1100.0)  # idle: nothing more
    assert value(metrics.render().decode(), "easel_worker_busy_seconds_total", worker="gpu-a") == 12.5


async def test_port_zero_serves_nothing_and_metrics_are_independent():
    first, second = Metrics(), Metrics()  # each its own registry, no clash
    assert await first.serve("127.0.0.1", 0) is None
    first.observe_event(JobQueued(1, 1))
    assert value(first.render().decode(), "easel_jobs_submitted_total") == 1
    assert value(second.render().decode(), "easel_jobs_submitted_total") == 0


def test_metrics_config_section():
    assert MetricsConfig() == MetricsConfig(host="127.0.0.1", port=0)
    config = config_from_mapping({"metrics": {"port": 9464, "host": "0.0.0.0"}}, env={})
    assert (config.metrics.host, config.metrics.port) == ("0.0.0.0", 9464)
    with pytest.raises(ConfigError, match=r"\[metrics\] port must be within 0-65535"):
        config_from_mapping({"metrics": {"port": 70000}}, env={})
    with pytest.raises(ConfigError, match=r"\[metrics\] port must not be negative"):
        config_from_mapping({"metrics": {"port": -1}}, env={})
