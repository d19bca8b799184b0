"""Discord's documented limits on messages, components and application commands.

Each check mirrors a real Discord rejection: 400 / 50035 "Invalid Form Body" with the nested
`errors` object, 400 / 50006 for an empty message, 413 / 40005 for an oversized upload.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from .errors import (
    CANNOT_SEND_EMPTY_MESSAGE,
    REQUEST_ENTITY_TOO_LARGE,
    DiscordHTTPError,
    FormErrors,
)
from .state import FLAG_COMPONENTS_V2

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBED_TITLE = 256
MAX_EMBED_DESCRIPTION = 4096
MAX_EMBED_FIELDS = 25
MAX_EMBED_FIELD_NAME = 256
MAX_EMBED_FIELD_VALUE = 1024
MAX_EMBED_FOOTER = 2048
MAX_EMBED_AUTHOR = 256
MAX_EMBED_TOTAL = 6000
MAX_FILES = 10
MAX_ACTION_ROWS = 5
MAX_ROW_WIDTH = 5
MAX_CUSTOM_ID = 100
MAX_BUTTON_LABEL = 80
MAX_SELECT_OPTIONS = 25
MAX_V2_COMPONENTS = 40
MAX_V2_TEXT = 4000
MAX_COMMAND_OPTIONS = 25
MAX_CHOICES = 25
MAX_GLOBAL_CHAT_COMMANDS = 100
MAX_CONTEXT_MENU_COMMANDS = 5
MAX_MODAL_TITLE = 45
MAX_MODAL_LABEL = 45
MAX_LABEL_DESCRIPTION = 100
MAX_TEXT_INPUT = 4000
MAX_TEXT_INPUT_PLACEHOLDER = 100

BUTTON = 2
SELECT_TYPES = frozenset({3, 5, 6, 7, 8})
TEXT_INPUT = 4
TEXT_DISPLAY = 10
LABEL = 18
V2_TOP_LEVEL = frozenset({1, 9, 10, 12, 13, 14, 17})
LINK_STYLE = 5
PREMIUM_STYLE = 6

SUBCOMMAND = 1
SUBCOMMAND_GROUP = 2
STRING = 3
INTEGER = 4
NUMBER = 10
CHANNEL = 7
MAX_SAFE_INTEGER = 2**53


@dataclass(frozen=True)
class UploadedFile:
    field_name: str  # "files[0]"
    filename: str
    data: bytes

    @property
    def index(self) -> int | None:
        inner = self.field_name.removeprefix("files[").removesuffix("]")
        return int(inner) if inner.isdigit() else None


def check_upload_sizes(files: list[UploadedFile], *, filesize_limit: int) -> None:
    """413 / 40005 when any file, or all of them together, exceed the guild's upload limit."""
    total = sum(len(file.data) for file in files)
    if any(len(file.data) > filesize_limit for file in files) or total > filesize_limit:
        raise DiscordHTTPError(413, REQUEST_ENTITY_TOO_LARGE, "Request entity too large")


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str) else 0


def validate_message(
    payload: dict[str, Any],
    files: list[UploadedFile],
    *,
    filesize_limit: int,
    creating: bool,
    kept_attachments: int = 0,
) -> None:
    """Raises DiscordHTTPError when Discord would reject this message create/edit body."""
    check_upload_sizes(files, filesize_limit=filesize_limit)
    errors = FormErrors()

    attachments = payload.get("attachments")
    attachment_count = max(len(files), len(attachments) if isinstance(attachments, list) else 0)
    if attachment_count + kept_attachments > MAX_FILES:
        errors.max_length(("attachments",), MAX_FILES)

    content = payload.get("content")
    if content is not None and not isinstance(content, str):
        errors.add(("content",), "BASE_TYPE_STRING", "Must be a string.")
    elif _length(content) > MAX_CONTENT:
        errors.max_length(("content",), MAX_CONTENT)

    embeds = payload.get("embeds") or []
    _validate_embeds(embeds, errors)

    flags = int(payload.get("flags") or 0)
    components = payload.get("components") or []
    if flags & FLAG_COMPONENTS_V2:
        if content or embeds:
            errors.add(
                ("content" if content else "embeds",),
                "MESSAGE_CANNOT_USE_LEGACY_FIELDS_WITH_COMPONENTS_V2",
                "The 'content' and 'embeds' fields cannot be used when using MessageFlags.IS_COMPONENTS_V2",
            )
        _validate_v2_components(components, errors)
    else:
        _validate_v1_components(components, errors)

    errors.raise_if_any()

    if creating:
        has_body = (
            bool(content)
            or bool(embeds)
            or bool(files)
            or kept_attachments > 0
            or bool(components)
            or bool(payload.get("sticker_ids"))
            or bool(payload.get("poll"))
        )
        if not has_body:
            raise DiscordHTTPError(400, CANNOT_SEND_EMPTY_MESSAGE, "Cannot send an empty message")


