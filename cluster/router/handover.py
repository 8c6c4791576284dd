"""The endpoint's listening socket, and how a new router takes it over from the running one.

A planned restart (an edited hosts file, an upgrade) must refuse nothing. Two routers bound side by side with
SO_REUSEPORT each have their own accept queue on Linux, and connections waiting in the old one's are reset when
it closes; so instead the running router offers its listening socket itself (SCM_RIGHTS over a unix socket
that only its user can open), the new one accepts on the very same socket, and when the old one is told to
stop it only drops its own descriptor: one queue, nothing in it lost. macOS and Linux both pass descriptors so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
from pathlib import Path

log = logging.getLogger("orchard.router")

_GREETING = b"orchard-router-listener"
BACKLOG = 2048


def listener(host: str, port: int, handover: str) -> tuple[socket.socket, bool]:
    """The running router's socket when one offers it at `handover` (True), else a newly bound one (False).
    Raises OSError."""
    host = host.strip("[]")
    if handover and (taken := take(Path(handover).expanduser())) is not None:
        if _bound_to(taken, host, port):
            log.info("took over the listening socket of the router running before")
            return taken, True
        taken.close()  # the running router listens elsewhere (the address was edited): bind ours
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(BACKLOG)
    return sock, False


def _bound_to(sock: socket.socket, host: str, port: int) -> bool:
    """The socket listens where `host:port` says (a name is resolved, as bind would)."""
    try:
        wanted = {info[4][:2] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except OSError:
        return False
    return tuple(sock.getsockname()[:2]) in wanted


def take(path: Path) -> socket.socket | None:
    """The listening socket offered at `path`, or None when no router of ours offers one there."""
    try:
        found = path.lstat()
    except OSError:
        return None
    if not stat.S_ISSOCK(found.st_mode) or found.st_uid != os.getuid():  # only our own router's offer
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.settimeout(5)
        try:
            unix.connect(str(path))
            message, fds, _flags, _addr = socket.recv_fds(unix, len(_GREETING), 1)
        except OSError:
            return None
    for fd in fds:
        os.set_inheritable(fd, False)  # not for the engines or anything else this process starts
    if message != _GREETING or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return None
    sock = socket.socket(fileno=fds[0])
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.close()
        return None
    return sock


def offer(path: Path, sock: socket.socket, publish: bool) -> Path:
    """Offer `sock` to the next router, from a daemon thread, for as long as this process runs: bound at a
    path of its own beside `path`, and renamed onto `path` now (`publish`: a router that took over nothing) or
    by whoever confirms this router took over well (`published`) — so a new router that fails during a
    hand-over leaves the running one's offer in place. Returns the path it is bound at."""
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staged = staged_path(path, os.getpid())
    mask = os.umask(0o177)  # 0600: only this user may take the endpoint's socket
    try:
        staged.unlink(missing_ok=True)
        unix.bind(str(staged))
    finally:
        os.umask(mask)
    unix.listen(4)
    threading.Thread(target=_serve, args=(unix, sock), name="handover", daemon=True).start()
    if publish:
        os.replace(staged, path)
    return staged


def staged_path(path: Path, pid: int) -> Path:
    return path.with_name(f"{path.name}.{pid}")


def publish(path: Path, pid: int) -> bool:
    """The router `pid` took over: its offer becomes the one at `path`. False if it made none."""
    try:
        os.replace(staged_path(path, pid), path)
    except OSError:
        return False
    return True


def _serve(unix: socket.socket, sock: socket.socket) -> None:
    while True:
        conn, _ = unix.accept()
        with conn, contextlib.suppress(OSError):
            socket.send_fds(conn, [_GREETING], [sock.fileno()])
            log.info("handed the listening socket to a new router")
