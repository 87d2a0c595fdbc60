"""The run-folder backend: everything a tracker receives, as plain files, for users without wandb.

    <folder>/config.json        the run's configuration
    <folder>/metrics.jsonl      one JSON object per ``log`` call: {"step": s, metric: value, ...}
    <folder>/summary.json       the merged ``summary`` values
    <folder>/tables/<name>.json rows of each table
    <folder>/figures/<name>.png copies of the logged figures
    <folder>/artifacts.jsonl    one line per artifact: name, type, path, bytes
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from metaplastic.meta.checkpoint import atomic_write_text


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class LocalTracker:
    def __init__(self, folder: str | Path, config: dict[str, Any] | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / "config.json", json.dumps(config or {}, indent=2, default=str) + "\n")
        self._summary: dict[str, Any] = {}
        self._first_step = True

    def _append(self, name: str, row: dict[str, Any]) -> None:
        with (self.folder / name).open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._first_step and step is not None:  # a resumed run redoes the steps after its checkpoint
            self._drop_from(step)
        self._first_step = False
        self._append("metrics.jsonl", {"step": step, **metrics})

    def _drop_from(self, step: int) -> None:
        """Forget records of ``step`` and later, so no step appears twice in the record."""
        path = self.folder / "metrics.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] < step:
                kept.append(line)
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        path = self.folder / "tables" / f"{_safe(name)}.json"
        path.parent.mkdir(exist_ok=True)
        atomic_write_text(path, json.dumps(rows, indent=2, default=str) + "\n")

    def image(self, name: str, path: Path) -> None:
        dest = self.folder / "figures" / f"{_safe(name)}{Path(path).suffix or '.png'}"
        dest.parent.mkdir(exist_ok=True)
        if Path(path).resolve() != dest.resolve():
            shutil.copyfile(path, dest)

    def summary(self, values: dict[str, Any]) -> None:
        self._summary.update(values)
        atomic_write_text(self.folder / "summary.json", json.dumps(self._summary, indent=2, default=str) + "\n")

    def artifact(self, path: Path, name: str, kind: str) -> None:
        path = Path(path)
        self._append("artifacts.jsonl", {"name": name, "type": kind, "path": str(path.resolve()),
                                         "bytes": path.stat().st_size})

    def finish(self) -> None:
        """Nothing to do: every call has already been written."""
