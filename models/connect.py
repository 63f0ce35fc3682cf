"""Which inference backend serves this process: `manager.backend` and `manager.isolate` in the config.

No torch here (the bot imports this module): each backend is imported only when it is chosen."""

from __future__ import annotations

from typing import Any

from iris.config import Config
from iris.service.protocol import Manager


def open_manager(config: Config, engine: Any = None) -> Manager:
    """The manager for `config` (not started). torch is imported only by the backends that need it.

    - `engine` given (a models.engine.Engine, as tests and the CLI build): that engine, in this process;
    - backend "local", `isolate: true` (the default): a child process owns the device, watched and
      replaced when it hangs or dies (iris/service/process);
    - backend "local", `isolate: false`: a worker thread of this process owns it (models/manager.py);
    - backend "nats": workers behind the broker (iris/service/nats).
    """
    m = config.manager
    if engine is None and m.backend == "nats":
        from iris.service.nats import NatsManager

        return NatsManager(config)
    if engine is None and m.isolate:
        from iris.service.process import ProcessManager

        return ProcessManager(config)
    from models.manager import InferenceManager

    return InferenceManager(config, engine)
