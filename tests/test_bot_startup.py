"""Starting the bot: no token, a rejected token, an unreachable Discord or no checkpoint is one clear
line; everything stops together."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.server
import socket
import threading

import discord
import pytest

from conftest import make_config


async def test_a_rejected_token_raises_login_failure_and_closes_cleanly(models_dir, tmp_path):
    from bot.app import serve
    from discord_fake import fake_discord

    config = dataclasses.replace(make_config(models_dir, tmp_path / "data"), discord_token="not-the-right-token")
    async with fake_discord():
        with pytest.raises(discord.LoginFailure):
            await serve(config)
    # the store was closed and can be opened again at once
    from storage import open_store

    store = await open_store(config.data_dir / "easel.db")
    await store.close()


def test_run_turns_startup_failures_into_one_line(models_dir, tmp_path, monkeypatch, capsys):
    import bot.app as app

    config = make_config(models_dir, tmp_path / "data")
    assert app.run(config) == 2
    assert "set DISCORD_TOKEN" in capsys.readouterr().err

    async def rejected(config):
        raise discord.LoginFailure("Improper token has been passed.")

    monkeypatch.setattr(app, "serve", rejected)
    assert app.run(dataclasses.replace(config, discord_token="x")) == 2
    assert capsys.readouterr().err.strip() == "easel: Discord rejected DISCORD_TOKEN; copy a fresh token from the developer portal"


# -- the first minute of an operator -------------------------------------------------------------


def stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def point_discord_at(monkeypatch, base_url: str) -> None:
    monkeypatch.setattr(discord.http.Route, "BASE", base_url + "/api/v10")  # undone after the test


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again on leaving: nobody listens there


@contextlib.contextmanager
def answering(status: int):
    """A plain HTTP server in a thread that answers every request with `status` (Discord in trouble)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"message": "Service Unavailable", "code": 0}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def fake_discord_in_a_thread():
    """The fake Discord on its own event loop, so that run() can call asyncio.run() itself."""
    from discord_fake import FakeDiscord

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fake = FakeDiscord()
    asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
    fake.patch_discord()
    try:
        yield fake
    finally:
        fake.restore_discord()
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_an_unreachable_discord_is_one_line_and_exit_code_2(models_dir, tmp_path, monkeypatch, capsys):
    import bot.app as app

    config = dataclasses.replace(make_config(models_dir, tmp_path / "data"), discord_token="x")
    point_discord_at(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    assert app.run(config) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("easel: cannot reach Discord (Cannot connect to host 127.0.0.1")
    assert "check this machine's internet connection" in lines[0]

    with answering(503) as base:
        point_discord_at(monkeypatch, base)
        assert app.run(config) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("easel: Discord answered HTTP 503 and is having trouble")


def test_a_rejected_token_from_the_fake_is_one_line_and_exit_code_2(models_dir, tmp_path, capsys):
    import bot.app as app

    config = dataclasses.replace(make_config(models_dir, tmp_path / "data"), discord_token="not-the-right-token")
    with fake_discord_in_a_thread() as fake:
        assert app.run(config) == 2
        assert [r.status for r in fake.requests if r.path.endswith("/users/@me")] == [401]
    assert stderr_lines(capsys) == [
        "easel: Discord rejected DISCORD_TOKEN; copy a fresh token from the developer portal"]


async def test_no_checkpoint_is_said_at_start_and_the_bot_still_starts(tmp_path, capsys):
    from bot.app import serve
    from discord_fake import fake_discord

    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    config = dataclasses.replace(make_config(models, tmp_path / "data", models={"default_checkpoint": ""}),
                                 discord_token="not-the-right-token")
    async with fake_discord():
        with pytest.raises(discord.LoginFailure):  # it went on to log in
            await serve(config)
    (line,) = stderr_lines(capsys)
    folder = models / "checkpoints"
    assert line.startswith(f"easel: no checkpoint in {folder}, so /imagine cannot generate yet;")
    assert f"`easel make-test-model {folder / 'tiny'}`" in line and "/owner refresh" in line


def test_the_checkpoint_note_names_a_missing_default_and_is_quiet_otherwise(models_dir, tmp_path):
    from bot.app import missing_checkpoint_note
    from generation.registry import ModelRegistry

    def registry(folder, default):
        found = ModelRegistry(checkpoints_dir=folder, embeddings_dir=tmp_path / "none", default_checkpoint=default)
        found.refresh()
        return found

    checkpoints = models_dir / "checkpoints"
    assert missing_checkpoint_note(registry(checkpoints, "tiny")) is None
    assert missing_checkpoint_note(registry(tmp_path / "empty", "org/some-model")) is None  # a hub default
    note = missing_checkpoint_note(registry(checkpoints, "gone"))
    assert "'gone'" in note and "fix [models] default_checkpoint" in note
