"""Secrets among an engine's arguments: kept off its command line, where the engine's own argument log and `ps`
would show them. An adapter names the flags its engine also reads from an environment variable; such a secret
moves there, and any other flag that names a secret is refused, since it could only travel on the command line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from worker.shared.procs import SECRET_WORDS


def move_secrets(
    args: Sequence[str], from_env: Mapping[str, str], harmless: frozenset[str], engine: str
) -> tuple[list[str], dict[str, str]]:
    """`args` without their secrets, and those secrets as {variable: value}. A flag names a secret when one of its
    words does (--api-key, --hf-token; see worker.shared.procs.SECRET_WORDS) unless it is in `harmless` (a count or a
    switch); a secret flag given without a value carries none and stays. Raises ValueError (naming the flag,
    never its value) for a secret the engine cannot take from its environment, or more values than one
    variable holds."""
    kept: list[str] = []
    env: dict[str, str] = {}
    index = 0
    while index < len(args):
        flag, eq, value = args[index].partition("=")
        name = canonical(flag)
        values = [value] if eq else _values_after(args, index)
        if not _names_secret(name) or name in harmless or not values:
            kept.append(args[index])
            index += 1
            continue
        index += 1 + (0 if eq else len(values))
        variable = from_env.get(name)
        if variable is None:
            raise ValueError(
                f"engine argument {flag} holds a secret that {engine} takes only on its command line, "
                f"where its own log and `ps` show it; Orchard does not pass it on"
            )
        if len(values) > 1:
            raise ValueError(
                f"engine argument {flag} has {len(values)} values: {engine} reads one from {variable}, "
                f"where Orchard moves it off the command line; give one"
            )
        env[variable] = values[0]
    return kept, env


def canonical(flag: str) -> str:
    """A long flag as argparse-based engines read it: `--hf_token` is `--hf-token`."""
    return "--" + flag[2:].replace("_", "-") if flag.startswith("--") else flag


def _names_secret(flag: str) -> bool:
    return flag.startswith("--") and bool(SECRET_WORDS & set(flag[2:].lower().split("-")))


def _values_after(args: Sequence[str], index: int) -> list[str]:
    """The values that follow a flag given as `--flag v1 [v2 ...]`: up to the next flag."""
    values: list[str] = []
    for arg in args[index + 1 :]:
        if arg.startswith("-"):
            break
        values.append(arg)
    return values
