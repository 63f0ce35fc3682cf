"""The weights downloader against real HTTP servers on 127.0.0.1: sources that die, checks, resume, mirrors.

The files served are real: the toy VQGAN saved as a Lightning-style checkpoint (`{"state_dict": ...}`
through torch.save) and its taming YAML config. No real weights, no internet.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from iris.errors import BadRequest, WeightsCorrupt, WeightsUnavailable
from models import weights
from models.toy import TOY_VQGAN_CONFIG, TOY_VQGAN_WEIGHTS
from models.vqgan import load_vqgan
from models.weights import Source, VQGANPreset, WeightFile, download, vqgan_paths
from models.weights.presets import CHECKPOINT, CONFIG
from models.weights.verify import sidecar


def toy_ckpt() -> bytes:
    """The toy VQGAN as a Lightning file: state_dict plus training-only entries, like taming's."""
    sd = load_file(str(TOY_VQGAN_WEIGHTS))
    sd["loss.logvar"] = torch.zeros(())
    buf = io.BytesIO()
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 1000}, buf)
    return buf.getvalue()


CKPT = toy_ckpt()
CKPT_SHA = hashlib.sha256(CKPT).hexdigest()
YAML = TOY_VQGAN_CONFIG.read_bytes()
# What the dead share links answer, with a 200: a 7,281-byte HTML page.
DEAD = (b"<!DOCTYPE html>\n<html><head><title>Link does not exist :-( - Heibox</title></head><body>").ljust(
    7281, b" "
)


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
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location (302)
    auth: str | None = None  # the Authorization header required, if any (401 without it)
    hits: list[Hit] = field(default_factory=list)
    url: str = ""


