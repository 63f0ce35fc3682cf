"""`python -m models.serve --fd N`: the device side of `manager.isolate: true`, run as a child of the bot.

It builds today's InferenceManager (the one scheduler: generations step by step, short jobs batched
between slices, the journal) and serves the Manager API to its parent over the socket `--fd`, one
`iris.service.wire` message per frame (iris/service/process/_link.py). The parent sends the config as the
first message; the child answers `hello` (its resolved imagine defaults, what the journal left over)
once the journal is open, or `fatal` (one line) and exits 1. While it runs it sends a `beat` every
`min(1 s, watchdog_grace_s / 4)` from a thread of its own: the job it is running, its step, how long
the job has run, and whether the models are still loading, so the parent can judge a hang.

It never outlives its parent: the end of the socket (the parent exited, even by kill -9) ends it at
once, and on Linux the kernel also sends it SIGKILL when the parent dies (PR_SET_PDEATHSIG), which
covers a child wedged in native code. SIGINT is ignored: a Ctrl-C reaches the whole process group, and
the parent decides how to shut down.

`--setup module:function` (optional) names a callable run with the InferenceManager before it starts:
the seam for tests (install a `step_hook` that hangs, or exits the process mid-job) and for operators'
diagnostics. It is imported from the child's sys.path (the parent puts its own source root first).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import pkgutil
import signal
import socket
import sys
import threading
import time
from typing import Any

from iris.config import parse_config
from iris.errors import ServiceClosed, internal_error, report_unexpected
from iris.journal import JobState
from iris.service.events import Failed
from iris.service.handle import JobHandle
from iris.service.process._link import BlockingLink
from iris.service.remote import SHORT_OPS

log = logging.getLogger("iris.worker")

# The Manager API methods the parent may call by name (all async, each answered by one message).
CALLS = SHORT_OPS | {"warm_up"}
CLOSE_FLUSH_S = 2.0  # after close(): longest wait for the last events to be sent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.serve", description=__doc__.split("\n")[0])
    p.add_argument("--fd", type=int, required=True, help="the socket to the parent (inherited)")
    p.add_argument("--parent", type=int, default=None, help="the parent's pid: exit if it is gone")
    p.add_argument("--setup", default=None, help="module:function called with the manager before start")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM):  # sent to the whole group (Ctrl-C, `timeout`, a
        signal.signal(signum, signal.SIG_IGN)  # service manager): the parent shuts this process down
    _die_with_parent(args.parent)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s [worker %(process)d] %(name)s: %(message)s"
    )
    link = BlockingLink(socket.socket(fileno=args.fd))
    first = link.recv()
    if first is None:  # the parent went away before sending the config
        return 0
    code = asyncio.run(_serve(link, first["config"], args.setup))
    logging.shutdown()
    os._exit(code)  # the journal is closed; waiting for torch's threads to wind down only delays the parent


def _die_with_parent(parent: int | None) -> None:
    """SIGKILL this process when the parent dies (Linux). The socket's end does the same for a child
    that is reading it; this covers one stuck in native code while holding the GIL."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if parent is not None and os.getppid() != parent:  # it died before prctl took effect
        os._exit(0)


async def _serve(link: BlockingLink, data: Any, setup: str | None) -> int:
    try:
        config = parse_config(data)
        from models.manager import InferenceManager  # torch loads here

        manager = InferenceManager(config)
        if setup:
            pkgutil.resolve_name(setup)(manager)
        await manager.start()
    except BaseException as e:  # one line for the operator; the traceback (if unexpected) is logged here
        link.send({"op": "fatal", "error": internal_error(log, e, "starting the device worker")})
        return 1
    server = Server(manager, link, asyncio.get_running_loop())
    link.send(server.hello())
    threading.Thread(target=server.read_forever, name="iris-serve-read", daemon=True).start()
    threading.Thread(target=server.beat_forever, name="iris-serve-beat", daemon=True).start()
    await server.closed.wait()
    return 0