def _validate_embeds(embeds: Any, errors: FormErrors) -> None:
    if not isinstance(embeds, list):
        errors.add(("embeds",), "BASE_TYPE_ARRAY", "Must be an array.")
        return
    if len(embeds) > MAX_EMBEDS:
        errors.max_length(("embeds",), MAX_EMBEDS)
    total = 0
    for index, embed in enumerate(embeds):
        path = ("embeds", index)
        title = embed.get("title")
        description = embed.get("description")
        if _length(title) > MAX_EMBED_TITLE:
            errors.max_length((*path, "title"), MAX_EMBED_TITLE)
        if _length(description) > MAX_EMBED_DESCRIPTION:
            errors.max_length((*path, "description"), MAX_EMBED_DESCRIPTION)
        total += _length(title) + _length(description)
        fields = embed.get("fields") or []
        if len(fields) > MAX_EMBED_FIELDS:
            errors.max_length((*path, "fields"), MAX_EMBED_FIELDS)
        for field_index, embed_field in enumerate(fields):
            name, value = embed_field.get("name"), embed_field.get("value")
            for key, text, limit in (("name", name, MAX_EMBED_FIELD_NAME), ("value", value, MAX_EMBED_FIELD_VALUE)):
                if not text:
                    errors.required((*path, "fields", field_index, key))
                elif _length(text) > limit:
                    errors.max_length((*path, "fields", field_index, key), limit)
            total += _length(name) + _length(value)
        footer_text = (embed.get("footer") or {}).get("text")
        if _length(footer_text) > MAX_EMBED_FOOTER:
            errors.max_length((*path, "footer", "text"), MAX_EMBED_FOOTER)
        author_name = (embed.get("author") or {}).get("name")
        if _length(author_name) > MAX_EMBED_AUTHOR:
            errors.max_length((*path, "author", "name"), MAX_EMBED_AUTHOR)
        total += _length(footer_text) + _length(author_name)
        for key in ("url",):
            _check_url(embed.get(key), (*path, key), errors)
        for key in ("image", "thumbnail"):
            _check_url((embed.get(key) or {}).get("url"), (*path, key, "url"), errors)
    if total > MAX_EMBED_TOTAL:
        errors.add(("embeds",), "MAX_EMBED_SIZE_EXCEEDED", f"Embed size exceeds maximum size of {MAX_EMBED_TOTAL}")


def _check_url(url: Any, path: tuple[str | int, ...], errors: FormErrors) -> None:
    if url is None:
        return
    if not isinstance(url, str) or not url.startswith(("http://", "https://", "attachment://")):
        errors.add(path, "URL_TYPE_INVALID_URL", "Not a well formed URL.")