class _Handler(BaseHTTPRequestHandler):
    host: Host

    def do_GET(self) -> None:
        host, rng = self.host, self.headers.get("Range")
        if host.auth is not None and self.headers.get("Authorization") != host.auth:
            host.hits.append(Hit(self.path, rng, 401, 0))
            self.send_error(401)
            return
        if self.path in host.redirects:
            host.hits.append(Hit(self.path, rng, 302, 0))
            self.send_response(302)
            self.send_header("Location", host.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
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

    def start(files: dict[str, bytes], **options: object) -> Host:
        host = Host(files, **options)  # type: ignore[arg-type]
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


@pytest.fixture
def preset(monkeypatch: pytest.MonkeyPatch) -> Callable[..., VQGANPreset]:
    """Factory: register a VQGAN preset named "tiny" whose files come from the given sources."""

    def make(
        config: list[str], checkpoint: list[str], sha256: str | None = None, size: int | None = None
    ) -> VQGANPreset:
        p = VQGANPreset(
            "tiny",
            "the toy VQGAN, served locally",
            WeightFile("model.yaml", CONFIG, tuple(Source(u) for u in config)),
            WeightFile("last.ckpt", CHECKPOINT, tuple(Source(u) for u in checkpoint), sha256, size),
            len(CKPT),
            4,
        )
        monkeypatch.setitem(weights.VQGAN_PRESETS, "tiny", p)
        return p

    return make


def _folder(cache: Path) -> Path:
    return cache / "vqgan" / "tiny"


def test_download_checks_and_records_and_the_model_loads(serve, preset, tmp_path):
    host = serve({"/model.yaml": YAML, "/last.ckpt": CKPT})
    preset([f"{host.url}/model.yaml"], [f"{host.url}/last.ckpt"])
    files = vqgan_paths("tiny", tmp_path, progress=False)
    assert (files.config, files.checkpoint) == (
        _folder(tmp_path) / "model.yaml",
        _folder(tmp_path) / "last.ckpt",
    )
    assert files.checkpoint.read_bytes() == CKPT and files.verified
    assert sidecar(files.checkpoint).read_text().split()[0] == CKPT_SHA
    assert sorted(p.name for p in _folder(tmp_path).iterdir()) == [
        "last.ckpt",
        "last.ckpt.sha256",
        "model.yaml",
        "model.yaml.sha256",
    ]
    assert load_vqgan(files.config, files.checkpoint).codebook.shape == (512, 32)
    # A later start checks the files against their records and asks the network nothing.
    again = vqgan_paths("tiny", tmp_path, progress=False)
    assert again == files and len(host.hits) == 2


def test_200_html_page_is_refused_naming_the_source(serve, preset, tmp_path):
    host = serve({"/dead": DEAD})
    preset([f"{host.url}/dead"], [f"{host.url}/dead"])
    with pytest.raises(WeightsUnavailable) as info:
        vqgan_paths("tiny", tmp_path, progress=False)
    msg = info.value.message
    assert f'{host.url[7:]}: an HTML page ("Link does not exist :-( - Heibox")' in msg
    assert "tiny/last.ckpt" in msg
    assert not _folder(tmp_path).exists() or list(_folder(tmp_path).iterdir()) == []


def test_final_error_lists_every_source_and_the_ways_out(serve, preset, tmp_path):
    dead, gone = serve({"/last.ckpt": DEAD}), serve({})
    json_host = serve({"/last.ckpt": b'{"error": "rate limited"}'})
    preset(
        [f"{dead.url}/model.yaml"],
        [f"{dead.url}/last.ckpt", f"{gone.url}/last.ckpt", f"{json_host.url}/last.ckpt"],
    )
    with pytest.raises(WeightsUnavailable) as info:
        vqgan_paths("tiny", tmp_path, progress=False)
    msg = info.value.message
    assert "Tried 3 source(s)" in msg and "\n" not in msg
    assert msg.index(f"{dead.url[7:]}: an HTML page") < msg.index(f"{gone.url[7:]}: HTTP 404")
    assert msg.index(f"{gone.url[7:]}: HTTP 404") < msg.index(f"{json_host.url[7:]}: a JSON document")
    assert "weights.mirrors" in msg and "BASE/tiny/last.ckpt" in msg
    assert "vqgan.config" in msg and "vqgan.checkpoint" in msg and str(tmp_path) in msg


def test_second_source_works_after_the_first_fails(serve, preset, tmp_path, caplog):
    bad, good = serve({"/last.ckpt": DEAD, "/model.yaml": DEAD}), serve({"/c": YAML, "/k": CKPT})
    preset([f"{bad.url}/model.yaml", f"{good.url}/c"], [f"{bad.url}/last.ckpt", f"{good.url}/k"])
    files = vqgan_paths("tiny", tmp_path, progress=False)
    assert files.checkpoint.read_bytes() == CKPT and files.config.read_bytes() == YAML
    assert [h.path for h in bad.hits] == ["/last.ckpt", "/model.yaml"]
    assert "after 1 source(s) failed" in caplog.text
    assert not list(_folder(tmp_path).glob("*.part"))


def test_redirect_chain_is_followed(serve, preset, tmp_path):
    host = serve(
        {"/files/last.ckpt": CKPT, "/model.yaml": YAML}, redirects={"/a": "/b", "/b": "/files/last.ckpt"}
    )
    preset([f"{host.url}/model.yaml"], [f"{host.url}/a"])
    assert vqgan_paths("tiny", tmp_path, progress=False).checkpoint.read_bytes() == CKPT
    assert [(h.path, h.status) for h in host.hits][:3] == [
        ("/a", 302),
        ("/b", 302),
        ("/files/last.ckpt", 200),
    ]


def test_404_is_a_reason_and_leaves_nothing(serve, preset, tmp_path):
    host = serve({})
    preset([f"{host.url}/model.yaml"], [f"{host.url}/last.ckpt"])
    with pytest.raises(WeightsUnavailable, match="HTTP 404"):
        vqgan_paths("tiny", tmp_path, progress=False)
    assert list(_folder(tmp_path).iterdir()) == []


def test_truncated_body_is_kept_and_the_next_run_resumes(serve, preset, tmp_path):
    cut = len(CKPT) // 3
    host = serve({"/model.yaml": YAML, "/last.ckpt": CKPT}, cut_after=cut)
    preset([f"{host.url}/model.yaml"], [f"{host.url}/last.ckpt"])
    with pytest.raises(WeightsUnavailable, match=f"closed after {cut} of {len(CKPT)} bytes"):
        vqgan_paths("tiny", tmp_path, progress=False)
    (part,) = _folder(tmp_path).glob("last.ckpt.*.part")
    assert part.read_bytes() == CKPT[:cut] and not (_folder(tmp_path) / "last.ckpt").exists()
    host.cut_after = None
    files = vqgan_paths("tiny", tmp_path, progress=False)
    assert files.checkpoint.read_bytes() == CKPT and not part.exists()
    ckpt_hits = [(h.range, h.status, h.sent) for h in host.hits if h.path == "/last.ckpt"]
    assert ckpt_hits == [(None, 200, cut), (f"bytes={cut}-", 206, len(CKPT) - cut)]


def test_server_ignoring_range_restarts_cleanly(serve, preset, tmp_path):
    host = serve({"/model.yaml": YAML, "/last.ckpt": CKPT}, honor_range=False)
    preset([f"{host.url}/model.yaml"], [f"{host.url}/last.ckpt"])
    folder = _folder(tmp_path)
    folder.mkdir(parents=True)
    url = f"{host.url}/last.ckpt"
    part = folder / f"last.ckpt.{hashlib.sha256(url.encode()).hexdigest()[:12]}.part"
    part.write_bytes(b"garbage that is not the start of the file")
    assert vqgan_paths("tiny", tmp_path, progress=False).checkpoint.read_bytes() == CKPT
    assert [(h.range, h.status) for h in host.hits if h.path == "/last.ckpt"] == [("bytes=41-", 200)]


def test_checksum_mismatch_is_refused(serve, preset, tmp_path):
    host = serve({"/model.yaml": YAML, "/last.ckpt": CKPT})
    wrong = "0" * 64
    preset([f"{host.url}/model.yaml"], [f"{host.url}/last.ckpt"], sha256=wrong)
    with pytest.raises(WeightsUnavailable) as info:
        vqgan_paths("tiny", tmp_path, progress=False)
    assert f"sha256 {CKPT_SHA} instead of {wrong}" in info.value.message
    assert not (_folder(tmp_path) / "last.ckpt").exists()


def test_known_size_is_checked(serve, preset, tmp_path):
    host = serve({"/model.yaml": YAML, "/last.ckpt": CKPT})
    preset([f"{host.url}/model.yaml"], [f"{host.url}/last.ckpt"], size=len(CKPT) + 1)
    with pytest.raises(WeightsUnavailable, match=f"{len(CKPT)} bytes instead of {len(CKPT) + 1}"):
        vqgan_paths("tiny", tmp_path, progress=False)


def test_a_config_must_be_a_model_config(serve, preset, tmp_path):
    other = b"model:\n  target: ldm.models.autoencoder.AutoencoderKL\n  params: {}\n"
    host = serve({"/a.yaml": b"just: yaml\n", "/b.yaml": other, "/last.ckpt": CKPT})
    preset([f"{host.url}/a.yaml", f"{host.url}/b.yaml"], [f"{host.url}/last.ckpt"])
    with pytest.raises(WeightsUnavailable) as info:
        vqgan_paths("tiny", tmp_path, progress=False)
    assert "not a taming VQGAN config" in info.value.message and "AutoencoderKL" in info.value.message


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_cached_file_is_fetched_again(serve, preset, tmp_path, damage):
    host = serve({"/model.yaml": YAML, "/last.ckpt": CKPT})
    preset([f"{host.url}/model.yaml"], [f"{host.url}/last.ckpt"])
    ckpt = vqgan_paths("tiny", tmp_path, progress=False).checkpoint
    data = bytearray(ckpt.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 2 :]
    ckpt.write_bytes(bytes(data))
    assert vqgan_paths("tiny", tmp_path, progress=False).checkpoint.read_bytes() == CKPT
    assert [h.path for h in host.hits].count("/last.ckpt") == 2
    # Offline, the damage is reported instead of used.
    ckpt.write_bytes(bytes(data))
    with pytest.raises(WeightsCorrupt, match="failed its check"):
        vqgan_paths("tiny", tmp_path, offline=True)


def test_an_html_page_left_in_the_cache_by_an_old_version_is_replaced(serve, preset, tmp_path):
    host = serve({"/model.yaml": YAML, "/last.ckpt": CKPT})
    preset([f"{host.url}/model.yaml"], [f"{host.url}/last.ckpt"])
    folder = _folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / "model.yaml").write_bytes(DEAD)  # no .sha256 beside them: only their content can tell
    (folder / "last.ckpt").write_bytes(DEAD)
    files = vqgan_paths("tiny", tmp_path, progress=False)
    assert files.config.read_bytes() == YAML and files.checkpoint.read_bytes() == CKPT


