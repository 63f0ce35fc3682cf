"""A web host that is not Discord, for embeds that point elsewhere: it counts every request it gets.

Tests use it to prove the bot never contacts a host outside Discord's (a link preview's original URL, or
the target of a redirect). It listens on 127.0.0.2 where the system allows it (all of 127/8 is loopback on
Linux), so its host differs from the fake Discord's 127.0.0.1 even to a check that ignores ports.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True)
class Hit:
    method: str
    path: str
    query: str


class OutsideHost:
    """`put` a file or a `redirect` at a path; `hits` lists every request, served or not."""

    def __init__(self, address: str = "127.0.0.2") -> None:
        self.address = address
        self.port = 0
        self.hits: list[Hit] = []
        self._files: dict[str, tuple[bytes, str]] = {}
        self._redirects: dict[str, str] = {}
        self._runner: web.AppRunner | None = None

    @property
    def host(self) -> str:
        """host:port, as in a URL."""
        return f"{self.address}:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"

    def put(self, path: str, data: bytes, content_type: str = "image/jpeg") -> str:
        self._files[path] = (data, content_type)
        return self.url(path)

    def redirect(self, path: str, to: str) -> str:
        """Answer requests for `path` with a 302 to `to`; returns the URL of `path`."""
        self._redirects[path] = to
        return self.url(path)

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((self.address, 0))
        except OSError:  # only 127.0.0.1 is loopback here (macOS): the port tells the hosts apart
            self.address = "127.0.0.1"
            sock.bind((self.address, 0))
        self.port = sock.getsockname()[1]
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._serve)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OutsideHost:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def _serve(self, request: web.Request) -> web.Response:
        self.hits.append(Hit(request.method, request.path, request.query_string))
        if (to := self._redirects.get(request.path)) is not None:
            return web.Response(status=302, headers={"Location": to})
        if (file := self._files.get(request.path)) is not None:
            return web.Response(body=file[0], content_type=file[1])
        return web.Response(status=404, text="Not Found")