def _validate_interactive(component: dict[str, Any], path: tuple[str | int, ...], errors: FormErrors,
                          seen_ids: set[str]) -> None:
    """Rules for buttons and select menus, wherever they sit."""
    kind = component.get("type")
    custom_id = component.get("custom_id")
    if kind == BUTTON:
        style = component.get("style")
        if style not in (1, 2, 3, 4, 5, 6):
            errors.add((*path, "style"), "BASE_TYPE_CHOICES", "Value must be one of {1, 2, 3, 4, 5, 6}.")
        if style == LINK_STYLE:
            if not component.get("url"):
                errors.add((*path, "url"), "BUTTON_COMPONENT_URL_REQUIRED", "A url is required")
            if custom_id is not None:
                errors.add((*path, "custom_id"), "BUTTON_COMPONENT_CUSTOM_ID_NOT_ALLOWED",
                           "A custom id cannot be specified")
            custom_id = None
        elif style == PREMIUM_STYLE:
            if not component.get("sku_id"):
                errors.add((*path, "sku_id"), "BUTTON_COMPONENT_SKU_ID_REQUIRED", "A sku id is required")
            custom_id = None
        elif not custom_id:
            errors.add((*path, "custom_id"), "BUTTON_COMPONENT_CUSTOM_ID_REQUIRED", "A custom id is required")
        label = component.get("label")
        if _length(label) > MAX_BUTTON_LABEL:
            errors.max_length((*path, "label"), MAX_BUTTON_LABEL)
        if style != PREMIUM_STYLE and not label and not component.get("emoji"):
            errors.add((*path, "label"), "BUTTON_COMPONENT_LABEL_OR_EMOJI_REQUIRED", "A label or emoji is required")
    elif kind in SELECT_TYPES:
        if not custom_id:
            errors.required((*path, "custom_id"))
        if _length(component.get("placeholder")) > 150:
            errors.max_length((*path, "placeholder"), 150)
        min_values = component.get("min_values", 1)
        max_values = component.get("max_values", 1)
        if not 0 <= min_values <= MAX_SELECT_OPTIONS:
            errors.add((*path, "min_values"), "NUMBER_TYPE_MAX", "int value should be between 0 and 25.")
        if not 1 <= max_values <= MAX_SELECT_OPTIONS:
            errors.add((*path, "max_values"), "NUMBER_TYPE_MAX", "int value should be between 1 and 25.")
        if min_values > max_values:
            errors.add((*path, "min_values"), "SELECT_COMPONENT_MIN_VALUES_TOO_LARGE",
                       "min_values must be less than or equal to max_values")
        if kind == 3:
            options = component.get("options") or []
            if not 1 <= len(options) <= MAX_SELECT_OPTIONS:
                errors.bad_length((*path, "options"), 1, MAX_SELECT_OPTIONS)
            if max_values > len(options):
                errors.add((*path, "max_values"), "SELECT_COMPONENT_MAX_VALUES_TOO_LARGE",
                           "max_values must be less than or equal to the number of options")
            for option_index, option in enumerate(options):
                for key in ("label", "value"):
                    if not 1 <= _length(option.get(key)) <= 100:
                        errors.bad_length((*path, "options", option_index, key), 1, 100)
                if _length(option.get("description")) > 100:
                    errors.max_length((*path, "options", option_index, "description"), 100)
    elif kind == TEXT_INPUT:
        errors.add((*path, "type"), "COMPONENT_TYPE_INVALID", "Text inputs can only be used in modals")
    if custom_id is not None:
        if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= MAX_CUSTOM_ID:
            errors.bad_length((*path, "custom_id"), 1, MAX_CUSTOM_ID)
        elif custom_id in seen_ids:
            errors.add((*path, "custom_id"), "COMPONENT_CUSTOM_ID_DUPLICATED",
                       "Component custom id cannot be duplicated")
        else:
            seen_ids.add(custom_id)


