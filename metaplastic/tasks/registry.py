"""Task names -> task families."""

from __future__ import annotations

from typing import Any

from metaplastic.config_utils import build_named
from metaplastic.tasks.classification import ClassificationStream
from metaplastic.tasks.sine import SineRegression

TASKS: dict[str, type] = {"sine": SineRegression, "classification": ClassificationStream}


def build_task(spec: dict[str, Any]) -> Any:
    return build_named(TASKS, spec, "task", "task")
