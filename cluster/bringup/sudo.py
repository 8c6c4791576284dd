"""Root on a lab host, for what only root may do there (a LaunchDaemon lives in /Library/LaunchDaemons).

A host is one of three: the SSH user is root; it has sudo without a password (`sudo -n`); or sudo wants the
user's password, as it does for every macOS admin. For the last, the password is asked once on the head's
terminal and used for every such host of the run: it travels on the SSH channel's stdin to a script that reads
it into a shell variable and hands it to `sudo -S` with the shell's built-in printf, so it is never on a command
line, never in a file and never in a log. Without a terminal, such a host fails with the way out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncssh

from cluster.bringup import remote

Ask = Callable[[str], str]  # a prompt in, the password out (getpass on the head's terminal)

MODE_SCRIPT = ('if [ "$(id -u)" = 0 ]; then echo root; elif sudo -n true 2>/dev/null; then echo nopasswd; '
               "else echo password; fi")  # fmt: skip


class Sudo:
    """The password, asked at most once per run and only if a host needs it; kept in memory for that run."""

    def __init__(self, ask: Ask | None) -> None:
        self._ask = ask
        self._password: str | None = None
        self._lock = asyncio.Lock()

    async def stdin_for(self, conn: asyncssh.SSHClientConnection, who: str) -> str | None:
        """What a root script (units.root_prefix) reads on this host: the password line, or None if it needs none."""
        if (await remote.shell(conn, remote.posix(MODE_SCRIPT))).strip() != "password":
            return None
        async with self._lock:
            if self._password is None:
                if self._ask is None:
                    raise remote.RemoteError(
                        f"sudo on {who} wants a password and there is no terminal to ask it on: run `cluster up "
                        "--install-service` from a terminal, or give that user sudo without a password"
                    )
                self._password = await asyncio.to_thread(self._ask, f"sudo password for {who} (asked once): ")
        return self._password + "\n"
