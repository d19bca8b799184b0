"""The discord.py client: registers cogs, persistent buttons and the presenter; syncs commands."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from .context import AppContext
from .errors import send_error
from .presenter import Presenter
from .views import DYNAMIC_ITEMS, refuse_in_dms

log = logging.getLogger(__name__)


class EaselTree(app_commands.CommandTree):
    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return not await refuse_in_dms(interaction)

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await send_error(interaction, error)


class EaselBot(commands.Bot):
    def __init__(self, app: AppContext, **client_options):
        # Slash commands, buttons and reactions only: no message-content intent is needed.
        intents = discord.Intents.default()
        intents.message_content = False
        # Prompts are members' text: no message may ping @everyone, @here or a role. The few that mean
        # to ping the one member who asked name that user alone.
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, tree_cls=EaselTree,
                         help_command=None, allowed_mentions=discord.AllowedMentions.none(), **client_options)
        self.app = app
        self.presenter = Presenter(bot=self, app=app, edit_interval=app.config.discord.progress_edit_interval_s)

    async def setup_hook(self) -> None:
        from .cogs import register_cogs
        from .reactions import Reactions

        self.add_dynamic_items(*DYNAMIC_ITEMS)
        await register_cogs(self, self.app)
        await self.add_cog(Reactions(self, self.app))
        self.presenter.subscribe()
        await self.presenter.start()
        await self.sync_commands()

    async def sync_commands(self) -> None:
        dev_guild = self.app.config.discord.dev_guild_id
        if dev_guild:
            guild = discord.Object(dev_guild)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
        else:
            synced = await self.tree.sync()
        log.info("synced %d commands%s", len(synced), f" to guild {dev_guild}" if dev_guild else "")

    async def close(self) -> None:
        await self.presenter.stop()
        await super().close()
