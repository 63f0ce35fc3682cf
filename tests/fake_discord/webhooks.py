"""How a bot answers interactions: the callback, then the interaction webhook (followups, @original).

Discord's clock rules, measured on the fake clock: the callback must come within 3 s of the interaction
(later: 404 / 10062 Unknown interaction); the token then works for 15 min (later: 401 / 50027).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from .interactions import (
    ACK_DEADLINE_S,
    APPLICATION_COMMAND,
    TOKEN_LIFE_S,
    InteractionRecord,
    response_metadata,
)
from .models import EPHEMERAL, LOADING, Message
from .wire import (
    APIError,
    Body,
    invalid_form,
    json_response,
    message_fields,
    no_content,
    read_body,
    require_content,
)

if TYPE_CHECKING:
    from .server import FakeDiscord

# Interaction callback types.
CHANNEL_MESSAGE = 4
DEFERRED_MESSAGE = 5
DEFERRED_UPDATE = 6
UPDATE_MESSAGE = 7
AUTOCOMPLETE_RESULT = 8
MODAL = 9


class WebhookRoutes:
    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self.state = fake.state

    def register(self, app: web.Application) -> None:
        api = "/api/v10"
        hook = api + "/webhooks/{application_id}/{token}"
        app.router.add_route("POST", api + "/interactions/{interaction_id}/{token}/callback", self.callback)
        app.router.add_route("POST", hook, self.followup)
        app.router.add_route("GET", hook + "/messages/{message_id}", self.get_message)
        app.router.add_route("PATCH", hook + "/messages/{message_id}", self.edit_message)
        app.router.add_route("DELETE", hook + "/messages/{message_id}", self.delete_message)

    # -- the callback ------------------------------------------------------------------------------

    async def callback(self, request: web.Request) -> web.Response:
        record = self.state.interactions.get(int(request.match_info["interaction_id"]))
        if record is None or record.token != request.match_info["token"]:
            raise APIError(404, 10062, "Unknown interaction")
        if record.acknowledged:
            raise APIError(400, 40060, "Interaction has already been acknowledged.")
        if self.state.clock.now() - record.created_at > ACK_DEADLINE_S:
            raise APIError(404, 10062, "Unknown interaction")
        body = await read_body(request, record.attachment_size_limit)
        kind = body.payload.get("type")
        data = body.payload.get("data") or {}
        flags = int(data.get("flags") or 0) & EPHEMERAL
        message: Message | None = None
        if kind == CHANNEL_MESSAGE:
            fields = message_fields(self.state, record.channel, Body(data, body.files), None)
            require_content(fields)
            message = record.original = self._respond(record, fields, flags)
        elif kind == DEFERRED_MESSAGE:
            record.deferred = True
            message = record.original = self._respond(record, {}, flags | LOADING)
        elif kind in (DEFERRED_UPDATE, UPDATE_MESSAGE):
            if record.message is None:
                raise invalid_form("type", "only component interactions can update their message")
            record.original = record.message
            if kind == UPDATE_MESSAGE:
                clicked = record.message
                fields = message_fields(
                    self.state, record.channel, Body(data, body.files), clicked.attachments
                )
                message = self.state.update_message(clicked, fields)
            else:
                record.deferred = True
        elif kind == AUTOCOMPLETE_RESULT:
            record.choices = data.get("choices", [])
        elif kind == MODAL:
            record.modal = data
        else:
            raise invalid_form("type", f"unsupported interaction callback type {kind}")
        record.callback_type = kind
        record.ephemeral = bool(flags) if kind in (CHANNEL_MESSAGE, DEFERRED_MESSAGE) else record.ephemeral
        self.state.changed()
        interaction: dict[str, Any] = {"id": str(record.id), "type": record.type}
        resource: dict[str, Any] = {"type": kind}
        if message is not None:
            interaction.update(
                response_message_id=str(message.id),
                response_message_loading=message.loading,
                response_message_ephemeral=message.ephemeral,
            )
            resource["message"] = message.payload()
        # discord.py ≥ 2.5 asks `?with_response=1` and needs this body; a 204 would break it.
        return json_response({"interaction": interaction, "resource": resource})

    def _respond(self, record: InteractionRecord, fields: dict[str, Any], flags: int) -> Message:
        """A new response message in the interaction's channel; ephemeral ones only its user sees."""
        if record.type == APPLICATION_COMMAND:
            message_type = 20 if record.payload["data"].get("type", 1) == 1 else 23
        else:
            message_type = 0
        return self.state.create_message(
            record.channel,
            self.state.bot,
            **fields,
            flags=flags,
            type=message_type,
            visible_to=record.user.id if flags & EPHEMERAL else None,
            webhook_id=self.state.application_id,
            interaction_metadata=response_metadata(record),
        )

    # -- the interaction webhook -------------------------------------------------------------------

    def _record(self, request: web.Request) -> InteractionRecord:
        record = self.state.by_token.get(request.match_info["token"])
        if record is None or int(request.match_info["application_id"]) != self.state.application_id:
            raise APIError(404, 10015, "Unknown Webhook")
        if self.state.clock.now() - record.created_at > TOKEN_LIFE_S:
            raise APIError(401, 50027, "Invalid Webhook Token")
        if not record.acknowledged:
            raise APIError(404, 10015, "Unknown Webhook")
        return record

    def _message(self, record: InteractionRecord, message_id: str) -> Message:
        if message_id == "@original":
            message = record.original
        else:
            message = next(
                (m for m in [record.original, *record.followups] if m and m.id == int(message_id)), None
            )
        if message is None or message.deleted:
            raise APIError(404, 10008, "Unknown Message")
        return message

    async def followup(self, request: web.Request) -> web.Response:
        """A followup; the first one after a deferred response fills the "thinking" message instead."""
        record = self._record(request)
        body = await read_body(request, record.attachment_size_limit)
        fields = message_fields(self.state, record.channel, body, None)
        require_content(fields)
        original = record.original
        if (
            record.callback_type == DEFERRED_MESSAGE
            and original
            and original.loading
            and not original.deleted
        ):
            fields["flags"] = original.flags & ~LOADING  # ephemeral or not, as the deferral said
            message = self.state.update_message(original, fields, is_edit=False)
        else:
            flags = int(body.payload.get("flags") or 0) & EPHEMERAL
            message = self._respond(record, fields, flags)
        record.followups.append(message)
        self.state.changed()
        if request.query.get("wait", "false").lower() in ("1", "true"):
            return json_response(message.payload())
        return no_content()

    async def get_message(self, request: web.Request) -> web.Response:
        record = self._record(request)
        return json_response(self._message(record, request.match_info["message_id"]).payload())

    async def edit_message(self, request: web.Request) -> web.Response:
        record = self._record(request)
        message = self._message(record, request.match_info["message_id"])
        body = await read_body(request, record.attachment_size_limit)
        fields = message_fields(self.state, message.channel, body, message.attachments)
        if message.loading:
            fields["flags"] = message.flags & ~LOADING
        return json_response(
            self.state.update_message(message, fields, is_edit=not message.loading).payload()
        )

    async def delete_message(self, request: web.Request) -> web.Response:
        record = self._record(request)
        message = self._message(record, request.match_info["message_id"])
        self.state.delete_messages(message.channel, [message])
        return no_content()
