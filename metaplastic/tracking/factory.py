"""Choosing the tracking backends of a run.

``--wandb`` takes ``online``, ``offline`` or ``disabled``. Without it: ``WANDB_MODE`` if set,
else ``online`` when an API key is configured (``WANDB_API_KEY``, or a ``~/.netrc`` entry for
the wandb host) and ``offline`` otherwise, so a machine with no account and no network
records the run locally. The run-folder backend is always on; wandb is added unless disabled
(and, when wandb is not installed and was not asked for explicitly, left out with a note).
"""

from __future__ import annotations

import netrc
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from metaplastic.errors import ConfigError
from metaplastic.tracking.base import MultiTracker, Tracker
from metaplastic.tracking.local import LocalTracker

MODES = ("online", "offline", "disabled")
_ALIASES = {"dryrun": "offline", "run": "online"}


def has_api_key() -> bool:
    """Whether wandb would find an API key (its value is never read here)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(requested: str | None = None) -> str:
    if requested is not None:
        if requested not in MODES:
            raise ConfigError(f"--wandb must be one of {', '.join(MODES)}, got '{requested}'")
        return requested
    env = os.environ.get("WANDB_MODE")
    if env:
        env = _ALIASES.get(env, env)
        if env not in MODES:
            raise ConfigError(f"WANDB_MODE must be one of {', '.join(MODES)}, got '{env}'")
        return env
    return "online" if has_api_key() else "offline"


def make_tracker(
    folder: str | Path,
    job_type: str,
    config: dict[str, Any] | None = None,
    mode: str | None = None,
    name: str | None = None,
    group: str | None = None,
) -> MultiTracker:
    """A run-folder tracker in ``<folder>/tracking/<job_type>`` plus wandb (files in ``<folder>/wandb``).

    One sub-folder per job type, so evaluating or analysing into a training run's folder
    leaves the training record intact. ``group`` groups wandb runs (a sweep's trials)."""
    resolved = resolve_mode(mode)  # before anything is written: a bad mode leaves no folder
    folder = Path(folder)
    config = {**(config or {}), "job_type": job_type}
    trackers: list[Tracker] = [LocalTracker(folder / "tracking" / job_type, config)]
    if resolved != "disabled":
        from metaplastic.tracking.wandb_backend import WandbTracker

        try:
            trackers.append(WandbTracker(folder, resolved, config, name=name, job_type=job_type, group=group))
        except ConfigError:
            if mode is not None:
                raise
            print("note: wandb is not installed; tracking to the run folder only", file=sys.stderr)
    return MultiTracker(trackers)


def training_callback(tracker: Tracker, log_every: int, final_step: int) -> Callable[[Any, dict[str, float]], None]:
    """An ``on_step`` for ``meta.trainer.train``: meta-loss, per-group meta-gradient norms and
    the rule's coefficient/beta statistics every ``log_every`` meta-steps and at the last."""
    def on_step(trainer: Any, metrics: dict[str, float]) -> None:
        validated = any(k.startswith("val/") for k in metrics)
        if trainer.step % log_every == 0 or trainer.step == final_step or validated:
            exp = trainer.experiment
            stats = exp.learner.statistics(trainer.meta)
            tracker.log({k: v for k, v in {**metrics, **stats}.items() if k != "step"}, step=trainer.step)

    return on_step


class TrainingTracking:
    """Tracking of ``metaplastic train``: pass as ``on_step`` to ``meta.trainer.train``.

    The tracker opens at the first meta-step (after ``train`` has validated the run folder) and
    ``close`` logs the checkpoint as an artifact and finishes the run."""

    def __init__(self, config: Any, mode: str | None = None, group: str | None = None):
        self.config, self.mode, self.group = config, mode, group
        self.tracker: MultiTracker | None = None
        self.callback: Callable[[Any, dict[str, float]], None] | None = None

    def __call__(self, trainer: Any, metrics: dict[str, float]) -> None:
        if self.tracker is None:
            cfg = self.config
            record = cfg.to_dict()
            lifetime = getattr(trainer, "lifetime", None)
            if lifetime is not None:  # the path meta.unroll's path / kernels resolved to on this machine
                record["lifetime"] = lifetime.as_dict()
            self.tracker = make_tracker(cfg.run_dir, "train", record, self.mode, name=cfg.name, group=self.group)
            self.callback = training_callback(self.tracker, cfg.meta.log_every, cfg.meta.steps)
        self.callback(trainer, metrics)

    def close(self, checkpoint: Path | None = None) -> None:
        if self.tracker is None:
            return
        try:
            if checkpoint is not None and Path(checkpoint).is_file():
                self.tracker.artifact(Path(checkpoint), f"{self.config.name}-checkpoint", "checkpoint")
        finally:
            self.tracker.finish()
            self.tracker = None
