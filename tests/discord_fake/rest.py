"""The REST API under /api/v10, the attachment CDN, and request recording.

Every JSON answer carries `Content-Type: application/json` exactly (discord.py compares the
header verbatim) and every /api answer carries X-RateLimit-* headers.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .errors import (
    CANNOT_EDIT_OTHER_USERS_MESSAGE,
    CANNOT_SEND_EMPTY_MESSAGE,
    CANNOT_SEND_MESSAGES_TO_USER,
    INTERACTION_ALREADY_ACKNOWLEDGED,
    INVALID_WEBHOOK_TOKEN,
    MISSING_ACCESS,
    MISSING_PERMISSIONS,
    UNKNOWN_CHANNEL,
    UNKNOWN_EMOJI,
    UNKNOWN_GUILD,
    UNKNOWN_INTERACTION,
    UNKNOWN_MEMBER,
    UNKNOWN_MESSAGE,
    UNKNOWN_USER,
    UNKNOWN_WEBHOOK,
    DiscordHTTPError,
    FormErrors,
    not_found,
)
from .gateway import Gateway
from .ratelimits import RateLimiter, Verdict, round_up_ms, too_many_requests_headers
from .state import (
    ADD_REACTIONS,
    APPLICATION_COMMAND,
    APPLICATION_COMMAND_AUTOCOMPLETE,
    ATTACH_FILES,
    DEFAULT_FILESIZE_LIMIT,
    FLAG_COMPONENTS_V2,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    FLAG_SUPPRESS_EMBEDS,
    FLAG_SUPPRESS_NOTIFICATIONS,
    INTENT_DIRECT_MESSAGE_REACTIONS,
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MESSAGE_REACTIONS,
    INTENT_GUILD_MESSAGES,
    MANAGE_MESSAGES,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
    PLACEHOLDER_PNG,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    VIEW_CHANNEL,
    DiscordState,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMessage,
    FakeReaction,
    FakeUser,
    RecordedRequest,
    ResponseEvent,
    emoji_key,
    parse_emoji,
)
from .validation import (
    UploadedFile,
    validate_autocomplete_result,
    validate_commands,
    validate_message,
    validate_modal,
)

_log = logging.getLogger(__name__)

API_PREFIX = "/api/v10"
# Parsed request bodies, kept on the request for handlers and the request log.
_BODY_KEY: Any = web.RequestKey("fake_body", tuple) if hasattr(web, "RequestKey") else "fake_body"
JSON_CONTENT_TYPE = "application/json"

# Callback types each interaction type accepts.
_CALLBACKS_FOR = {
    APPLICATION_COMMAND: frozenset({4, 5, 9}),
    MESSAGE_COMPONENT: frozenset({4, 5, 6, 7, 9}),
    APPLICATION_COMMAND_AUTOCOMPLETE: frozenset({8}),
    MODAL_SUBMIT: frozenset({4, 5, 6, 7}),
}
_CREATE_FLAGS = FLAG_SUPPRESS_EMBEDS | FLAG_SUPPRESS_NOTIFICATIONS | FLAG_COMPONENTS_V2
MESSAGE_TYPE_DEFAULT = 0
MESSAGE_TYPE_REPLY = 19
MESSAGE_TYPE_CHAT_INPUT_COMMAND = 20


@dataclass
class InteractionTiming:
    deadline: float = 3.0  # seconds to acknowledge an interaction
    token_lifetime: float = 15 * 60.0  # seconds an interaction token stays valid


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(data).encode(),
        headers={"Content-Type": JSON_CONTENT_TYPE, **(headers or {})},
    )


def no_content() -> web.Response:
    return web.Response(status=204)


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true")


def _snowflake(text: str, *, code: int, what: str) -> int:
    if not text.isdigit():
        raise not_found(code, what)
    return int(text)


def _is_plausible_unicode_emoji(name: str) -> bool:
    """Discord rejects reaction text that is not an emoji (e.g. 'thumbsup' or ':ok:')."""
    if not name or any(char.isascii() and not char.isdigit() and char not in "#*" for char in name):
        return False
    return any(unicodedata.category(char) == "So" or char == "\u20e3" for char in name)


class _TooManyRequests(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


class RestApi:
    def __init__(
        self,
        state: DiscordState,
        gateway: Gateway,
        limiter: RateLimiter,
        timing: InteractionTiming,
        *,
        gateway_url: Callable[[], str],
    ) -> None:
        self._state = state
        self._gateway = gateway
        self._limiter = limiter
        self._timing = timing
        self._gateway_url = gateway_url
        self._buckets: dict[tuple[str, str], tuple[str, str | None]] = {}
        self._routes: list[web.RouteDef] = []
        self._register_routes()

    # -- wiring --------------------------------------------------------------------------------

    def install(self, app: web.Application) -> None:
        app.middlewares.append(self._middleware)
        app.add_routes(self._routes)

    def _add(
        self,
        method: str,
        path: str,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        *,
        bucket: str = "default",
        major: str | None = None,
    ) -> None:
        full = API_PREFIX + path
        self._buckets[(method, full)] = (bucket, major)
        self._routes.append(web.route(method, full, handler))

    def _register_routes(self) -> None:
        add = self._add
        add("GET", "/users/@me", self.get_current_user)
        add("POST", "/users/@me/channels", self.create_dm)
        add("GET", "/users/{user_id}", self.get_user)
        add("GET", "/oauth2/applications/@me", self.get_application)
        add("GET", "/applications/@me", self.get_application)
        add("GET", "/gateway", self.get_gateway)
        add("GET", "/gateway/bot", self.get_gateway_bot)
        add("GET", "/applications/{app_id}/commands", self.get_global_commands)
        add("PUT", "/applications/{app_id}/commands", self.put_global_commands)
        add("POST", "/applications/{app_id}/commands", self.post_global_command)
        add("DELETE", "/applications/{app_id}/commands/{command_id}", self.delete_global_command)
        add("GET", "/applications/{app_id}/guilds/{guild_id}/commands", self.get_guild_commands, major="guild_id")
        add("PUT", "/applications/{app_id}/guilds/{guild_id}/commands", self.put_guild_commands, major="guild_id")
        add("POST", "/applications/{app_id}/guilds/{guild_id}/commands", self.post_guild_command, major="guild_id")
        add("POST", "/interactions/{interaction_id}/{token}/callback", self.interaction_callback, major="token")
        add("POST", "/webhooks/{app_id}/{token}", self.webhook_execute, bucket="interaction_webhook", major="token")
        add("GET", "/webhooks/{app_id}/{token}/messages/{message_id}", self.webhook_get_message, major="token")
        add("PATCH", "/webhooks/{app_id}/{token}/messages/{message_id}", self.webhook_edit_message,
            bucket="interaction_webhook", major="token")
        add("DELETE", "/webhooks/{app_id}/{token}/messages/{message_id}", self.webhook_delete_message,
            bucket="interaction_webhook", major="token")
        add("GET", "/channels/{channel_id}", self.get_channel, major="channel_id")
        add("GET", "/channels/{channel_id}/messages", self.get_channel_messages, major="channel_id")
        add("POST", "/channels/{channel_id}/messages", self.create_channel_message,
            bucket="channel_messages", major="channel_id")
        add("POST", "/channels/{channel_id}/typing", self.trigger_typing, major="channel_id")
        add("GET", "/channels/{channel_id}/messages/{message_id}", self.get_channel_message, major="channel_id")
        add("PATCH", "/channels/{channel_id}/messages/{message_id}", self.edit_channel_message, major="channel_id")
        add("DELETE", "/channels/{channel_id}/messages/{message_id}", self.delete_channel_message, major="channel_id")
        reaction = "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}"
        add("GET", reaction, self.get_reactions, major="channel_id")
        add("PUT", reaction + "/{user}", self.put_reaction, bucket="reactions", major="channel_id")
        add("DELETE", reaction + "/{user}", self.delete_reaction, bucket="reactions", major="channel_id")
        add("DELETE", "/channels/{channel_id}/messages/{message_id}/reactions", self.clear_reactions,
            bucket="reactions", major="channel_id")
        add("GET", "/guilds/{guild_id}", self.get_guild, major="guild_id")
        add("GET", "/guilds/{guild_id}/channels", self.get_guild_channels, major="guild_id")
        add("GET", "/guilds/{guild_id}/roles", self.get_guild_roles, major="guild_id")
        add("GET", "/guilds/{guild_id}/members/{user_id}", self.get_guild_member, major="guild_id")
        self._routes.append(web.get("/cdn/{tail:.+}", self.cdn))
        self._routes.append(web.get("/media/{tail:.+}", self.cdn))

    # -- middleware: body, auth, rate limits, errors, recording ----------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        is_api = request.path.startswith(API_PREFIX)
        arrived = self._state.clock.monotonic()
        verdict: Verdict | None = None
        error_code: int | None = None
        unhandled = False
        try:
            await self._read_body(request)
            if is_api:
                verdict = self._rate_limit(request, arrived=arrived)
                self._check_auth(request)
            response = await handler(request)
        except DiscordHTTPError as error:
            response = json_response(error.body(), status=error.status)
            error_code = error.code
        except _TooManyRequests as limited:
            response = limited.response
        except web.HTTPException as http_error:
            if not is_api or http_error.status not in (404, 405):
                raise
            unhandled = True
            response = json_response(
                {"message": f"{http_error.status}: {http_error.reason}", "code": 0}, status=http_error.status
            )
        if verdict is not None:
            for key, value in verdict.headers.items():
                response.headers.setdefault(key, value)
        if is_api:
            payload, files = self._raw_body(request)
            record = RecordedRequest(
                at=self._state.clock.since_start(arrived),
                method=request.method,
                path=request.path,
                query=dict(request.query),
                status=response.status,
                json=payload,
                files=tuple((f.field_name, f.filename, len(f.data)) for f in files),
                error_code=error_code,
            )
            self._state.requests.append(record)
            if unhandled:
                self._state.unhandled_requests.append(record)
                _log.warning("fake discord has no route for %s %s", request.method, request.path)
            self._state.changed.notify()
        return response

    async def _read_body(self, request: web.Request) -> None:
        """Reads the whole body first, so an early error never leaves an upload half-sent."""
        payload: Any = None
        files: list[UploadedFile] = []
        if request.can_read_body:
            if request.content_type.startswith("multipart/"):
                reader = await request.multipart()
                while (part := await reader.next()) is not None:
                    name = part.name or ""
                    if name == "payload_json":
                        payload = json.loads(await part.text())
                    else:
                        data = await part.read(decode=False)
                        files.append(UploadedFile(field_name=name, filename=part.filename or name, data=bytes(data)))
            else:
                raw = await request.read()
                if raw:
                    try:
                        payload = json.loads(raw)
                    except ValueError:
                        raise DiscordHTTPError(400, 50109, "The request body contains invalid JSON.") from None
        request[_BODY_KEY] = (payload, files)

    @staticmethod
    def _raw_body(request: web.Request) -> tuple[Any, list[UploadedFile]]:
        return request.get(_BODY_KEY, (None, []))

    def _body(self, request: web.Request) -> tuple[dict[str, Any], list[UploadedFile]]:
        payload, files = self._raw_body(request)
        return (payload if isinstance(payload, dict) else {}), files

    def _check_auth(self, request: web.Request) -> None:
        # Interaction callbacks and webhooks authenticate with the token in the URL.
        if request.path.startswith((API_PREFIX + "/webhooks/", API_PREFIX + "/interactions/")):
            return
        if request.headers.get("Authorization") != f"Bot {self._state.token}":
            raise DiscordHTTPError(401, 0, "401: Unauthorized")

    def _rate_limit(self, request: web.Request, *, arrived: float) -> Verdict | None:
        injected = self._limiter.take_injected(request.method, request.path)
        if injected is not None:
            headers = too_many_requests_headers(
                injected.retry_after, with_via=injected.with_via, is_global=injected.is_global
            )
            if injected.with_via:
                body = {"message": "You are being rate limited.", "retry_after": injected.retry_after,
                        "global": injected.is_global, "code": 0}
                raise _TooManyRequests(json_response(body, status=429, headers=headers))
            # What Cloudflare sends when it bans an IP: no Via header, not JSON.
            raise _TooManyRequests(web.Response(status=429, text="error code: 1015", headers=headers))
        route = request.match_info.route
        canonical = route.resource.canonical if route.resource is not None else request.path
        bucket, major = self._buckets.get((request.method, canonical), ("default", None))
        major_value = request.match_info.get(major, "") if major else ""
        key = major_value if bucket != "default" else f"{request.method} {canonical} {major_value}"
        verdict = self._limiter.check(bucket, key, now=arrived)
        if not verdict.allowed:
            headers = too_many_requests_headers(
                verdict.retry_after, with_via=True, is_global=False, bucket_headers=verdict.headers
            )
            body = {"message": "You are being rate limited.", "retry_after": round_up_ms(verdict.retry_after),
                    "global": False, "code": 0}
            raise _TooManyRequests(json_response(body, status=429, headers=headers))
        return verdict

    # -- users, application, gateway -----------------------------------------------------------

    async def get_current_user(self, request: web.Request) -> web.Response:
        bot = self._state.bot
        return json_response(bot.to_payload() | {"verified": True, "mfa_enabled": False, "email": None,
                                                 "locale": "en-US"})

    async def get_user(self, request: web.Request) -> web.Response:
        user_id = _snowflake(request.match_info["user_id"], code=UNKNOWN_USER, what="User")
        user = self._state.users.get(user_id)
        if user is None:
            raise not_found(UNKNOWN_USER, "User")
        return json_response(user.to_payload())

    async def create_dm(self, request: web.Request) -> web.Response:
        payload, _ = self._body(request)
        recipient = str(payload.get("recipient_id", ""))
        user = self._state.users.get(int(recipient)) if recipient.isdigit() else None
        if user is None:
            raise DiscordHTTPError(400, 50033, "Invalid Recipient(s)")
        return json_response(self._state.dm_channel_for(user).to_payload())

    async def get_application(self, request: web.Request) -> web.Response:
        state = self._state
        owner = state.application_owner()
        return json_response({
            "id": str(state.application_id),
            "name": state.bot.name,
            "icon": None,
            "description": "",
            "summary": "",
            "rpc_origins": [],
            "bot_public": True,
            "bot_require_code_grant": False,
            "bot": state.bot.to_payload(),
            "owner": owner.to_payload(),
            "team": None,
            "verify_key": "0" * 64,
            "flags": 0,
            "tags": [],
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "role_connections_verification_url": None,
            "approximate_guild_count": len(state.guilds),
            "integration_types_config": {"0": {}},
        })

    async def get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self._gateway_url()})

    async def get_gateway_bot(self, request: web.Request) -> web.Response:
        return json_response({
            "url": self._gateway_url(),
            "shards": 1,
            "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": 1},
        })

    # -- application commands ------------------------------------------------------------------

    def _check_app(self, request: web.Request) -> None:
        if request.match_info["app_id"] != str(self._state.application_id):
            raise DiscordHTTPError(403, MISSING_ACCESS, "Missing Access")

    def _command_guild(self, request: web.Request) -> int:
        guild_id = _snowflake(request.match_info["guild_id"], code=UNKNOWN_GUILD, what="Guild")
        guild = self._state.guilds.get(guild_id)
        if guild is None or self._state.bot.id not in guild.members:
            raise DiscordHTTPError(403, MISSING_ACCESS, "Missing Access")
        return guild_id

    def _store_commands(
        self, existing: dict[int, dict[str, Any]], incoming: list[dict[str, Any]], guild_id: int | None
    ) -> dict[int, dict[str, Any]]:
        """Normalises commands as Discord returns them, keeping ids of commands that persist."""
        by_key = {(command["name"], command.get("type", 1)): command for command in existing.values()}
        stored: dict[int, dict[str, Any]] = {}
        for command in incoming:
            kind = command.get("type", 1)
            previous = by_key.get((command["name"], kind))
            command_id = previous["id"] if previous else str(self._state.snowflakes.next())
            normalised: dict[str, Any] = {
                "id": command_id,
                "application_id": str(self._state.application_id),
                "version": str(self._state.snowflakes.next()),
                "type": kind,
                "name": command["name"],
                "name_localizations": command.get("name_localizations"),
                "description": command.get("description", ""),
                "description_localizations": command.get("description_localizations"),
                "default_member_permissions": (
                    None if command.get("default_member_permissions") is None
                    else str(command["default_member_permissions"])  # Discord answers with a string
                ),
                "dm_permission": command.get("dm_permission", True),
                "nsfw": command.get("nsfw", False),
                "contexts": command.get("contexts"),
                "integration_types": command.get("integration_types") or [0],
            }
            if command.get("options"):
                normalised["options"] = command["options"]
            if guild_id is not None:
                normalised["guild_id"] = str(guild_id)
            stored[int(command_id)] = normalised
        return stored

    async def get_global_commands(self, request: web.Request) -> web.Response:
        self._check_app(request)
        return json_response(list(self._state.global_commands.values()))

    async def put_global_commands(self, request: web.Request) -> web.Response:
        self._check_app(request)
        incoming, _ = self._raw_body(request)
        validate_commands(incoming)
        self._state.global_commands = self._store_commands(self._state.global_commands, incoming, None)
        self._state.changed.notify()
        return json_response(list(self._state.global_commands.values()))

    async def post_global_command(self, request: web.Request) -> web.Response:
        self._check_app(request)
        payload, _ = self._body(request)
        merged = [c for c in self._state.global_commands.values()
                  if (c["name"], c["type"]) != (payload.get("name"), payload.get("type", 1))]
        validate_commands([payload])
        stored = self._store_commands(self._state.global_commands, [payload], None)
        self._state.global_commands = {int(c["id"]): c for c in merged} | stored
        self._state.changed.notify()
        return json_response(next(iter(stored.values())), status=201)

    async def delete_global_command(self, request: web.Request) -> web.Response:
        self._check_app(request)
        command_id = _snowflake(request.match_info["command_id"], code=10063, what="application command")
        if self._state.global_commands.pop(command_id, None) is None:
            raise not_found(10063, "application command")
        return no_content()

    async def get_guild_commands(self, request: web.Request) -> web.Response:
        self._check_app(request)
        guild_id = self._command_guild(request)
        return json_response(list(self._state.guild_commands.get(guild_id, {}).values()))

    async def put_guild_commands(self, request: web.Request) -> web.Response:
        self._check_app(request)
        guild_id = self._command_guild(request)
        incoming, _ = self._raw_body(request)
        validate_commands(incoming)
        existing = self._state.guild_commands.get(guild_id, {})
        self._state.guild_commands[guild_id] = self._store_commands(existing, incoming, guild_id)
        self._state.changed.notify()
        return json_response(list(self._state.guild_commands[guild_id].values()))

    async def post_guild_command(self, request: web.Request) -> web.Response:
        self._check_app(request)
        guild_id = self._command_guild(request)
        payload, _ = self._body(request)
        validate_commands([payload])
        existing = self._state.guild_commands.get(guild_id, {})
        replaced = (payload.get("name"), payload.get("type", 1))
        kept = {k: c for k, c in existing.items() if (c["name"], c["type"]) != replaced}
        stored = self._store_commands(existing, [payload], guild_id)
        self._state.guild_commands[guild_id] = kept | stored
        self._state.changed.notify()
        return json_response(next(iter(stored.values())), status=201)

    # -- messages: shared create/edit logic -----------------------------------------------------

    def _filesize_limit(self, channel: FakeChannel) -> int:
        if channel.guild_id is None:
            return DEFAULT_FILESIZE_LIMIT
        return self._state.guilds[channel.guild_id].filesize_limit

    def _new_attachment(self, file: UploadedFile, channel: FakeChannel, entry: dict[str, Any] | None,
                        *, ephemeral: bool) -> FakeAttachment:
        entry = entry or {}
        return self._state.new_attachment(
            filename=entry.get("filename") or file.filename,
            data=file.data,
            path_prefix=f"attachments/{channel.id}",
            description=entry.get("description"),
            ephemeral=ephemeral,
        )

    def _attachments_after(
        self,
        payload: dict[str, Any],
        files: list[UploadedFile],
        channel: FakeChannel,
        existing: list[FakeAttachment],
        *,
        ephemeral: bool,
    ) -> list[FakeAttachment]:
        """Resolves `attachments` entries: existing ids are kept, small ids point at files[n]."""
        listed = payload.get("attachments")
        by_index = {file.index: file for file in files if file.index is not None}
        used: set[int] = set()
        result: list[FakeAttachment] = []
        if listed is None:
            result = list(existing)
        else:
            existing_by_id = {str(attachment.id): attachment for attachment in existing}
            errors = FormErrors()
            for position, entry in enumerate(listed):
                entry_id = str(entry.get("id", ""))
                if entry_id in existing_by_id:
                    result.append(existing_by_id[entry_id])
                elif entry_id.isdigit() and int(entry_id) in by_index:
                    used.add(int(entry_id))
                    result.append(self._new_attachment(by_index[int(entry_id)], channel, entry, ephemeral=ephemeral))
                else:
                    errors.add(("attachments", position, "id"), "ATTACHMENT_NOT_FOUND",
                               f"Attachment {entry_id} was not found")
            errors.raise_if_any()
        for file in files:
            if file.index is None or file.index not in used:
                result.append(self._new_attachment(file, channel, None, ephemeral=ephemeral))
        return result

    def _kept_count(self, payload: dict[str, Any], existing: list[FakeAttachment]) -> int:
        listed = payload.get("attachments")
        if listed is None:
            return len(existing)
        ids = {str(attachment.id) for attachment in existing}
        return sum(1 for entry in listed if str(entry.get("id")) in ids)

    def _resolve_embed_attachments(
        self, embeds: list[dict[str, Any]], attachments: list[FakeAttachment]
    ) -> list[dict[str, Any]]:
        """Discord rewrites attachment://name URLs in embeds to the uploaded file's CDN URL."""
        by_name = {attachment.filename: attachment for attachment in attachments}
        resolved = []
        for embed in embeds:
            embed = json.loads(json.dumps(embed))
            embed.setdefault("type", "rich")
            for key in ("image", "thumbnail"):
                media = embed.get(key)
                url = (media or {}).get("url", "")
                if url.startswith("attachment://") and url[len("attachment://"):] in by_name:
                    attachment = by_name[url[len("attachment://"):]]
                    payload = attachment.to_payload(self._state.base_url)
                    media.update(url=payload["url"], proxy_url=payload["proxy_url"],
                                 width=attachment.width, height=attachment.height)
            resolved.append(embed)
        return resolved

    def _create_message(
        self,
        *,
        channel: FakeChannel,
        author: FakeUser,
        payload: dict[str, Any],
        files: list[UploadedFile],
        filesize_limit: int,
        flags_mask: int,
        message_type: int = MESSAGE_TYPE_DEFAULT,
        webhook_id: int | None = None,
        interaction: FakeInteraction | None = None,
    ) -> FakeMessage:
        validate_message(payload, files, filesize_limit=filesize_limit, creating=True)
        flags = int(payload.get("flags") or 0) & flags_mask
        ephemeral = bool(flags & FLAG_EPHEMERAL)
        attachments = self._attachments_after(payload, files, channel, [], ephemeral=ephemeral)
        state = self._state
        message = FakeMessage(
            id=state.snowflakes.next(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author=author,
            content=payload.get("content") or "",
            created_at=state.clock.now(),
            type=message_type,
            flags=flags,
            embeds=self._resolve_embed_attachments(payload.get("embeds") or [], attachments),
            attachments=attachments,
            components=list(payload.get("components") or []),
            webhook_id=webhook_id,
            application_id=state.application_id if interaction is not None else None,
            interaction_id=interaction.id if interaction is not None else None,
        )
        self._register_message(message, channel)
        return message

    def _register_message(self, message: FakeMessage, channel: FakeChannel) -> None:
        message.history.append(message.snapshot(self._state.clock.elapsed()))
        self._state.messages[message.id] = message
        if not message.ephemeral:
            channel.last_message_id = message.id
        self._state.changed.notify()

    def _edit_message(
        self, message: FakeMessage, payload: dict[str, Any], files: list[UploadedFile], *, filesize_limit: int
    ) -> None:
        channel = self._state.channels[message.channel_id]
        keep_flags = message.flags & (FLAG_EPHEMERAL | FLAG_COMPONENTS_V2)
        if "flags" in payload and payload["flags"] is not None:
            flags = keep_flags | (int(payload["flags"]) & (FLAG_SUPPRESS_EMBEDS | FLAG_COMPONENTS_V2))
        else:
            flags = keep_flags | (message.flags & FLAG_SUPPRESS_EMBEDS)
        validate_message(
            payload | {"flags": flags},
            files,
            filesize_limit=filesize_limit,
            creating=False,
            kept_attachments=self._kept_count(payload, message.attachments),
        )
        attachments = self._attachments_after(payload, files, channel, message.attachments, ephemeral=message.ephemeral)
        content = (payload.get("content") or "") if "content" in payload else message.content
        embeds = payload.get("embeds") if "embeds" in payload else message.embeds
        components = payload.get("components") if "components" in payload else message.components
        if not (content or embeds or attachments or components):
            raise DiscordHTTPError(400, CANNOT_SEND_EMPTY_MESSAGE, "Cannot send an empty message")
        was_loading = message.loading
        message.content = content
        message.embeds = self._resolve_embed_attachments(list(embeds or []), attachments)
        message.components = list(components or [])
        message.attachments = attachments
        message.flags = flags
        if not was_loading:
            message.edited_at = self._state.clock.now()
        message.history.append(message.snapshot(self._state.clock.elapsed()))
        self._state.changed.notify()

    async def _dispatch_message(self, event: str, message: FakeMessage) -> None:
        if message.ephemeral:
            return
        intents = INTENT_DIRECT_MESSAGES if message.guild_id is None else INTENT_GUILD_MESSAGES
        if event == "MESSAGE_DELETE":
            data: dict[str, Any] = {"id": str(message.id), "channel_id": str(message.channel_id)}
            if message.guild_id is not None:
                data["guild_id"] = str(message.guild_id)
        else:
            data = self._state.message_payload(message, for_gateway=True)
        await self._gateway.dispatch(event, data, intents=intents)

    def _interaction_metadata(self, interaction: FakeInteraction, *, original_id: int | None = None) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "id": str(interaction.id),
            "type": interaction.type,
            "user": interaction.user.to_payload(),
            "authorizing_integration_owners": interaction.payload.get("authorizing_integration_owners", {}),
        }
        if interaction.type == APPLICATION_COMMAND:
            metadata["name"] = interaction.command_name
            metadata["command_type"] = 1
        if interaction.type == MESSAGE_COMPONENT and interaction.source_message_id is not None:
            metadata["interacted_message_id"] = str(interaction.source_message_id)
        if original_id is not None:
            metadata["original_response_message_id"] = str(original_id)
        return metadata

    def _attach_interaction(
        self, message: FakeMessage, interaction: FakeInteraction, *, original_id: int | None
    ) -> None:
        message.interaction_metadata = self._interaction_metadata(interaction, original_id=original_id)
        if interaction.type == APPLICATION_COMMAND:
            message.legacy_interaction = {
                "id": str(interaction.id),
                "type": interaction.type,
                "name": interaction.command_name,
                "user": interaction.user.to_payload(),
            }

    # -- interaction callback -------------------------------------------------------------------

    async def interaction_callback(self, request: web.Request) -> web.Response:
        state = self._state
        interaction_id = _snowflake(request.match_info["interaction_id"], code=UNKNOWN_INTERACTION, what="interaction")
        interaction = state.interactions.get(interaction_id)
        if interaction is None or interaction.token != request.match_info["token"]:
            raise not_found(UNKNOWN_INTERACTION, "interaction")
        if interaction.acknowledged:
            raise DiscordHTTPError(400, INTERACTION_ALREADY_ACKNOWLEDGED, "Interaction has already been acknowledged.")
        if state.clock.elapsed() - interaction.created_at > self._timing.deadline:
            raise not_found(UNKNOWN_INTERACTION, "interaction")
        payload, files = self._body(request)
        kind = payload.get("type")
        data = payload.get("data") or {}
        allowed = _CALLBACKS_FOR.get(interaction.type, frozenset())
        if interaction.type == MODAL_SUBMIT and interaction.source_message_id is None:
            allowed = frozenset({4, 5})
        if kind not in allowed:
            errors = FormErrors()
            errors.add(("type",), "INTERACTION_RESPONSE_TYPE_INVALID",
                       f"Callback type {kind} is not valid for interaction type {interaction.type}")
            errors.raise_if_any()

        channel = state.channels[interaction.channel_id]
        limit = int(interaction.payload["attachment_size_limit"])
        message: FakeMessage | None = None
        created = edited = False
        if kind in (4, 5):
            if kind == 5:
                ephemeral_flag = int(data.get("flags") or 0) & FLAG_EPHEMERAL
                message = FakeMessage(
                    id=state.snowflakes.next(),
                    channel_id=channel.id,
                    guild_id=channel.guild_id,
                    author=state.bot,
                    content="",
                    created_at=state.clock.now(),
                    type=self._response_type(interaction),
                    flags=FLAG_LOADING | ephemeral_flag,
                    webhook_id=state.application_id,
                    application_id=state.application_id,
                    interaction_id=interaction.id,
                )
                self._register_message(message, channel)
            else:
                message = self._create_message(
                    channel=channel,
                    author=state.bot,
                    payload=data,
                    files=files,
                    filesize_limit=limit,
                    flags_mask=_CREATE_FLAGS | FLAG_EPHEMERAL,
                    message_type=self._response_type(interaction),
                    webhook_id=state.application_id,
                    interaction=interaction,
                )
            self._attach_interaction(message, interaction, original_id=None)
            interaction.original_message_id = message.id
            interaction.ephemeral = message.ephemeral
            created = True
        elif kind in (6, 7):
            message = state.messages.get(interaction.source_message_id or 0)
            if message is None or message.deleted:
                raise not_found(UNKNOWN_MESSAGE, "Message")
            if kind == 7:
                self._edit_message(message, data, files, filesize_limit=limit)
                edited = True
            interaction.original_message_id = message.id
            interaction.ephemeral = message.ephemeral
        elif kind == 8:
            validate_autocomplete_result(data)
            interaction.autocomplete_choices = list(data["choices"])
        elif kind == 9:
            validate_modal(data)
            interaction.modal = dict(data)

        interaction.callback_type = kind
        interaction.acknowledged_at = state.clock.elapsed()
        interaction.record_response(ResponseEvent(
            at=state.clock.elapsed(),
            kind="callback",
            callback_type=kind,
            message_id=None if message is None else message.id,
            snapshot=None if message is None else message.history[-1],
        ))
        if message is not None and created:
            await self._dispatch_message("MESSAGE_CREATE", message)
        elif message is not None and edited:
            await self._dispatch_message("MESSAGE_UPDATE", message)

        if not _truthy(request.query.get("with_response")):
            return no_content()
        body: dict[str, Any] = {"interaction": {"id": str(interaction.id), "type": interaction.type}}
        resource: dict[str, Any] = {"type": kind}
        if message is not None:
            body["interaction"].update(
                response_message_id=str(message.id),
                response_message_loading=message.loading,
                response_message_ephemeral=message.ephemeral,
            )
            if kind in (4, 5, 7):
                resource["message"] = state.message_payload(message)
        body["resource"] = resource
        return json_response(body)

    @staticmethod
    def _response_type(interaction: FakeInteraction) -> int:
        return MESSAGE_TYPE_CHAT_INPUT_COMMAND if interaction.type == APPLICATION_COMMAND else MESSAGE_TYPE_DEFAULT

    # -- interaction webhooks (followups and @original) -----------------------------------------

    def _webhook_interaction(self, request: web.Request) -> FakeInteraction:
        state = self._state
        interaction = state.interactions_by_token.get(request.match_info["token"])
        if interaction is None or request.match_info["app_id"] != str(state.application_id):
            raise not_found(UNKNOWN_WEBHOOK, "Webhook")
        if state.clock.elapsed() - interaction.created_at > self._timing.token_lifetime:
            raise DiscordHTTPError(401, INVALID_WEBHOOK_TOKEN, "Invalid Webhook Token")
        if not interaction.acknowledged:
            raise not_found(UNKNOWN_WEBHOOK, "Webhook")
        return interaction

    def _webhook_message(self, interaction: FakeInteraction, message_ref: str) -> tuple[FakeMessage, bool]:
        """The message a webhook route names, and whether it is the original response."""
        if message_ref == "@original":
            message = interaction.original
            is_original = True
        else:
            message_id = _snowflake(message_ref, code=UNKNOWN_MESSAGE, what="Message")
            is_original = message_id == interaction.original_message_id
            known = is_original or message_id in interaction.followup_ids
            message = self._state.messages.get(message_id) if known else None
        if message is None or message.deleted:
            raise not_found(UNKNOWN_MESSAGE, "Message")
        return message, is_original

    async def webhook_execute(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        payload, files = self._body(request)
        state = self._state
        channel = state.channels[interaction.channel_id]
        limit = int(interaction.payload["attachment_size_limit"])
        original = interaction.original
        if interaction.callback_type == 5 and original is not None and original.loading and not original.deleted:
            # Documented legacy behaviour: the first follow-up after a deferred response edits the
            # "thinking" message instead of creating one, keeping the defer's ephemeral state.
            self._edit_message(original, {k: v for k, v in payload.items() if k != "flags"}, files,
                               filesize_limit=limit)
            interaction.record_response(ResponseEvent(at=state.clock.elapsed(), kind="edit_original",
                                                      message_id=original.id, snapshot=original.history[-1]))
            await self._dispatch_message("MESSAGE_UPDATE", original)
            message = original
        else:
            message = self._create_message(
                channel=channel,
                author=state.bot,
                payload=payload,
                files=files,
                filesize_limit=limit,
                flags_mask=_CREATE_FLAGS | FLAG_EPHEMERAL,
                webhook_id=state.application_id,
                interaction=interaction,
            )
            self._attach_interaction(message, interaction, original_id=interaction.original_message_id)
            interaction.followup_ids.append(message.id)
            interaction.record_response(ResponseEvent(at=state.clock.elapsed(), kind="followup",
                                                      message_id=message.id, snapshot=message.history[-1]))
            await self._dispatch_message("MESSAGE_CREATE", message)
        if not _truthy(request.query.get("wait")):
            return no_content()
        return json_response(state.message_payload(message))

    async def webhook_get_message(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        message, _ = self._webhook_message(interaction, request.match_info["message_id"])
        return json_response(self._state.message_payload(message))

    async def webhook_edit_message(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        message, is_original = self._webhook_message(interaction, request.match_info["message_id"])
        payload, files = self._body(request)
        self._edit_message(message, payload, files, filesize_limit=int(interaction.payload["attachment_size_limit"]))
        interaction.record_response(ResponseEvent(
            at=self._state.clock.elapsed(),
            kind="edit_original" if is_original else "edit_followup",
            message_id=message.id,
            snapshot=message.history[-1],
        ))
        await self._dispatch_message("MESSAGE_UPDATE", message)
        return json_response(self._state.message_payload(message))

    async def webhook_delete_message(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        message, is_original = self._webhook_message(interaction, request.match_info["message_id"])
        message.deleted = True
        interaction.record_response(ResponseEvent(
            at=self._state.clock.elapsed(),
            kind="delete_original" if is_original else "delete_followup",
            message_id=message.id,
        ))
        await self._dispatch_message("MESSAGE_DELETE", message)
        return no_content()

    # -- channels and messages (bot token) -------------------------------------------------------

    def _channel(self, request: web.Request, *, needs: int = 0) -> FakeChannel:
        channel_id = _snowflake(request.match_info["channel_id"], code=UNKNOWN_CHANNEL, what="Channel")
        channel = self._state.channels.get(channel_id)
        if channel is None:
            raise not_found(UNKNOWN_CHANNEL, "Channel")
        permissions = self._state.channel_permissions(channel, self._state.bot.id)
        if not permissions & VIEW_CHANNEL:
            raise DiscordHTTPError(403, MISSING_ACCESS, "Missing Access")
        if permissions & needs != needs:
            raise DiscordHTTPError(403, MISSING_PERMISSIONS, "Missing Permissions")
        return channel

    def _channel_message(self, request: web.Request, channel: FakeChannel) -> FakeMessage:
        message_id = _snowflake(request.match_info["message_id"], code=UNKNOWN_MESSAGE, what="Message")
        message = self._state.messages.get(message_id)
        if message is None or message.deleted or message.ephemeral or message.channel_id != channel.id:
            raise not_found(UNKNOWN_MESSAGE, "Message")
        return message

    async def get_channel(self, request: web.Request) -> web.Response:
        return json_response(self._channel(request).to_payload())

    async def trigger_typing(self, request: web.Request) -> web.Response:
        self._channel(request, needs=SEND_MESSAGES)
        return no_content()

    async def get_channel_messages(self, request: web.Request) -> web.Response:
        channel = self._channel(request, needs=READ_MESSAGE_HISTORY)
        messages = sorted(self._state.channel_messages(channel.id), key=lambda m: m.id, reverse=True)
        query = request.query
        if query.get("before", "").isdigit():
            messages = [m for m in messages if m.id < int(query["before"])]
        if query.get("after", "").isdigit():
            messages = [m for m in messages if m.id > int(query["after"])]
        limit = min(max(int(query.get("limit", "50")), 1), 100)
        return json_response([self._state.message_payload(m) for m in messages[:limit]])

    async def create_channel_message(self, request: web.Request) -> web.Response:
        payload, files = self._body(request)
        channel = self._channel(request, needs=SEND_MESSAGES | (ATTACH_FILES if files else 0))
        if channel.is_dm and channel.recipient is not None and not channel.recipient.accepts_dms:
            raise DiscordHTTPError(403, CANNOT_SEND_MESSAGES_TO_USER, "Cannot send messages to this user")
        reference_id = None
        reference = payload.get("message_reference")
        message_type = MESSAGE_TYPE_DEFAULT
        if reference:
            referenced = self._state.messages.get(int(reference.get("message_id", 0)))
            if referenced is None or referenced.deleted or referenced.channel_id != channel.id:
                if reference.get("fail_if_not_exists", True):
                    errors = FormErrors()
                    errors.add(("message_reference",), "REPLIES_UNKNOWN_MESSAGE", "Unknown message")
                    errors.raise_if_any()
            else:
                reference_id = referenced.id
                message_type = MESSAGE_TYPE_REPLY
        message = self._create_message(
            channel=channel,
            author=self._state.bot,
            payload=payload,
            files=files,
            filesize_limit=self._filesize_limit(channel),
            flags_mask=_CREATE_FLAGS,
            message_type=message_type,
        )
        message.reference_id = reference_id
        await self._dispatch_message("MESSAGE_CREATE", message)
        return json_response(self._state.message_payload(message))

    async def get_channel_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request, needs=READ_MESSAGE_HISTORY)
        return json_response(self._state.message_payload(self._channel_message(request, channel)))

    async def edit_channel_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        message = self._channel_message(request, channel)
        if message.author is not self._state.bot:
            raise DiscordHTTPError(
                403, CANNOT_EDIT_OTHER_USERS_MESSAGE, "Cannot edit a message authored by another user"
            )
        payload, files = self._body(request)
        self._edit_message(message, payload, files, filesize_limit=self._filesize_limit(channel))
        await self._dispatch_message("MESSAGE_UPDATE", message)
        return json_response(self._state.message_payload(message))

    async def delete_channel_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        message = self._channel_message(request, channel)
        if message.author is not self._state.bot:
            if channel.is_dm:
                raise DiscordHTTPError(403, 50003, "Cannot execute action on a DM channel")
            if not self._state.channel_permissions(channel, self._state.bot.id) & MANAGE_MESSAGES:
                raise DiscordHTTPError(403, MISSING_PERMISSIONS, "Missing Permissions")
        message.deleted = True
        self._state.changed.notify()
        await self._dispatch_message("MESSAGE_DELETE", message)
        return no_content()

    # -- reactions -------------------------------------------------------------------------------

    def _emoji(self, request: web.Request) -> dict[str, Any]:
        emoji = parse_emoji(request.match_info["emoji"])
        if emoji["id"] is None and not _is_plausible_unicode_emoji(emoji["name"]):
            raise DiscordHTTPError(400, UNKNOWN_EMOJI, "Unknown Emoji")
        return emoji

    async def put_reaction(self, request: web.Request) -> web.Response:
        if request.match_info["user"] != "@me":
            raise DiscordHTTPError(405, 0, "405: Method Not Allowed")
        channel = self._channel(request, needs=READ_MESSAGE_HISTORY)
        message = self._channel_message(request, channel)
        emoji = self._emoji(request)
        key = emoji_key(emoji)
        can_add = self._state.channel_permissions(channel, self._state.bot.id) & ADD_REACTIONS
        if key not in message.reactions and not can_add:
            raise DiscordHTTPError(403, MISSING_PERMISSIONS, "Missing Permissions")
        await apply_reaction(self._state, self._gateway, message, emoji, self._state.bot, add=True)
        return no_content()

    async def delete_reaction(self, request: web.Request) -> web.Response:
        channel = self._channel(request, needs=READ_MESSAGE_HISTORY)
        message = self._channel_message(request, channel)
        emoji = self._emoji(request)
        target = request.match_info["user"]
        if target == "@me":
            user = self._state.bot
        else:
            if not self._state.channel_permissions(channel, self._state.bot.id) & MANAGE_MESSAGES:
                raise DiscordHTTPError(403, MISSING_PERMISSIONS, "Missing Permissions")
            user = self._state.users.get(_snowflake(target, code=UNKNOWN_USER, what="User"))
            if user is None:
                raise not_found(UNKNOWN_USER, "User")
        await apply_reaction(self._state, self._gateway, message, emoji, user, add=False)
        return no_content()

    async def get_reactions(self, request: web.Request) -> web.Response:
        channel = self._channel(request, needs=READ_MESSAGE_HISTORY)
        message = self._channel_message(request, channel)
        reaction = message.reactions.get(emoji_key(self._emoji(request)))
        users = [self._state.users[user_id] for user_id in (reaction.user_ids if reaction else [])]
        return json_response([user.to_payload() for user in users])

    async def clear_reactions(self, request: web.Request) -> web.Response:
        channel = self._channel(request, needs=MANAGE_MESSAGES)
        message = self._channel_message(request, channel)
        message.reactions.clear()
        self._state.changed.notify()
        data: dict[str, Any] = {"message_id": str(message.id), "channel_id": str(channel.id)}
        if channel.guild_id is not None:
            data["guild_id"] = str(channel.guild_id)
        await self._gateway.dispatch("MESSAGE_REACTION_REMOVE_ALL", data, intents=_reaction_intent(message))
        return no_content()

    # -- guilds ----------------------------------------------------------------------------------

    def _guild(self, request: web.Request) -> FakeGuild:
        guild_id = _snowflake(request.match_info["guild_id"], code=UNKNOWN_GUILD, what="Guild")
        guild = self._state.guilds.get(guild_id)
        if guild is None:
            raise not_found(UNKNOWN_GUILD, "Guild")
        if self._state.bot.id not in guild.members:
            raise DiscordHTTPError(403, MISSING_ACCESS, "Missing Access")
        return guild

    async def get_guild(self, request: web.Request) -> web.Response:
        return json_response(self._state.rest_guild_payload(self._guild(request)))

    async def get_guild_channels(self, request: web.Request) -> web.Response:
        return json_response([channel.to_payload() for channel in self._guild(request).channels.values()])

    async def get_guild_roles(self, request: web.Request) -> web.Response:
        return json_response([role.to_payload() for role in self._guild(request).roles.values()])

    async def get_guild_member(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        user_id = _snowflake(request.match_info["user_id"], code=UNKNOWN_MEMBER, what="Member")
        member = guild.members.get(user_id)
        if member is None:
            raise not_found(UNKNOWN_MEMBER, "Member")
        return json_response(member.to_payload())

    # -- CDN -------------------------------------------------------------------------------------

    async def cdn(self, request: web.Request) -> web.Response:
        parts = request.match_info["tail"].split("/")
        if parts[0] in ("attachments", "ephemeral-attachments"):
            attachment = None
            if len(parts) >= 4 and parts[2].isdigit():
                attachment = self._state.attachments.get(int(parts[2]))
            if attachment is None:
                return web.Response(status=404, text="This content is no longer available.")
            content_type = attachment.content_type or "application/octet-stream"
            return web.Response(body=attachment.data, content_type=content_type)
        return web.Response(body=PLACEHOLDER_PNG, content_type="image/png")


def _reaction_intent(message: FakeMessage) -> int:
    return INTENT_DIRECT_MESSAGE_REACTIONS if message.guild_id is None else INTENT_GUILD_MESSAGE_REACTIONS


async def apply_reaction(
    state: DiscordState, gateway: Gateway, message: FakeMessage, emoji: dict[str, Any], user: FakeUser, *, add: bool
) -> bool:
    """Adds or removes one user's reaction and dispatches the event; False when nothing changed."""
    key = emoji_key(emoji)
    reaction = message.reactions.get(key)
    if add:
        if reaction is None:
            reaction = message.reactions[key] = FakeReaction(emoji=dict(emoji))
        if user.id in reaction.user_ids:
            return False
        reaction.user_ids.append(user.id)
    else:
        if reaction is None or user.id not in reaction.user_ids:
            return False
        reaction.user_ids.remove(user.id)
        if not reaction.user_ids:
            del message.reactions[key]
    state.changed.notify()
    data: dict[str, Any] = {
        "user_id": str(user.id),
        "channel_id": str(message.channel_id),
        "message_id": str(message.id),
        "emoji": dict(emoji),
        "burst": False,
        "type": 0,
    }
    if message.guild_id is not None:
        data["guild_id"] = str(message.guild_id)
    if add:
        data["message_author_id"] = str(message.author.id)
        data["burst_colors"] = []
        member = state.member(message.guild_id, user.id) if message.guild_id is not None else None
        if member is not None:
            data["member"] = member.to_payload()
    await gateway.dispatch("MESSAGE_REACTION_ADD" if add else "MESSAGE_REACTION_REMOVE", data,
                           intents=_reaction_intent(message))
    return True