def test_mirrors_are_tried_first_with_the_preset_layout(serve, preset, tmp_path):
    mirror = serve({"/base/tiny/model.yaml": YAML, "/base/tiny/last.ckpt": CKPT})
    public = serve({"/model.yaml": YAML, "/last.ckpt": CKPT})
    preset([f"{public.url}/model.yaml"], [f"{public.url}/last.ckpt"])
    files = vqgan_paths("tiny", tmp_path, mirrors=[f"{mirror.url}/base/"], progress=False)
    assert files.checkpoint.read_bytes() == CKPT
    assert sorted(h.path for h in mirror.hits) == ["/base/tiny/last.ckpt", "/base/tiny/model.yaml"]
    assert public.hits == []


def test_offline_asks_nothing(serve, preset, tmp_path, monkeypatch):
    host = serve({"/model.yaml": YAML, "/last.ckpt": CKPT})
    preset([f"{host.url}/model.yaml"], [f"{host.url}/last.ckpt"])
    monkeypatch.setenv("IRIS_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="IRIS_OFFLINE") as info:
        vqgan_paths("tiny", tmp_path)
    assert host.hits == [] and "vqgan.checkpoint" in info.value.message


def test_silent_server_times_out(preset, tmp_path):
    import socket

    with socket.socket() as sock:  # listening, never answering
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/x"
        preset([url], [url])
        with pytest.raises(WeightsUnavailable, match=r"no answer within 0\.2 s"):
            vqgan_paths("tiny", tmp_path, progress=False, timeout=0.2)


def test_every_preset_lists_sources_and_the_dead_share_links_are_gone():
    for p in weights.VQGAN_PRESETS.values():
        for wf in p.files:
            assert wf.sources, (p.name, wf.name)
            assert not any("/d/" in s.url and "heibox" in s.url for s in wf.sources), (p.name, wf.name)
    classic = weights.VQGAN_PRESETS["vqgan_imagenet_f16_16384"].checkpoint.sources
    assert len(classic) >= 2 and len({s.describe() for s in classic}) == len(classic)


def test_unknown_presets_are_bad_requests(tmp_path):
    with pytest.raises(BadRequest, match="vqgan_imagenet_f16_1024"):
        vqgan_paths("vqgan_nope", tmp_path)
    with pytest.raises(BadRequest, match="nope"):
        download(["vqgan_imagenet_f16_16384", "nope"], tmp_path, offline=True)


def _zipped(files: dict[str, bytes]) -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _zip_preset(monkeypatch, url: str, sha256: str | None = None) -> None:
    p = VQGANPreset(
        "tiny",
        "a zipped preset, as latent-diffusion ships them",
        WeightFile("model.yaml", CONFIG, (Source(url, "config.yaml"),)),
        WeightFile("last.ckpt", CHECKPOINT, (Source(url, "model.ckpt"),), sha256),
        len(CKPT),
        4,
    )
    monkeypatch.setitem(weights.VQGAN_PRESETS, "tiny", p)


def test_one_zip_download_serves_both_files_and_its_member_is_checked(serve, monkeypatch, tmp_path):
    host = serve({"/vq.zip": _zipped({"config.yaml": YAML, "model.ckpt": CKPT})})
    _zip_preset(monkeypatch, f"{host.url}/vq.zip", sha256=CKPT_SHA)
    files = vqgan_paths("tiny", tmp_path, progress=False)
    assert files.config.read_bytes() == YAML and files.checkpoint.read_bytes() == CKPT and files.verified
    assert [h.path for h in host.hits] == ["/vq.zip"]  # fetched once, for both files
    assert sorted(p.name for p in _folder(tmp_path).iterdir()) == [
        "last.ckpt",
        "last.ckpt.sha256",
        "model.yaml",
        "model.yaml.sha256",
    ]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_zipped({"config.yaml": YAML}), "the zip holds no model.ckpt"),
        (_zipped({"config.yaml": YAML, "model.ckpt": DEAD}), "an HTML page"),
        (DEAD, 'an HTML page ("Link does not exist :-( - Heibox") instead of a zip'),
        (b"\x00" * 100, "not a readable zip"),
    ],
)
def test_a_bad_zip_is_refused_with_its_reason(serve, monkeypatch, tmp_path, body, reason):
    host = serve({"/vq.zip": body})
    _zip_preset(monkeypatch, f"{host.url}/vq.zip")
    with pytest.raises(WeightsUnavailable, match=re.escape(reason)):
        vqgan_paths("tiny", tmp_path, progress=False)
    assert list(_folder(tmp_path).iterdir()) == []


