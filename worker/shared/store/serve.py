"""A host's model files served to its peers over HTTP range requests, while the host itself is still receiving
them: a file being copied is served from its partial copy as it grows, so a chain head → h1 → h2 → h3 moves
every byte once per link at about the speed of one copy (a pipeline, not a tree of whole-file rounds).

Only the files of one manifest, read-only, to a client presenting this push's token; the server lives as long as
its push. A peer that stalls (its own source failed) ends the response short, and the puller goes to its next
source. Run in a thread of its own: uvicorn captures signals only in the main thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from worker.shared.store.folder import ModelFolder
from worker.shared.store.manifest import Manifest, ModelFile

READ = 1024 * 1024
STALL_S = 20.0  # a partial copy that has not grown for this long is served no further


class FileServer:
    def __init__(
        self,
        folder: ModelFolder,
        manifest: Manifest,
        token: str,
        stall_s: float = STALL_S,
        expecting: Callable[[str], bool] = lambda _path: False,
    ) -> None:
        """`expecting(path)`: this host is still to copy that file (a peer asking for it waits for it to grow)."""
        self.folder, self.manifest, self.token, self.stall_s = folder, manifest, token, stall_s
        self.expecting = expecting
        self.served = 0  # bytes sent, for the head's count of what left each machine
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, address: str) -> int:
        """Listen on `address` (a free port; "::" for all of this machine's) and serve in a thread; the port."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if address == "::":  # every address, IPv4 ones too
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((address, 0))
        app = Starlette(routes=[Route("/m/{path:path}", self._get, methods=["GET"])])
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        server = self._server
        self._thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
        self._thread.start()
        return int(sock.getsockname()[1])

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)

    async def _get(self, request: Request) -> Response:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return PlainTextResponse("not this push's token\n", status_code=401)
        file = self.manifest.file(request.path_params["path"])
        if file is None:
            return PlainTextResponse("no such file in this model\n", status_code=404)
        if not self._here(file) and not self.expecting(file.path):  # never coming: the peer goes elsewhere now
            return PlainTextResponse("this host does not have that file\n", status_code=503)
        start = range_start(request.headers.get("range", ""))
        if start is None or start > file.size:
            return PlainTextResponse("bad range\n", status_code=416)
        headers = {"Content-Length": str(file.size - start), "Accept-Ranges": "bytes"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{file.size - 1}/{file.size}"
        return StreamingResponse(self._body(file, start), status_code=206 if start else 200, headers=headers)

    async def _body(self, file: ModelFile, start: int) -> AsyncIterator[bytes]:
        pos, idle, handle = start, 0.0, None
        try:
            while pos < file.size and idle < self.stall_s:
                if handle is None:
                    handle = _open(self.folder.path / file.path, self.folder.partial(file))
                    if handle is not None:
                        handle.seek(pos)
                chunk = await asyncio.to_thread(handle.read, min(READ, file.size - pos)) if handle else b""
                if not chunk:  # not copied this far yet: wait for the copy to grow, while it still may
                    if not self.expecting(file.path):  # finished (then no byte is missing) or given up
                        return
                    await asyncio.sleep(0.02)
                    idle += 0.02
                    continue
                pos, idle = pos + len(chunk), 0.0
                self.served += len(chunk)
                yield chunk
        finally:
            if handle is not None:
                handle.close()

    def _here(self, file: ModelFile) -> bool:
        return (self.folder.path / file.path).exists() or self.folder.partial(file).exists()


def _open(final: Path, partial: Path) -> BinaryIO | None:
    """The file as far as it is here: the finished copy, else the partial one (kept open across its rename)."""
    for path in (final, partial):
        with contextlib.suppress(FileNotFoundError):
            return path.open("rb")
    return None


def range_start(header: str) -> int | None:
    """The first byte of `Range: bytes=N-` (0 without a range); None for any other range."""
    if not header:
        return 0
    unit, _, spec = header.partition("=")
    first, dash, last = spec.partition("-")
    if unit.strip() != "bytes" or not dash or last or not first.isdigit():
        return None
    return int(first)
