"""FakeDiscord: the loopback server plus the API tests use to play Discord's users."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import Any, TypeVar

import discord
import discord.asset
import discord.gateway
import discord.http
import yarl
from aiohttp import web

from .gateway import Gateway
from .interactions import (
    InvalidInvocation,
    InvocationContext,
    Resolved,
    base_interaction_payload,
    build_command_options,
    check_command_usable,
    command_data,
    find_registered_command,
    modal_submit_components,
)
from .ratelimits import InjectedRateLimit, RateLimiter, RateLimits
from .rest import InteractionTiming, RestApi, apply_reaction
from .state import (
    APPLICATION_COMMAND,
    APPLICATION_COMMAND_AUTOCOMPLETE,
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    DEFAULT_FILESIZE_LIMIT,
    GUILD_TEXT,
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MEMBERS,
    INTENT_GUILD_MESSAGES,
    INTENT_GUILDS,
    INTENT_MESSAGE_CONTENT,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
    PRIVILEGED_INTENTS,
    DiscordState,
    FakeChannel,
    FakeClock,
    FakeGuild,
    FakeInteraction,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    PermissionOverwrite,
    RecordedRequest,
    SnowflakeFactory,
    parse_emoji,
    walk_components,
)

_T = TypeVar("_T")

# Pass these to the bot's constructor: on_ready otherwise waits 2 s after the last GUILD_CREATE.
CLIENT_OPTIONS: dict[str, Any] = {"guild_ready_timeout": 0.05}

_REAL_API_BASE = "https://discord.com/api/v10"


class FakeDiscord:
    """A loopback Discord that a real discord.py client logs into.

    Use `async with FakeDiscord() as fake:` (or `fake_discord()`): it starts the server on a
    random 127.0.0.1 port and points discord.py's REST base, gateway URL and CDN base at it,
    restoring them on exit.
    """

    def __init__(
        self,
        *,
        bot_name: str = "easel",
        token: str = "fake-bot-token",
        interaction_deadline: float = 3.0,
        token_lifetime: float = 15 * 60.0,
        rate_limits: RateLimits = RateLimits(),
        heartbeat_interval: float = 41.25,
        allowed_privileged_intents: int = PRIVILEGED_INTENTS,
    ) -> None:
        clock = FakeClock()
        snowflakes = SnowflakeFactory(clock)
        application_id = snowflakes.next()
        # A bot user's id is its application's id.
        bot = FakeUser(id=application_id, name=bot_name, bot=True)
        self.state = DiscordState(clock=clock, snowflakes=snowflakes, bot=bot, application_id=application_id,
                                  token=token)
        self.state.users[bot.id] = bot
        self.timing = InteractionTiming(deadline=interaction_deadline, token_lifetime=token_lifetime)
        self.limiter = RateLimiter(limits=rate_limits, clock_monotonic=clock.monotonic)
        self.gateway = Gateway(
            self.state,
            heartbeat_interval=heartbeat_interval,
            allowed_privileged_intents=allowed_privileged_intents,
            resume_url=lambda: self.base_url.replace("http://", "ws://") + "/resume",
        )
        self.rest = RestApi(self.state, self.gateway, self.limiter, self.timing,
                            gateway_url=lambda: self.gateway_url)
        self._runner: web.AppRunner | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._saved_globals: tuple[str, yarl.URL, str] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        self.rest.install(app)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/resume", self.gateway.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.state.base_url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        for task in list(self._background):
            with contextlib.suppress(Exception):
                await task
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def patch_discord(self) -> None:
        """Points discord.py's module-level URLs at this server (undone by restore_discord)."""
        if discord.http.Route.BASE != _REAL_API_BASE:
            raise RuntimeError("discord.py already points elsewhere: is another FakeDiscord running?")
        self._saved_globals = (
            discord.http.Route.BASE,
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
            discord.asset.Asset.BASE,
        )
        discord.http.Route.BASE = self.api_url
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        discord.asset.Asset.BASE = self.base_url + "/cdn"

    def restore_discord(self) -> None:
        if self._saved_globals is not None:
            (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
             discord.asset.Asset.BASE) = self._saved_globals
            self._saved_globals = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        try:
            self.patch_discord()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.stop()
        finally:
            self.restore_discord()

    @contextlib.asynccontextmanager
    async def run_client(self, client: discord.Client, *, timeout: float = 10.0) -> AsyncIterator[discord.Client]:
        """Starts client.start(token), waits for on_ready, and closes it cleanly on exit.

        A payload discord.py cannot parse kills its start() task while on_ready may still fire,
        so the task is watched both while waiting and on exit.
        """
        start = asyncio.create_task(client.start(self.token), name="fake-discord-client")
        ready = asyncio.create_task(self._client_ready(client, timeout=timeout))
        try:
            done, _ = await asyncio.wait({start, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if start in done:
                start.result()  # raises what killed it
                raise RuntimeError("the client stopped before it became ready")
            if ready not in done:
                raise TimeoutError(f"the client did not become ready within {timeout}s")
            ready.result()  # raises if the fake never saw READY go out
            yield client
            if start.done():
                start.result()
                raise RuntimeError("the client's connection task ended during the test")
        finally:
            ready.cancel()
            await client.close()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(start, timeout=timeout)

    async def _client_ready(self, client: discord.Client, *, timeout: float) -> None:
        await self.wait_until_ready(timeout)
        while not client.is_ready():  # on_ready follows guild_ready_timeout after the last GUILD_CREATE
            await asyncio.sleep(0.01)

    # -- addresses and records -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.state.base_url

    @property
    def api_url(self) -> str:
        return self.base_url + "/api/v10"

    @property
    def gateway_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/gateway"

    @property
    def token(self) -> str:
        return self.state.token

    @property
    def bot(self) -> FakeUser:
        return self.state.bot

    @property
    def application_id(self) -> int:
        return self.state.application_id

    @property
    def application_owner(self) -> FakeUser:
        """Who GET /oauth2/applications/@me names as owner (Bot.is_owner); set it before login."""
        return self.state.application_owner()

    @application_owner.setter
    def application_owner(self, user: FakeUser) -> None:
        self.state.application_owner_id = user.id

    @property
    def clock(self) -> FakeClock:
        return self.state.clock

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.state.requests

    @property
    def unhandled_requests(self) -> list[RecordedRequest]:
        """Requests to /api routes this fake does not implement (answered 404)."""
        return self.state.unhandled_requests

    def requests_matching(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Recorded requests by method and a regular expression searched in the path."""
        pattern = re.compile(path) if path else None
        return [
            request
            for request in self.state.requests
            if (method is None or request.method == method) and (pattern is None or pattern.search(request.path))
        ]

    @property
    def interaction_deadline(self) -> float:
        return self.timing.deadline

    @interaction_deadline.setter
    def interaction_deadline(self, seconds: float) -> None:
        self.timing.deadline = seconds

    def advance_time(self, seconds: float) -> None:
        """Moves the fake clock forward: ages interaction tokens and deadlines without sleeping."""
        self.state.clock.advance(seconds)
        self.state.changed.notify()

    def inject_rate_limit(
        self,
        *,
        method: str | None = None,
        path: str | None = None,
        times: int = 1,
        retry_after: float = 0.2,
        with_via: bool = True,
        is_global: bool = False,
    ) -> None:
        """Answers the next `times` matching /api requests with 429, whatever the buckets say.

        with_via=False imitates a Cloudflare ban (no Via header, text body): discord.py raises.
        """
        self.limiter.injected.append(InjectedRateLimit(
            method=method,
            path_pattern=re.compile(path) if path else None,
            remaining=times,
            retry_after=retry_after,
            with_via=with_via,
            is_global=is_global,
        ))

    async def wait_for(self, predicate: Callable[[], _T], timeout: float = 15.0) -> _T:
        """Waits until predicate() is truthy (re-checked on every state change) and returns it."""
        return await self.state.changed.wait_for(
            predicate, timeout=timeout, describe=lambda: f"{len(self.state.requests)} requests recorded"
        )

    async def wait_until_ready(self, timeout: float = 15.0) -> None:
        """Waits until a client has identified and received READY and every GUILD_CREATE."""
        await self.wait_for(lambda: bool(self.gateway.live_sessions), timeout)

    async def request_reconnect(self) -> None:
        """Sends op 7 RECONNECT; discord.py reconnects to resume_gateway_url and RESUMEs."""
        await self.gateway.request_reconnect()

    # -- building the world ----------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        if not self.gateway.live_sessions:
            coroutine.close()
            return
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def add_user(self, name: str, *, bot: bool = False, accepts_dms: bool = True) -> FakeUser:
        user = FakeUser(id=self.state.snowflakes.next(), name=name, bot=bot, accepts_dms=accepts_dms)
        self.state.users[user.id] = user
        return user

    def add_guild(
        self,
        name: str = "Test Guild",
        *,
        owner: FakeUser | None = None,
        filesize_limit: int = DEFAULT_FILESIZE_LIMIT,
        premium_tier: int = 0,
        everyone_permissions: int = DEFAULT_EVERYONE_PERMISSIONS,
        bot_permissions: int = DEFAULT_BOT_PERMISSIONS,
        text_channels: Iterable[str] = ("general",),
        locale: str = "en-US",
    ) -> FakeGuild:
        """A guild the bot is in, with @everyone, the bot's managed role, an owner and channels.

        filesize_limit is what the fake enforces (and sends as attachment_size_limit); discord.py's
        own guild.filesize_limit follows premium_tier, so change both together.
        """
        state = self.state
        owner = owner or self.add_user(f"{name.lower().replace(' ', '-')}-owner")
        guild = FakeGuild(
            id=state.snowflakes.next(),
            name=name,
            owner_id=owner.id,
            filesize_limit=filesize_limit,
            premium_tier=premium_tier,
            joined_at=state.clock.now(),
            locale=locale,
        )
        guild.roles[guild.id] = FakeRole(id=guild.id, guild_id=guild.id, name="@everyone",
                                         permissions=everyone_permissions)
        bot_role = FakeRole(id=state.snowflakes.next(), guild_id=guild.id, name=state.bot.name,
                            permissions=bot_permissions, position=1, managed=True, bot_id=state.bot.id)
        guild.roles[bot_role.id] = bot_role
        state.guilds[guild.id] = guild
        self._add_member_to(guild, state.bot, role_ids=[bot_role.id])
        self._add_member_to(guild, owner, role_ids=[])
        for channel_name in text_channels:
            self._new_channel(guild, channel_name)
        self._spawn(self._announce_guild(guild))
        return guild

    async def _announce_guild(self, guild: FakeGuild) -> None:
        for session in self.gateway.live_sessions:
            await self.gateway.send_dispatch(session, "GUILD_CREATE", self.gateway.guild_create_payload(guild, session))

    def _add_member_to(
        self, guild: FakeGuild, user: FakeUser, *, role_ids: list[int], nick: str | None = None
    ) -> FakeMember:
        member = FakeMember(user=user, guild_id=guild.id, role_ids=role_ids, joined_at=self.state.clock.now(),
                            nick=nick)
        guild.members[user.id] = member
        return member

    def add_role(self, guild: FakeGuild, name: str, *, permissions: int = 0) -> FakeRole:
        role = FakeRole(id=self.state.snowflakes.next(), guild_id=guild.id, name=name, permissions=permissions,
                        position=len(guild.roles))
        guild.roles[role.id] = role
        self._spawn(self.gateway.dispatch(
            "GUILD_ROLE_CREATE", {"guild_id": str(guild.id), "role": role.to_payload()}, intents=INTENT_GUILDS))
        return role

    def add_member(
        self,
        guild: FakeGuild,
        user: FakeUser | None = None,
        *,
        name: str | None = None,
        permissions: int | None = None,
        roles: Iterable[FakeRole] = (),
        nick: str | None = None,
    ) -> FakeMember:
        """Adds a member; `permissions` gives them a role of their own with exactly those bits."""
        user = user or self.add_user(name or f"user{len(self.state.users)}")
        role_ids = [role.id for role in roles]
        if permissions is not None:
            role_ids.append(self.add_role(guild, f"{user.name}-role", permissions=permissions).id)
        member = self._add_member_to(guild, user, role_ids=role_ids, nick=nick)
        self._spawn(self.gateway.dispatch(
            "GUILD_MEMBER_ADD", member.to_payload() | {"guild_id": str(guild.id)}, intents=INTENT_GUILD_MEMBERS))
        return member

    def add_channel(
        self,
        guild: FakeGuild,
        name: str,
        *,
        overwrites: Iterable[PermissionOverwrite] = (),
        nsfw: bool = False,
        topic: str | None = None,
    ) -> FakeChannel:
        channel = self._new_channel(guild, name, overwrites=overwrites, nsfw=nsfw, topic=topic)
        self._spawn(self.gateway.dispatch("CHANNEL_CREATE", channel.to_payload(), intents=INTENT_GUILDS))
        return channel

    def _new_channel(
        self,
        guild: FakeGuild,
        name: str,
        *,
        overwrites: Iterable[PermissionOverwrite] = (),
        nsfw: bool = False,
        topic: str | None = None,
    ) -> FakeChannel:
        channel = FakeChannel(id=self.state.snowflakes.next(), type=GUILD_TEXT, name=name, guild_id=guild.id,
                              position=len(guild.channels), topic=topic, nsfw=nsfw, overwrites=list(overwrites))
        guild.channels[channel.id] = channel
        self.state.channels[channel.id] = channel
        return channel

    def dm_channel(self, user: FakeUser) -> FakeChannel:
        return self.state.dm_channel_for(user)

    def upload_attachment(
        self, filename: str, data: bytes, content_type: str | None = None, *, description: str | None = None
    ) -> dict[str, Any]:
        """An attachment a user uploaded for an attachment option; pass it as the option's value."""
        attachment = self.state.new_attachment(
            filename=filename, data=data, content_type=content_type, description=description,
            path_prefix=f"ephemeral-attachments/{self.application_id}", ephemeral=True,
        )
        return attachment.to_payload(self.base_url)

    # -- reading state ---------------------------------------------------------------------------

    def messages(self, channel: FakeChannel | int, *, include_ephemeral: bool = False) -> list[FakeMessage]:
        """Live (not deleted) messages of a channel, oldest first."""
        channel_id = channel if isinstance(channel, int) else channel.id
        return sorted(self.state.channel_messages(channel_id, include_ephemeral=include_ephemeral), key=lambda m: m.id)

    def message(self, message_id: int) -> FakeMessage:
        return self.state.messages[message_id]

    def commands(self, guild: FakeGuild | None = None) -> list[dict[str, Any]]:
        """Registered commands as Discord stores them: global ones, or one guild's."""
        if guild is None:
            return list(self.state.global_commands.values())
        return list(self.state.guild_commands.get(guild.id, {}).values())

    def command(self, name: str, guild: FakeGuild | None = None) -> dict[str, Any]:
        for command in self.commands(guild):
            if command["name"] == name:
                return command
        raise KeyError(f"no registered command {name!r}")

    @property
    def interactions(self) -> list[FakeInteraction]:
        return list(self.state.interactions.values())

    # -- acting as users -------------------------------------------------------------------------

    def _context(
        self, user: FakeUser | FakeMember, guild: FakeGuild | None, channel: FakeChannel | None
    ) -> InvocationContext:
        if isinstance(user, FakeMember):
            user = user.user
        if channel is None:
            if guild is None:
                channel = self.state.dm_channel_for(user)
            else:
                channel = next(c for c in guild.channels.values() if c.type == GUILD_TEXT)
        elif guild is None and channel.guild_id is not None:
            guild = self.state.guilds[channel.guild_id]
        if guild is not None and user.id not in guild.members:
            raise InvalidInvocation(f"{user.name} is not a member of {guild.name}")
        return InvocationContext(state=self.state, user=user, guild=guild, channel=channel)

    def _require_connection(self) -> None:
        if not self.gateway.connected():
            raise RuntimeError("no client is connected to the fake gateway")

    async def _dispatch_interaction(
        self,
        context: InvocationContext,
        *,
        kind: int,
        data: dict[str, Any],
        locale: str,
        command_name: str | None = None,
        custom_id: str | None = None,
        source: FakeMessage | None = None,
    ) -> FakeInteraction:
        self._require_connection()
        state = self.state
        interaction_id = state.snowflakes.next()
        token = state.new_interaction_token()
        payload = base_interaction_payload(context, interaction_id=interaction_id, token=token, kind=kind, data=data,
                                           locale=locale)
        if source is not None:
            payload["message"] = state.message_payload(source)
        interaction = FakeInteraction(
            id=interaction_id,
            token=token,
            type=kind,
            user=context.user,
            guild_id=None if context.guild is None else context.guild.id,
            channel_id=context.channel.id,
            created_at=state.clock.elapsed(),
            payload=payload,
            state=state,
            command_name=command_name,
            custom_id=custom_id,
            source_message_id=None if source is None else source.id,
        )
        state.interactions[interaction_id] = interaction
        state.interactions_by_token[token] = interaction
        await self.gateway.dispatch("INTERACTION_CREATE", payload)
        return interaction

    async def invoke_command(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        user: FakeUser | FakeMember,
        guild: FakeGuild | None = None,
        channel: FakeChannel | None = None,
        subcommand: str | None = None,
        resolved: dict[str, dict[str, Any]] | None = None,
        locale: str = "en-US",
        ignore_default_permissions: bool = False,
    ) -> FakeInteraction:
        """A user runs a registered slash command; returns at once with the pending interaction.

        Option values: str/int/float/bool, FakeUser/FakeMember/FakeRole/FakeChannel, and for
        attachment options fake.upload_attachment(...) or (filename, bytes). `subcommand` is
        "sub" or "group sub". `resolved` merges extra entries into data.resolved.
        ignore_default_permissions simulates an admin override of default_member_permissions.
        """
        context = self._context(user, guild, channel)
        command = find_registered_command(self.state, name, context.guild)
        check_command_usable(context, command, ignore_default_permissions=ignore_default_permissions)
        collected = Resolved()
        built = build_command_options(context, command, dict(options or {}), subcommand=subcommand, focused=None,
                                      resolved=collected)
        for key, entries in (resolved or {}).items():
            getattr(collected, key).update(entries)
        return await self._dispatch_interaction(
            context, kind=APPLICATION_COMMAND, data=command_data(command, built, collected), locale=locale,
            command_name=name,
        )

    async def invoke_autocomplete(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        focused: str,
        user: FakeUser | FakeMember,
        guild: FakeGuild | None = None,
        channel: FakeChannel | None = None,
        subcommand: str | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        """A user types into an autocomplete option; the bot's choices land in .autocomplete_choices."""
        context = self._context(user, guild, channel)
        command = find_registered_command(self.state, name, context.guild)
        collected = Resolved()
        built = build_command_options(context, command, dict(options or {}), subcommand=subcommand, focused=focused,
                                      resolved=collected)
        return await self._dispatch_interaction(
            context, kind=APPLICATION_COMMAND_AUTOCOMPLETE, data=command_data(command, built, collected),
            locale=locale, command_name=name,
        )

    def _find_component(self, message: FakeMessage, custom_id: str) -> dict[str, Any]:
        if message.deleted:
            raise InvalidInvocation(f"message {message.id} was deleted")
        for component in walk_components(message.components):
            if component.get("custom_id") == custom_id:
                if component.get("disabled"):
                    raise InvalidInvocation(f"component {custom_id!r} is disabled")
                return component
        raise InvalidInvocation(f"message {message.id} has no component {custom_id!r}; it has {message.custom_ids()}")

    def _message(self, message: FakeMessage | int) -> FakeMessage:
        return message if isinstance(message, FakeMessage) else self.state.messages[message]

    async def click_button(
        self, message: FakeMessage | int, custom_id: str, *, user: FakeUser | FakeMember, locale: str = "en-US"
    ) -> FakeInteraction:
        """A user clicks a button on a message (component interaction, type 3)."""
        message = self._message(message)
        component = self._find_component(message, custom_id)
        if component.get("type") != 2:
            raise InvalidInvocation(f"component {custom_id!r} is not a button")
        context = self._context(user, None, self.state.channels[message.channel_id])
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": 2}
        if "id" in component:
            data["id"] = component["id"]
        return await self._dispatch_interaction(context, kind=MESSAGE_COMPONENT, data=data, locale=locale,
                                                custom_id=custom_id, source=message)

    async def choose_in_select(
        self,
        message: FakeMessage | int,
        custom_id: str,
        values: list[str],
        *,
        user: FakeUser | FakeMember,
        locale: str = "en-US",
    ) -> FakeInteraction:
        """A user picks values in a string select menu."""
        message = self._message(message)
        component = self._find_component(message, custom_id)
        if component.get("type") != 3:
            raise InvalidInvocation(f"component {custom_id!r} is not a string select")
        offered = [option["value"] for option in component.get("options", [])]
        if any(value not in offered for value in values):
            raise InvalidInvocation(f"select {custom_id!r} offers {offered}, not {values}")
        if not component.get("min_values", 1) <= len(values) <= component.get("max_values", 1):
            raise InvalidInvocation(f"select {custom_id!r} takes between {component.get('min_values', 1)} and "
                                    f"{component.get('max_values', 1)} values")
        context = self._context(user, None, self.state.channels[message.channel_id])
        data = {"custom_id": custom_id, "component_type": 3, "values": list(values)}
        return await self._dispatch_interaction(context, kind=MESSAGE_COMPONENT, data=data, locale=locale,
                                                custom_id=custom_id, source=message)

    async def submit_modal(
        self, interaction: FakeInteraction, values: dict[str, Any], *, user: FakeUser | FakeMember | None = None
    ) -> FakeInteraction:
        """The user fills in and submits the modal the bot answered `interaction` with."""
        if interaction.modal is None:
            raise InvalidInvocation(f"interaction {interaction.id} was not answered with a modal")
        source = None
        if interaction.source_message_id is not None:
            source = self.state.messages[interaction.source_message_id]
        guild = None if interaction.guild_id is None else self.state.guilds[interaction.guild_id]
        context = self._context(user or interaction.user, guild, self.state.channels[interaction.channel_id])
        data = {
            "custom_id": interaction.modal["custom_id"],
            "components": modal_submit_components(interaction.modal, values),
        }
        return await self._dispatch_interaction(context, kind=MODAL_SUBMIT, data=data,
                                                locale=interaction.payload["locale"],
                                                custom_id=interaction.modal["custom_id"], source=source)

    async def add_reaction(
        self, message: FakeMessage | int, emoji: str, *, user: FakeUser | FakeMember, channel_id: int | None = None
    ) -> None:
        """A user reacts to a message (MESSAGE_REACTION_ADD with member, type 0, burst false)."""
        message = self._message(message)
        if channel_id is not None and channel_id != message.channel_id:
            raise InvalidInvocation(f"message {message.id} is not in channel {channel_id}")
        self._require_connection()
        user = user.user if isinstance(user, FakeMember) else user
        await apply_reaction(self.state, self.gateway, message, parse_emoji(emoji), user, add=True)

    async def remove_reaction(self, message: FakeMessage | int, emoji: str, *, user: FakeUser | FakeMember) -> None:
        message = self._message(message)
        self._require_connection()
        user = user.user if isinstance(user, FakeMember) else user
        await apply_reaction(self.state, self.gateway, message, parse_emoji(emoji), user, add=False)

    async def send_message(
        self, channel: FakeChannel, content: str, *, user: FakeUser | FakeMember
    ) -> FakeMessage:
        """A user posts a plain message (MESSAGE_CREATE; content reaches bots with the message_content intent)."""
        user = user.user if isinstance(user, FakeMember) else user
        message = FakeMessage(id=self.state.snowflakes.next(), channel_id=channel.id, guild_id=channel.guild_id,
                              author=user, content=content, created_at=self.state.clock.now())
        message.history.append(message.snapshot(self.state.clock.elapsed()))
        self.state.messages[message.id] = message
        channel.last_message_id = message.id
        self.state.changed.notify()
        payload = self.state.message_payload(message, for_gateway=True)
        intent = INTENT_DIRECT_MESSAGES if channel.guild_id is None else INTENT_GUILD_MESSAGES
        for session in self.gateway.live_sessions:
            if session.wants(intent):
                visible = dict(payload)
                hidden = channel.guild_id is not None and self.bot.mention not in content
                if hidden and not session.intents & INTENT_MESSAGE_CONTENT:
                    visible.update(content="", embeds=[], attachments=[], components=[])
                await self.gateway.send_dispatch(session, "MESSAGE_CREATE", visible)
        return message


@contextlib.asynccontextmanager
async def fake_discord(**options: Any) -> AsyncIterator[FakeDiscord]:
    """`async with fake_discord() as fake:` -- a started FakeDiscord with discord.py pointed at it."""
    async with FakeDiscord(**options) as fake:
        yield fake

