"""Composition root: config -> store -> models -> engine -> executor -> service -> bot. They start and stop together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from typing import AsyncIterator

import aiohttp
import discord

from generation import quiet_libraries
from generation.catalog import refresh_models
from generation.config import Config
from generation.engine import Engine
from generation.errors import ModelNotFound
from generation.executor import LocalExecutor
from generation.metrics import metrics_running
from generation.registry import ModelRegistry
from generation.service import GenerationService
from generation.submission import Submissions
from generation.uploads import UploadStore

from .client import EaselBot
from .context import AppContext

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def open_app(config: Config) -> AsyncIterator[AppContext]:
    """Everything but the Discord connection; the service is started by the bot once it listens."""
    from storage import open_store

    quiet_libraries()
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # the database and members' uploads
    store = await open_store(config.data_dir / "easel.db")
    executor = None
    service = None
    submissions = None
    metrics = None
    threads_before = None
    try:
        registry = ModelRegistry.from_config(config)
        await refresh_models(registry, store)
        engine = Engine(config=config, registry=registry)
        if engine.cache.device.device == "cpu" and not config.workers.broker_url:
            # The event loop keeps a core: Discord's heartbeat and every command stay on time.
            import torch

            from generation.pipelines import cpu_thread_budget

            threads_before = torch.get_num_threads()
            torch.set_num_threads(cpu_thread_budget(config.device.cpu_threads))
        if config.workers.broker_url:  # GPU workers run the jobs: this process loads no model
            from generation.remote import RemoteExecutor

            executor = RemoteExecutor(config, lora_names=lambda request: [use[0] for use in engine.lora_set(request)])
            await executor.start()
        else:
            executor = LocalExecutor(engine, job_timeout_s=config.queue.job_timeout_s)
        service = GenerationService(config=config, store=store, engine=engine, executor=executor)
        executor.on_change = service.wake
        metrics = metrics_running(config, store=store, service=service, executor=executor)
        await metrics.__aenter__()
        uploads = UploadStore(config=config, store=store)
        pruned = await uploads.prune()
        if pruned:
            log.info("deleted %d uploads unused for %g days", pruned, config.retention.uploads_days)
        submissions = Submissions(config=config, store=store, registry=registry, engine=engine, service=service,
                                  uploads=uploads)
        yield AppContext(config=config, store=store, registry=registry, engine=engine, service=service,
                         submissions=submissions, uploads=uploads)
    finally:
        if threads_before is not None:
            import torch

            torch.set_num_threads(threads_before)
        if metrics is not None:
            await metrics.__aexit__(None, None, None)
        if submissions is not None:
            submissions.close()
        if service is not None:
            await service.stop()
        if executor is not None:
            await asyncio.to_thread(executor.shutdown)
            if hasattr(executor, "close"):
                await executor.close()
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


def missing_checkpoint_note(registry: ModelRegistry) -> str | None:
    """One line for the operator when /imagine has no checkpoint to use (None when it has one)."""
    try:
        registry.default_name()  # a configured hub id counts: it is fetched on first use
        return None
    except ModelNotFound as exc:
        problem = str(exc)
    folder = registry.checkpoints_dir
    if registry.checkpoints:  # the configured default is missing; others are there
        fix = "fix [models] default_checkpoint in config.toml (`easel models` lists what is there)"
    else:
        problem = f"no checkpoint in {folder}"
        fix = (f"put a .safetensors checkpoint (or a diffusers folder) there, or run "
               f"`easel make-test-model {folder / 'tiny'}` for a tiny test model")
        if registry.snapshot.skipped:
            fix += f" ({len(registry.snapshot.skipped)} file(s) there were skipped: `easel models` says why)"
    return f"easel: {problem}, so /imagine cannot generate yet; {fix}, then /owner refresh (no restart needed)"


async def serve(config: Config) -> None:
    from generation.first_run import fetch_at_start

    async with open_app(config) as app:
        # First run (as A1111): an empty checkpoints/ gets the default model ([models] download_default).
        not_downloaded = await fetch_at_start(config, app.registry, app.store)
        note = missing_checkpoint_note(app.registry)
        if note and not_downloaded:
            note += f"; {not_downloaded}"
        if note:
            # Keep running: /owner refresh picks up a checkpoint without a restart, every other
            # command works, and the operator can check the Discord side meanwhile.
            print(note, file=sys.stderr)
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
    except (aiohttp.ClientError, ConnectionError, socket.gaierror, discord.GatewayNotFound) as exc:
        # Not every OSError: a full disk or an unwritable data folder must keep its own traceback.
        reason = " ".join(str(exc).split()) or type(exc).__name__
        print(f"easel: cannot reach Discord ({reason}); check this machine's internet connection, DNS and any "
              "firewall or proxy, then start again", file=sys.stderr)
        return 2
    except discord.HTTPException as exc:
        if exc.status < 500 and exc.status != 429:
            raise  # Discord refused a request of ours: a bug, keep the traceback
        # 5xx after discord.py's own retries, or a 429 it could not wait out (an IP ban)
        print(f"easel: Discord answered HTTP {exc.status} and is having trouble or refusing this machine for now "
              "(https://discordstatus.com); start again later", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0
