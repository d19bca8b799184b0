"""Running the real easel bot against the loopback fake Discord, on the tiny model."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from conftest import make_config
from discord_fake import CLIENT_OPTIONS, fake_discord


@dataclass
class BotEnv:
    fake: object
    app: object
    bot: object
    guild: object
    alice: object
    bob: object
    mod: object
    channel: object


def answered(message) -> bool:
    """A reply that says something: not "thinking", and not a placeholder ended before its deletion."""
    from bot.errors import ENDED_PLACEHOLDER

    return not message.loading and message.content != ENDED_PLACEHOLDER


# Set by conftest's gpu_workers_for_the_bot (EASEL_TEST_WORKERS=1): bots on the workers' models
# folder dispatch to real workers (a test with a folder of its own runs its jobs itself).
BROKER_URL: str | None = None
WORKER_MODELS: Path | None = None


@contextlib.asynccontextmanager
async def easel_on_fake_discord(models_dir: Path, data_dir: Path, *, fake=None, **sections):
    """The fake Discord (unless one is given), one guild with alice, bob and a moderator, and the bot."""
    from bot.app import open_app, running_bot

    sections.setdefault("discord", {}).setdefault("progress_edit_interval_s", 0.5)
    if BROKER_URL and Path(models_dir) == WORKER_MODELS:
        sections.setdefault("workers", {}).update(broker_url=BROKER_URL, heartbeat_s=0.2, lease_s=1.5)
    config = make_config(models_dir, data_dir, **sections)
    async with contextlib.AsyncExitStack() as stack:
        if fake is None:
            fake = await stack.enter_async_context(fake_discord())
            guild = fake.add_guild("Art Club")
            fake.add_member(guild, name="alice")
            fake.add_member(guild, name="bob")
            fake.add_member(guild, name="mod", permissions=(1 << 13) | (1 << 5))  # Manage Messages + Manage Server
        guild = next(iter(fake.state.guilds.values()))
        app = await stack.enter_async_context(open_app(config))
        if config.workers.broker_url:  # the jobs really go to the workers
            from generation.remote import RemoteExecutor

            assert isinstance(app.service.executor, RemoteExecutor)
        bot = await stack.enter_async_context(running_bot(app, **CLIENT_OPTIONS))
        await stack.enter_async_context(fake.run_client(bot))
        members = {m.user.name: m.user for m in guild.members.values()}
        yield BotEnv(fake=fake, app=app, bot=bot, guild=guild, alice=members.get("alice"), bob=members.get("bob"),
                     mod=members.get("mod"), channel=guild.channel_named("general"))