class Server:
    """Serves one InferenceManager to the parent: requests in on the loop, events and answers out."""

    def __init__(self, manager: Any, link: BlockingLink, loop: asyncio.AbstractEventLoop) -> None:
        self.manager = manager  # models.manager.InferenceManager (typed Any: loaded after the config)
        self.link = link
        self.loop = loop
        self.closed = asyncio.Event()
        self.loading = False  # warm_up is loading the models: a slow answer is explained
        self._tasks: set[asyncio.Task[None]] = set()
        self._forwards: set[asyncio.Task[None]] = set()
        grace = manager.config.manager.watchdog_grace_s
        self.beat_every = min(1.0, grace / 4)
        # Whether the worker thread is inside a batch of short jobs (else in a step, or idle): the
        # parent blames a hang on the short jobs then, and spares the generation that was running.
        self.in_short = 0
        run_short = manager._run_short

        def run_short_watched(batch: list[Any]) -> None:
            self.in_short += 1
            try:
                run_short(batch)
            finally:
                self.in_short -= 1

        manager._run_short = run_short_watched

    def hello(self) -> dict[str, Any]:
        eng, im = self.manager.engine, self.manager.engine.imagine
        defaults = dict(
            steps=int(im.steps), width=int(im.width), height=int(im.height), cutouts=im.cutouts, lr=im.lr,
            generator=im.generator if eng.has_vqgan else "pixels", profile=im.profile,
        )  # fmt: skip
        return {
            "op": "hello",
            "pid": os.getpid(),
            "defaults": defaults,
            "has_vqgan": eng.has_vqgan,
            "unfinished": self.manager.unfinished(),
            "undelivered": self.manager.undelivered(),
        }

    # -- in ------------------------------------------------------------------------------------------
    def read_forever(self) -> None:
        """The reader thread: each message to the loop; the end of the stream ends the process now."""
        while True:
            try:
                message = self.link.recv()
            except Exception as e:
                report_unexpected(log, e, "reading from the parent")
                message = None
            if message is None:
                os._exit(0)  # the parent is gone: nobody waits for our work, and the device must be freed
            self.loop.call_soon_threadsafe(self.dispatch, message)

    def dispatch(self, m: dict[str, Any]) -> None:
        op = m.get("op")
        try:
            if op == "call":
                self._spawn(self._call(m["id"], m["method"], m.get("args", []), m.get("kwargs", {})))
            elif op == "imagine":
                self._imagine(m["job"], m["owner"], m["request"], m.get("meta") or {})
            elif op == "cancel":
                self.manager.cancel(m["job"])
            elif op == "mark":
                self.manager.mark_delivered(m["job"])
            elif op == "end":  # a job the parent ended (its worker hung or died, a discard): journal it
                self.manager.journal.update(m["job"], state=JobState(m["state"]), error=m.get("error"))
            elif op == "close":
                self._spawn(self._close(float(m["grace"])))
            else:
                log.warning("unknown message %r from the parent", op)
        except Exception as e:
            report_unexpected(log, e, f"the parent's {op!r} message")

    def _spawn(self, coro: Any, into: set[asyncio.Task[None]] | None = None) -> None:
        tasks = self._tasks if into is None else into
        task = self.loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _call(self, call_id: int, method: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        try:
            if method not in CALLS:
                raise ValueError(f"no such call {method!r}")
            self.loading = method == "warm_up"
            value = await getattr(self.manager, method)(*args, **kwargs)
            answer = {"op": "answer", "id": call_id, "value": value}
        except BaseException as e:
            answer = {"op": "answer", "id": call_id, "error": internal_error(log, e, f"a {method} call")}
        finally:
            self.loading = False
        self.link.send(answer)

    def _imagine(self, job_id: str, owner: str, request: Any, meta: dict[str, str]) -> None:
        try:  # admitted by the parent (its only submitter): no caps here
            handle = self.manager._enqueue(request, owner, meta, job_id, admit=False)
        except Exception as e:
            error = internal_error(log, e, f"queueing job {job_id}")
            self.link.send({"op": "event", "job": job_id, "event": Failed(error)})
            return
        self._spawn(self._forward(handle), self._forwards)

    async def _forward(self, handle: JobHandle) -> None:
        async for event in handle.events():
            self.link.send({"op": "event", "job": handle.id, "event": event})

    async def _close(self, grace: float) -> None:
        try:
            await self.manager.close(grace_s=grace)
        except Exception as e:
            report_unexpected(log, e, "closing the inference manager")
        if self._forwards:  # the shutdown's last events ("paused") must reach the parent
            await asyncio.wait(list(self._forwards), timeout=CLOSE_FLUSH_S)
        self.link.send({"op": "closed"})
        self.closed.set()

    # -- out -----------------------------------------------------------------------------------------
    def beat_forever(self) -> None:
        """The heartbeat thread: what runs now, every `beat_every` s (reads are racy but harmless)."""
        while True:
            time.sleep(self.beat_every)
            try:
                self.link.send(self.beat())
            except OSError:
                os._exit(0)  # the parent is gone
            except ServiceClosed:
                return

    def beat(self) -> dict[str, Any]:
        m = self.manager
        job, eng = m._current, m.engine
        gen = job.gen if job is not None else None
        started = job.started_at if job is not None else None
        models = [x for x in (eng._clip and eng._clip.name, eng._vqgan and "vqgan") if x]
        return {
            "op": "beat",
            "job": job.id if job is not None else None,
            "step": gen.steps_done if gen is not None else 0,
            "elapsed": time.monotonic() - started if started is not None else None,
            "loading": self.loading or eng._clip is None,  # the first use loads the models
            "short": self.in_short > 0,
            "device": str(eng._clip.device) if eng._clip else m.config.device,
            "models": models,
            "step_time": m._step_time,
        }


if __name__ == "__main__":
    sys.exit(main())
