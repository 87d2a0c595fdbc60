"""The tracker interface, and a tracker that forwards to several backends.

A tracker records one run (train, evaluate or analyze): scalar metrics by step, tables,
figures, summary values and files (checkpoints) as artifacts. Backends: ``LocalTracker``
(plain files in a run folder) and ``WandbTracker``; ``make_tracker`` composes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def table(self, name: str, rows: list[dict[str, Any]]) -> None: ...

    def image(self, name: str, path: Path) -> None: ...

    def summary(self, values: dict[str, Any]) -> None: ...

    def artifact(self, path: Path, name: str, kind: str) -> None: ...

    def finish(self) -> None: ...


class MultiTracker:
    """Every call goes to every backend, in order."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = list(trackers)

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        for t in self.trackers:
            t.log(metrics, step)

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        for t in self.trackers:
            t.table(name, rows)

    def image(self, name: str, path: Path) -> None:
        for t in self.trackers:
            t.image(name, path)

    def summary(self, values: dict[str, Any]) -> None:
        for t in self.trackers:
            t.summary(values)

    def artifact(self, path: Path, name: str, kind: str) -> None:
        for t in self.trackers:
            t.artifact(path, name, kind)

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()

    def __enter__(self) -> MultiTracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finish()
