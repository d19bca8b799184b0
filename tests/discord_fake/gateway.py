"""The websocket gateway: HELLO, IDENTIFY/READY, GUILD_CREATE, heartbeats, RESUME, dispatch.

Frames are JSON text; discord.py only inflates binary frames, so the zlib-stream it asks for in
the query string may be ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .state import (
    INTENT_GUILD_MEMBERS,
    INTENT_GUILD_PRESENCES,
    PRIVILEGED_INTENTS,
    DiscordState,
    FakeGuild,
)

_log = logging.getLogger(__name__)

DISPATCH = 0
HEARTBEAT = 1
IDENTIFY = 2
PRESENCE_UPDATE = 3
VOICE_STATE_UPDATE = 4
RESUME = 6
RECONNECT = 7
REQUEST_GUILD_MEMBERS = 8
INVALID_SESSION = 9
HELLO = 10
HEARTBEAT_ACK = 11

CLOSE_UNKNOWN_OPCODE = 4001
CLOSE_DECODE_ERROR = 4002
CLOSE_NOT_AUTHENTICATED = 4003
CLOSE_AUTHENTICATION_FAILED = 4004
CLOSE_ALREADY_AUTHENTICATED = 4005
CLOSE_DISALLOWED_INTENTS = 4014

# Client close codes after which Discord forgets the session (no RESUME possible).
_TERMINAL_CLIENT_CLOSES = frozenset({1000, 1001})


@dataclass(eq=False)
class GatewaySession:
    id: str
    intents: int
    shard: list[int] | None
    sequence: int = 0
    backlog: list[dict[str, Any]] = field(default_factory=list)
    socket: web.WebSocketResponse | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    resumes: int = 0
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def wants(self, intents: int) -> bool:
        return intents == 0 or bool(self.intents & intents)


class Gateway:
    def __init__(
        self,
        state: DiscordState,
        *,
        heartbeat_interval: float,
        allowed_privileged_intents: int,
        resume_url: Callable[[], str],
    ) -> None:
        self._state = state
        self._heartbeat_interval_ms = int(heartbeat_interval * 1000)
        self.heartbeats: list[float] = []  # loop time of each heartbeat the client sent
        self._allowed_privileged = allowed_privileged_intents
        self._resume_url = resume_url
        self.sessions: dict[str, GatewaySession] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self.identify_count = 0

    # -- test-side helpers ---------------------------------------------------------------------

    @property
    def live_sessions(self) -> list[GatewaySession]:
        return [session for session in self.sessions.values() if session.ready.is_set()]

    def connected(self) -> bool:
        return any(session.socket is not None and not session.socket.closed for session in self.live_sessions)

    async def dispatch(self, event: str, data: dict[str, Any], *, intents: int = 0) -> None:
        """Sends an event to every live session subscribed to one of `intents` (0: always sent)."""
        for session in self.live_sessions:
            if session.wants(intents):
                await self.send_dispatch(session, event, data)

    async def request_reconnect(self) -> None:
        """Sends op 7 RECONNECT: discord.py closes and RESUMEs at resume_gateway_url."""
        for session in self.live_sessions:
            if session.socket is not None and not session.socket.closed:
                async with session.send_lock:
                    await session.socket.send_str(json.dumps({"op": RECONNECT, "d": None, "s": None, "t": None}))

    async def close_all(self) -> None:
        for socket in list(self._sockets):
            await socket.close(code=1001, message=b"fake discord shutting down")

    # -- the websocket handler -----------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await socket.prepare(request)
        self._sockets.add(socket)
        session: GatewaySession | None = None
        try:
            await self._send(socket, {"op": HELLO, "d": {"heartbeat_interval": self._heartbeat_interval_ms}})
            async for message in socket:
                if message.type is not WSMsgType.TEXT:
                    if message.type is WSMsgType.BINARY:
                        await socket.close(code=CLOSE_DECODE_ERROR, message=b"Error while decoding payload.")
                    break
                try:
                    payload = json.loads(message.data)
                    op = payload["op"]
                except (ValueError, KeyError, TypeError):
                    await socket.close(code=CLOSE_DECODE_ERROR, message=b"Error while decoding payload.")
                    break
                session = await self._handle_op(socket, session, op, payload.get("d"))
                if socket.closed:
                    break
        finally:
            self._sockets.discard(socket)
            if session is not None and session.socket is socket:
                session.socket = None
                if socket.close_code in _TERMINAL_CLIENT_CLOSES:
                    self.sessions.pop(session.id, None)
        return socket

    async def _handle_op(
        self, socket: web.WebSocketResponse, session: GatewaySession | None, op: int, data: Any
    ) -> GatewaySession | None:
        if op == HEARTBEAT:
            import asyncio

            self.heartbeats.append(asyncio.get_running_loop().time())
            await self._send(socket, {"op": HEARTBEAT_ACK, "d": None}, session=session)
            return session
        if op == IDENTIFY:
            if session is not None:
                await socket.close(code=CLOSE_ALREADY_AUTHENTICATED, message=b"Already authenticated.")
                return session
            return await self._identify(socket, data or {})
        if op == RESUME:
            return await self._resume(socket, data or {})
        if session is None:
            await socket.close(code=CLOSE_NOT_AUTHENTICATED, message=b"Not authenticated.")
            return None
        if op == REQUEST_GUILD_MEMBERS:
            await self._send_member_chunk(session, data or {})
            return session
        if op in (PRESENCE_UPDATE, VOICE_STATE_UPDATE):
            return session
        await socket.close(code=CLOSE_UNKNOWN_OPCODE, message=b"Unknown opcode.")
        return session

    async def _identify(self, socket: web.WebSocketResponse, data: dict[str, Any]) -> GatewaySession | None:
        if data.get("token") != self._state.token:
            await socket.close(code=CLOSE_AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return None
        intents = int(data.get("intents", 0))
        if intents & PRIVILEGED_INTENTS & ~self._allowed_privileged:
            await socket.close(code=CLOSE_DISALLOWED_INTENTS, message=b"Disallowed intent(s).")
            return None
        self.identify_count += 1
        session = GatewaySession(id=secrets.token_hex(16), intents=intents, shard=data.get("shard"), socket=socket)
        self.sessions[session.id] = session
        state = self._state
        bot_user = state.bot.to_payload() | {"verified": True, "mfa_enabled": False, "email": None}
        guilds = [guild for guild in state.guilds.values() if state.bot.id in guild.members]
        ready = {
            "v": 10,
            "user": bot_user,
            "guilds": [{"id": str(guild.id), "unavailable": True} for guild in guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self._resume_url(),
            "shard": session.shard or [0, 1],
            "application": {"id": str(state.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["fake"],
            "user_settings": {},
        }
        await self.send_dispatch(session, "READY", ready)
        for guild in guilds:
            await self.send_dispatch(session, "GUILD_CREATE", self.guild_create_payload(guild, session))
        session.ready.set()
        state.changed.notify()
        return session

    def guild_create_payload(self, guild: FakeGuild, session: GatewaySession) -> dict[str, Any]:
        # Without the presences intent Discord lists only the bot itself (and voice members).
        return self._state.guild_payload(guild, members=bool(session.intents & INTENT_GUILD_PRESENCES))

    async def _resume(self, socket: web.WebSocketResponse, data: dict[str, Any]) -> GatewaySession | None:
        session = self.sessions.get(str(data.get("session_id")))
        if session is None or data.get("token") != self._state.token:
            await self._send(socket, {"op": INVALID_SESSION, "d": False})
            return None
        if session.socket is not None and not session.socket.closed:
            await session.socket.close(code=4009, message=b"Session superseded.")
        session.socket = socket
        session.resumes += 1
        last_seen = int(data.get("seq") or 0)
        async with session.send_lock:
            for frame in session.backlog:
                if frame["s"] > last_seen:
                    await socket.send_str(json.dumps(frame))
        await self.send_dispatch(session, "RESUMED", {})
        self._state.changed.notify()
        return session

    async def _send_member_chunk(self, session: GatewaySession, data: dict[str, Any]) -> None:
        guild = self._state.guilds.get(int(data.get("guild_id", 0)))
        if guild is None:
            return
        members = list(guild.members.values())
        user_ids = data.get("user_ids")
        if user_ids:
            wanted = {int(user_id) for user_id in user_ids}
            members = [member for member in members if member.id in wanted]
        query = data.get("query")
        if query:
            members = [member for member in members if member.user.name.lower().startswith(query.lower())]
        limit = int(data.get("limit") or 0)
        if limit:
            members = members[:limit]
        if not session.intents & INTENT_GUILD_MEMBERS and not user_ids:
            members = [member for member in members if member.id == self._state.bot.id]
        chunk: dict[str, Any] = {
            "guild_id": str(guild.id),
            "members": [member.to_payload() for member in members],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        await self.send_dispatch(session, "GUILD_MEMBERS_CHUNK", chunk)

    # -- sending -------------------------------------------------------------------------------

    async def send_dispatch(self, session: GatewaySession, event: str, data: dict[str, Any]) -> None:
        async with session.send_lock:
            session.sequence += 1
            frame = {"op": DISPATCH, "t": event, "s": session.sequence, "d": data}
            session.backlog.append(frame)
            socket = session.socket
            if socket is not None and not socket.closed:
                try:
                    await socket.send_str(json.dumps(frame))
                except ConnectionError:
                    _log.debug("gateway socket dropped while sending %s; kept for RESUME", event)

    async def _send(
        self, socket: web.WebSocketResponse, frame: dict[str, Any], *, session: GatewaySession | None = None
    ) -> None:
        frame = {"s": None, "t": None} | frame
        if session is not None:
            async with session.send_lock:
                await socket.send_str(json.dumps(frame))
        else:
            await socket.send_str(json.dumps(frame))
