"""What the fake Discord knows: users, guilds, channels, messages, interactions, commands.

Entities are plain mutable dataclasses (Discord state changes under the bot's requests); records of
what happened (snapshots, responses, requests) are frozen. Payload builders produce the complete
JSON objects discord.py 2.7 parses, including the fields it indexes without a default.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import itertools
import mimetypes
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

DISCORD_EPOCH_MS = 1420070400000
MIB = 1024 * 1024
DEFAULT_FILESIZE_LIMIT = 10 * MIB

# Permission bits (https://discord.com/developers/docs/topics/permissions).
CREATE_INSTANT_INVITE = 1 << 0
ADMINISTRATOR = 1 << 3
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
USE_EXTERNAL_EMOJIS = 1 << 18
CONNECT = 1 << 20
SPEAK = 1 << 21
CHANGE_NICKNAME = 1 << 26
USE_APPLICATION_COMMANDS = 1 << 31
SEND_MESSAGES_IN_THREADS = 1 << 38
ALL_PERMISSIONS = (1 << 51) - 1

DEFAULT_EVERYONE_PERMISSIONS = (
    CREATE_INSTANT_INVITE
    | ADD_REACTIONS
    | VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | USE_EXTERNAL_EMOJIS
    | CONNECT
    | SPEAK
    | CHANGE_NICKNAME
    | USE_APPLICATION_COMMANDS
    | SEND_MESSAGES_IN_THREADS
)
DEFAULT_BOT_PERMISSIONS = DEFAULT_EVERYONE_PERMISSIONS

# Message flags.
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12
FLAG_COMPONENTS_V2 = 1 << 15

# Channel types.
GUILD_TEXT = 0
DM = 1

# Interaction types.
APPLICATION_COMMAND = 2
MESSAGE_COMPONENT = 3
APPLICATION_COMMAND_AUTOCOMPLETE = 4
MODAL_SUBMIT = 5

# Gateway intents that gate the events this fake dispatches.
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_GUILD_MESSAGE_REACTIONS = 1 << 10
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_DIRECT_MESSAGE_REACTIONS = 1 << 13
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT

# A 1x1 transparent PNG, served for avatar and other CDN assets.
PLACEHOLDER_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


class FakeClock:
    """Real time plus a manual offset, so tests can age tokens without sleeping.

    Everything time-dependent in the fake (interaction deadlines, token expiry, rate-limit windows,
    timestamps, snowflakes) reads this clock.
    """

    def __init__(self) -> None:
        self._offset = 0.0
        self._started = time.monotonic()

    def monotonic(self) -> float:
        return time.monotonic() + self._offset

    def elapsed(self) -> float:
        """Seconds since the fake started, including any advance_time()."""
        return self.since_start(self.monotonic())

    def since_start(self, moment: float) -> float:
        """Converts a monotonic() reading to seconds since the fake started."""
        return moment - self._started

    def now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=self._offset)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._offset += seconds


class SnowflakeFactory:
    """Strictly increasing snowflakes whose embedded timestamp follows the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._last = 0

    def next(self) -> int:
        millis = int(self._clock.now().timestamp() * 1000) - DISCORD_EPOCH_MS
        candidate = millis << 22
        self._last = max(candidate, self._last + 1)
        return self._last


