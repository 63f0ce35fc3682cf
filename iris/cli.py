"""The `iris` command: the engine offline (classify, find, imagine, download), no Discord needed."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iris import __version__
from iris.config import Config, load_config
from iris.errors import BadFile, BadRequest, IrisError, report_unexpected
from iris.labels import parse_labels
from iris.request import PROFILES

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


def cmd_classify(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from iris.images import ImageLimits, load_image

    labels = parse_labels(args.labels) if args.labels is not None else list(cfg.classify.default_labels)
    if args.top_k is not None:
        _check_range("--top-k", args.top_k, 1, cfg.classify.max_labels)
    limits = ImageLimits(cfg.images.max_bytes, cfg.images.max_pixels)
    images = [load_image(p, limits, name=p) for p in args.images]  # fail before loading any model
    engine = _engine(cfg)
    labels = engine.check_labels(labels)
    results = engine.classify(images, labels, top_k=args.top_k, templates=args.templates)
    payload = [
        {"image": p, "labels": [{"label": r.label, "probability": round(r.probability, 6)} for r in preds]}
        for p, preds in zip(args.images, results, strict=True)
    ]
    lines = []
    for p, preds in zip(args.images, results, strict=True):
        lines.append(p)
        lines += [f"  {r.probability * 100:6.2f}%  {_bar(r.probability)}  {r.label}" for r in preds]
    _emit(args, payload, "\n".join(lines))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    """What each image shows: the best phrases of the built-in vocabulary, and an /imagine prompt."""
    cfg = _config(args)
    from iris.images import ImageLimits, load_image

    _check_range("--top-k", args.top_k, 1, 25)
    limits = ImageLimits(cfg.images.max_bytes, cfg.images.max_pixels)
    images = [load_image(p, limits, name=p) for p in args.images]  # fail before loading any model
    found = _engine(cfg).describe(images, top_k=args.top_k)
    payload = [
        {
            "image": p,
            "phrases": [
                {"phrase": x.text, "category": x.category, "score": round(x.score, 6)} for x in d.phrases
            ],
            "prompt": d.prompt,
        }
        for p, d in zip(args.images, found, strict=True)
    ]
    lines = []
    for p, d in zip(args.images, found, strict=True):
        lines.append(p)
        lines += [f"  {x.score * 100:6.2f}%  {_bar(x.score)}  {x.text} ({x.category})" for x in d.phrases]
        lines.append(f"  prompt: {d.prompt}")
    _emit(args, payload, "\n".join(lines))
    return 0


def _bar(p: float, width: int = 20) -> str:
    full = round(p * width)
    return "█" * full + "·" * (width - full)


def _find_target(args: argparse.Namespace) -> tuple[Path, str]:
    """`[FOLDER] QUERY`: two words are a folder and a query; one is the query, searched in the current
    folder (like rclip), unless --image is the query and the word names a folder."""
    words = list(args.words)
    if len(words) > 2:
        raise BadRequest('find takes [FOLDER] QUERY; quote a query of several words: "a blue square"')
    if len(words) == 2:
        return Path(words[0]), words[1]
    if len(words) == 1 and args.image and Path(words[0]).is_dir():
        return Path(words[0]), ""
    return Path("."), words[0] if words else ""


def cmd_find(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from iris.images import ImageLimits, load_image
    from iris.index import ImageIndex, index_folder
    from iris.query import combine, parse_query

    folder, query = _find_target(args)
    if not folder.is_dir():
        raise BadRequest(f"not a folder: {folder}")
    terms = parse_query(query)  # the same algebra as /find: "a cat +sunset -text", `:weight` per term
    if not terms and not args.image:
        raise BadRequest('the query is empty: give words ("a blue square -red") or --image FILE')
    _check_range("-k", args.k, 1, MAX_FIND_K)
    limits = ImageLimits(cfg.images.max_bytes, cfg.images.max_pixels)
    image = load_image(args.image, limits, name=args.image) if args.image else None  # before any model
    engine = _engine(cfg)
    clip = engine.clip
    with ImageIndex(args.index or cfg.index.path, cfg.index) as index:
        bar = _progress_bar("indexing", args.json)
        report = index_folder(
            index,
            folder,
            engine.embed_images,
            clip.name,
            limits,
            batch_size=cfg.clip.batch_size,
            progress=lambda n, total: bar(n, total),
        )
        bar(None, None)
        vectors = [engine.embed_text(t.text) for t in terms]
        weights = [t.weight for t in terms]
        if image is not None:
            vectors.append(engine.embed_images([image])[0])
            weights.append(1.0)  # as /find weighs its image
        hits = index.search(combine(vectors, weights), [f"folder:{folder.resolve()}"], clip.name, args.k)
    payload = {
        "query": query,
        "terms": [{"text": t.text, "weight": t.weight} for t in terms],
        "image": args.image,
        "folder": str(folder.resolve()),
        "hits": [{"path": h.meta.get("path", h.key), "score": round(h.score, 6)} for h in hits],
        "index": {
            "embedded": report.embedded,
            "reused": report.reused,
            "unchanged": report.unchanged,
            "bad": report.bad,
            "removed": report.removed,
            "problems": report.problems,
        },
    }
    lines = [
        f"indexed {folder}: {report.embedded} new, {report.reused} known content, {report.unchanged} "
        f"unchanged, {report.bad} unreadable, {report.removed} removed"
    ]
    lines += [f"  skipped {p}" for p in report.problems]
    lines += [f"{i:3d}. {h.score:.4f}  {h.meta.get('path', h.key)}" for i, h in enumerate(hits, 1)]
    if not hits:
        lines.append("no images found in that folder")
    _emit(args, payload, "\n".join(lines))
    return 0


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


def _parse_image_prompt(spec: str) -> tuple[Path, float]:
    """`FILE` or `FILE:WEIGHT` (a colon elsewhere in the path, e.g. a drive letter, is left alone)."""
    path, sep, weight = spec.rpartition(":")
    if sep:
        try:
            return Path(path), float(weight)
        except ValueError:
            pass
    return Path(spec), 1.0


def cmd_imagine(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from iris.images import ImageLimits, load_image, read_image_bytes

    width, height = _parse_size(args.size) if args.size else (None, None)
    if args.lr is not None:
        _check_range("--lr (the learning rate)", args.lr, MIN_LR, MAX_LR)
    if args.preview_every is not None:
        _check_range("--preview-every", args.preview_every, 1, cfg.imagine.max_steps)
    limits = ImageLimits(cfg.images.max_bytes, cfg.images.max_pixels)
    init = None
    if args.init:
        init = read_image_bytes(args.init, limits, name=args.init)  # read once: what is checked is used
        load_image(init, limits, name=args.init)
    image_prompts = []
    for spec in args.image_prompt or []:
        path, weight = _parse_image_prompt(spec)
        data = read_image_bytes(path, limits, name=str(path))  # regular files only, like every input
        load_image(data, limits, name=str(path))
        image_prompts.append((data, weight))
    out = Path(args.output)
    check_output(out)  # before any model loads
    engine = _engine(cfg)
    request = engine.request(
        args.prompt,
        steps=args.steps,
        seed=args.seed,
        width=width,
        height=height,
        cutouts=args.cutouts,
        lr=args.lr,
        generator=args.generator,
        init_image=init,
        profile=args.profile,
        image_prompts=tuple(image_prompts) or None,
        init_weight=args.init_weight,
        ema=args.ema,
    )
    from tqdm import tqdm

    from models.generate import StepInfo

    gen = engine.new_generation(request)
    every = args.preview_every or cfg.imagine.preview_every
    bar = tqdm(total=request.steps, desc="imagine", unit="step", disable=args.json, file=sys.stderr)

    def on_step(info: StepInfo) -> None:
        bar.update(1)
        if info.step % every == 0 or info.step == info.total:  # the loss is read on these steps only
            bar.set_postfix(loss=f"{info.loss:.3f}")
        if info.step % every == 0 and info.step < info.total:
            _save_atomic(gen.preview(), out)

    result = gen.run(on_step=on_step, loss_every=every)
    bar.close()
    _save_atomic(result.image, out)
    payload = {
        "output": str(out),
        "seed": result.seed,
        "steps": result.steps,
        "clip_score": round(result.clip_score, 6),
        "start_score": round(result.start_score, 6),
        "width": result.image.width,
        "height": result.image.height,
        "generator": request.generator,
    }
    _emit(
        args,
        payload,
        f"saved {out} ({result.image.width}x{result.image.height}, seed {result.seed}, "
        f"CLIP score {result.clip_score:.4f}, from {result.start_score:.4f})",
    )
    return 0


def _tmp_name(out: Path) -> Path:
    return out.with_name(f".{out.name}.{os.getpid()}.tmp")


def check_output(out: Path) -> None:
    """Refuse, before any work, an output path that is not a .png file Iris can create or replace.

    Only a regular file (or nothing) is ever replaced: a folder, a FIFO or a device stays as it is.
    """
    if out.suffix.lower() != ".png":
        raise BadFile(f"the output must be a .png file (Iris writes PNG), got {str(out)!r}")
    try:
        st = os.stat(out)  # follows links: a link to /dev/full is a device
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise BadFile(f"cannot use the output {out}: {e.strerror or e}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise BadFile(f"the output {out} is a folder; name a .png file")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise BadFile(f"the output {out} is not a regular file (a pipe or a device?); name a .png file")
    folder = out.parent
    if not folder.is_dir():
        raise BadFile(f"the output folder does not exist: {folder}")
    probe = _tmp_name(out)
    try:  # the one sure test of "can I write here" (permission bits do not bind root; read-only mounts)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        os.unlink(probe)
    except OSError as e:
        raise BadFile(f"cannot write to the folder {folder}: {e.strerror or e}") from None


def _save_atomic(image: Any, out: Path) -> None:
    """Write the PNG next to `out`, then rename it over: a reader never sees half a file."""
    tmp = _tmp_name(out)
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise BadFile(f"cannot write {out}: {e.strerror or e}") from None


def _check_range(option: str, value: float, lo: float, hi: float) -> None:
    """Numbers Python takes but float32 or the engine do not (1e40, nan, 10**30): one clear line."""
    if not lo <= value <= hi:  # nan fails both comparisons
        raise BadRequest(f"{option} must be between {lo:g} and {hi:g}, got {value:g}")


def cmd_download(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from models import weights

    if args.list:
        clip = {n: p.description for n, p in weights.CLIP_PRESETS.items()}
        vqgan = {n: p.description for n, p in weights.VQGAN_PRESETS.items()}
        upscale = {
            n: f"super-resolution ×2, about {p.approx_bytes / 1e6:.0f} MB"
            for n, p in weights.UPSCALER_PRESETS.items()
        }
        width = max(map(len, [*clip, *vqgan, *upscale]))
        lines = ["CLIP presets (or any ARCH/TAG of open_clip.list_pretrained()):"]
        lines += [f"  {n:<{width}}  {d}" for n, d in clip.items()]
        lines += ["VQGAN presets:"] + [f"  {n:<{width}}  {d}" for n, d in vqgan.items()]
        lines += ["Upscaler presets:"] + [f"  {n:<{width}}  {d}" for n, d in upscale.items()]
        _emit(
            args,
            {"clip": list(clip), "vqgan": list(vqgan), "upscaler": list(upscale)},
            "\n".join(lines),
        )
        return 0
    paths = weights.download(
        list(args.names),
        cfg.cache_dir,
        mirrors=cfg.weights.mirrors,
        offline=cfg.weights.offline,
        progress=not args.json,
        timeout=args.timeout,
    )
    _emit(
        args,
        {"cache_dir": str(cfg.cache_dir), "files": [str(p) for p in paths]},
        "\n".join([f"cache: {cfg.cache_dir}"] + [f"  {p}" for p in paths]),
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from bot.run import main as run_bot
    from models.device import resolve_device, resolve_imagine

    # the bot reads imagine's defaults from the config: hand it the ones picked for this device
    run_bot(dataclasses.replace(cfg, imagine=resolve_imagine(cfg.imagine, resolve_device(cfg.device))))
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    cfg = _config(args)
    import asyncio

    from bot.run import read_token, sync_only

    if not args.global_ and not cfg.discord.dev_guilds:
        raise BadRequest("nothing to sync: pass --global, or list servers in discord.dev_guilds")
    names = asyncio.run(sync_only(cfg, read_token(), args.global_))
    where = "globally" if args.global_ else f"to {len(cfg.discord.dev_guilds)} dev server(s)"
    _emit(args, {"synced": names, "global": args.global_}, f"synced {', '.join(names)} {where}")
    return 0


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


def cmd_status(args: argparse.Namespace) -> int:
    """Exit 0 when the bot's last heartbeat is fresh and healthy, else 1 (Docker's "unhealthy")."""
    if not args.local:
        raise BadRequest(
            "iris status --local reads the heartbeat of a bot on this machine; on Discord, use /status"
        )
    cfg = _config(args)
    from iris import heartbeat

    try:
        beat = heartbeat.read(cfg.heartbeat_path)
    except BadFile as e:
        _emit(args, {"healthy": False, "problems": [e.message]}, f"unhealthy: {e.message}")
        return 1
    problems = beat.problems()
    age = time.time() - beat.time
    payload = {"healthy": not problems, "problems": problems, "age_s": round(age, 1), **asdict(beat)}
    facts = (
        f"gateway {'connected' if beat.gateway else 'down'}, worker {'alive' if beat.worker else 'silent'}, "
        f"{beat.queued} queued, {beat.running} running; last beat {age:.0f} s ago (pid {beat.pid})"
    )
    _emit(args, payload, f"unhealthy: {'; '.join(problems)} ({facts})" if problems else f"healthy: {facts}")
    return 1 if problems else 0


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


if __name__ == "__main__":
    sys.exit(main())
