"""What Discord refuses, and how it says so: the bounds a bot's requests must stay within.

The numbers come from Discord's OpenAPI description, github.com/discord/discord-api-spec (MIT),
specs/openapi.json: schemas `IncomingWebhookRequestPartial` / `IncomingWebhookUpdateRequestPartial`
(content, embeds, attachments), `RichEmbed`, `RichEmbedField`, `RichEmbedFooter`, `RichEmbedAuthor`,
`ActionRowComponentForMessageRequest`, `ButtonComponentForMessageRequest`,
`CreateTextThreadWithMessageRequest` / `CreateTextThreadWithoutMessageRequest`, `Int53Type`.
Two bounds are only in the developer docs (resources/message, resources/channel): a bot's message content
is 2000 characters (the spec's `MessageCreateRequest` allows 4000, which only Nitro users get), and the
text of all embeds of a message together is at most 6000 characters.

Errors have Discord's shape: 400, code 50035 "Invalid Form Body", and `errors` nested like the body with
`_errors` at the offending key (`{"embeds": {"0": {"title": {"_errors": [...]}}}}`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_FILES = 10
EMBED_TITLE = 256
EMBED_DESCRIPTION = 4096
EMBED_FIELDS = 25
FIELD_NAME = 256
FIELD_VALUE = 1024
FOOTER_TEXT = 2048
AUTHOR_NAME = 256
EMBED_TOTAL = 6000  # title + description + field names and values + footer text + author name, all embeds
ACTION_ROWS = 5  # top-level action rows of a message (legacy components)
ROW_COMPONENTS = 5  # buttons per action row
CUSTOM_ID = 100
BUTTON_LABEL = 80
THREAD_NAME = 100  # at least 1 character, after Discord trims the name
INT53 = 2**53 - 1  # integer option bounds (min_value, max_value, choices) are Int53Type


class FormError(Exception):
    """One refused field: `path` is the keys down to it, e.g. ("embeds", 0, "title")."""

    def __init__(self, path: Iterable[str | int], code: str, message: str) -> None:
        super().__init__(message)
        self.path, self.code, self.message = tuple(path), code, message

    def errors(self) -> dict[str, Any]:
        node: dict[str, Any] = {"_errors": [{"code": self.code, "message": self.message}]}
        for key in reversed(self.path):
            node = {str(key): node}
        return node


def _max_length(path: tuple[str | int, ...], value: Any, limit: int) -> None:
    if isinstance(value, str) and len(value) > limit:
        raise FormError(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")


def _length_between(path: tuple[str | int, ...], items: Any, low: int, high: int) -> None:
    if not low <= len(items) <= high:
        raise FormError(path, "BASE_TYPE_BAD_LENGTH", f"Must be between {low} and {high} in length.")


def check_message(payload: dict[str, Any]) -> None:
    """A message create or edit body (channel message, webhook, interaction callback data)."""
    _max_length(("content",), payload.get("content"), MAX_CONTENT)
    embeds = payload.get("embeds")
    if embeds is None and payload.get("embed"):
        embeds = [payload["embed"]]
    if embeds:
        if len(embeds) > MAX_EMBEDS:
            raise FormError(("embeds",), "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length.")
        total = 0
        for i, embed in enumerate(embeds):
            total += check_embed(("embeds", i), embed)
        if total > EMBED_TOTAL:
            raise FormError(
                ("embeds",), "MAX_EMBED_SIZE_EXCEEDED", f"Embed size exceeds maximum size of {EMBED_TOTAL}"
            )
    if payload.get("attachments") and len(payload["attachments"]) > MAX_FILES:
        raise FormError(("attachments",), "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_FILES} or fewer in length.")
    check_components(payload.get("components") or [])


def check_embed(path: tuple[str | int, ...], embed: dict[str, Any]) -> int:
    """Refuse an embed over its bounds; return how much text it holds (for the 6000 total)."""
    title, description = embed.get("title") or "", embed.get("description") or ""
    _max_length((*path, "title"), title, EMBED_TITLE)
    _max_length((*path, "description"), description, EMBED_DESCRIPTION)
    fields = embed.get("fields") or []
    if len(fields) > EMBED_FIELDS:
        raise FormError(
            (*path, "fields"), "BASE_TYPE_MAX_LENGTH", f"Must be {EMBED_FIELDS} or fewer in length."
        )
    size = len(title) + len(description)
    for i, field in enumerate(fields):
        _max_length((*path, "fields", i, "name"), field.get("name"), FIELD_NAME)
        _max_length((*path, "fields", i, "value"), field.get("value"), FIELD_VALUE)
        for key in ("name", "value"):
            if not str(field.get(key) or "").strip():
                raise FormError((*path, "fields", i, key), "BASE_TYPE_REQUIRED", "This field is required")
        size += len(field["name"]) + len(field["value"])
    footer = (embed.get("footer") or {}).get("text") or ""
    author = (embed.get("author") or {}).get("name") or ""
    _max_length((*path, "footer", "text"), footer, FOOTER_TEXT)
    _max_length((*path, "author", "name"), author, AUTHOR_NAME)
    return size + len(footer) + len(author)


def check_components(components: list[dict[str, Any]]) -> None:
    rows = [c for c in components if c.get("type") == 1]
    if len(rows) > ACTION_ROWS:
        raise FormError(
            ("components",), "BASE_TYPE_BAD_LENGTH", f"Must be between 1 and {ACTION_ROWS} in length."
        )
    for i, row in enumerate(rows):
        inner = row.get("components") or []
        _length_between(("components", i, "components"), inner, 1, ROW_COMPONENTS)
        for j, item in enumerate(inner):
            path = ("components", i, "components", j)
            if "custom_id" in item:
                custom_id = item["custom_id"] or ""
                _length_between((*path, "custom_id"), custom_id, 1, CUSTOM_ID)
            _max_length((*path, "label"), item.get("label"), BUTTON_LABEL)


def check_thread_name(name: Any) -> str:
    """Discord trims a thread's name; what is left must be 1-100 characters."""
    text = (name or "").strip() if isinstance(name, str) else ""
    _length_between(("name",), text, 1, THREAD_NAME)
    return text


def check_commands(commands: list[dict[str, Any]]) -> None:
    """A command sync: integer options' bounds and choices are 53-bit (Int53Type)."""
    for i, command in enumerate(commands):
        _check_options((i, "options"), command.get("options") or [])


def _check_options(path: tuple[str | int, ...], options: list[dict[str, Any]]) -> None:
    for i, option in enumerate(options):
        here = (*path, i)
        if option.get("type") == 4:  # INTEGER
            for key in ("min_value", "max_value"):
                value = option.get(key)
                if value is not None and abs(int(value)) > INT53:
                    code = "NUMBER_TYPE_MAX" if int(value) > 0 else "NUMBER_TYPE_MIN"
                    bound = "less than or equal to" if int(value) > 0 else "greater than or equal to"
                    sign = "" if int(value) > 0 else "-"
                    raise FormError((*here, key), code, f"int value should be {bound} {sign}{INT53}.")
            for j, choice in enumerate(option.get("choices") or []):
                if abs(int(choice["value"])) > INT53:
                    raise FormError((*here, "choices", j, "value"), "NUMBER_TYPE_MAX", "Int53 out of range.")
        _check_options((*here, "options"), option.get("options") or [])