def iso(moment: datetime.datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def image_size(data: bytes) -> tuple[int | None, int | None]:
    """Width and height of an image, as Discord reports for image attachments; None otherwise."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return image.width, image.height
    except Exception:  # not an image (or Pillow missing): Discord reports no size either
        return None, None


def guess_content_type(filename: str) -> str | None:
    return mimetypes.guess_type(filename)[0]


@dataclass(eq=False)
class FakeUser:
    id: int
    name: str
    bot: bool = False
    global_name: str | None = None
    accepts_dms: bool = True

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def to_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "global_name": self.global_name,
            "discriminator": "0",
            "avatar": None,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
            "bot": self.bot,
            "system": False,
            "public_flags": 0,
            "flags": 0,
        }


@dataclass(eq=False)
class FakeRole:
    id: int
    guild_id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False
    bot_id: int | None = None

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.managed,
            "mentionable": False,
            "flags": 0,
        }
        if self.bot_id is not None:
            payload["tags"] = {"bot_id": str(self.bot_id)}
        return payload


@dataclass(eq=False)
class FakeMember:
    user: FakeUser
    guild_id: int
    role_ids: list[int]
    joined_at: datetime.datetime
    nick: str | None = None

    @property
    def id(self) -> int:
        return self.user.id

    def to_payload(self, *, with_user: bool = True, permissions: int | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "roles": [str(role_id) for role_id in self.role_ids],
            "joined_at": iso(self.joined_at),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            payload["user"] = self.user.to_payload()
        if permissions is not None:
            payload["permissions"] = str(permissions)
        return payload


@dataclass(frozen=True)
class PermissionOverwrite:
    target_id: int
    is_member: bool
    allow: int = 0
    deny: int = 0

    def to_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.target_id),
            "type": 1 if self.is_member else 0,
            "allow": str(self.allow),
            "deny": str(self.deny),
        }


@dataclass(eq=False)
class FakeChannel:
    id: int
    type: int
    name: str | None
    guild_id: int | None = None
    position: int = 0
    topic: str | None = None
    nsfw: bool = False
    overwrites: list[PermissionOverwrite] = field(default_factory=list)
    recipient: FakeUser | None = None  # DM channels only
    last_message_id: int | None = None

    @property
    def is_dm(self) -> bool:
        return self.type == DM

    def to_payload(self) -> dict[str, Any]:
        last = str(self.last_message_id) if self.last_message_id else None
        if self.is_dm:
            assert self.recipient is not None
            return {
                "id": str(self.id),
                "type": DM,
                "recipients": [self.recipient.to_payload()],
                "last_message_id": last,
                "flags": 0,
            }
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [overwrite.to_payload() for overwrite in self.overwrites],
            "parent_id": None,
            "topic": self.topic,
            "nsfw": self.nsfw,
            "rate_limit_per_user": 0,
            "last_message_id": last,
            "flags": 0,
        }


@dataclass(eq=False)
class FakeGuild:
    id: int
    name: str
    owner_id: int
    filesize_limit: int
    premium_tier: int
    joined_at: datetime.datetime
    roles: dict[int, FakeRole] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    locale: str = "en-US"

    @property
    def everyone_role(self) -> FakeRole:
        return self.roles[self.id]

    def channel_named(self, name: str) -> FakeChannel:
        for channel in self.channels.values():
            if channel.name == name:
                return channel
        raise KeyError(f"guild {self.name!r} has no channel named {name!r}")

    def role_named(self, name: str) -> FakeRole:
        for role in self.roles.values():
            if role.name == name:
                return role
        raise KeyError(f"guild {self.name!r} has no role named {name!r}")


@dataclass(frozen=True, eq=False)
class FakeAttachment:
    id: int
    filename: str
    data: bytes = field(repr=False)
    url_path: str  # path on the fake server, e.g. /cdn/attachments/<channel>/<id>/<filename>
    content_type: str | None = None
    width: int | None = None
    height: int | None = None
    description: str | None = None
    ephemeral: bool = False

    @property
    def size(self) -> int:
        return len(self.data)

    def to_payload(self, base_url: str) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": base_url + self.url_path,
            "proxy_url": base_url + self.url_path.replace("/cdn/", "/media/", 1),
            "content_type": self.content_type,
            "width": self.width,
            "height": self.height,
            "ephemeral": self.ephemeral,
            "flags": 0,
        }
        if self.description is not None:
            payload["description"] = self.description
        return payload


@dataclass(eq=False)
class FakeReaction:
    emoji: dict[str, Any]  # {"id": None, "name": "🎲"} or {"id": "1", "name": "x", "animated": False}
    user_ids: list[int] = field(default_factory=list)


def emoji_key(emoji: dict[str, Any]) -> str:
    return f"{emoji['name']}:{emoji['id']}" if emoji.get("id") else emoji["name"]


def parse_emoji(text: str) -> dict[str, Any]:
    """Parses an emoji as written in a reaction URL or by a test: unicode, `name:id` or `<:name:id>`."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    animated = text.startswith("a:")
    if animated:
        text = text[2:]
    elif text.startswith(":"):
        text = text[1:]
    name, sep, emoji_id = text.rpartition(":")
    if sep and emoji_id.isdigit():
        return {"id": emoji_id, "name": name, "animated": animated}
    return {"id": None, "name": text}


@dataclass(frozen=True, eq=False)
class MessageSnapshot:
    """A message's visible state at one moment (fake-clock seconds since start)."""

    at: float
    content: str
    embeds: tuple[dict[str, Any], ...]
    attachments: tuple[FakeAttachment, ...]
    components: tuple[dict[str, Any], ...]
    flags: int

    @property
    def loading(self) -> bool:
        return bool(self.flags & FLAG_LOADING)


@dataclass(eq=False)
class FakeMessage:
    id: int
    channel_id: int
    guild_id: int | None
    author: FakeUser
    content: str
    created_at: datetime.datetime
    type: int = 0
    flags: int = 0
    embeds: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    reactions: dict[str, FakeReaction] = field(default_factory=dict)
    edited_at: datetime.datetime | None = None
    webhook_id: int | None = None
    application_id: int | None = None
    interaction_id: int | None = None
    reference_id: int | None = None  # the message this one replies to
    interaction_metadata: dict[str, Any] | None = None
    legacy_interaction: dict[str, Any] | None = None
    deleted: bool = False
    history: list[MessageSnapshot] = field(default_factory=list)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & FLAG_LOADING)

    @property
    def edits(self) -> list[MessageSnapshot]:
        """Snapshots after creation, one per accepted edit."""
        return self.history[1:]

    def snapshot(self, at: float) -> MessageSnapshot:
        return MessageSnapshot(
            at=at,
            content=self.content,
            embeds=tuple(self.embeds),
            attachments=tuple(self.attachments),
            components=tuple(self.components),
            flags=self.flags,
        )

    def reactors(self, emoji: str) -> list[int]:
        reaction = self.reactions.get(emoji_key(parse_emoji(emoji)))
        return list(reaction.user_ids) if reaction else []

    def custom_ids(self) -> list[str]:
        return [component["custom_id"] for component in walk_components(self.components) if "custom_id" in component]


