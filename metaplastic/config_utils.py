"""Strict construction of frozen dataclasses from plain mappings (YAML, CLI overrides).

Unknown keys, wrong types and unparsable values raise :class:`ConfigError` naming the
dotted path, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Union

from metaplastic.errors import ConfigError


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path)
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
            items = [_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            inner = args[0] if args else Any
            items = [_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else list(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1] if args else Any, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    return value


def read_yaml_mapping(path: Path, kind: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file (``{}`` for an empty one), or a one-line ConfigError
    naming the ``kind`` of file: configs, suites and sweeps are read alike."""
    import yaml

    if not path.exists():
        raise ConfigError(f"{kind} file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"{kind} {path} is not a regular file")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {kind} {path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", e)).split())  # one line, whatever YAML says
        raise ConfigError(f"malformed YAML in {path}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{kind} {path} must be a mapping at the top level")
    return data


def build_dataclass(cls: type, data: Any, path: str) -> Any:
    """Instantiate ``cls`` from ``data``, rejecting unknown keys and coercing types."""
    section = path or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{section}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key '{_join(path, unknown[0])}' (known keys of {section}: {', '.join(sorted(fields))})"
        )
    kwargs = {name: _coerce(value, hints[name], _join(path, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"config section '{section}': {e}") from None


def _join(path: str, key: str) -> str:
    """Dotted key as a user would type it in an override (the top level has no prefix)."""
    return f"{path}.{key}" if path else key


LARGEST = 1e30  # beyond any meaningful setting; float32 overflows at 3.4e38


def check_finite_numbers(data: Any, path: str = "") -> None:
    """Every number of a config finite and of a sensible size, named by its dotted key: NaN
    would otherwise surface as "diverged at meta-step 0" or an optimiser's traceback."""
    if isinstance(data, dict):
        for k, v in data.items():
            check_finite_numbers(v, _join(path, str(k)))
    elif isinstance(data, (list, tuple)):
        for i, v in enumerate(data):
            check_finite_numbers(v, f"{path}[{i}]")
    elif isinstance(data, float) and not (abs(data) <= LARGEST):
        what = "not a number" if data != data else ("infinite" if abs(data) == float("inf") else "too large")
        raise ConfigError(f"{path or 'config'} is {what} ({data}): every number in a config must be finite "
                          f"and at most {LARGEST:g} in size")


def to_plain(obj: Any) -> Any:
    """Dataclasses/tuples -> dicts/lists of primitives (JSON- and weights_only-safe)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def build_named(registry: dict[str, type], spec: Any, section: str, kind: str) -> Any:
    """Build the entry of ``registry`` named by ``spec["name"]`` from the rest of ``spec``."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"config section '{section}' must be a mapping with a 'name'")
    name = spec["name"]
    if not isinstance(name, str):
        raise ConfigError(f"{section}.name must be a name such as '{sorted(registry)[0]}', got {name!r}")
    if name not in registry:
        raise ConfigError(f"unknown {kind} '{name}' (known: {', '.join(sorted(registry))})")
    return build_dataclass(registry[name], spec, section)
