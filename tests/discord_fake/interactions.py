"""Builds INTERACTION_CREATE payloads the way Discord's client would send them.

Options are checked against the command schema the bot registered, because the Discord client
never lets a user send a value outside it (wrong type, not a choice, out of range, missing
required). What the client cannot prevent (a stale command, an admin overriding default
permissions) is left to the bot, and tests can simulate it with explicit flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .state import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    DEFAULT_FILESIZE_LIMIT,
    USE_APPLICATION_COMMANDS,
    DiscordState,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
)

SUBCOMMAND = 1
SUBCOMMAND_GROUP = 2
STRING = 3
INTEGER = 4
BOOLEAN = 5
USER = 6
CHANNEL = 7
ROLE = 8
MENTIONABLE = 9
NUMBER = 10
ATTACHMENT = 11

CONTEXT_GUILD = 0
CONTEXT_BOT_DM = 1


class InvalidInvocation(ValueError):
    """The Discord client would not let a user send this invocation."""


@dataclass
class Resolved:
    users: dict[str, Any] = field(default_factory=dict)
    members: dict[str, Any] = field(default_factory=dict)
    roles: dict[str, Any] = field(default_factory=dict)
    channels: dict[str, Any] = field(default_factory=dict)
    attachments: dict[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return {key: value for key, value in vars(self).items() if value}


@dataclass(frozen=True)
class InvocationContext:
    state: DiscordState
    user: FakeUser
    guild: FakeGuild | None
    channel: FakeChannel

    @property
    def member(self) -> FakeMember | None:
        return None if self.guild is None else self.guild.members.get(self.user.id)

    def user_permissions(self) -> int:
        return self.state.channel_permissions(self.channel, self.user.id)

    def app_permissions(self) -> int:
        return self.state.channel_permissions(self.channel, self.state.bot.id)

    def filesize_limit(self) -> int:
        return self.guild.filesize_limit if self.guild is not None else DEFAULT_FILESIZE_LIMIT


def find_registered_command(state: DiscordState, name: str, guild: FakeGuild | None, kind: int = 1) -> dict[str, Any]:
    if guild is not None:
        for command in state.guild_commands.get(guild.id, {}).values():
            if command["name"] == name and command.get("type", 1) == kind:
                return command
    for command in state.global_commands.values():
        if command["name"] == name and command.get("type", 1) == kind:
            return command
    registered = sorted(c["name"] for c in state.global_commands.values())
    if guild is not None:
        registered += sorted(c["name"] for c in state.guild_commands.get(guild.id, {}).values())
    raise InvalidInvocation(
        f"command {name!r} is not registered (did the bot sync its tree?); registered: {registered}"
    )


def check_command_usable(
    context: InvocationContext, command: dict[str, Any], *, ignore_default_permissions: bool
) -> None:
    if context.guild is None:
        contexts = command.get("contexts")
        if command.get("guild_id") is not None:
            raise InvalidInvocation(f"/{command['name']} is a guild command; it cannot be used in DMs")
        if command.get("dm_permission") is False or (contexts is not None and CONTEXT_BOT_DM not in contexts):
            raise InvalidInvocation(f"/{command['name']} is not available in DMs")
        return
    if context.member is None:
        raise InvalidInvocation(f"{context.user.name} is not a member of {context.guild.name}")
    permissions = context.user_permissions()
    if not permissions & USE_APPLICATION_COMMANDS:
        raise PermissionError(f"{context.user.name} lacks Use Application Commands in #{context.channel.name}")
    required = command.get("default_member_permissions")
    if required is not None and not ignore_default_permissions:
        needed = int(required)
        if needed == 0:  # "0" hides the command from everyone but administrators
            allowed = permissions == ALL_PERMISSIONS or bool(permissions & ADMINISTRATOR)
        else:
            allowed = permissions & needed == needed
        if not allowed:
            raise PermissionError(
                f"Discord hides /{command['name']} from {context.user.name} (default_member_permissions={required}); "
                "pass ignore_default_permissions=True to simulate an admin override"
            )


def build_command_options(
    context: InvocationContext,
    command: dict[str, Any],
    values: dict[str, Any],
    *,
    subcommand: str | None,
    focused: str | None,
    resolved: Resolved,
) -> list[dict[str, Any]]:
    schema = command.get("options") or []
    path: list[tuple[int, str]] = []
    if subcommand:
        for part in subcommand.split():
            match = next((o for o in schema if o["name"] == part and o["type"] in (SUBCOMMAND, SUBCOMMAND_GROUP)), None)
            if match is None:
                raise InvalidInvocation(f"/{command['name']} has no subcommand {part!r}")
            path.append((match["type"], part))
            schema = match.get("options") or []
        if path[-1][0] != SUBCOMMAND:
            raise InvalidInvocation(f"{subcommand!r} is a subcommand group; name a subcommand inside it")
    elif any(o["type"] in (SUBCOMMAND, SUBCOMMAND_GROUP) for o in schema):
        raise InvalidInvocation(f"/{command['name']} needs a subcommand")
    leaf = _leaf_options(context, command["name"], schema, values, focused=focused, resolved=resolved)
    for kind, name in reversed(path):
        leaf = [{"type": kind, "name": name, "options": leaf}]
    return leaf


def _leaf_options(
    context: InvocationContext,
    command_name: str,
    schema: list[dict[str, Any]],
    values: dict[str, Any],
    *,
    focused: str | None,
    resolved: Resolved,
) -> list[dict[str, Any]]:
    by_name = {option["name"]: option for option in schema}
    unknown = set(values) - set(by_name)
    if unknown:
        raise InvalidInvocation(f"/{command_name} has no option(s) {sorted(unknown)}; it has {sorted(by_name)}")
    if focused is not None and focused not in by_name:
        raise InvalidInvocation(f"/{command_name} has no option {focused!r} to autocomplete")
    options: list[dict[str, Any]] = []
    for option in schema:
        name = option["name"]
        if name == focused:
            if not option.get("autocomplete"):
                raise InvalidInvocation(f"option {name!r} of /{command_name} has no autocomplete")
            options.append({"type": option["type"], "name": name, "value": str(values.get(name, "")), "focused": True})
            continue
        if name not in values:
            if option.get("required") and focused is None:
                raise InvalidInvocation(f"/{command_name} requires option {name!r}")
            continue
        value = _option_value(context, option, values[name], resolved, strict=focused is None)
        options.append({"type": option["type"], "name": name, "value": value})
    return options


def _option_value(
    context: InvocationContext, option: dict[str, Any], value: Any, resolved: Resolved, *, strict: bool
) -> Any:
    kind = option["type"]
    name = option["name"]
    if kind == STRING:
        if not isinstance(value, str):
            raise InvalidInvocation(f"option {name!r} takes a string, got {value!r}")
        if strict:
            if option.get("min_length") is not None and len(value) < option["min_length"]:
                raise InvalidInvocation(f"option {name!r} needs at least {option['min_length']} characters")
            if len(value) > min(option.get("max_length") or 6000, 6000):
                raise InvalidInvocation(f"option {name!r} takes at most {option.get('max_length') or 6000} characters")
    elif kind == INTEGER:
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidInvocation(f"option {name!r} takes an integer, got {value!r}")
    elif kind == NUMBER:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise InvalidInvocation(f"option {name!r} takes a number, got {value!r}")
    elif kind == BOOLEAN:
        if not isinstance(value, bool):
            raise InvalidInvocation(f"option {name!r} takes a boolean, got {value!r}")
    elif kind in (USER, MENTIONABLE) and isinstance(value, (FakeUser, FakeMember)):
        return _resolve_user(context, value.user if isinstance(value, FakeMember) else value, resolved)
    elif kind in (ROLE, MENTIONABLE) and isinstance(value, FakeRole):
        resolved.roles[str(value.id)] = value.to_payload()
        return str(value.id)
    elif kind == CHANNEL and isinstance(value, FakeChannel):
        channel_types = option.get("channel_types")
        if channel_types and value.type not in channel_types:
            raise InvalidInvocation(f"option {name!r} accepts channel types {channel_types}, not {value.type}")
        payload = value.to_payload()
        payload["permissions"] = str(context.state.channel_permissions(value, context.user.id))
        resolved.channels[str(value.id)] = payload
        return str(value.id)
    elif kind == ATTACHMENT:
        attachment = _attachment_payload(context, value)
        resolved.attachments[attachment["id"]] = attachment
        return attachment["id"]
    else:
        raise InvalidInvocation(f"option {name!r} (type {kind}) cannot take {value!r}")
    if strict and kind in (INTEGER, NUMBER):
        if option.get("min_value") is not None and value < option["min_value"]:
            raise InvalidInvocation(f"option {name!r} must be at least {option['min_value']}")
        if option.get("max_value") is not None and value > option["max_value"]:
            raise InvalidInvocation(f"option {name!r} must be at most {option['max_value']}")
    choices = option.get("choices")
    if strict and choices and value not in [choice["value"] for choice in choices]:
        raise InvalidInvocation(f"option {name!r} must be one of {[choice['value'] for choice in choices]}")
    return value


def _resolve_user(context: InvocationContext, user: FakeUser, resolved: Resolved) -> str:
    resolved.users[str(user.id)] = user.to_payload()
    member = None if context.guild is None else context.guild.members.get(user.id)
    if member is not None:
        permissions = context.state.channel_permissions(context.channel, user.id)
        resolved.members[str(user.id)] = member.to_payload(with_user=False, permissions=permissions)
    return str(user.id)


def _attachment_payload(context: InvocationContext, value: Any) -> dict[str, Any]:
    if isinstance(value, dict) and "id" in value and "url" in value:
        return value
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], (bytes, bytearray)):
        filename, data = value
        attachment = context.state.new_attachment(
            filename=filename, data=bytes(data), path_prefix=f"ephemeral-attachments/{context.state.application_id}",
            ephemeral=True,
        )
        return attachment.to_payload(context.state.base_url)
    raise InvalidInvocation(
        f"an attachment option takes fake.upload_attachment(...) or (filename, bytes), got {value!r}"
    )


def base_interaction_payload(
    context: InvocationContext,
    *,
    interaction_id: int,
    token: str,
    kind: int,
    data: dict[str, Any],
    locale: str,
) -> dict[str, Any]:
    state = context.state
    channel_payload = context.channel.to_payload()
    channel_payload["permissions"] = str(context.user_permissions())
    payload: dict[str, Any] = {
        "id": str(interaction_id),
        "application_id": str(state.application_id),
        "type": kind,
        "token": token,
        "version": 1,
        "data": data,
        "channel_id": str(context.channel.id),
        "channel": channel_payload,
        "locale": locale,
        "app_permissions": str(context.app_permissions()),
        "entitlements": [],
        "entitlement_sku_ids": [],
        "attachment_size_limit": context.filesize_limit(),
    }
    if context.guild is not None:
        member = context.member
        assert member is not None
        payload["guild_id"] = str(context.guild.id)
        payload["guild"] = {"id": str(context.guild.id), "locale": context.guild.locale, "features": []}
        payload["guild_locale"] = context.guild.locale
        payload["member"] = member.to_payload(permissions=context.user_permissions())
        payload["authorizing_integration_owners"] = {"0": str(context.guild.id)}
        payload["context"] = CONTEXT_GUILD
    else:
        payload["user"] = context.user.to_payload()
        payload["authorizing_integration_owners"] = {"0": "0"}
        payload["context"] = CONTEXT_BOT_DM
    return payload


def command_data(command: dict[str, Any], options: list[dict[str, Any]], resolved: Resolved) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(command["id"]),
        "name": command["name"],
        "type": command.get("type", 1),
        "options": options,
    }
    resolved_payload = resolved.to_payload()
    if resolved_payload:
        data["resolved"] = resolved_payload
    if command.get("guild_id") is not None:
        data["guild_id"] = str(command["guild_id"])
    return data


def modal_submit_components(modal: dict[str, Any], values: dict[str, Any]) -> list[dict[str, Any]]:
    """Mirrors the modal's layout with the user's values filled in, as Discord submits it."""
    missing = set(values)

    def fill(component: dict[str, Any]) -> dict[str, Any]:
        kind = component.get("type")
        if kind == 1:
            return {"type": 1, "components": [fill(child) for child in component.get("components", [])]}
        if kind == 18:
            filled = {"type": 18, "component": fill(component["component"])}
            if "id" in component:
                filled["id"] = component["id"]
            return filled
        custom_id = component.get("custom_id")
        answer: dict[str, Any] = {"type": kind}
        if "id" in component:
            answer["id"] = component["id"]
        if custom_id is None:
            return answer
        answer["custom_id"] = custom_id
        missing.discard(custom_id)
        given = values.get(custom_id)
        if kind == 4:
            if custom_id not in values:  # left as the form showed it
                given = component.get("value")
            text = "" if given is None else str(given)
            # Discord's client sends nothing it would not accept: a required field filled in, and
            # every field within its min_length/max_length.
            if not text and component.get("required", True):
                raise InvalidInvocation(f"modal field {custom_id!r} is required")
            low, high = component.get("min_length") or 0, component.get("max_length") or 4000
            if text and not low <= len(text) <= high:
                raise InvalidInvocation(f"modal field {custom_id!r} takes {low}-{high} characters, not {len(text)}")
            answer["value"] = text
        else:
            answer["values"] = [] if given is None else [str(v) for v in given]
        return answer

    filled = [fill(component) for component in modal.get("components", [])]
    if missing:
        raise InvalidInvocation(f"modal {modal.get('custom_id')!r} has no field(s) {sorted(missing)}")
    return filled