def test_a_complete_part_is_finished_by_the_416_answer(serve, preset, tmp_path):
    host = serve({"/model.yaml": YAML, "/last.ckpt": CKPT})
    preset([f"{host.url}/model.yaml"], [f"{host.url}/last.ckpt"])
    folder = _folder(tmp_path)
    folder.mkdir(parents=True)
    url = f"{host.url}/last.ckpt"
    (folder / f"last.ckpt.{hashlib.sha256(url.encode()).hexdigest()[:12]}.part").write_bytes(CKPT)
    assert vqgan_paths("tiny", tmp_path, progress=False).checkpoint.read_bytes() == CKPT
    assert [(h.range, h.status) for h in host.hits if h.path == "/last.ckpt"] == [
        (f"bytes={len(CKPT)}-", 416)
    ]


def test_a_mirror_with_credentials_sends_them_to_its_host_only_and_never_shows_them(serve, preset, tmp_path):
    import base64

    expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    mirror = serve({"/base/tiny/model.yaml": YAML, "/base/tiny/last.ckpt": CKPT}, auth=expected)
    preset(["http://127.0.0.1:9/model.yaml"], ["http://127.0.0.1:9/last.ckpt"])
    base = mirror.url.replace("http://", "http://alice:s3cret@")
    with pytest.raises(WeightsUnavailable) as info:
        vqgan_paths("tiny", tmp_path, mirrors=[base.replace("s3cret", "wrong") + "/base"], progress=False)
    assert "HTTP 401" in info.value.message and "wrong" not in info.value.message
    files = vqgan_paths("tiny", tmp_path, mirrors=[base + "/base"], progress=False)
    assert files.checkpoint.read_bytes() == CKPT
    assert [h.status for h in mirror.hits[-2:]] == [200, 200]
