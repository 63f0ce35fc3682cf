"""The wire format: everything the service sends comes back equal, and nothing else is ever built."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from iris import errors
from iris.journal import JobState, JournalEntry
from iris.request import ImagineRequest
from iris.service import wire
from iris.service.events import Done, Failed, Progress, Queued
from iris.service.handle import JobSummary, ManagerStatus
from iris.service.results import Description, Phrase, Prediction


def test_requests_records_and_results_come_back_equal() -> None:
    req = ImagineRequest("a fox:2 | snow:-0.5", seed=2**53 - 1, init_image=b"\x89PNG\0\xff",
                         image_prompts=((b"\x00\x01", 0.5),), count=4)  # fmt: skip
    entry = JournalEntry("ab12", "42", req, {"channel": "7"}, JobState.GENERATED, 3, 9, 5, None, 1.5, 2.5,
                         result_png=b"png", clip_score=0.25)  # fmt: skip
    status = ManagerStatus(1, None, [JobSummary("x", "1", JobState.QUEUED, 0, 10, 1)], "cpu", ["toy"], None)
    described = Description([Phrase("a fox", "objects", 0.5)], "a fox")
    for value in (req, entry, status, described, [Prediction("cat", 0.75)], Queued(2, None), {"k": (1, 2)}):
        assert wire.loads(wire.dumps(value)) == value


def test_arrays_pictures_nan_and_errors_survive() -> None:
    vecs = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    back = wire.loads(wire.dumps(vecs))
    assert back.dtype == np.float32 and back.shape == (3, 4) and np.array_equal(back, vecs)
    im = Image.new("RGB", (5, 3), (10, 200, 30))
    done = wire.loads(wire.dumps(Done(im, 7, 10, 0.3)))
    assert done.image.size == (5, 3) and done.image.getpixel((1, 1)) == (10, 200, 30)
    assert math.isnan(wire.loads(wire.dumps(Progress(1, 2, float("nan"), None))).loss)
    failed = wire.loads(wire.dumps(Failed(errors.JobTimedOut("too slow"))))
    assert type(failed.error) is errors.JobTimedOut and failed.error.message == "too slow"
    full = wire.loads(wire.dumps(errors.QueueFull(20)))
    assert isinstance(full, errors.QueueFull) and full.queue_length == 20


@pytest.mark.parametrize(
    "data",
    [b'{"$": "Popen", "args": ["sh"]}', b'{"$x": 1}', b"not json", b'{"$": "Queued", "position": 1}'],
)
def test_a_stranger_s_message_builds_nothing(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.loads(data)


def test_only_known_types_are_sent() -> None:
    with pytest.raises(wire.WireError):
        wire.dumps(object())
