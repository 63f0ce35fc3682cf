"""`iris run` writes a heartbeat into the data directory; `iris status --local` (Docker's HEALTHCHECK)
reads it in a separate process and exits 0 only while the bot is connected with a live worker."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from bot import run
from bot.app import IrisBot
from iris import heartbeat
from tests.conftest import engine_for

ROOT = Path(__file__).resolve().parents[2]

# The status command in a fresh interpreter, as the HEALTHCHECK runs it; it must not need torch or discord.
STATUS = (
    "import sys; from iris.cli import main; code = main(sys.argv[1:]); "
    "assert 'torch' not in sys.modules and 'discord' not in sys.modules, 'status imported the engine'; "
    "sys.exit(code)"
)


async def status(data: Path) -> tuple[int, dict]:
    """`iris status --local --json` on `data`, without blocking the bot's event loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        STATUS,
        "status",
        "--local",
        "--json",
        "--config",
        str(ROOT / "config.toy.yaml"),
        env={"IRIS_DATA": str(data), "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode in (0, 1), err.decode()
    return proc.returncode, json.loads(out)


async def test_status_follows_a_running_bot(w):
    cfg = w.config()
    data = cfg.data_path  # the test's folder; `iris status` is pointed at it with IRIS_DATA
    assert cfg.heartbeat_path == data / "iris-heartbeat.json"
    bot = IrisBot(cfg, engine_for(cfg, w.shared), guild_ready_timeout=0.1)

    def last() -> heartbeat.Heartbeat | None:
        try:
            return heartbeat.read(cfg.heartbeat_path)
        except Exception:
            return None

    with w.fake.patch_discord():
        running = asyncio.create_task(run.serve(bot, w.fake.token, heartbeat_every=0.2))
        try:
            await w.fake.wait_for(lambda: bot.is_ready() or running.done())
            await w.fake.wait_for(lambda: (b := last()) and b.gateway and b.worker, timeout=20)
            code, report = await status(data)
            assert code == 0 and report["healthy"] and report["gateway"] and report["worker"], report
            assert report["queued"] == 0 and report["problems"] == []

            # the worker stops (the manager is closed under the bot): the next beats say so
            await bot.manager.close(grace_s=0)
            await w.fake.wait_for(lambda: (b := last()) and not b.worker, timeout=20)
            code, report = await status(data)
            assert code == 1 and not report["healthy"]
            assert "inference worker" in report["problems"][0]
        finally:
            await bot.close()
            await asyncio.wait_for(running, 15)
    # a clean stop leaves a last beat that says so
    code, report = await status(data)
    assert code == 1 and report["state"] == "stopped" and "stopped" in report["problems"][0]


async def test_a_stale_or_missing_heartbeat_is_unhealthy(tmp_path):
    code, report = await status(tmp_path)
    assert code == 1 and "no heartbeat" in report["problems"][0]
    beat = heartbeat.Heartbeat(gateway=True, worker=True, queued=2, running=1)
    heartbeat.write(tmp_path / "iris-heartbeat.json", beat)
    code, report = await status(tmp_path)
    assert code == 0 and report["queued"] == 2 and report["running"] == 1
    old = heartbeat.Heartbeat(gateway=True, worker=True, queued=0, running=0, time=time.time() - 600)
    heartbeat.write(tmp_path / "iris-heartbeat.json", old)
    code, report = await status(tmp_path)
    assert code == 1 and "600 s old" in report["problems"][0]
    heartbeat.write(tmp_path / "iris-heartbeat.json", heartbeat.Heartbeat(False, True, 0, 0))
    code, report = await status(tmp_path)
    assert code == 1 and report["problems"] == ["not connected to Discord"]


@pytest.mark.parametrize("content", [b"", b"[1, 2]", b'{"gateway": true}', b"\xff\xfe", b"{" * 100_000])
async def test_a_garbled_heartbeat_is_one_line(tmp_path, content):
    (tmp_path / "iris-heartbeat.json").write_bytes(content)
    code, report = await status(tmp_path)
    assert code == 1 and report["problems"] == [f"{tmp_path / 'iris-heartbeat.json'} is not a heartbeat file"]
