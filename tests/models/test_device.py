"""imagine's `auto` defaults: picked by the device's memory at engine start, typed in the config."""

from __future__ import annotations

import pytest
import torch

from iris.config import Automatic, parse_config
from iris.errors import ConfigError
from models import device as device_mod
from models.device import resolve_imagine


def test_auto_is_the_shipped_default_and_reads_as_the_cpu_value():
    im = parse_config({}).imagine
    assert isinstance(im.width, Automatic) and isinstance(im.steps, Automatic)
    assert (im.width, im.height, im.steps) == (256, 256, 300)  # usable as numbers before resolution
    fixed = parse_config({"imagine": {"width": 320, "steps": "auto"}}).imagine
    assert not isinstance(fixed.width, Automatic) and isinstance(fixed.steps, Automatic)


@pytest.mark.parametrize(
    "data,match",
    [
        ({"imagine": {"width": "big"}}, "imagine.width: expected int or 'auto'"),
        ({"imagine": {"steps": "Auto!"}}, "imagine.steps: expected int or 'auto'"),
        ({"imagine": {"height": 8}}, "imagine.height must be at least 16"),
        ({"imagine": {"profile": "fancy"}}, "imagine.profile"),
        ({"imagine": {"width": 600}}, "max_side"),
    ],
)
def test_bad_imagine_values_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(data)


def _gpu(monkeypatch, memory: int) -> None:
    # no GPU here: the memory query is the one thing faked
    class Props:
        total_memory = memory

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: Props())


@pytest.mark.parametrize(
    "memory,expected", [(24 * 2**30, (512, 500)), (8 * 10**9, (512, 500)), (6 * 2**30, (304, 500))]
)
def test_gpu_memory_picks_the_references_defaults(monkeypatch, memory, expected):
    _gpu(monkeypatch, memory)
    im = resolve_imagine(parse_config({}).imagine, torch.device("cuda"))
    assert (im.width, im.steps) == expected and im.height == im.width
    assert not isinstance(im.width, Automatic)


def test_cpu_defaults_and_fixed_values_and_the_maxima(monkeypatch):
    cpu = torch.device("cpu")
    im = resolve_imagine(parse_config({}).imagine, cpu)
    assert (im.width, im.height, im.steps) == (256, 256, 300)
    fixed = resolve_imagine(parse_config({"imagine": {"width": 320, "height": 192}}).imagine, cpu)
    assert (fixed.width, fixed.height) == (320, 192)
    _gpu(monkeypatch, 40 * 2**30)
    capped = parse_config({"imagine": {"max_side": 384, "max_steps": 400}}).imagine
    im = resolve_imagine(capped, torch.device("cuda"))
    assert (im.width, im.steps) == (384, 400)
    assert device_mod.auto_imagine_size_steps(cpu) == (256, 300)


def test_the_engine_resolves_auto_for_its_device():
    from models.engine import Engine

    engine = Engine(parse_config({"device": "cpu"}))
    req = engine.request("a fox")
    assert (req.width, req.height, req.steps, req.profile) == (256, 256, 300, "classic")
    assert type(req.width) is int
