"""Composition root: config -> store -> models -> engine -> executor -> service -> bot. They start and stop together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import AsyncIterator

import discord

from generation import quiet_libraries
from generation.catalog import refresh_models
from generation.config import Config
from generation.engine import Engine
from generation.executor import LocalExecutor
from generation.registry import ModelRegistry
from generation.service import GenerationService

from .client import EaselBot
from .context import AppContext

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def open_app(config: Config) -> AsyncIterator[AppContext]:
    """Everything but the Discord connection; the service is started by the bot once it listens."""
    from storage import open_store

    quiet_libraries()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = await open_store(config.data_dir / "easel.db")
    executor = None
    service = None
    try:
        registry = ModelRegistry.from_config(config)
        await refresh_models(registry, store)
        engine = Engine(config=config, registry=registry)
        executor = LocalExecutor(engine, job_timeout_s=config.queue.job_timeout_s)
        service = GenerationService(config=config, store=store, engine=engine, executor=executor)
        yield AppContext(config=config, store=store, registry=registry, engine=engine, service=service)
    finally:
        if service is not None:
            await service.stop()
        if executor is not None:
            await asyncio.to_thread(executor.shutdown)
        await store.close()


class ServiceStartingBot(EaselBot):
    async def setup_hook(self) -> None:
        await super().setup_hook()  # the presenter subscribes first, so no event is missed
        await self.app.service.start()


@contextlib.asynccontextmanager
async def running_bot(app: AppContext, **client_options) -> AsyncIterator[EaselBot]:
    bot = ServiceStartingBot(app, **client_options)
    try:
        yield bot
    finally:
        if not bot.is_closed():
            await bot.close()


async def serve(config: Config) -> None:
    async with open_app(config) as app:
        async with running_bot(app) as bot:
            await bot.start(config.discord_token)


def run(config: Config) -> int:
    if not config.discord_token:
        print("easel: set DISCORD_TOKEN to your bot's token (Discord developer portal -> your app -> Bot -> Reset Token)",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(config))
    except discord.LoginFailure:
        print("easel: Discord rejected DISCORD_TOKEN; copy a fresh token from the developer portal", file=sys.stderr)
        return 2
    except discord.PrivilegedIntentsRequired:
        print("easel: this bot asks for an intent that is not enabled in the developer portal", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0
