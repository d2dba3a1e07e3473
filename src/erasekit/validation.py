"""Build config dataclasses from plain dicts (YAML, CLI, Python) with errors that name the bad field.

Every hyper-parameter container in erasekit is a dataclass; :func:`from_dict` checks unknown keys (suggesting the
closest known one), missing required keys and value types before anything is computed, as scikit-learn estimators
validate their parameters up front.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, NewType, TypeVar, get_args, get_origin

import yaml

from .errors import ConfigError

T = TypeVar("T")

Seed = NewType("Seed", int)
"""An integer seed: torch's generators take 0 <= seed < 2**63 (a config field typed ``Seed`` is checked for it)."""
MAX_SEED = 2**63 - 1


def check_device(name: str, where: str = "device") -> str:
    """``name`` if it is a device this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``), else one ConfigError."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{where}: '{name}' is not a device name (cpu, cuda, cuda:<index>, mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{where}: '{name}' asked for, but this machine has no usable CUDA GPU; use cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{where}: '{name}' does not exist; this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{where}: 'mps' is not available on this machine; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{where}: device type '{device.type}' is not supported; use cpu, cuda or mps")
    return name


def check_at_least(config: Any, where: str, minimum: float, names: typing.Iterable[str], strict: bool = False) -> None:
    """Range checks of a config's fields: each named value that is set must be >= ``minimum`` (> with ``strict``).

    The one-line error names the field as users write it, in the style of every config error:
    ``<where>.<name>: must be >= 1, got 0``.
    """
    for name in names:
        value = getattr(config, name)
        if value is not None and not (value > minimum if strict else value >= minimum):
            raise ConfigError(f"{where}.{name}: must be {'>' if strict else '>='} {minimum}, got {value}")


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def check_value(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to ``tp`` (int -> float, list/tuple items checked) or raise ConfigError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        errors = []
        for option in get_args(tp):
            if option is type(None):
                continue
            try:
                return check_value(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        options = " or ".join(_type_name(o) for o in get_args(tp) if o is not type(None))
        raise ConfigError(f"{where}: expected {options}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: must be one of {', '.join(repr(a) for a in get_args(tp))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [check_value(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int or tp is Seed:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if tp is Seed and not 0 <= value <= MAX_SEED:
            raise ConfigError(f"{where}: a seed must be in 0..2**63-1, got {value}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Construct dataclass ``cls`` from mapping ``data``; ``where`` prefixes error messages (e.g. ``params``)."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known fields: {', '.join(fields)}"
            raise ConfigError(f"{where}: unknown field '{key}'{hint}")
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = check_value(data[name], hints[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required field '{name}'")
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (the inverse of :func:`from_dict`)."""
    return dataclasses.asdict(obj)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: silently keeping the second
    value hides typos such as two ``params:`` blocks."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (each key may appear once)", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def from_yaml(cls: type[T], path: str | Path) -> T:
    """Read a YAML file into dataclass ``cls``; a missing file, bad syntax (with its line) or a bad field is one
    :class:`ConfigError` line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"config file '{path}' cannot be read: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level")
    return from_dict(cls, data, where=path.name)
