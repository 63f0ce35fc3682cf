"""Discord's HTTP conventions: JSON replies, error bodies, and message bodies (JSON or multipart)."""

from __future__ import annotations

import json
import mimetypes
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from .limits import MAX_FILES, FormError, check_message
from .models import Attachment, Channel
from .state import FakeState

MAX_REQUEST_BYTES = 25 * 1024 * 1024  # Discord refuses larger requests
_FILE_FIELD = re.compile(r"^files\[(\d+)\]$")


class APIError(Exception):
    """An error Discord would answer with: HTTP status plus its JSON error code."""

    def __init__(self, status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status, self.code, self.message, self.errors = status, code, message, errors

    def response(self) -> web.Response:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors:
            body["errors"] = self.errors
        return json_response(body, self.status)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py parses JSON only when Content-Type is exactly "application/json": aiohttp's
    # json_response would add "; charset=utf-8" and the client would then see a str, not a dict.
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def no_content() -> web.Response:
    return web.Response(status=204)


def form_error(error: FormError) -> APIError:
    """Discord's 400 / 50035 with the offending field's path, as limits.FormError names it."""
    return APIError(400, 50035, "Invalid Form Body", error.errors())


def invalid_form(field_name: str, message: str) -> APIError:
    return APIError(
        400,
        50035,
        "Invalid Form Body",
        {field_name: {"_errors": [{"code": "BASE_TYPE_BAD", "message": message}]}},
    )


@dataclass
class Upload:
    filename: str
    data: bytes
    content_type: str | None


@dataclass
class Body:
    payload: dict[str, Any] = field(default_factory=dict)
    files: dict[int, Upload] = field(default_factory=dict)  # by the i of `files[i]`


async def read_body(request: web.Request, file_size_limit: int) -> Body:
    """A JSON body, or multipart `payload_json` + `files[i]`; a file over the limit → 413 / 40005."""
    if request.content_length and request.content_length > MAX_REQUEST_BYTES:
        raise APIError(413, 40005, "Request entity too large")
    if not request.content_type.startswith("multipart/"):
        text = await request.text()
        return Body(json.loads(text) if text else {})
    body = Body()
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        name = part.name or ""
        if name == "payload_json":
            body.payload = json.loads(await part.text())
        elif match := _FILE_FIELD.match(name):
            data = await part.read(decode=False)
            if len(data) > file_size_limit:
                raise APIError(413, 40005, "Request entity too large")
            filename = part.filename or name
            content_type = part.headers.get("Content-Type")
            if not content_type or content_type == "application/octet-stream":
                content_type = mimetypes.guess_type(filename)[0] or content_type
            body.files[int(match.group(1))] = Upload(filename, bytes(data), content_type)
    if len(body.files) > MAX_FILES:
        raise form_error(
            FormError(("files",), "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_FILES} or fewer in length.")
        )
    return body


def message_fields(
    state: FakeState, channel: Channel, body: Body, existing: list[Attachment] | None
) -> dict[str, Any]:
    """What a create or edit body sets: content, embeds, components, attachments.

    `attachments` in the body is the final set: kept ones by their id, new ones by the index of their
    `files[i]` part. Without it, uploaded files are added to `existing` (None on create).
    """
    payload = body.payload
    try:
        check_message(payload)
    except FormError as e:
        raise form_error(e) from None
    fields: dict[str, Any] = {"allowed_mentions": payload.get("allowed_mentions")}
    if "content" in payload:
        fields["content"] = payload["content"] or ""
    if "embeds" in payload:
        fields["embeds"] = payload["embeds"] or []
    elif payload.get("embed"):
        fields["embeds"] = [payload["embed"]]
    if "components" in payload:
        fields["components"] = payload["components"] or []
    kept = {a.id: a for a in existing or []}
    if payload.get("attachments") is not None:
        final = []
        for item in payload["attachments"]:
            ref = int(item["id"])
            if ref in body.files:
                upload = body.files[ref]
                filename = item.get("filename") or upload.filename
                final.append(
                    state.make_attachment(
                        channel, filename, upload.data, upload.content_type, item.get("description")
                    )
                )
            elif ref in kept:
                final.append(kept[ref])
            else:
                raise invalid_form("attachments", f"unknown attachment {ref}")
        fields["attachments"] = final
    elif body.files:
        new = [
            state.make_attachment(channel, u.filename, u.data, u.content_type) for u in body.files.values()
        ]
        fields["attachments"] = [*(existing or []), *new]
    return fields


def require_content(fields: dict[str, Any]) -> None:
    if not (
        fields.get("content") or fields.get("embeds") or fields.get("attachments") or fields.get("components")
    ):
        raise APIError(400, 50006, "Cannot send an empty message")
