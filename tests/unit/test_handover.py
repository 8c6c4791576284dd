"""The endpoint's socket passes from the running router to the next one (real sockets on loopback)."""

from __future__ import annotations

import socket
import stat
import threading
from pathlib import Path

from cluster.router import handover
from tests.conftest import free_port


def test_the_next_router_takes_the_same_socket_and_only_its_user_may(tmp_path: Path) -> None:
    path = tmp_path / "router.sock"
    running, taken_before = handover.listener("127.0.0.1", free_port(), "")
    handover.offer(path, running, publish=True)
    assert not taken_before and stat.S_IMODE(path.stat().st_mode) == 0o600
    port = running.getsockname()[1]
    taken, was_taken = handover.listener("localhost", port, str(path))  # a name resolves to the same address
    assert was_taken and taken.fileno() != running.fileno() and taken.getsockname() == running.getsockname()
    assert not taken.get_inheritable()
    running.close()  # the old router stops: a client still gets through, to the socket the new one holds
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        conn, _ = taken.accept()
        conn.close()
    taken.close()


def test_an_edited_address_binds_anew_and_no_offer_is_no_error(tmp_path: Path) -> None:
    path = tmp_path / "router.sock"
    running, _ = handover.listener("127.0.0.1", free_port(), "")
    handover.offer(path, running, publish=True)
    other = free_port()
    fresh, taken = handover.listener("127.0.0.1", other, str(path))
    assert not taken and fresh.getsockname()[1] == other
    nobody, taken = handover.listener("127.0.0.1", free_port(), str(tmp_path / "none.sock"))
    assert not taken
    for sock in (running, fresh, nobody):
        sock.close()


def test_an_offer_of_anything_but_a_listening_socket_is_refused(tmp_path: Path) -> None:
    """Whoever answers at the path must hand over a listening TCP socket, or nothing is taken."""
    path = tmp_path / "router.sock"
    rogue, not_listening = socket.socket(socket.AF_UNIX), socket.socket()
    rogue.bind(str(path))
    rogue.listen(1)

    def answer() -> None:
        conn, _ = rogue.accept()
        socket.send_fds(conn, [b"orchard-router-listener"], [not_listening.fileno()])
        conn.close()

    thread = threading.Thread(target=answer)
    thread.start()
    assert handover.take(path) is None
    thread.join()
    rogue.close()
    not_listening.close()


def test_a_router_that_took_over_offers_only_once_published(tmp_path: Path) -> None:
    """Until the hand-over is confirmed, the running router's offer stays the one at the path."""
    path = tmp_path / "router.sock"
    running, _ = handover.listener("127.0.0.1", free_port(), "")
    handover.offer(path, running, publish=True)
    first = path.stat().st_ino
    taken, _ = handover.listener("127.0.0.1", running.getsockname()[1], str(path))
    staged = handover.offer(path, taken, publish=False)
    assert path.stat().st_ino == first and staged.exists()
    assert handover.publish(path, int(staged.suffix[1:])) and path.stat().st_ino != first
    for sock in (running, taken):
        sock.close()
