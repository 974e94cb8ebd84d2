"""Every config key with its type, default and one-line description, read from the config
dataclasses themselves: the description is the comment written beside the field (or on the lines
just above it) in :mod:`dho.config`, so the listing cannot drift from the code (`dho config`)."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any

from .config import RunConfig

__all__ = ["KeyDoc", "config_keys", "format_keys"]

_FIELD = re.compile(r"^    (\w+): ")
_COMMENT = re.compile(r"^    # ?(.*)$")


@dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted, e.g. data.shots
    type: str
    default: Any
    doc: str


def _comments(cls: type) -> dict[str, str]:
    """Field name -> its comment: the trailing one, after the comment lines right above it."""
    out: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        comment = _COMMENT.match(line)
        if comment:
            above.append(comment.group(1).strip())
            continue
        field = _FIELD.match(line)
        if field:
            trailing = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            out[field.group(1)] = " ".join(p for p in (*above, trailing) if p)
        above = []
    return out


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(map(str, typing.get_args(tp)))
    args = typing.get_args(tp)
    if args:
        if type(None) in args:
            return f"{' | '.join(_type_name(a) for a in args if a is not type(None))} | null"
        return f"{getattr(typing.get_origin(tp), '__name__', str(typing.get_origin(tp)))}[{', '.join(map(_type_name, args))}]"
    return getattr(tp, "__name__", str(tp))


def config_keys(section: str | None = None) -> list[KeyDoc]:
    """Every key of :class:`RunConfig` (or of one section: ``data``, ``optim``, ...) in field order."""
    default = RunConfig()
    out: list[KeyDoc] = []

    def walk(cls: type, value: Any, prefix: str) -> None:
        hints, docs = typing.get_type_hints(cls), _comments(cls)
        for f in dataclasses.fields(cls):
            sub = getattr(value, f.name)
            if dataclasses.is_dataclass(sub):
                walk(type(sub), sub, f"{prefix}{f.name}.")
            else:
                out.append(KeyDoc(f"{prefix}{f.name}", _type_name(hints[f.name]), sub, docs.get(f.name, "")))

    walk(RunConfig, default, "")
    if section is not None:
        sections = sorted({k.key.split(".")[0] for k in out if "." in k.key})
        if section not in sections:
            raise ValueError(f"no config section {section!r}; sections: {', '.join(sections)}")
        out = [k for k in out if k.key.startswith(f"{section}.")]
    return out


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(map(_show, value)) + "]"
    return str(value) if value != "" else '""'


def format_keys(keys: list[KeyDoc]) -> str:
    """One key a line: ``key = default  (type)  description``, aligned."""
    width = max(len(f"{k.key} = {_show(k.default)}") for k in keys)
    lines = []
    for k in keys:
        head = f"{k.key} = {_show(k.default)}"
        lines.append(f"{head:<{width}}  ({k.type}){'  ' + k.doc if k.doc else ''}")
    return "\n".join(lines)
