"""Who asks and where, read off Discord objects into generation.submission.Requester."""

from __future__ import annotations

import discord

from generation.service import ReplyTarget
from generation.submission import Requester


def channel_is_nsfw(channel) -> bool:
    """Age-restricted: a text or voice channel marked NSFW, or a thread in one. Unknown: not."""
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


def requester_of(interaction: discord.Interaction) -> Requester:
    return Requester(user_id=interaction.user.id, channel_nsfw=channel_is_nsfw(interaction.channel),
                     target=ReplyTarget(frontend="discord", guild_id=interaction.guild_id,
                                        channel_id=interaction.channel_id, application_id=interaction.application_id,
                                        interaction_token=interaction.token,
                                        interaction_created_at=interaction.created_at))
