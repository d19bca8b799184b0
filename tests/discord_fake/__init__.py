"""A loopback fake Discord for end-to-end tests of a real discord.py 2.7 bot.

    async with fake_discord() as fake:
        guild = fake.add_guild()
        user = fake.add_member(guild, name="alice").user
        bot = commands.Bot(command_prefix="!", intents=discord.Intents.default(), **CLIENT_OPTIONS)
        async with fake.run_client(bot):
            await bot.tree.sync()
            interaction = await fake.invoke_command("ping", {}, user=user, guild=guild)
            message = await interaction.wait_for_original()
"""

from .errors import DiscordHTTPError
from .interactions import InvalidInvocation
from .ratelimits import BucketLimit, RateLimits
from .server import CLIENT_OPTIONS, FakeDiscord, fake_discord
from .state import (
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    MessageSnapshot,
    PermissionOverwrite,
    RecordedRequest,
    ResponseEvent,
)

__all__ = [
    "CLIENT_OPTIONS",
    "BucketLimit",
    "DiscordHTTPError",
    "FakeAttachment",
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeInteraction",
    "FakeMember",
    "FakeMessage",
    "FakeRole",
    "FakeUser",
    "InvalidInvocation",
    "MessageSnapshot",
    "PermissionOverwrite",
    "RateLimits",
    "RecordedRequest",
    "ResponseEvent",
    "fake_discord",
]
