"""The argument parser (common options before or after the command) and `main`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from iris import __version__
from iris.cli._commands import (
    cmd_classify,
    cmd_describe,
    cmd_download,
    cmd_find,
    cmd_imagine,
    cmd_run,
    cmd_status,
    cmd_sync,
    cmd_worker,
)
from iris.cli._common import DEFAULT_CONFIG
from iris.errors import IrisError, report_unexpected
from iris.request import PROFILES

log = logging.getLogger("iris")


def _add_common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every command takes, before or after the command's name.

    The top-level parser sets the defaults; each command's copy defaults to SUPPRESS, so an option given
    before the command is not overwritten by the command's default."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--config",
        metavar="FILE",
        default=default(None),
        help=f"config file (default: $IRIS_CONFIG, else ./{DEFAULT_CONFIG} if present, else built-in "
        "defaults; config.toy.yaml runs offline on the shipped toy models)",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output on stdout"
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=default(0), help="more logging (-vv for debug)"
    )
    parser.add_argument(
        "--debug", action="store_true", default=default(False), help="show tracebacks of unexpected errors"
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, top=False)

    p = argparse.ArgumentParser(
        prog="iris",
        description="Iris: see and dream with CLIP, offline or on Discord. The options --config, --json, "
        "-v and --debug go before or after the command.",
    )
    p.add_argument("--version", action="version", version=f"iris {__version__}")
    _add_common(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser(
        "classify",
        parents=[common],
        help="zero-shot classify images against labels",
        description="Zero-shot classify images with CLIP against comma-separated labels.",
    )
    c.add_argument("images", nargs="+", metavar="IMAGE")
    c.add_argument(
        "--labels",
        help='comma-separated labels, quotes keep commas: "cat, dog, a person" '
        "(default: classify.default_labels from the config)",
    )
    c.add_argument("--top-k", type=int, default=None, help="labels shown per image (default: classify.top_k)")
    c.add_argument(
        "--templates",
        choices=["openai", "simple", "none"],
        default=None,
        help="prompt ensemble (default: classify.templates)",
    )
    c.set_defaults(func=cmd_classify)

    de = sub.add_parser(
        "describe",
        parents=[common],
        help="tell what images show, with a prompt to draw them",
        description="Rank the built-in vocabulary with CLIP: what each image shows, and an /imagine prompt.",
    )
    de.add_argument("images", nargs="+", metavar="IMAGE")
    de.add_argument("--top-k", type=int, default=5, help="phrases shown per image (default: 5)")
    de.set_defaults(func=cmd_describe)

    f = sub.add_parser(
        "find",
        parents=[common],
        help="search a folder of images by text or by an image",
        description="Index a folder (only new or changed files are embedded) and search it. The query "
        'takes the same terms as /find: "a cat +sunset -text", each with an optional :weight '
        '("a square -blue:0.5"). FOLDER defaults to the current folder: `iris find "a blue square"`; '
        "with two words the first is the folder.",
    )
    f.add_argument("words", nargs="*", metavar="[FOLDER] QUERY")
    f.add_argument(
        "--image", metavar="FILE", help="search with this image too (alone: images that look like it)"
    )
    f.add_argument("-k", type=int, default=10, help="number of hits (default: 10)")
    f.add_argument(
        "--index",
        metavar="FILE",
        help="SQLite index file (default: index.path from the config, in the data directory)",
    )
    f.set_defaults(func=cmd_find)

    i = sub.add_parser(
        "imagine",
        parents=[common],
        help="generate an image from a prompt",
        description="Generate an image with VQGAN+CLIP (or pixels+CLIP). Prompt parts are "
        'separated by "|" and may carry weights: "a watercolor fox:1 | blurry:-0.5".',
    )
    i.add_argument("prompt", metavar="PROMPT")
    i.add_argument(
        "-o", "--output", default="imagine.png", help="PNG to write; previews land there as it goes"
    )
    i.add_argument("--steps", type=int, help="optimisation steps (default: imagine.steps)")
    i.add_argument("--seed", type=int, help="random seed; same seed, settings and device give the same image")
    i.add_argument("--size", help="WIDTHxHEIGHT in px, rounded down to the VQGAN's factor (default: config)")
    i.add_argument("--init", metavar="IMAGE", help="start from this image instead of random tokens")
    i.add_argument("--cutouts", type=int, help="augmented views per step (default: imagine.cutouts)")
    i.add_argument("--lr", type=float, help="learning rate (default: imagine.lr)")
    i.add_argument("--generator", choices=["vqgan", "pixels"], help="default: imagine.generator")
    i.add_argument(
        "--profile",
        choices=list(PROFILES),
        help="cutout recipe: classic (the reference scripts'), iris (lighter, tuned on the toy models) or "
        "none (plain crops) (default: imagine.profile)",
    )
    i.add_argument(
        "--image-prompt",
        action="append",
        metavar="FILE[:WEIGHT]",
        help="pull toward this picture too, weighted like a text part (repeatable; weight default 1)",
    )
    i.add_argument(
        "--init-weight",
        type=float,
        help="with --init: how strongly to keep close to the init image at first (fades; default 0)",
    )
    i.add_argument(
        "--ema",
        type=float,
        nargs="?",
        const=0.98,
        metavar="DECAY",
        help="show a moving average of the latents, smoother than the last step (decay 0.98 if omitted)",
    )
    i.add_argument(
        "--preview-every", type=int, help="steps between preview saves (default: imagine.preview_every)"
    )
    i.set_defaults(func=cmd_imagine)

    d = sub.add_parser(
        "download",
        parents=[common],
        help="fetch model weights into the cache",
        description="Download CLIP and VQGAN weights into the cache dir (weights.cache_dir), "
        "with progress and resume. Each file comes from the first source that gives one passing its "
        "checks (weights.mirrors first); its sha256 is recorded beside it. No names: the default CLIP "
        "and VQGAN presets.",
    )
    d.add_argument("names", nargs="*", metavar="NAME")
    d.add_argument("--list", action="store_true", help="list the known presets")
    d.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for a source to answer (default: 30)"
    )
    d.set_defaults(func=cmd_download)

    r = sub.add_parser(
        "run",
        parents=[common],
        help="start the Discord bot",
        description="Start the Discord bot. The token comes from DISCORD_TOKEN (environment or .env file). "
        "Commands are synced to discord.dev_guilds on start; `iris sync --global` publishes them everywhere.",
    )
    r.set_defaults(func=cmd_run)
    wk = sub.add_parser(
        "worker",
        parents=[common],
        help="run generations and short jobs for bots on NATS (one per GPU)",
        description="Serve the bots of manager.backend: nats: take jobs from the NATS server at nats.url "
        "and run them on this machine's device, one generation at a time with short jobs batched between "
        "steps. SIGTERM stops taking jobs, lets the current one finish within manager.close_grace_s (or "
        "hands it to another worker) and exits 0.",
    )
    wk.add_argument("--device", help="the device to run on, e.g. cuda:1 (default: device from the config)")
    wk.set_defaults(func=cmd_worker)
    s = sub.add_parser(
        "sync",
        parents=[common],
        help="publish the slash commands",
        description="Publish the slash commands to discord.dev_guilds, or with --global to every server "
        "(global changes can take up to an hour to appear).",
    )
    s.add_argument("--global", dest="global_", action="store_true", help="sync globally")
    s.set_defaults(func=cmd_sync)
    st = sub.add_parser(
        "status",
        parents=[common],
        help="is the bot on this machine healthy? (exit 0 or 1)",
        description="Read the heartbeat that `iris run` writes every 30 s into the data directory "
        "(iris-heartbeat.json): exit 0 when it is fresh and the bot is connected to Discord with a live "
        "inference worker, else print why and exit 1. Docker's HEALTHCHECK runs it.",
    )
    st.add_argument("--local", action="store_true", help="read this machine's heartbeat file (required)")
    st.set_defaults(func=cmd_status)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Library warnings (Pillow's complaints about a damaged file, already reported as one line) go to the
    # log, shown with -v, instead of raw lines on stderr.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if args.verbose else logging.ERROR)
    try:
        return int(args.func(args))
    except IrisError as e:
        print(f"iris: error: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("iris: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        error_id = report_unexpected(log, e, f"iris {args.command}", level=logging.DEBUG)
        print(
            f"iris: internal error {error_id}: {type(e).__name__}: {e} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
