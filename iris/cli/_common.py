"""Shared by the commands: reading the config, the engine, output, progress bars, option checks."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iris.config import Config, load_config
from iris.errors import BadFile, BadRequest

if TYPE_CHECKING:
    from models.engine import Engine

log = logging.getLogger("iris")
DEFAULT_CONFIG = "config.yaml"
MAX_FIND_K = 1000  # hits `iris find` lists at most
MIN_LR = 1e-6  # smaller learning rates round every update away in float32
MAX_LR = 10.0  # as ImagineRequest.validated allows


def _config(args: argparse.Namespace) -> Config:
    """--config, else $IRIS_CONFIG (Docker mounts one), else ./config.yaml if present, else defaults."""
    path = args.config or os.environ.get("IRIS_CONFIG") or None
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    cfg = load_config(path)
    if cfg.data_dir_chosen and not cfg.data_path.is_dir():
        try:  # a named data directory is made on first use (the current folder always exists)
            cfg.data_path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadFile(f"cannot make the data directory {cfg.data_path}: {e.strerror or e}") from None
    from models.weights import set_hub_offline  # no torch here: only the environment is set

    set_hub_offline(cfg.weights.offline)  # before anything imports huggingface_hub, which reads it once
    return cfg


def _engine(cfg: Config) -> Engine:
    from models.engine import Engine  # torch loads here, not for --help

    return Engine(cfg)


def _emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    print(json.dumps(payload, indent=2) if args.json else text)


def _bar(p: float, width: int = 20) -> str:
    full = round(p * width)
    return "█" * full + "·" * (width - full)


def _progress_bar(desc: str, quiet: bool) -> Any:
    """A tqdm bar on stderr driven by (n, total) calls; (None, None) closes it."""
    from tqdm import tqdm

    state: dict[str, Any] = {}

    def update(n: int | None, total: int | None) -> None:
        if n is None:
            if "bar" in state:
                state["bar"].close()
            return
        if "bar" not in state:
            state["bar"] = tqdm(
                total=total, desc=desc, unit="img", disable=quiet, file=sys.stderr, leave=False
            )
        state["bar"].update(n - state["bar"].n)

    return update


def _parse_size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    try:
        return (int(w), int(h)) if sep else (int(w), int(w))
    except ValueError:
        raise BadRequest(f"--size takes WIDTHxHEIGHT or one number, e.g. 256x192, got {text!r}") from None


def _check_range(option: str, value: float, lo: float, hi: float) -> None:
    """Numbers Python takes but float32 or the engine do not (1e40, nan, 10**30): one clear line."""
    if not lo <= value <= hi:  # nan fails both comparisons
        raise BadRequest(f"{option} must be between {lo:g} and {hi:g}, got {value:g}")
