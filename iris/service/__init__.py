"""The inference service as the bot and the CLI see it (no torch here): the `Manager` API, the plain
data it speaks (events, job handles, results), and `open_manager`, which picks the backend."""

from iris.service.connect import open_manager
from iris.service.protocol import JobRecords, Manager

__all__ = ["JobRecords", "Manager", "open_manager"]