def walk_components(components: list[dict[str, Any]] | tuple[dict[str, Any], ...]):
    """Every component, depth first (action rows, sections and containers hold children)."""
    for component in components:
        yield component
        children = list(component.get("components", []))
        if "accessory" in component:
            children.append(component["accessory"])
        yield from walk_components(children)


@dataclass(frozen=True)
class ResponseEvent:
    """One thing the bot did to answer an interaction, in order.

    kind: "callback", "edit_original", "delete_original", "followup", "edit_followup",
    "delete_followup".
    """

    at: float
    kind: str
    callback_type: int | None = None
    message_id: int | None = None
    snapshot: MessageSnapshot | None = None


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request the fake answered (at: fake-clock seconds since start, on arrival)."""

    at: float
    method: str
    path: str
    query: dict[str, str]
    status: int
    json: Any = None
    files: tuple[tuple[str, str, int], ...] = ()  # (form field, filename, size)
    error_code: int | None = None

    @property
    def route(self) -> str:
        return f"{self.method} {self.path}"


_T = TypeVar("_T")


class ChangeSignal:
    """Wakes waiters whenever the fake's state changes; waiters re-check their own predicate."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], _T], *, timeout: float, describe: Callable[[], str]) -> _T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout:.1f}s waiting; state: {describe()}")
            event = self._event
            try:
                await asyncio.wait_for(event.wait(), timeout=remaining)
            except TimeoutError:
                pass


