"""🔁 on a result rerolls it as the reacting member's own job; ❌ deletes it (requester or Manage Messages)."""

from __future__ import annotations

import logging

import discord
from discord.ext import commands

from generation.errors import EaselError
from generation.service import ReplyTarget
from generation.submission import Requester

from . import actions
from .context import AppContext
from .presenter import DELETE_EMOJI, REROLL_EMOJI
from .requesters import channel_is_nsfw

log = logging.getLogger(__name__)


class Reactions(commands.Cog):
    def __init__(self, bot: commands.Bot, app: AppContext):
        self.bot = bot
        self.app = app

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if self.bot.user is None or payload.user_id == self.bot.user.id:
            return
        if payload.member is not None and payload.member.bot:
            return
        if payload.guild_id is None and not self.app.config.discord.allow_dms:
            return  # the DM switch covers reactions too; no reply, as for any reaction we ignore
        emoji = str(payload.emoji)
        if emoji not in (REROLL_EMOJI, DELETE_EMOJI):
            return
        job = await actions.job_for_message(self.app, payload.message_id)
        if job is None:
            return  # not one of our results
        channel = self.bot.get_partial_messageable(payload.channel_id, guild_id=payload.guild_id)
        if emoji == DELETE_EMOJI:
            can_manage = self._can_manage_messages(payload)
            if actions.may_delete(job, user_id=payload.user_id, can_manage_messages=can_manage):
                await channel.get_partial_message(payload.message_id).delete()
            return
        try:
            await actions.reroll(self.app, job.id, Requester(
                user_id=payload.user_id, channel_nsfw=channel_is_nsfw(self.bot.get_channel(payload.channel_id)),
                target=ReplyTarget(frontend="discord", guild_id=payload.guild_id, channel_id=payload.channel_id)))
        except EaselError as exc:
            # No interaction to answer privately: a short reply in the channel, to that member only.
            await channel.send(f"<@{payload.user_id}> ⚠️ {exc}", delete_after=30,
                               allowed_mentions=discord.AllowedMentions(users=[discord.Object(payload.user_id)]))

    def _can_manage_messages(self, payload: discord.RawReactionActionEvent) -> bool:
        """Manage Messages in the reaction's channel, as Discord computes it for the Delete button."""
        member = payload.member
        if member is None:
            return False  # a DM: nobody moderates there
        channel = member.guild.get_channel_or_thread(payload.channel_id)
        if channel is None:
            # Not cached (e.g. a thread the bot has not seen since it started), so its overwrites are
            # unknown: the member's server-wide permission is the best evidence left, and refusing
            # would leave moderators unable to clean up there.
            return member.guild_permissions.manage_messages
        return channel.permissions_for(member).manage_messages
