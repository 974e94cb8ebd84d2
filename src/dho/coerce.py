"""Dataclasses from plain data: YAML and command-line values coerced to each field's annotated
type, dotted ``key=value`` overrides, and the one-line :class:`ConfigError` for anything wrong
(unknown keys get a "did you mean" hint)."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

__all__ = ["ConfigError", "build", "check_choice", "check_literals", "check_positive", "check_range", "read_yaml", "set_dotted",
           "split_override", "to_plain"]


class ConfigError(ValueError):
    """A configuration problem, phrased as one line that names the offending key."""


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; a missing file or a syntax error is a one-line ConfigError that
    names the file, and for a syntax error the line and column."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None


def check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        hint = _did_you_mean(str(value), [str(c) for c in choices]) if isinstance(value, str) else ""
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, choices))}{hint}")


def check_literals(obj: Any, prefix: str) -> None:
    """Every field of the dataclass ``obj`` annotated ``Literal[...]`` (or an optional one) holds one
    of its values: the annotation is the one place a config's choices are written."""
    cls: Any = type(obj)
    for name, (choices, others) in _literal_fields(cls).items():
        value = getattr(obj, name)
        if not (others and isinstance(value, others) and not isinstance(value, bool)):  # int | Literal["all"]: 16 or "all"
            check_choice(f"{prefix}{name}", value, choices)


@functools.cache
def _literal_fields(cls: Any) -> dict[str, tuple[tuple[Any, ...], tuple[type, ...]]]:
    """Field name -> (its literal choices, with None when optional; the other types it takes)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        parts = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
        literals = [a for a in parts if typing.get_origin(a) is Literal]
        if literals:
            others = tuple(a for a in parts if isinstance(a, type) and a is not type(None))
            out[f.name] = (tuple(v for a in literals for v in typing.get_args(a)) + ((None,) if type(None) in parts else ()), others)
    return out


def check_positive(key: str, value: float | None, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ConfigError(f"{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


def check_range(key: str, value: float, lo: float, hi: float, closed_hi: bool = False) -> None:
    if not (lo <= value <= hi if closed_hi else lo <= value < hi):
        raise ConfigError(f"{key}={value!r} must be in [{lo:g}, {hi:g}{']' if closed_hi else ')'}")


def split_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    return key.strip(), value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            options = list(node) if isinstance(node, dict) else []
            prefix = ".".join(parts[:depth])
            full = [f"{prefix}.{o}" if prefix else o for o in options]
            raise ConfigError(f"unknown config key {key!r}{_did_you_mean(key, full)}")
        if depth == len(parts) - 1:
            if isinstance(node[part], dict):
                raise ConfigError(f"config key {key!r} is a section; set one of its fields")
            node[part] = _Text(value) if isinstance(value, str) else value
        node = node[part]


class _Text(str):
    """An override's text as given: a string field takes it verbatim ('teacher.model=1e5' stays
    '1e5'); any other field parses it as a YAML scalar first."""


def _takes_text(tp: Any) -> bool:
    return tp is str or (typing.get_origin(tp) in (Union, types.UnionType) and str in typing.get_args(tp))


def _parse_scalar(text: str) -> Any:
    """YAML scalar parsing for CLI values: '3e-4' -> 3e-4, 'null' -> None, '[1, 2]' -> list."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


_YAML_BOOL_WORDS = {False: ("off", "no", "false", "n"), True: ("on", "yes", "true", "y")}


def _did_you_mean(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix or '<root>'!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {full!r}{_did_you_mean(full, [prefix + n for n in names])}")
        kwargs[key] = _coerce(hints[key], value, full)
    try:
        return cls(**kwargs)
    except TypeError as err:  # pragma: no cover - dataclass signature mismatch
        raise ConfigError(str(err)) from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Coerce a YAML/CLI value to the annotated field type, or raise a one-line ConfigError."""
    if isinstance(value, _Text):
        text = str(value)
        if typing.get_origin(tp) is Literal and text in typing.get_args(tp):  # 'off' is a choice, not YAML's false
            return text
        if not _takes_text(tp):
            return _coerce(tp, _parse_scalar(text), key)
        if text.strip() in ("null", "~") and type(None) in typing.get_args(tp):
            return None
        return text
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value if value is not None else {}, prefix=f"{key}.")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads off / on / no / yes as booleans
            value = next((c for c in _YAML_BOOL_WORDS[value] if c in args), value)
        check_choice(key, value, args)
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}={value!r} must be a list of {len(args)} values")
        return tuple(_coerce(a, v, key) for a, v in zip(args, value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}={value!r} must be an integer")
    if tp is float:
        number = None
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):  # YAML 1.1 reads '3e-4' as a string
            with contextlib.suppress(ValueError, OverflowError):
                number = float(value)
        if number is None:
            raise ConfigError(f"{key}={value!r} must be a number")
        if not math.isfinite(number):
            raise ConfigError(f"{key}={value!r} must be a finite number")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}={value!r} must be a string")
    raise ConfigError(f"{key}: unsupported field type {tp!r}")  # pragma: no cover


def to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value
