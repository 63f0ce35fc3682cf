"""Error ids: minted in one place, logged with the traceback, shown without it."""

from __future__ import annotations

import logging

from iris.errors import BadImage, InternalError, internal_error, report_unexpected


def _boom() -> None:
    raise ValueError("deep detail")


def test_report_unexpected_logs_the_traceback_under_the_id(caplog):
    log = logging.getLogger("iris.test")
    try:
        _boom()
    except ValueError as e:
        with caplog.at_level(logging.DEBUG):
            error_id = report_unexpected(log, e, "job 42")
    assert len(error_id) == 8 and error_id.isalnum()
    record = caplog.records[-1]
    assert (
        record.levelno == logging.ERROR
        and error_id in record.getMessage()
        and "job 42" in record.getMessage()
    )
    assert "_boom" in caplog.text  # the traceback is in the log


def test_internal_error_hides_details_and_passes_user_errors_through(caplog):
    log = logging.getLogger("iris.test")
    own = BadImage("not an image")
    assert internal_error(log, own, "x") is own
    wrapped = internal_error(log, ValueError("secret path /srv/x"), "x")
    assert isinstance(wrapped, InternalError) and "error id" in wrapped.message
    assert "secret" not in wrapped.message
