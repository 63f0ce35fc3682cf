"""The inference service as the bot and the CLI see it (no torch here): the `Manager` API and the plain
data it speaks (events, job handles, results, the wire format). Which backend serves a process is chosen
one layer up, by models/connect.py's `open_manager`."""

from iris.service.protocol import JobRecords, Manager

__all__ = ["JobRecords", "Manager"]