def _validate_v1_components(components: Any, errors: FormErrors) -> None:
    if not isinstance(components, list):
        errors.add(("components",), "BASE_TYPE_ARRAY", "Must be an array.")
        return
    if len(components) > MAX_ACTION_ROWS:
        errors.max_length(("components",), MAX_ACTION_ROWS)
    seen_ids: set[str] = set()
    for row_index, row in enumerate(components):
        path = ("components", row_index)
        if row.get("type") != 1:
            errors.add((*path, "type"), "BASE_TYPE_CHOICES", "Value must be one of {1}.")
            continue
        children = row.get("components") or []
        if not children:
            errors.bad_length((*path, "components"), 1, MAX_ROW_WIDTH)
        width = sum(MAX_ROW_WIDTH if child.get("type") in SELECT_TYPES else 1 for child in children)
        if width > MAX_ROW_WIDTH:
            errors.add((*path, "components"), "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                       "The specified component exceeds the maximum width")
        for child_index, child in enumerate(children):
            if child.get("type") == 1:
                errors.add((*path, "components", child_index, "type"), "COMPONENT_TYPE_INVALID",
                           "Action rows cannot be nested")
                continue
            _validate_interactive(child, (*path, "components", child_index), errors, seen_ids)


def _validate_v2_components(components: Any, errors: FormErrors) -> None:
    if not isinstance(components, list):
        errors.add(("components",), "BASE_TYPE_ARRAY", "Must be an array.")
        return
    count = 0
    text_total = 0
    seen_ids: set[str] = set()

    def visit(items: list[dict[str, Any]], path: tuple[str | int, ...], top_level: bool) -> None:
        nonlocal count, text_total
        for index, component in enumerate(items):
            here = (*path, index)
            count += 1
            kind = component.get("type")
            if top_level and kind not in V2_TOP_LEVEL:
                errors.add((*here, "type"), "COMPONENT_TYPE_INVALID", "This component type is not allowed here")
            if kind == 10:
                text_total += _length(component.get("content"))
            _validate_interactive(component, here, errors, seen_ids)
            children = component.get("components")
            if children:
                visit(children, (*here, "components"), False)
            accessory = component.get("accessory")
            if accessory:
                count += 1
                _validate_interactive(accessory, (*here, "accessory"), errors, seen_ids)

    visit(components, ("components",), True)
    if count > MAX_V2_COMPONENTS:
        errors.max_length(("components",), MAX_V2_COMPONENTS)
    if text_total > MAX_V2_TEXT:
        errors.add(("components",), "COMPONENT_TEXT_TOO_LONG", f"Total text content must be {MAX_V2_TEXT} or fewer")


# -- application commands ---------------------------------------------------------------------------


def _is_valid_chat_name(name: Any) -> bool:
    """Discord's ^[-_'\\p{L}\\p{N}\\p{sc=Deva}\\p{sc=Thai}]{1,32}$, lower case where a lower case exists."""
    if not isinstance(name, str) or not 1 <= len(name) <= 32:
        return False
    for char in name:
        if char in "-_'":
            continue
        if unicodedata.category(char)[0] not in "LNM":
            return False
        if char.lower() != char:
            return False
    return True


def _check_name_and_description(
    item: dict[str, Any], path: tuple[str | int, ...], errors: FormErrors, *, chat: bool, what: str
) -> None:
    name = item.get("name")
    if chat:
        if not isinstance(name, str) or not 1 <= len(name) <= 32:
            errors.bad_length((*path, "name"), 1, 32)
        elif not _is_valid_chat_name(name):
            errors.add((*path, "name"), "APPLICATION_COMMAND_INVALID_NAME", f"{what} name is invalid")
        description = item.get("description")
        if not isinstance(description, str) or not 1 <= len(description) <= 100:
            errors.bad_length((*path, "description"), 1, 100)
    else:
        if not isinstance(name, str) or not 1 <= len(name) <= 32:
            errors.bad_length((*path, "name"), 1, 32)
        if item.get("description"):
            errors.max_length((*path, "description"), 0)
    for locale, localized in (item.get("name_localizations") or {}).items():
        if chat and not _is_valid_chat_name(localized):
            errors.add((*path, "name_localizations", locale), "APPLICATION_COMMAND_INVALID_NAME",
                       f"{what} name is invalid")
    for locale, localized in (item.get("description_localizations") or {}).items():
        if chat and not 1 <= _length(localized) <= 100:
            errors.bad_length((*path, "description_localizations", locale), 1, 100)


def _value_fits(option_type: int, value: Any) -> bool:
    if option_type == STRING:
        return isinstance(value, str)
    if option_type == INTEGER:
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_SAFE_INTEGER
    if option_type == NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= MAX_SAFE_INTEGER
    return False


def _validate_options(options: Any, path: tuple[str | int, ...], errors: FormErrors, *, depth: int) -> None:
    if not isinstance(options, list):
        errors.add(path, "BASE_TYPE_ARRAY", "Must be an array.")
        return
    if len(options) > MAX_COMMAND_OPTIONS:
        errors.max_length(path, MAX_COMMAND_OPTIONS)
    kinds = [option.get("type") for option in options]
    nested = [kind in (SUBCOMMAND, SUBCOMMAND_GROUP) for kind in kinds]
    if any(nested) and not all(nested):
        errors.add(path, "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
                   "Sub-command and sub-command group option types are mutually exclusive to all other types")
    names: set[str] = set()
    seen_optional = False
    for index, option in enumerate(options):
        here = (*path, index)
        kind = option.get("type")
        if kind not in range(1, 12):
            errors.add((*here, "type"), "BASE_TYPE_CHOICES", "Value must be one of (1, 2, ..., 11).")
            continue
        _check_name_and_description(option, here, errors, chat=True, what="Option")
        name = option.get("name")
        if name in names:
            errors.add((*here, "name"), "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS", "Option name already exists")
        names.add(name)
        if kind == SUBCOMMAND_GROUP:
            if depth > 0:
                errors.add((*here, "type"), "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
                           "Sub-command groups can only be nested in commands")
            children = option.get("options") or []
            if any(child.get("type") != SUBCOMMAND for child in children):
                errors.add((*here, "options"), "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
                           "Sub-command groups can only contain sub-commands")
            _validate_options(children, (*here, "options"), errors, depth=depth + 1)
            continue
        if kind == SUBCOMMAND:
            if depth > 1:
                errors.add((*here, "type"), "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID", "Sub-commands nest too deep")
            children = option.get("options") or []
            if any(child.get("type") in (SUBCOMMAND, SUBCOMMAND_GROUP) for child in children):
                errors.add((*here, "options"), "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
                           "Sub-commands cannot contain sub-commands")
            _validate_options(children, (*here, "options"), errors, depth=depth + 1)
            continue
        required = bool(option.get("required", False))
        if required and seen_optional:
            errors.add((*here, "required"), "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                       "Required options must be placed before non-required options")
        seen_optional = seen_optional or not required
        _validate_option_values(option, kind, here, errors)


def _validate_option_values(option: dict[str, Any], kind: int, here: tuple[str | int, ...],
                            errors: FormErrors) -> None:
    choices = option.get("choices")
    autocomplete = bool(option.get("autocomplete", False))
    if choices:
        if kind not in (STRING, INTEGER, NUMBER):
            errors.add((*here, "choices"), "APPLICATION_COMMAND_OPTION_CHOICES_INVALID",
                       "Choices are only allowed for string, integer and number options")
        if len(choices) > MAX_CHOICES:
            errors.max_length((*here, "choices"), MAX_CHOICES)
        for choice_index, choice in enumerate(choices):
            if not 1 <= _length(choice.get("name")) <= 100:
                errors.bad_length((*here, "choices", choice_index, "name"), 1, 100)
            value = choice.get("value")
            if not _value_fits(kind, value):
                errors.add((*here, "choices", choice_index, "value"), "BASE_TYPE_INVALID",
                           "Choice value does not match the option type")
            elif kind == STRING and len(value) > 100:
                errors.max_length((*here, "choices", choice_index, "value"), 100)
    if autocomplete:
        if kind not in (STRING, INTEGER, NUMBER):
            errors.add((*here, "autocomplete"), "APPLICATION_COMMAND_OPTION_AUTOCOMPLETE_INVALID",
                       "Autocomplete is only allowed for string, integer and number options")
        if choices:
            errors.add((*here, "autocomplete"), "APPLICATION_COMMAND_OPTION_CHOICES_AUTOCOMPLETE",
                       "Autocomplete cannot be set with choices")
    min_value, max_value = option.get("min_value"), option.get("max_value")
    for key, bound in (("min_value", min_value), ("max_value", max_value)):
        if bound is None:
            continue
        if kind not in (INTEGER, NUMBER):
            errors.add((*here, key), "APPLICATION_COMMAND_OPTION_VALUE_INVALID",
                       f"{key} is only allowed for integer and number options")
        elif not _value_fits(kind, bound):
            errors.add((*here, key), "NUMBER_TYPE_COERCE", f"Value \"{bound}\" is not a valid number.")
    if isinstance(min_value, (int, float)) and isinstance(max_value, (int, float)) and min_value > max_value:
        errors.add((*here, "min_value"), "APPLICATION_COMMAND_OPTION_VALUE_INVALID",
                   "min_value must be less than or equal to max_value")
    min_length, max_length = option.get("min_length"), option.get("max_length")
    if (min_length is not None or max_length is not None) and kind != STRING:
        errors.add((*here, "min_length"), "APPLICATION_COMMAND_OPTION_LENGTH_INVALID",
                   "min_length and max_length are only allowed for string options")
    if min_length is not None and not (isinstance(min_length, int) and 0 <= min_length <= 6000):
        errors.add((*here, "min_length"), "NUMBER_TYPE_MAX", "int value should be between 0 and 6000.")
    if max_length is not None and not (isinstance(max_length, int) and 1 <= max_length <= 6000):
        errors.add((*here, "max_length"), "NUMBER_TYPE_MAX", "int value should be between 1 and 6000.")
    if isinstance(min_length, int) and isinstance(max_length, int) and min_length > max_length:
        errors.add((*here, "min_length"), "APPLICATION_COMMAND_OPTION_LENGTH_INVALID",
                   "min_length must be less than or equal to max_length")
    if option.get("channel_types") and kind != CHANNEL:
        errors.add((*here, "channel_types"), "APPLICATION_COMMAND_OPTION_CHANNEL_TYPES_INVALID",
                   "channel_types is only allowed for channel options")


def validate_commands(commands: Any) -> None:
    """The checks Discord runs on a bulk overwrite (PUT .../commands)."""
    errors = FormErrors()
    if not isinstance(commands, list):
        errors.add((), "BASE_TYPE_ARRAY", "Must be an array.")
        errors.raise_if_any()
    per_type: dict[int, int] = {}
    names: set[tuple[int, str]] = set()
    for index, command in enumerate(commands):
        path: tuple[str | int, ...] = (index,)
        kind = command.get("type", 1)
        if kind not in (1, 2, 3, 4):
            errors.add((*path, "type"), "BASE_TYPE_CHOICES", "Value must be one of (1, 2, 3, 4).")
            continue
        chat = kind == 1
        _check_name_and_description(command, path, errors, chat=chat, what="Command")
        key = (kind, str(command.get("name")))
        if key in names:
            errors.add((*path, "name"), "APPLICATION_COMMANDS_DUPLICATE_NAME",
                       "Application command names must be unique")
        names.add(key)
        per_type[kind] = per_type.get(kind, 0) + 1
        options = command.get("options")
        if options:
            if not chat:
                errors.add((*path, "options"), "APPLICATION_COMMAND_OPTIONS_INVALID",
                           "Context menu commands cannot have options")
            else:
                _validate_options(options, (*path, "options"), errors, depth=0)
        permissions = command.get("default_member_permissions")
        valid_permissions = (isinstance(permissions, str) and permissions.isdigit()) or (
            isinstance(permissions, int) and not isinstance(permissions, bool) and permissions >= 0
        )
        if permissions is not None and not valid_permissions:
            errors.add((*path, "default_member_permissions"), "BASE_TYPE_INVALID",
                       "Must be a permission integer string")
        contexts = command.get("contexts")
        if contexts is not None and not set(contexts) <= {0, 1, 2}:
            errors.add((*path, "contexts"), "BASE_TYPE_CHOICES", "Value must be one of (0, 1, 2).")
        integration_types = command.get("integration_types")
        if integration_types is not None and not set(integration_types) <= {0, 1}:
            errors.add((*path, "integration_types"), "BASE_TYPE_CHOICES", "Value must be one of (0, 1).")
    if per_type.get(1, 0) > MAX_GLOBAL_CHAT_COMMANDS:
        errors.max_length((), MAX_GLOBAL_CHAT_COMMANDS)
    for kind in (2, 3):
        if per_type.get(kind, 0) > MAX_CONTEXT_MENU_COMMANDS:
            errors.add((), "APPLICATION_COMMANDS_TOO_MANY", "Maximum number of context menu commands reached (5)")
    errors.raise_if_any()


def validate_autocomplete_result(data: Any) -> None:
    errors = FormErrors()
    choices = (data or {}).get("choices")
    if not isinstance(choices, list):
        errors.required(("data", "choices"))
        errors.raise_if_any()
        return
    if len(choices) > MAX_CHOICES:
        errors.max_length(("data", "choices"), MAX_CHOICES)
    for index, choice in enumerate(choices):
        if not 1 <= _length(choice.get("name")) <= 100:
            errors.bad_length(("data", "choices", index, "name"), 1, 100)
        value = choice.get("value")
        if isinstance(value, str):
            if len(value) > 100:
                errors.max_length(("data", "choices", index, "value"), 100)
        elif not isinstance(value, (int, float)) or isinstance(value, bool):
            errors.add(("data", "choices", index, "value"), "BASE_TYPE_INVALID", "Invalid choice value")
    errors.raise_if_any()


def validate_modal(data: Any) -> None:
    errors = FormErrors()
    data = data or {}
    if not 1 <= _length(data.get("title")) <= MAX_MODAL_TITLE:
        errors.bad_length(("data", "title"), 1, MAX_MODAL_TITLE)
    custom_id = data.get("custom_id")
    if not 1 <= _length(custom_id) <= MAX_CUSTOM_ID:
        errors.bad_length(("data", "custom_id"), 1, MAX_CUSTOM_ID)
    components = data.get("components") or []
    if not 1 <= len(components) <= 5:
        errors.bad_length(("data", "components"), 1, 5)
    seen_ids: set[str] = set()
    for index, component in enumerate(components):
        path = ("data", "components", index)
        kind = component.get("type")
        if kind == 1:  # the older layout: an action row holding one text input, labelled by itself
            children = component.get("components") or []
            if len(children) != 1:
                errors.bad_length((*path, "components"), 1, 1)
            for child_index, child in enumerate(children):
                _validate_text_input(child, (*path, "components", child_index), errors, seen_ids, labelled=False)
        elif kind == LABEL:
            if not 1 <= _length(component.get("label")) <= MAX_MODAL_LABEL:
                errors.bad_length((*path, "label"), 1, MAX_MODAL_LABEL)
            if _length(component.get("description")) > MAX_LABEL_DESCRIPTION:
                errors.max_length((*path, "description"), MAX_LABEL_DESCRIPTION)
            child = component.get("component")
            if not isinstance(child, dict):
                errors.required((*path, "component"))
            elif child.get("type") == TEXT_INPUT:
                _validate_text_input(child, (*path, "component"), errors, seen_ids, labelled=True)
        elif kind != TEXT_DISPLAY:
            errors.add((*path, "type"), "COMPONENT_TYPE_INVALID", f"Component type {kind} is not valid in a modal")
    errors.raise_if_any()


def _validate_text_input(component: dict[str, Any], path: tuple[str | int, ...], errors: FormErrors,
                         seen_ids: set[str], *, labelled: bool) -> None:
    """A modal's text input: its documented limits (4000 characters at most, in every sense)."""
    if component.get("type") != TEXT_INPUT:
        errors.add((*path, "type"), "COMPONENT_TYPE_INVALID", "An action row in a modal holds a text input")
        return
    custom_id = component.get("custom_id")
    if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= MAX_CUSTOM_ID:
        errors.bad_length((*path, "custom_id"), 1, MAX_CUSTOM_ID)
    elif custom_id in seen_ids:
        errors.add((*path, "custom_id"), "COMPONENT_CUSTOM_ID_DUPLICATED", "Component custom id cannot be duplicated")
    else:
        seen_ids.add(custom_id)
    if component.get("style") not in (1, 2):
        errors.add((*path, "style"), "BASE_TYPE_CHOICES", "Value must be one of {1, 2}.")
    label = component.get("label")
    if labelled and label is not None:
        errors.add((*path, "label"), "TEXT_INPUT_LABEL_NOT_ALLOWED", "A text input in a label has no label of its own")
    elif not labelled and not 1 <= _length(label) <= MAX_MODAL_LABEL:
        errors.bad_length((*path, "label"), 1, MAX_MODAL_LABEL)
    min_length, max_length = component.get("min_length"), component.get("max_length")
    if min_length is not None and not (isinstance(min_length, int) and 0 <= min_length <= MAX_TEXT_INPUT):
        errors.add((*path, "min_length"), "NUMBER_TYPE_MAX", f"int value should be between 0 and {MAX_TEXT_INPUT}.")
    if max_length is not None and not (isinstance(max_length, int) and 1 <= max_length <= MAX_TEXT_INPUT):
        errors.add((*path, "max_length"), "NUMBER_TYPE_MAX", f"int value should be between 1 and {MAX_TEXT_INPUT}.")
    if _length(component.get("value")) > MAX_TEXT_INPUT:
        errors.max_length((*path, "value"), MAX_TEXT_INPUT)
    if _length(component.get("placeholder")) > MAX_TEXT_INPUT_PLACEHOLDER:
        errors.max_length((*path, "placeholder"), MAX_TEXT_INPUT_PLACEHOLDER)
