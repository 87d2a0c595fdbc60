"""The wandb backend. wandb is imported only when this tracker is built (``--wandb disabled``
never imports it); its files go to ``<folder>/wandb``, inside the run folder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from metaplastic.errors import ConfigError


class WandbTracker:
    def __init__(
        self,
        folder: str | Path,
        mode: str,
        config: dict[str, Any] | None = None,
        name: str | None = None,
        job_type: str | None = None,
        project: str | None = None,
        group: str | None = None,
    ):
        try:
            import wandb
        except ImportError:
            hint = "pip install 'metaplastic[wandb]' or pass --wandb disabled"
            raise ConfigError(f"wandb is not installed: {hint}") from None
        self._wandb = wandb
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            dir=str(folder),
            mode=mode,
            project=project or "metaplastic",
            name=name,
            job_type=job_type,
            group=group,
            config=config or {},
            settings=wandb.Settings(console="off", silent=True),
            reinit="finish_previous",
        )

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.run.log(dict(metrics), step=step)

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        data = [[r.get(c) for c in columns] for r in rows]
        self.run.log({f"tables/{name}": self._wandb.Table(columns=columns, data=data)})

    def image(self, name: str, path: Path) -> None:
        self.run.log({f"figures/{name}": self._wandb.Image(str(path))})

    def summary(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            self.run.summary[k] = v

    def artifact(self, path: Path, name: str, kind: str) -> None:
        art = self._wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]+", "-", name), type=kind)
        art.add_file(str(path))
        self.run.log_artifact(art)

    def finish(self) -> None:
        """Finish the run and wait for wandb's service to write it out: ``run.finish`` can return
        before the offline ``.wandb`` file holds every record."""
        self.run.finish()
        self._wandb.teardown()
