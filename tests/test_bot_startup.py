"""Starting the bot: a missing or rejected token is a clear message; everything stops together."""

from __future__ import annotations

import dataclasses

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
