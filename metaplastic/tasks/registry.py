"""Task names -> task families."""

from __future__ import annotations

from typing import Any

from metaplastic.config_utils import build_dataclass
from metaplastic.errors import ConfigError
from metaplastic.tasks.sine import SineRegression

TASKS: dict[str, type] = {"sine": SineRegression}


def build_task(spec: dict[str, Any]) -> Any:
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError("config section 'task' must be a mapping with a 'name'")
    name = spec["name"]
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}' (known: {', '.join(sorted(TASKS))})")
    return build_dataclass(TASKS[name], spec, "task")
