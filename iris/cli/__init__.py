"""The `iris` command: the engine offline (classify, find, describe, imagine, download), `iris run` for the
bot, `iris status --local` for a health check. No Discord needed for the offline commands."""

from iris.cli._output import check_output
from iris.cli._parser import build_parser, main

__all__ = ["build_parser", "check_output", "main"]
