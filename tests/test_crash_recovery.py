"""SIGKILL a process mid-job, restart it: every job completes exactly once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

RUNNER = Path(__file__).with_name("crash_runner.py")
JOBS = 4


def query(db: Path, sql: str):
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def test_sigkill_mid_job_then_restart_completes_every_job_once(tmp_path, models_dir):
    data = tmp_path / "data"
    db = data / "easel.db"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, str(RUNNER), str(data), str(models_dir), "submit", str(JOBS)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in process.stdout:  # the runner blocks its second batch mid-sampling and says so
        if line.strip() == "HUNG":
            break
    else:
        raise AssertionError(f"runner ended before the kill: {process.stderr.read()[-2000:]}")
    deadline = time.monotonic() + 60
    killed_job = None
    while time.monotonic() < deadline:  # the first batch's results are committed in the background
        done = query(db, "SELECT count(*) FROM jobs WHERE status = 'done'")[0][0]
        running = query(db, "SELECT id FROM jobs WHERE status = 'running'")
        if done >= 1 and running:
            killed_job = running[0][0]
            break
        time.sleep(0.05)
    assert killed_job is not None, "never saw a job running after one was done"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    before = dict(query(db, "SELECT id, status FROM jobs"))
    assert before[killed_job] == "running"
    interrupted = {job_id for job_id, status in before.items() if status == "running"}

    resumed = subprocess.run([sys.executable, str(RUNNER), str(data), str(models_dir), "resume", "0"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "IDLE" in resumed.stdout

    rows = query(db, "SELECT id, status, attempts FROM jobs ORDER BY id")
    assert [status for _, status, _ in rows] == ["done"] * JOBS
    attempts = {job_id: attempts for job_id, _, attempts in rows}
    # exactly the jobs that were running when the process died ran a second time; no other job did
    assert {job_id for job_id, count in attempts.items() if count == 1} == interrupted
    assert set(attempts.values()) <= {0, 1}
    images = query(db, "SELECT job_id, count(*) FROM images GROUP BY job_id")
    assert dict(images) == {job_id: 1 for job_id, _, _ in rows}
    files = sorted(p.relative_to(data) for p in (data / "images").rglob("*.png"))
    assert len(files) == JOBS
