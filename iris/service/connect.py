"""Which inference backend serves this process: `manager.backend` in the config."""

from __future__ import annotations

from typing import Any

from iris.config import Config
from iris.service.protocol import Manager


def open_manager(config: Config, engine: Any = None) -> Manager:
    """The manager for `config` (not started). `engine`: a models.engine.Engine to run in this process
    (tests and the CLI pass the one they built). torch is imported only by the backends that need it."""
    if config.manager.backend == "nats" and engine is None:
        from iris.service.nats import NatsManager

        return NatsManager(config)
    from models.manager import InferenceManager

    return InferenceManager(config, engine)
