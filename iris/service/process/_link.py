"""The pipe between the bot process and its device child: one message per frame, a 4-byte big-endian
length then the message as `iris.service.wire` bytes (JSON; never pickles, so neither side can make the
other build arbitrary objects). Both ends use it: the parent with asyncio streams, the child with a
blocking socket and a lock (its worker thread, its heartbeat thread and its event loop all send)."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from typing import Any

from iris.service import wire

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30  # bytes; a longer length is a broken pipe, not a message (pictures are a few MiB)


def frame(message: dict[str, Any]) -> bytes:
    data = wire.dumps(message)
    return HEADER.pack(len(data)) + data


def _length(header: bytes) -> int:
    (n,) = HEADER.unpack(header)
    if n > MAX_FRAME:
        raise wire.WireError(f"a frame of {n} bytes")
    return int(n)


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at the end of the stream (the other side exited or closed it)."""
    try:
        n = _length(await reader.readexactly(HEADER.size))
        data = await reader.readexactly(n)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    message: dict[str, Any] = wire.loads(data)
    return message


class BlockingLink:
    """The child's end: `send` from any thread, `recv` from one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = frame(message)
        with self._send_lock:
            self.sock.sendall(data)

    def recv(self) -> dict[str, Any] | None:
        """The next message, or None once the parent is gone (end of stream)."""
        header = self._exactly(HEADER.size)
        if header is None:
            return None
        data = self._exactly(_length(header))
        if data is None:
            return None
        message: dict[str, Any] = wire.loads(data)
        return message

    def _exactly(self, n: int) -> bytes | None:
        chunks = []
        while n:
            try:
                chunk = self.sock.recv(min(n, 1 << 20))
            except ConnectionError:
                return None
            if not chunk:
                return None
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)
