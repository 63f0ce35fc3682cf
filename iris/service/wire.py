"""The one way the service's plain data crosses a process boundary (a child's pipe, the broker): JSON,
with bytes, arrays and pictures inside as base64. Only the types listed here are ever rebuilt, so a
message from the network can make nothing else (unlike pickle)."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from typing import Any

import numpy as np
from PIL import Image

from iris import errors
from iris.journal import JobState, JournalEntry, JournalLocked
from iris.request import ImagineRequest
from iris.service import events, results
from iris.service.handle import JobSummary, ManagerStatus

_TYPES: dict[str, type[Any]] = {
    t.__name__: t
    for t in (
        ImagineRequest,
        JournalEntry,
        JobSummary,
        ManagerStatus,
        events.Queued,
        events.Started,
        events.Progress,
        events.Done,
        events.Failed,
        events.Cancelled,
        results.Prediction,
        results.Phrase,
        results.Description,
        results.Upscaled,
    )
}
_ERRORS: dict[str, type[errors.IrisError]] = {
    t.__name__: t
    for t in vars(errors).values()
    if isinstance(t, type) and issubclass(t, errors.IrisError) and t is not errors.QueueFull
}
_ERRORS[JournalLocked.__name__] = JournalLocked  # a child's journal held by another process


class WireError(ValueError):
    """A message that is not one this module writes (a bug, or a stranger on the broker)."""


def dumps(value: Any) -> bytes:
    """`value` (the listed dataclasses, errors, bytes, arrays, PIL images, dicts, lists) as bytes."""
    return json.dumps(_pack(value), separators=(",", ":")).encode()


def loads(data: bytes) -> Any:
    try:
        return _unpack(json.loads(data))
    except WireError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise WireError(f"not a message of ours: {e}") from e


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _pack(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if np.isfinite(v) else {"$f": repr(v)}  # NaN losses, infinite ETAs: JSON has neither
    if isinstance(v, bytes | bytearray):
        return {"$b": _b64(bytes(v))}
    if isinstance(v, JobState):
        return {"$s": v.value}
    if isinstance(v, np.ndarray):
        arr = np.ascontiguousarray(v)
        return {"$a": _b64(arr.tobytes()), "dtype": arr.dtype.str, "shape": list(arr.shape)}
    if isinstance(v, np.generic):
        return _pack(v.item())
    if isinstance(v, Image.Image):
        buf = io.BytesIO()
        v.save(buf, format="PNG")
        return {"$png": _b64(buf.getvalue())}
    if isinstance(v, errors.QueueFull):
        return {"$qf": v.queue_length}
    if isinstance(v, errors.IrisError):
        name = type(v).__name__ if type(v).__name__ in _ERRORS else "IrisError"
        return {"$e": name, "message": v.message}
    if isinstance(v, tuple):
        return {"$t": [_pack(x) for x in v]}
    if isinstance(v, list):
        return [_pack(x) for x in v]
    if isinstance(v, dict):
        return {"$d": [[_pack(k), _pack(x)] for k, x in v.items()]}
    if dataclasses.is_dataclass(v) and type(v).__name__ in _TYPES:
        fields = {f.name: _pack(getattr(v, f.name)) for f in dataclasses.fields(v)}
        return {"$": type(v).__name__, **fields}
    raise WireError(f"cannot send a {type(v).__name__}")


def _unpack(v: Any) -> Any:
    if isinstance(v, list):
        return [_unpack(x) for x in v]
    if not isinstance(v, dict):
        return v
    if "$" in v:
        cls = _TYPES.get(v["$"])
        if cls is None:
            raise WireError(f"unknown type {v['$']!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: _unpack(x) for k, x in v.items() if k in names})
    if "$b" in v:
        return base64.b64decode(v["$b"])
    if "$f" in v:
        return float(v["$f"])
    if "$s" in v:
        return JobState(v["$s"])
    if "$a" in v:
        arr = np.frombuffer(base64.b64decode(v["$a"]), dtype=np.dtype(v["dtype"]))
        return arr.reshape(v["shape"]).copy()
    if "$png" in v:
        im = Image.open(io.BytesIO(base64.b64decode(v["$png"])))
        im.load()
        return im
    if "$qf" in v:
        return errors.QueueFull(int(v["$qf"]))
    if "$e" in v:
        return _ERRORS.get(v["$e"], errors.IrisError)(str(v["message"]))
    if "$t" in v:
        return tuple(_unpack(x) for x in v["$t"])
    if "$d" in v:
        return {_unpack(k): _unpack(x) for k, x in v["$d"]}
    raise WireError(f"unknown value {sorted(v)[:3]}")
