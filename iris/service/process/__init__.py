"""The local backend with `manager.isolate: true`: the device work runs in a child process
(`python -m models.serve`) that the bot's process watches and replaces when it hangs or dies."""

from iris.service.process._manager import ProcessManager, WorkerUnavailable

__all__ = ["ProcessManager", "WorkerUnavailable"]
