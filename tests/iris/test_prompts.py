from __future__ import annotations

import math

import pytest

from iris.errors import BadRequest
from iris.labels import check_labels, parse_labels
from iris.prompts import PromptPart, parse_prompt
from iris.request import ImagineRequest


def test_parse_prompt_weights_and_colons():
    assert parse_prompt("a watercolor fox:1 | blurry:-0.5") == [
        PromptPart("a watercolor fox", 1.0),
        PromptPart("blurry", -0.5),
    ]
    assert parse_prompt("photo: a fox at 5 pm") == [PromptPart("photo: a fox at 5 pm")]
    assert parse_prompt("a fox:2:0.3")[0] == PromptPart("a fox", 2.0, 0.3)
    assert parse_prompt("http://x.y/z | a cat") == [PromptPart("http://x.y/z"), PromptPart("a cat")]
    assert parse_prompt("a fox")[0].stop == -math.inf
    assert parse_prompt("  a fox  ||  ") == [PromptPart("a fox")]


@pytest.mark.parametrize(
    "prompt,match",
    [
        ("", "empty"),
        (" | ", "empty"),
        ("blurry:-1", "positive"),
        ("x" * 10_000, "10,000 characters"),
        ("|".join("a" * 9), "parts"),
    ],
)
def test_parse_prompt_refuses(prompt, match):
    with pytest.raises(BadRequest, match=match):
        parse_prompt(prompt)


def test_labels():
    assert parse_labels('cat, dog,, "salt, pepper" , cat') == ["cat", "dog", "salt, pepper"]
    with pytest.raises(BadRequest, match="at least one label"):
        check_labels(parse_labels(" , "))
    with pytest.raises(BadRequest, match="limit is 50"):
        check_labels([f"l{i}" for i in range(51)])
    with pytest.raises(BadRequest, match="100 characters"):
        check_labels(["x" * 101])


def test_request_validation():
    ok = ImagineRequest("a fox", steps=10, width=64, height=64)
    assert ok.validated(100, 256, 500) is ok
    for bad in (
        dict(steps=0),
        dict(steps=101),
        dict(width=8),
        dict(height=1000),
        dict(cutouts=0),
        dict(lr=0),
        dict(generator="diffusion"),
        dict(seed=-1),
    ):
        with pytest.raises(BadRequest):
            ImagineRequest("a fox", **{**dict(steps=10, width=64, height=64), **bad}).validated(100, 256, 500)
