"""Root on a lab host, for what only root may do there (a LaunchDaemon lives in /Library/LaunchDaemons).

A host is one of three: the SSH user is root; it has sudo without a password (`sudo -n`); or sudo wants the
user's password, as it does for every macOS admin. For the last, the password is asked once on the head's
terminal and used for every such host of the run: it travels on the SSH channel's stdin to a script that reads
it into a shell variable and hands it to `sudo -S` with the shell's built-in printf, so it is never on a command
line, never in a file and never in a log. A typo is asked again. Without a terminal, such a host fails with the
way out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncssh

from cluster.bringup import remote

Ask = Callable[[str], str]  # a prompt in, the password out (getpass on the head's terminal)

MODE_SCRIPT = (
    'if [ "$(id -u)" = 0 ]; then echo root; elif sudo -n true 2>/dev/null; then echo nopasswd; else echo password; fi'
)


CHECK_SCRIPT = 'IFS= read -r P; printf "%s\\n" "$P" | sudo -S -p "" true'  # does sudo take this password?


class Sudo:
    """A password asked only where a host needs one and checked before use: the one typed is tried on the next
    host that asks (a lab's admin password is usually one), and a host that refuses it asks once more. Kept in
    memory for the run only."""

    def __init__(self, ask: Ask | None) -> None:
        self._ask = ask
        self._password: str | None = None
        self._lock = asyncio.Lock()

    async def stdin_for(self, conn: asyncssh.SSHClientConnection, who: str) -> str | None:
        """What a root script (units.root_prefix) reads on this host: the password line, or None if it needs none."""
        if (await remote.shell(conn, remote.posix(MODE_SCRIPT))).strip() != "password":
            return None
        async with self._lock:
            if self._password is not None and await _accepted(conn, self._password):
                return self._password + "\n"
            for _ in range(2):
                password = await self._asked(f"sudo password for {who}: ", who)
                if await _accepted(conn, password):
                    self._password = password
                    return password + "\n"
        raise remote.RemoteError(f"sudo on {who} did not accept the password")

    async def _asked(self, prompt: str, who: str) -> str:
        if self._ask is None:
            raise remote.RemoteError(
                f"sudo on {who} wants a password and there is no terminal to ask it on: run `cluster up "
                "--install-service` (or `cluster down`) from a terminal, or give that user sudo without a password"
            )
        try:
            return await asyncio.to_thread(self._ask, prompt)
        except EOFError:
            raise remote.RemoteError(f"no sudo password was given for {who}") from None


async def _accepted(conn: asyncssh.SSHClientConnection, password: str) -> bool:
    try:
        await remote.shell(conn, remote.posix(CHECK_SCRIPT), password + "\n")
    except remote.RemoteError:
        return False
    return True
