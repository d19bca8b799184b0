"""First run: the default model comes from a stand-in for the Hugging Face hub (a local HTTP server
serving /{repo}/resolve/main/{file} with Range requests), resumes, is checked against its sha256 and
lands in checkpoints/ by rename; without the hub, the message says what to do. And `easel doctor`."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from generation.config import config_from_mapping
from generation.errors import EaselError

ROOT = Path(__file__).resolve().parents[1]
REPO = "test-org/test-model"
FILE = "fake-model.safetensors"
PAYLOAD = hashlib.sha256(b"seed").digest() * (300_000 // 32)  # about 300 KB, stands in for 4 GB
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@dataclasses.dataclass
class Seen:
    path: str
    range: str | None
    authorization: str | None
    host: str


class FakeHub:
    """The hub's resolve endpoint, with knobs: drop the connection after N bytes on the first
    request, ignore Range, redirect to another host (as the hub redirects to its CDN)."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.seen: list[Seen] = []
        self.drop_first_after: int | None = None
        self.ignore_range = False
        self.redirect_to_localhost = False
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                hub.seen.append(Seen(self.path, self.headers.get("Range"), self.headers.get("Authorization"),
                                     self.headers.get("Host", "")))
                port = hub.port
                if self.path.startswith("/cdn/"):
                    name = self.path[len("/cdn/"):]
                elif self.path.startswith(f"/{REPO}/resolve/main/"):
                    name = self.path[len(f"/{REPO}/resolve/main/"):]
                    if hub.redirect_to_localhost:
                        self.send_response(302)
                        self.send_header("Location", f"http://localhost:{port}/cdn/{name}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                else:
                    name = None
                if name not in hub.files:
                    self.send_error(404)
                    return
                data = hub.files[name]
                start = 0
                wanted = self.headers.get("Range")
                if wanted and not hub.ignore_range:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if hub.drop_first_after is not None and len(hub.seen) == 1:
                    self.wfile.write(body[:hub.drop_first_after])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub_env(monkeypatch):
    """The tests' HF_HUB_OFFLINE=1 (conftest) lifted, no token, no proxy for the local server."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return monkeypatch


@pytest.fixture
def hub(hub_env):
    with FakeHub({FILE: PAYLOAD}) as server:
        hub_env.setenv("HF_ENDPOINT", server.url)
        yield server


def first_run_config(tmp_path: Path, **models):
    values = {"default_repo": REPO, "default_file": FILE, "default_sha256": PAYLOAD_SHA, **models}
    return config_from_mapping({"paths": {"models_dir": str(tmp_path / "models"), "data_dir": str(tmp_path / "data")},
                                "device": {"device": "cpu"}, "models": values}, env={})


def quiet(done, total):
    pass


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_default_model_is_downloaded_checked_and_renamed_into_checkpoints(hub, tmp_path):
    from generation.first_run import fetch_default_checkpoint

    config = first_run_config(tmp_path)
    calls = []
    path = fetch_default_checkpoint(config, progress=lambda done, total: calls.append((done, total)))
    assert path == config.checkpoints_dir / FILE
    assert hashlib.sha256(path.read_bytes()).hexdigest() == PAYLOAD_SHA
    assert not path.with_name(FILE + ".part").exists()
    assert [seen.path for seen in hub.seen] == [f"/{REPO}/resolve/main/{FILE}"]
    assert hub.seen[0].range is None and hub.seen[0].authorization is None
    assert calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    # there already: nothing is fetched again
    assert fetch_default_checkpoint(config, progress=quiet) == path
    assert len(hub.seen) == 1


def test_an_interrupted_download_resumes_with_a_range_request(hub, tmp_path):
    from generation.first_run import DownloadFailed, fetch_default_checkpoint

    config = first_run_config(tmp_path)
    hub.drop_first_after = 100_000
    with pytest.raises(DownloadFailed, match="start again to resume") as failed:
        fetch_default_checkpoint(config, progress=quiet, attempts=1)
    assert f"from {hub.url}" in str(failed.value)
    part = config.checkpoints_dir / (FILE + ".part")
    assert part.stat().st_size == 100_000
    assert not (config.checkpoints_dir / FILE).exists()

    path = fetch_default_checkpoint(config, progress=quiet)
    assert hub.seen[1].range == "bytes=100000-"
    assert path.read_bytes() == PAYLOAD and not part.exists()


def test_a_dropped_connection_is_resumed_within_the_same_call(hub, tmp_path):
    from generation.first_run import fetch_default_checkpoint

    config = first_run_config(tmp_path)
    hub.drop_first_after = 50_000
    path = fetch_default_checkpoint(config, progress=quiet, retry_delay_s=0)
    assert [seen.range for seen in hub.seen] == [None, "bytes=50000-"]
    assert path.read_bytes() == PAYLOAD


def test_a_server_that_ignores_range_gets_the_file_from_the_start(hub, tmp_path):
    from generation.first_run import fetch_default_checkpoint

    config = first_run_config(tmp_path)
    config.checkpoints_dir.mkdir(parents=True)
    (config.checkpoints_dir / (FILE + ".part")).write_bytes(b"x" * 1000)  # not even the right bytes
    hub.ignore_range = True
    path = fetch_default_checkpoint(config, progress=quiet)
    assert hub.seen[0].range == "bytes=1000-"
    assert path.read_bytes() == PAYLOAD


def test_a_complete_part_file_is_finished_without_downloading_it_again(hub, tmp_path):
    from generation.first_run import fetch_default_checkpoint

    config = first_run_config(tmp_path)
    config.checkpoints_dir.mkdir(parents=True)
    (config.checkpoints_dir / (FILE + ".part")).write_bytes(PAYLOAD)  # stopped between the last byte and the rename
    path = fetch_default_checkpoint(config, progress=quiet)
    assert [seen.range for seen in hub.seen] == [f"bytes={len(PAYLOAD)}-"]  # answered 416
    assert path.read_bytes() == PAYLOAD


def test_a_wrong_hash_is_refused_and_the_file_deleted(hub, tmp_path):
    from generation.first_run import fetch_default_checkpoint

    wrong = "ab" * 32
    config = first_run_config(tmp_path, default_sha256=wrong)
    with pytest.raises(EaselError) as refused:
        fetch_default_checkpoint(config, progress=quiet)
    message = str(refused.value)
    assert wrong in message and PAYLOAD_SHA in message and "default_sha256" in message
    assert list(config.checkpoints_dir.iterdir()) == []  # neither the file nor its .part


def test_an_unreachable_hub_says_what_to_do(hub_env, tmp_path):
    from generation.first_run import DownloadFailed, fetch_default_checkpoint

    endpoint = f"http://127.0.0.1:{closed_port()}"
    hub_env.setenv("HF_ENDPOINT", endpoint)
    config = first_run_config(tmp_path)
    started = time.monotonic()
    with pytest.raises(DownloadFailed) as failed:
        fetch_default_checkpoint(config, progress=quiet)
    assert time.monotonic() - started < 5  # a refused connection is not retried
    folder = config.checkpoints_dir
    assert str(failed.value) == (
        f"could not download the default model from {endpoint} (Connection refused); put a .safetensors checkpoint "
        f"in {folder}, or run `easel make-test-model {folder / 'tiny'}` for a tiny test model, then start again")


def test_a_missing_file_names_the_settings(hub, tmp_path):
    from generation.first_run import DownloadFailed, fetch_default_checkpoint

    config = first_run_config(tmp_path, default_file="nope.safetensors")
    with pytest.raises(DownloadFailed, match=r"HTTP 404 \(no such repo or file; check \[models\] default_repo"):
        fetch_default_checkpoint(config, progress=quiet)


def test_hf_hub_offline_does_not_try(hub, hub_env, tmp_path):
    from generation.first_run import HubOffline, fetch_default_checkpoint

    hub_env.setenv("HF_HUB_OFFLINE", "1")
    config = first_run_config(tmp_path)
    with pytest.raises(HubOffline, match="HF_HUB_OFFLINE is set") as offline:
        fetch_default_checkpoint(config, progress=quiet)
    assert "make-test-model" in str(offline.value)
    assert hub.seen == []


def test_download_default_false_does_nothing(hub, tmp_path):
    from generation.first_run import fetch_default_checkpoint

    config = first_run_config(tmp_path, download_default=False)
    assert fetch_default_checkpoint(config, progress=quiet) is None
    assert hub.seen == [] and not config.checkpoints_dir.exists()


def test_the_token_goes_to_the_hub_but_not_to_the_host_it_redirects_to(hub, hub_env, tmp_path):
    from generation.first_run import fetch_default_checkpoint

    hub.redirect_to_localhost = True
    hub_token = "hf_not_a_real_token"
    hub_env.setenv("HF_TOKEN", hub_token)
    path = fetch_default_checkpoint(first_run_config(tmp_path), progress=quiet)
    assert path.read_bytes() == PAYLOAD
    first, second = hub.seen
    assert first.authorization == f"Bearer {hub_token}" and first.host.startswith("127.0.0.1")
    assert second.path == f"/cdn/{FILE}" and second.host.startswith("localhost") and second.authorization is None


def test_config_checks_the_new_keys():
    from generation.config import ConfigError

    with pytest.raises(ConfigError, match="default_file must be a file name"):
        config_from_mapping({"models": {"default_file": "../evil.safetensors"}}, env={})
    with pytest.raises(ConfigError, match="default_sha256 must be 64 hex digits"):
        config_from_mapping({"models": {"default_sha256": "abc"}}, env={})
    with pytest.raises(ConfigError, match="default_repo must be a Hugging Face repo id"):
        config_from_mapping({"models": {"default_repo": "no-slash"}}, env={})
    assert config_from_mapping({"models": {"default_sha256": ""}}, env={}).models.default_sha256 == ""


async def test_easel_run_fetches_into_an_empty_folder_and_rescans(hub_env, models_dir, tmp_path):
    """What `serve` does before the bot starts: download (a real tiny checkpoint here), seed the
    hash cache, rescan; the registry then has the checkpoint."""
    from generation.catalog import refresh_models
    from generation.first_run import fetch_at_start, wants_default_checkpoint
    from generation.registry import ModelRegistry
    from storage import open_store

    data = (models_dir / "checkpoints" / "tiny.safetensors").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    with FakeHub({"sd.safetensors": data}) as server:
        hub_env.setenv("HF_ENDPOINT", server.url)
        config = first_run_config(tmp_path, default_file="sd.safetensors", default_sha256=sha)
        store = await open_store(tmp_path / "easel.db")
        try:
            registry = ModelRegistry.from_config(config)
            await refresh_models(registry, store)
            assert wants_default_checkpoint(config, registry)
            stream = Lines()
            assert await fetch_at_start(config, registry, store, progress=quiet, stream=stream) is None
            assert [c.name for c in registry.checkpoints] == ["sd"] and registry.checkpoints[0].sha256 == sha
            target = config.checkpoints_dir / "sd.safetensors"
            stat = target.stat()
            assert await store.hash_cache.get(target, stat.st_size, stat.st_mtime_ns) == sha
            assert "downloading the default model, sd.safetensors" in "".join(stream.lines)
            assert not wants_default_checkpoint(config, registry)
        finally:
            await store.close()


async def test_easel_run_says_why_nothing_was_downloaded(hub_env, tmp_path):
    from generation.first_run import fetch_at_start
    from generation.registry import ModelRegistry

    endpoint = f"http://127.0.0.1:{closed_port()}"
    hub_env.setenv("HF_ENDPOINT", endpoint)
    config = first_run_config(tmp_path)
    registry = ModelRegistry.from_config(config)
    registry.refresh()
    why = await fetch_at_start(config, registry, store=_NoStore(), progress=quiet, stream=Lines())
    assert why == (f"the default model could not be downloaded from {endpoint} (Connection refused); starting easel "
                   "again retries")
    hub_env.setenv("HF_HUB_OFFLINE", "1")
    why = await fetch_at_start(config, registry, store=_NoStore(), progress=quiet)
    assert why == f"HF_HUB_OFFLINE is set, so the default model ({FILE}) was not downloaded"


class _NoStore:
    hash_cache = None


class Lines:
    def __init__(self):
        self.lines: list[str] = []

    def write(self, text):
        self.lines.append(text)

    def flush(self):
        pass


# ------------------------------------------------------------------------------------------ doctor


def test_easel_doctor_reports_and_exits_within_30_s(models_dir, registry, tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "DISCORD_TOKEN"}
    env.update({"HF_HUB_OFFLINE": "1", "EASEL_MODELS_DIR": str(models_dir), "EASEL_DATA_DIR": str(tmp_path / "data"),
                "EASEL_CONFIG": str(tmp_path / "absent.toml"), "EASEL_DEVICE": "cpu", "PYTHONPATH": str(ROOT)})
    env.pop("EASEL_BROKER_URL", None)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cli.main", "doctor"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=30)
    assert time.monotonic() - started < 30
    out = done.stdout
    assert done.returncode in (0, 1), done.stderr
    for package in ("python ", "torch ", "diffusers ", "transformers "):
        assert package in out
    assert "ok:      device: cpu" in out
    assert f"config: built-in defaults (no file at {tmp_path / 'absent.toml'})" in out
    assert f"checkpoints: {len(registry.checkpoints)} in {models_dir / 'checkpoints'}" in out
    assert "embeddings: 3 in" in out and "skipped widewidth:" in out
    assert "discord: " in out
    assert "problem: DISCORD_TOKEN is not set" in out  # so never exit code 0 here
    assert done.returncode == 1 and out.rstrip().endswith("found")


def test_a_bad_config_is_reported_not_crashed_on(models_dir, registry, tmp_path, monkeypatch, capsys):
    import generation.doctor as doctor
    from cli.main import main

    monkeypatch.setattr(doctor, "DISCORD_GATEWAY_URL", f"http://127.0.0.1:{closed_port()}/api/v10/gateway")
    bad = tmp_path / "config.toml"
    bad.write_text(f'[limits]\nmax_stpes = 3\n[paths]\nmodels_dir = "{models_dir}"\n')
    monkeypatch.delenv("EASEL_MODELS_DIR", raising=False)
    monkeypatch.delenv("EASEL_BROKER_URL", raising=False)
    monkeypatch.setenv("DISCORD_TOKEN", "secret-token-value")
    monkeypatch.setenv("EASEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EASEL_DEVICE", "cpu")
    assert main(["--config", str(bad), "doctor"]) == 1
    out = capsys.readouterr().out
    assert f"problem: config {bad}: invalid configuration: unknown key [limits] max_stpes" in out
    assert f"checkpoints: {len(registry.checkpoints)} in {models_dir / 'checkpoints'}" in out  # the file's [paths] still counted
    assert "problem: discord: cannot reach" in out
    assert "ok:      DISCORD_TOKEN is set" in out and "secret-token-value" not in out
    assert "ok:      data folder:" in out


def test_doctor_never_crashes_on_missing_folders_and_reports_the_broker(tmp_path, monkeypatch):
    import generation.doctor as doctor

    monkeypatch.setattr(doctor, "DISCORD_GATEWAY_URL", f"http://127.0.0.1:{closed_port()}/")
    lines: list[str] = []
    env = {"EASEL_MODELS_DIR": str(tmp_path / "no" / "models"), "EASEL_DATA_DIR": str(tmp_path / "no" / "data"),
           "EASEL_CONFIG": str(tmp_path / "none.toml"), "EASEL_DEVICE": "cpu", "HF_HUB_OFFLINE": "1",
           "EASEL_BROKER_URL": f"redis://user:pw-secret@127.0.0.1:{closed_port()}/0"}
    assert doctor.run_doctor(env=env, out=lines.append) == 1
    text = "\n".join(lines)
    assert "problem: checkpoints: none usable in" in text
    assert f"data folder: {tmp_path / 'no' / 'data'} will be created" in text
    assert "problem: workers: broker redis://***@127.0.0.1:" in text and "pw-secret" not in text
