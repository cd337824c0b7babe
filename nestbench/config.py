"""Load recipe YAML files and ``--set`` overrides into config dataclasses.

Defaults live only in the dataclasses. Precedence: dataclass < recipe file < ``--set``.
Every value is checked against the field's type, and an unknown key is an error.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from nestbench.errors import ConfigError

C = TypeVar("C")

_FLOAT_LITERAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_overrides(pairs: typing.Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are read as YAML scalars (``lr=1e-3`` is a float)."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"invalid --set {pair!r}: expected key=value, for example --set lr=1e-3")
        try:
            overrides[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"invalid value in --set {pair!r}: {err}") from err
    return overrides


def read_recipe(path: Path) -> dict[str, Any]:
    """Read a recipe file into a mapping; an empty file is an empty recipe."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(f"recipe file not found: {path}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of key: value, not {type(data).__name__}")
    return data


def build_config(cls: type[C], values: dict[str, Any], origin: str) -> C:
    """Build ``cls`` from ``values``, checking keys and types; ``origin`` names the source in errors."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(" ".join(unknown_key_message(key, fields, origin) for key in unknown))
    hints = typing.get_type_hints(cls)
    checked = {key: coerce_value(key, value, hints[key], origin) for key, value in values.items()}
    try:
        return cls(**checked)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid {cls.__name__} from {origin}: {err}") from err


def unknown_key_message(key: str, valid: typing.Iterable[str], origin: str) -> str:
    """Return the error for an unknown recipe key, with close matches and the valid keys."""
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"unknown key {key!r} in {origin}.{hint} Valid keys: {', '.join(valid)}."


def coerce_value(key: str, value: Any, annotation: Any, origin: str) -> Any:
    """Return ``value`` converted to ``annotation`` or raise a ConfigError naming the key."""
    try:
        return _coerce(value, annotation)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"invalid value {value!r} for {key!r} in {origin}: expected {_describe(annotation)}. "
            f"Give {key} a value of that type, or run `nestbench validate` on the recipe to see every problem"
        ) from err


def _coerce(value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        if value in args:
            return value
        raise ValueError(value)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except (TypeError, ValueError):
                continue
        raise ValueError(value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise TypeError(value)
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type) for v in value]
        return tuple(items) if origin is tuple else items
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(value)
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(value)
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept plain numeric literals.
        if isinstance(value, str) and _FLOAT_LITERAL.fullmatch(value.strip()):
            return float(value)
        raise TypeError(value)
    if annotation is str:
        if isinstance(value, str):
            return value
        raise TypeError(value)
    raise TypeError(f"unsupported annotation {annotation}")


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if annotation is type(None):
        return "null"
    if origin in (tuple, list):
        return f"a list of {_describe(args[0]) if args else 'values'}"
    return getattr(annotation, "__name__", str(annotation))


def require(condition: bool, message: str) -> None:
    """Raise ConfigError with ``message`` unless ``condition`` is true (for ``__post_init__`` checks)."""
    if not condition:
        raise ConfigError(message)
