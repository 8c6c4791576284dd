"""A config field declared once — its type, default and constraints (pydantic), its flag and help (`Flag`, in
the field's `Annotated` metadata) — and every command line derived from that: `argv` writes a config, `parser`
reads one back (`from_argv(to_argv(c)) == c` for every config, by construction and by test).

Only values that differ from their field's default are written, as `--flag=value` (a value may begin with `-`);
a tuple repeats its flag; a bool is its flag alone.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo


class FlagError(ValueError):
    """A command line that does not parse; the message names the flag."""


@dataclass(frozen=True)
class Flag:
    name: str  # "--listen"
    help: str = ""
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None  # one value from its text (default: the field's scalar type)
    show: Callable[[Any], str] | None = None  # one value as text (default: str; a float's repr)
    repeat: bool | None = None  # one flag per item; None: so for a tuple field (False: a tuple in one text)

    def text(self, value: Any) -> str:
        if self.show is not None:
            return self.show(value)
        return repr(value) if isinstance(value, float) else str(value)


def flags(kind: type[BaseModel]) -> Iterator[tuple[str, FieldInfo, Flag]]:
    """Each field with a flag: (field name, its pydantic info, its Flag), in declaration order."""
    if not kind.__pydantic_complete__:
        raise TypeError(f"{kind.__name__}: a field's type or Flag names something not defined before the class")
    for name, info in kind.model_fields.items():
        for meta in info.metadata:
            if isinstance(meta, Flag):
                if info.annotation is bool and info.default is not False:
                    raise TypeError(f"{kind.__name__}.{name}: a flag alone can only turn on what is off by default")
                yield name, info, meta


def argv(config: BaseModel) -> list[str]:
    out: list[str] = []
    for name, info, flag in flags(type(config)):
        value = getattr(config, name)
        if value is None or (info.default_factory is None and not info.is_required() and value == info.default):
            continue
        if isinstance(value, bool):
            out += [flag.name] if value else []
        elif isinstance(value, tuple) and _repeats(info, flag):
            out += [f"{flag.name}={flag.text(item)}" for item in value]
        else:
            out.append(f"{flag.name}={flag.text(value)}")
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise FlagError(message)


def parser(kind: type[BaseModel], prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser for `kind`'s flags; a flag left out leaves its field to its default."""
    made = _Parser(prog=prog, description=description)
    add(made, kind)
    return made


def add(target: Any, kind: type[BaseModel], dest: str = "", optional: bool = False) -> None:
    """`kind`'s flags on a parser or an argument group, each value under `dest` + its field's name; `optional`:
    none required (all of `kind` may be absent, as an agent's shard group is)."""
    for name, info, flag in flags(kind):
        metavar = flag.metavar or flag.name.lstrip("-").upper().replace("-", "_")
        options: dict[str, Any] = {"dest": dest + name, "help": _help(flag, info), "metavar": metavar}
        scalar = _scalar(info, flag)
        if scalar is bool:
            options["action"] = "store_true"
            options.pop("metavar")
        else:
            options["type"] = flag.parse or (scalar if scalar in (int, float) else str)
            if get_origin(scalar) is Literal and flag.parse is None:
                options["choices"] = get_args(scalar)
                options.pop("metavar")
            if _repeats(info, flag):
                options["action"] = "append"
            options["required"] = info.is_required() and not optional
        target.add_argument(flag.name, **options)


def fields(kind: type[BaseModel], args: argparse.Namespace, dest: str = "") -> dict[str, Any]:
    """The config's fields from parsed flags: only those given (the rest keep their defaults)."""
    given = {}
    for name, info, flag in flags(kind):
        value = getattr(args, dest + name)
        if value is None or value is False:
            continue
        given[name] = tuple(value) if _repeats(info, flag) else value
    return given


def _repeats(info: FieldInfo, flag: Flag) -> bool:
    if flag.repeat is not None:
        return flag.repeat
    annotation = _unwrapped(info.annotation)
    return get_origin(annotation) is tuple and Ellipsis in get_args(annotation)


def _scalar(info: FieldInfo, flag: Flag) -> Any:
    """The type of one value: the element of a repeated flag, the type inside an Optional."""
    annotation = _unwrapped(info.annotation)
    return get_args(annotation)[0] if _repeats(info, flag) else annotation


def _unwrapped(annotation: Any) -> Any:
    """`X | None` is X (None is "not given")."""
    if get_origin(annotation) in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return inner[0] if len(inner) == 1 else annotation
    return annotation


def _help(flag: Flag, info: FieldInfo) -> str:
    if info.is_required() or info.default_factory is not None or info.default in (None, (), "", False):
        return flag.help
    return f"{flag.help} (default: {flag.text(info.default)})".lstrip()