@dataclass(eq=False)
class FakeInteraction:
    """An interaction the test dispatched, and everything the bot did in answer."""

    id: int
    token: str
    type: int
    user: FakeUser
    guild_id: int | None
    channel_id: int
    created_at: float  # like every recorded time: fake-clock seconds since the fake started
    payload: dict[str, Any] = field(repr=False)
    state: DiscordState = field(repr=False)
    command_name: str | None = None
    custom_id: str | None = None
    source_message_id: int | None = None  # the message a component lives on
    callback_type: int | None = None
    acknowledged_at: float | None = None
    ephemeral: bool = False
    original_message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    autocomplete_choices: list[dict[str, Any]] | None = None
    modal: dict[str, Any] | None = None
    responses: list[ResponseEvent] = field(default_factory=list)

    @property
    def acknowledged(self) -> bool:
        return self.callback_type is not None

    @property
    def original(self) -> FakeMessage | None:
        if self.original_message_id is None:
            return None
        return self.state.messages.get(self.original_message_id)

    @property
    def followups(self) -> list[FakeMessage]:
        return [self.state.messages[message_id] for message_id in self.followup_ids]

    def record_response(self, event: ResponseEvent) -> None:
        self.responses.append(event)
        self.state.changed.notify()

    def describe(self) -> str:
        original = self.original
        return (
            f"interaction {self.id} type={self.type} callback={self.callback_type} "
            f"original={None if original is None else repr(original.content)} "
            f"followups={len(self.followup_ids)} responses={[r.kind for r in self.responses]}"
        )

    async def wait_for(self, predicate: Callable[[FakeInteraction], _T], timeout: float = 15.0) -> _T:
        """Waits until predicate(self) is truthy and returns its value."""
        return await self.state.changed.wait_for(lambda: predicate(self), timeout=timeout, describe=self.describe)

    async def wait_until_acknowledged(self, timeout: float = 15.0) -> int:
        """Waits for the interaction callback; returns its type (4, 5, 6, 7, 8 or 9)."""
        await self.wait_for(lambda interaction: interaction.acknowledged, timeout)
        assert self.callback_type is not None
        return self.callback_type

    async def wait_for_followups(self, count: int = 1, timeout: float = 15.0) -> list[FakeMessage]:
        await self.wait_for(lambda interaction: len(interaction.followup_ids) >= count, timeout)
        return self.followups

    async def wait_for_original(
        self, predicate: Callable[[FakeMessage], bool] = lambda message: not message.loading, timeout: float = 15.0
    ) -> FakeMessage:
        """Waits until the original response exists and satisfies predicate (default: not loading)."""

        def ready(interaction: FakeInteraction) -> FakeMessage | None:
            original = interaction.original
            return original if original is not None and predicate(original) else None

        return await self.wait_for(ready, timeout)

    async def wait_for_reply(
        self, predicate: Callable[[FakeMessage], bool] = lambda message: not message.loading, timeout: float = 15.0
    ) -> FakeMessage:
        """Waits until the original response or a follow-up (not deleted) satisfies predicate: where
        an acknowledged-first command puts its answer (a refusal is an ephemeral follow-up)."""

        def ready(interaction: FakeInteraction) -> FakeMessage | None:
            candidates = [interaction.original, *interaction.followups]
            return next((message for message in candidates
                         if message is not None and not message.deleted and predicate(message)), None)

        return await self.wait_for(ready, timeout)


