"""The parent's records of the child's work: the generations it mirrors and the calls it waits on."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from iris.errors import IrisError
from iris.request import ImagineRequest
from iris.service.handle import JobHandle


class WorkerUnavailable(IrisError):
    """The device worker cannot be (re)started: every job and short job gets this one clear line."""


@dataclasses.dataclass(eq=False)
class Job:
    id: str
    owner: str
    request: ImagineRequest
    meta: dict[str, str]
    handle: JobHandle
    running_since: float | None = None  # time.monotonic() when the child was first seen running it
    step: int = 0  # steps done, from its events and the heartbeats
    cancel_sent: bool = False


@dataclasses.dataclass(eq=False)
class Call:
    id: int
    method: str
    args: list[Any]
    kwargs: dict[str, Any]
    future: asyncio.Future[Any]
    watched: bool  # a slow answer means a hung child (not warm_up: loading weights may take minutes)
    sent_at: float | None = None  # time.monotonic() when sent to the current child
    strikes: int = 0  # children it was waiting on when they hung in a short job


def imagine_message(job: Job) -> dict[str, Any]:
    return {"op": "imagine", "job": job.id, "owner": job.owner, "request": job.request, "meta": job.meta}


def call_message(call: Call) -> dict[str, Any]:
    return {"op": "call", "id": call.id, "method": call.method, "args": call.args, "kwargs": call.kwargs}


def settle(future: asyncio.Future[Any], value: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
