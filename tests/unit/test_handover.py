"""The endpoint's socket passes from the running router to the next one (real sockets on loopback)."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

from cluster.router import handover
from tests.conftest import free_port


def test_the_next_router_takes_the_same_socket_and_only_its_user_may(tmp_path: Path) -> None:
    path = tmp_path / "router.sock"
    running = handover.listener("127.0.0.1", free_port(), "")
    handover.offer(path, running)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    port = running.getsockname()[1]
    taken = handover.listener("127.0.0.1", port, str(path))
    assert taken.fileno() != running.fileno() and taken.getsockname() == running.getsockname()
    running.close()  # the old router stops: a client still gets through, to the socket the new one holds
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        conn, _ = taken.accept()
        conn.close()
    taken.close()


def test_an_edited_address_binds_anew_and_no_offer_is_no_error(tmp_path: Path) -> None:
    path = tmp_path / "router.sock"
    running = handover.listener("127.0.0.1", free_port(), "")
    handover.offer(path, running)
    other = free_port()
    fresh = handover.listener("127.0.0.1", other, str(path))
    assert fresh.getsockname()[1] == other
    nobody = handover.listener("127.0.0.1", free_port(), str(tmp_path / "none.sock"))
    for sock in (running, fresh, nobody):
        sock.close()