@dataclass
class DiscordState:
    """All entities, keyed by id, plus what the fake needs to build payloads."""

    clock: FakeClock
    snowflakes: SnowflakeFactory
    bot: FakeUser
    application_id: int
    token: str
    base_url: str = ""
    application_owner_id: int | None = None
    users: dict[int, FakeUser] = field(default_factory=dict)
    guilds: dict[int, FakeGuild] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    messages: dict[int, FakeMessage] = field(default_factory=dict)
    attachments: dict[int, FakeAttachment] = field(default_factory=dict)
    interactions: dict[int, FakeInteraction] = field(default_factory=dict)
    interactions_by_token: dict[str, FakeInteraction] = field(default_factory=dict)
    global_commands: dict[int, dict[str, Any]] = field(default_factory=dict)
    guild_commands: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    unhandled_requests: list[RecordedRequest] = field(default_factory=list)
    changed: ChangeSignal = field(default_factory=ChangeSignal)
    _token_counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    # -- lookups ---------------------------------------------------------------------------------

    def new_interaction_token(self) -> str:
        return f"aW50ZXJhY3Rpb24.fake-token-{next(self._token_counter)}"

    def application_owner(self) -> FakeUser:
        """The configured owner, else whoever owns the first guild (a typical self-hosted bot)."""
        if self.application_owner_id is not None:
            return self.users[self.application_owner_id]
        first_guild = next(iter(self.guilds.values()), None)
        return self.users[first_guild.owner_id] if first_guild is not None else self.bot

    def member(self, guild_id: int, user_id: int) -> FakeMember | None:
        guild = self.guilds.get(guild_id)
        return None if guild is None else guild.members.get(user_id)

    def channel_messages(self, channel_id: int, *, include_ephemeral: bool = False) -> list[FakeMessage]:
        return [
            message
            for message in self.messages.values()
            if message.channel_id == channel_id
            and not message.deleted
            and (include_ephemeral or not message.ephemeral)
        ]

    def dm_channel_for(self, user: FakeUser) -> FakeChannel:
        for channel in self.channels.values():
            if channel.is_dm and channel.recipient is user:
                return channel
        channel = FakeChannel(id=self.snowflakes.next(), type=DM, name=None, recipient=user)
        self.channels[channel.id] = channel
        return channel

    # -- permissions -----------------------------------------------------------------------------

    def base_permissions(self, guild: FakeGuild, member: FakeMember) -> int:
        if member.id == guild.owner_id:
            return ALL_PERMISSIONS
        permissions = guild.everyone_role.permissions
        for role_id in member.role_ids:
            role = guild.roles.get(role_id)
            if role is not None:
                permissions |= role.permissions
        return ALL_PERMISSIONS if permissions & ADMINISTRATOR else permissions

    def channel_permissions(self, channel: FakeChannel, user_id: int) -> int:
        """Discord's permission algorithm: base, then @everyone, role and member overwrites."""
        if channel.is_dm:
            return VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES | READ_MESSAGE_HISTORY | ADD_REACTIONS
        assert channel.guild_id is not None
        guild = self.guilds[channel.guild_id]
        member = guild.members.get(user_id)
        if member is None:
            return 0
        permissions = self.base_permissions(guild, member)
        if permissions & ADMINISTRATOR or permissions == ALL_PERMISSIONS:
            return ALL_PERMISSIONS
        by_target = {(o.target_id, o.is_member): o for o in channel.overwrites}
        everyone = by_target.get((guild.id, False))
        if everyone:
            permissions = (permissions & ~everyone.deny) | everyone.allow
        allow = deny = 0
        for role_id in member.role_ids:
            overwrite = by_target.get((role_id, False))
            if overwrite:
                allow |= overwrite.allow
                deny |= overwrite.deny
        permissions = (permissions & ~deny) | allow
        member_overwrite = by_target.get((member.id, True))
        if member_overwrite:
            permissions = (permissions & ~member_overwrite.deny) | member_overwrite.allow
        if not permissions & VIEW_CHANNEL:
            return 0
        return permissions

    # -- payloads --------------------------------------------------------------------------------

    def guild_payload(self, guild: FakeGuild, *, members: bool) -> dict[str, Any]:
        listed = list(guild.members.values()) if members else [guild.members[self.bot.id]]
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(guild.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [role.to_payload() for role in guild.roles.values()],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "max_members": 500000,
            "vanity_url_code": None,
            "premium_tier": guild.premium_tier,
            "premium_subscription_count": 0,
            "preferred_locale": guild.locale,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "incidents_data": None,
            "joined_at": iso(guild.joined_at),
            "large": False,
            "unavailable": False,
            "member_count": len(guild.members),
            "voice_states": [],
            "members": [member.to_payload() for member in listed],
            "channels": [channel.to_payload() for channel in guild.channels.values()],
            "threads": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def rest_guild_payload(self, guild: FakeGuild) -> dict[str, Any]:
        payload = self.guild_payload(guild, members=False)
        for key in ("joined_at", "large", "unavailable", "member_count", "voice_states", "members", "channels",
                    "threads", "presences", "stage_instances", "guild_scheduled_events", "soundboard_sounds"):
            payload.pop(key)
        return payload

    def message_payload(self, message: FakeMessage, *, for_gateway: bool = False) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(message.id),
            "channel_id": str(message.channel_id),
            "type": message.type,
            "content": message.content,
            "author": message.author.to_payload(),
            "timestamp": iso(message.created_at),
            "edited_timestamp": iso(message.edited_at) if message.edited_at else None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [attachment.to_payload(self.base_url) for attachment in message.attachments],
            "embeds": [dict(embed) for embed in message.embeds],
            "components": [dict(component) for component in message.components],
            "pinned": False,
            "flags": message.flags,
        }
        if message.reactions:
            payload["reactions"] = [
                {
                    "emoji": dict(reaction.emoji),
                    "count": len(reaction.user_ids),
                    "count_details": {"burst": 0, "normal": len(reaction.user_ids)},
                    "me": self.bot.id in reaction.user_ids,
                    "me_burst": False,
                    "burst_colors": [],
                }
                for reaction in message.reactions.values()
                if reaction.user_ids
            ]
        if message.webhook_id is not None:
            payload["webhook_id"] = str(message.webhook_id)
        if message.application_id is not None:
            payload["application_id"] = str(message.application_id)
        if message.reference_id is not None:
            payload["message_reference"] = {
                "type": 0,
                "message_id": str(message.reference_id),
                "channel_id": str(message.channel_id),
            }
            if message.guild_id is not None:
                payload["message_reference"]["guild_id"] = str(message.guild_id)
            referenced = self.messages.get(message.reference_id)
            payload["referenced_message"] = (
                None if referenced is None or referenced.deleted else self.message_payload(referenced)
            )
        if message.interaction_metadata is not None:
            payload["interaction_metadata"] = dict(message.interaction_metadata)
        if message.legacy_interaction is not None:
            payload["interaction"] = dict(message.legacy_interaction)
        if for_gateway and message.guild_id is not None:
            payload["guild_id"] = str(message.guild_id)
            member = self.member(message.guild_id, message.author.id)
            if member is not None:
                payload["member"] = member.to_payload(with_user=False)
        return payload

    def new_attachment(
        self,
        *,
        filename: str,
        data: bytes,
        path_prefix: str,
        content_type: str | None = None,
        description: str | None = None,
        ephemeral: bool = False,
    ) -> FakeAttachment:
        attachment_id = self.snowflakes.next()
        width, height = image_size(data)
        attachment = FakeAttachment(
            id=attachment_id,
            filename=filename,
            data=data,
            url_path=f"/cdn/{path_prefix}/{attachment_id}/{urllib.parse.quote(filename)}",
            content_type=content_type or guess_content_type(filename),
            width=width,
            height=height,
            description=description,
            ephemeral=ephemeral,
        )
        self.attachments[attachment_id] = attachment
        return attachment
