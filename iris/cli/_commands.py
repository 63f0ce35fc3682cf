"""What each subcommand does."""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from iris.cli._common import (
    MAX_FIND_K,
    MAX_LR,
    MIN_LR,
    _bar,
    _check_range,
    _config,
    _emit,
    _engine,
    _parse_size,
    _progress_bar,
)
from iris.cli._output import _save_atomic, check_output
from iris.errors import BadFile, BadRequest
from iris.labels import check_labels, parse_labels

if TYPE_CHECKING:
    from PIL import Image


def cmd_classify(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from iris.images import ImageLimits, load_image

    labels = parse_labels(args.labels) if args.labels is not None else list(cfg.classify.default_labels)
    if args.top_k is not None:
        _check_range("--top-k", args.top_k, 1, cfg.classify.max_labels)
    limits = ImageLimits(cfg.images.max_bytes, cfg.images.max_pixels)
    images = [load_image(p, limits, name=p) for p in args.images]  # fail before loading any model
    if cfg.manager.backend == "nats":  # on the deployment's workers
        from iris.cli._remote import classify_on_workers

        labels = check_labels(labels, cfg.classify.max_labels, cfg.classify.max_label_chars)
        results = classify_on_workers(cfg, images, labels, args.top_k, args.templates)
    else:
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
    from iris.index import ImageIndex, index_folder, open_index
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
    # --index names a SQLite file; else the configured index (index.url: PostgreSQL, else index.path)
    with closing(ImageIndex(args.index, cfg.index) if args.index else open_index(cfg.index)) as index:
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
    overrides = dict(
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
    if cfg.manager.backend == "nats":  # on the deployment's workers
        from iris.cli._remote import imagine_on_workers

        def save(image: Image.Image) -> None:
            _save_atomic(image, out)

        req, done = imagine_on_workers(cfg, args.prompt, overrides, save, args.json)
        payload = {
            "output": str(out),
            "seed": done.seed,
            "steps": done.steps,
            "clip_score": round(done.clip_score, 6),
            "width": done.image.width,
            "height": done.image.height,
            "generator": req.generator,
        }
        size = f"{done.image.width}x{done.image.height}"
        _emit(args, payload, f"saved {out} ({size}, seed {done.seed}, CLIP score {done.clip_score:.4f})")
        return 0
    engine = _engine(cfg)
    request = engine.request(args.prompt, **overrides)
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
    from bot.run import main as run_bot  # no torch in this process: the defaults sized for the device
    # (auto steps and size) come from whatever runs the models (the child's hello, a worker)

    run_bot(cfg)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """A device's worker for manager.backend: nats, until SIGTERM."""
    from iris.service.nats import run_worker
    from models.connect import open_manager  # the device's own manager (a watched child process)

    return run_worker(_config(args), open_manager, args.device)


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
