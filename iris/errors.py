"""User-facing errors, shared by the engine, the command line and the bot.

Each carries a message fit to show a person as it is; anything else that escapes is a bug, logged with
its traceback behind a short apology.
"""

from __future__ import annotations

import logging
import uuid


class IrisError(Exception):
    """Base of every error whose message may be shown to a user as it is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadImage(IrisError):
    """An input file is missing, not an image, corrupt, or too large."""


class BadRequest(IrisError):
    """A request's parameters are unusable (empty label list, prompt too long, size out of range...)."""


class BadFile(IrisError):
    """A file or folder the operator named (on the command line or in the config) cannot be used for what
    it is named for: missing, a folder, a pipe or a device, unwritable, or not the kind of file expected."""


class ConfigError(IrisError):
    """config.yaml (or a profile) is invalid."""


class WeightsUnavailable(IrisError):
    """Model weights are not in the cache and cannot be downloaded (offline, or the host is unreachable)."""


class WeightsCorrupt(IrisError):
    """A weights file failed its checksum, or does not fit the model it is loaded into."""


class QueueFull(IrisError):
    """The generation queue is at its bound."""

    def __init__(self, queue_length: int) -> None:
        super().__init__(f"the queue is full ({queue_length} jobs waiting); try again in a few minutes")
        self.queue_length = queue_length


class UserLimitReached(IrisError):
    """A user already has as many generations queued or running as the config allows."""


class JobTimedOut(IrisError):
    """A generation ran past its wall-clock deadline and was stopped between two steps."""


class JobCancelled(IrisError):
    """The job was cancelled (by its owner, or because the service is shutting down)."""


class OutOfMemory(IrisError):
    """The device ran out of memory even after retrying with fewer cutouts and a smaller size."""


class ServiceClosed(IrisError):
    """The inference manager is shutting down and takes no new jobs."""


class InternalError(IrisError):
    """Something unexpected broke; the message carries an error id to find the traceback in the log."""


def report_unexpected(
    logger: logging.Logger, exc: BaseException, what: str, level: int = logging.ERROR
) -> str:
    """Log an unexpected `exc` with its traceback under a fresh short error id, and return the id.

    The one place error ids are minted: people see only the id, the log keeps the traceback.
    `what` names what failed ("job 1a2b3c", "/classify"); `level` lets the command line keep tracebacks
    at debug level (shown with -vv) so they never reach the terminal by default.
    """
    error_id = uuid.uuid4().hex[:8]
    logger.log(level, "%s failed unexpectedly (error id %s)", what, error_id, exc_info=exc)
    return error_id


def internal_error(logger: logging.Logger, exc: BaseException, what: str) -> IrisError:
    """`exc` itself if it is user-facing, else an InternalError whose message carries a logged error id."""
    if isinstance(exc, IrisError):
        return exc
    error_id = report_unexpected(logger, exc, what)
    return InternalError(f"something went wrong on our side (error id {error_id})")
