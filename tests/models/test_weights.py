"""The weights downloader against a real HTTP server on 127.0.0.1: resume, checksums, offline, failures."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from iris.errors import BadRequest, WeightsCorrupt, WeightsUnavailable
from models import weights
from models.weights import VQGANPreset, download, fetch, vqgan_paths

DATA = os.urandom(300_000)
DATA_SHA = hashlib.sha256(DATA).hexdigest()


@dataclass
class Hit:
    path: str
    range: str | None  # the Range header as received
    status: int
    sent: int  # body bytes written


@dataclass
class Host:
    """What one fake weights host serves, and what it was asked."""

    files: dict[str, bytes]
    honor_range: bool = True  # False: answer 200 with the whole file, like servers without Range support
    cut_after: int | None = None  # close the connection after this many body bytes
    hits: list[Hit] = field(default_factory=list)
    url: str = ""


class _Handler(BaseHTTPRequestHandler):
    host: Host

    def do_GET(self) -> None:
        host, rng = self.host, self.headers.get("Range")
        body = host.files.get(self.path)
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        start = int(m.group(1)) if m and host.honor_range else 0
        chunk = b"" if body is None else body[start:][: host.cut_after]
        if body is None:
            status = 404
        elif start and start >= len(body):
            status = 416
        else:
            status = 206 if m and host.honor_range else 200
        # Logged before anything goes out, so the log is complete by the time the client has its answer.
        host.hits.append(Hit(self.path, rng, status, len(chunk)))
        if body is None:
            self.send_error(404)
            return
        self.send_response(status)
        if status == 416:
            self.send_header("Content-Range", f"bytes */{len(body)}")
        elif status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start if status != 416 else 0))
        self.end_headers()
        self.wfile.write(chunk)  # short of Content-Length when cut_after is set: a dropped connection

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[..., Host]]:
    """Factory: start a threaded HTTP server for a Host; all are shut down after the test."""
    servers: list[ThreadingHTTPServer] = []

    def start(files: dict[str, bytes] | None = None, **options: object) -> Host:
        host = Host(files if files is not None else {"/blob": DATA}, **options)  # type: ignore[arg-type]
        handler = type("Handler", (_Handler,), {"host": host})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        host.url = f"http://127.0.0.1:{server.server_address[1]}"
        return host

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IRIS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_full_download_checks_sha256(serve: Callable[..., Host], tmp_path: Path) -> None:
    host = serve()
    dest = tmp_path / "w.bin"
    got = fetch(f"{host.url}/blob", dest, sha256=DATA_SHA, expected_bytes=len(DATA), progress=False)
    assert got == dest and dest.read_bytes() == DATA
    assert not dest.with_suffix(".bin.part").exists()
    assert [(h.range, h.status, h.sent) for h in host.hits] == [(None, 200, len(DATA))]


def test_resumes_from_part_with_range(serve: Callable[..., Host], tmp_path: Path) -> None:
    host = serve()
    dest, n = tmp_path / "w.bin", 123_457
    dest.with_suffix(".bin.part").write_bytes(DATA[:n])
    fetch(f"{host.url}/blob", dest, sha256=DATA_SHA, progress=False)
    assert dest.read_bytes() == DATA
    assert [(h.range, h.status, h.sent) for h in host.hits] == [(f"bytes={n}-", 206, len(DATA) - n)]


def test_server_ignoring_range_restarts(serve: Callable[..., Host], tmp_path: Path) -> None:
    host = serve(honor_range=False)
    dest = tmp_path / "w.bin"
    dest.with_suffix(".bin.part").write_bytes(DATA[:1000])
    fetch(f"{host.url}/blob", dest, sha256=DATA_SHA, progress=False)
    assert dest.read_bytes() == DATA
    assert [(h.range, h.status) for h in host.hits] == [("bytes=1000-", 200)]


def test_complete_part_finishes_on_416(serve: Callable[..., Host], tmp_path: Path) -> None:
    host = serve()
    dest = tmp_path / "w.bin"
    dest.with_suffix(".bin.part").write_bytes(DATA)
    fetch(f"{host.url}/blob", dest, sha256=DATA_SHA, progress=False)
    assert dest.read_bytes() == DATA
    assert [h.status for h in host.hits] == [416]


def test_dropped_connection_keeps_part_and_retry_resumes(serve: Callable[..., Host], tmp_path: Path) -> None:
    host = serve(cut_after=100_000)
    dest = tmp_path / "w.bin"
    with pytest.raises(WeightsUnavailable, match="100000 of 300000"):
        fetch(f"{host.url}/blob", dest, progress=False)
    part = dest.with_suffix(".bin.part")
    assert part.read_bytes() == DATA[:100_000] and not dest.exists()
    host.cut_after = None
    fetch(f"{host.url}/blob", dest, sha256=DATA_SHA, progress=False)
    assert dest.read_bytes() == DATA and not part.exists()
    assert host.hits[-1].range == "bytes=100000-" and host.hits[-1].sent == 200_000


def test_sha256_mismatch_deletes_download(serve: Callable[..., Host], tmp_path: Path) -> None:
    host = serve()
    dest, wrong = tmp_path / "w.bin", "0" * 64
    with pytest.raises(WeightsCorrupt) as info:
        fetch(f"{host.url}/blob", dest, sha256=wrong, progress=False)
    assert "w.bin" in info.value.message and wrong in info.value.message and DATA_SHA in info.value.message
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_names_file_cache_and_way_out(tmp_path: Path) -> None:
    with socket.socket() as sock:  # bound, never listening: connecting is refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/blob"
        cache = tmp_path / "cache"
        with pytest.raises(WeightsUnavailable) as info:
            fetch(url, cache / "vqgan" / "x" / "last.ckpt", cache_dir=cache, name="x", progress=False)
    message = info.value.message
    assert "last.ckpt" in message and str(cache) in message and "`iris download x`" in message
    assert "config.yaml" in message


def test_http_error_is_unavailable(serve: Callable[..., Host], tmp_path: Path) -> None:
    host = serve()
    with pytest.raises(WeightsUnavailable, match="HTTP 404"):
        fetch(f"{host.url}/gone", tmp_path / "w.bin", progress=False)


def test_silent_server_times_out(tmp_path: Path) -> None:
    with socket.socket() as sock:  # listening, never answering
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/blob"
        with pytest.raises(WeightsUnavailable, match=r"within 0\.2 s"):
            fetch(url, tmp_path / "w.bin", progress=False, timeout=0.2)


def test_offline_env_sends_nothing(
    serve: Callable[..., Host], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = serve()
    monkeypatch.setenv("IRIS_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="IRIS_OFFLINE"):
        fetch(f"{host.url}/blob", tmp_path / "w.bin", progress=False)
    assert host.hits == [] and list(tmp_path.iterdir()) == []


def test_existing_file_needs_no_request(serve: Callable[..., Host], tmp_path: Path) -> None:
    host = serve()
    dest = tmp_path / "w.bin"
    dest.write_bytes(DATA)
    assert fetch(f"{host.url}/blob", dest, sha256=DATA_SHA, progress=False) == dest
    assert fetch(f"{host.url}/blob", dest, progress=False, offline=True) == dest
    assert host.hits == []


def test_vqgan_paths_downloads_into_cache(
    serve: Callable[..., Host], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = serve({"/model.yaml": b"model: {}\n", "/last.ckpt": DATA})
    preset = VQGANPreset("tiny", f"{host.url}/model.yaml", f"{host.url}/last.ckpt", len(DATA), DATA_SHA, 16)
    monkeypatch.setitem(weights.VQGAN_PRESETS, "tiny", preset)
    config, ckpt = vqgan_paths("tiny", tmp_path, progress=False)
    assert (config, ckpt) == (tmp_path / "vqgan/tiny/model.yaml", tmp_path / "vqgan/tiny/last.ckpt")
    assert config.read_bytes() == b"model: {}\n" and ckpt.read_bytes() == DATA
    assert download(["tiny"], tmp_path) == [config, ckpt] and len(host.hits) == 2


def test_vqgan_paths_offline_empty_cache(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match="iris download vqgan_imagenet_f16_16384"):
        vqgan_paths("vqgan_imagenet_f16_16384", tmp_path, offline=True)
    assert not (tmp_path / "vqgan").exists()


def test_unknown_presets_are_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="vqgan_imagenet_f16_1024"):
        vqgan_paths("vqgan_nope", tmp_path)
    with pytest.raises(BadRequest, match="nope"):
        download(["vqgan_imagenet_f16_16384", "nope"], tmp_path, offline=True)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IRIS_CACHE", str(tmp_path / "a"))
    assert weights.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("IRIS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert weights.default_cache_dir() == tmp_path / "x" / "iris"


def test_download_clip_offline_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable) as info:
        weights.download_clip("ViT-B-32/laion2b_s34b_b79k", tmp_path)
    message = info.value.message
    assert "iris download ViT-B-32/laion2b_s34b_b79k" in message and str(tmp_path) in message
    assert not weights.clip_weights_cached("ViT-B-32/laion2b_s34b_b79k", tmp_path)
