"""One sweep trial: an ordinary metaplastic run folder, trained inside a Ray Tune worker.

The trial reports its meta-validation metric to Ray at every validation step (so ASHA can stop
it and the search algorithm learns from it) and keeps a small record, ``sweep_trial.json``,
beside its checkpoints: the point, the seed and its validation values. The summary is built
from those records, not from Ray's state, so it is the same after a resume. A trial whose
folder already holds a checkpoint continues it (``train(resume=True)``), so a killed sweep loses
at most the steps since the trial's last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaplastic.meta.checkpoint import atomic_write_text

RECORD = "sweep_trial.json"
TRIAL_INDEX = "__trial_index__"  # set by Ray's Repeater: which of the seeds this repeat runs


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its point (picklable, sent to the workers once)."""

    base_path: str
    overrides: tuple[str, ...]
    keys: tuple[str, ...]
    seeds: tuple[int, ...]
    metric: str
    mode: str
    trials_dir: str
    cwd: str
    threads: int
    wandb_mode: str
    group: str


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", str(value))


def trial_folder(trials_dir: Path, params: dict[str, Any], seed: int) -> Path:
    """``<trials>/<readable point>-<hash>/seed<k>``: the same point always maps to the same
    folder (a resumed sweep finds its runs); the hash of the exact values keeps two close
    random values apart."""
    readable = ",".join(f"{k.rsplit('.', 1)[-1]}={_format(v)}" for k, v in params.items())[:120]
    digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return trials_dir / f"{readable}-{digest}" / f"seed{seed}"


def split_point(context: TrialContext, config: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The swept values (in the sweep file's order) and the seed of a Ray trial config."""
    params = {k: config[k] for k in context.keys}
    if "seed" in config:
        seed = int(config["seed"])
    else:
        seed = context.seeds[int(config.get(TRIAL_INDEX, 0)) % len(context.seeds)]
    return params, seed


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """The Ray Tune function trainable."""
    import torch
    from ray import tune

    from metaplastic.config import load_config
    from metaplastic.errors import DivergenceError
    from metaplastic.meta.trainer import train
    from metaplastic.sweep.spec import point_overrides
    from metaplastic.tracking import TrainingTracking

    if os.path.isdir(context.cwd):
        os.chdir(context.cwd)  # relative data paths in configs mean what they meant where the sweep started
    torch.set_num_threads(context.threads)
    params, seed = split_point(context, config)
    folder = trial_folder(Path(context.trials_dir), params, seed)
    name = f"{context.group}-{folder.parent.name}-seed{seed}"  # wandb run name; the group is the sweep
    cfg = load_config(context.base_path, [*context.overrides, *point_overrides(params), f"seed={seed}",
                                          f"out_dir={folder}", f"name='{name}'"])
    path = folder / RECORD
    record = read_record(path) or {"validation": []}
    record.update({"params": params, "seed": seed, "metric": context.metric, "steps": cfg.meta.steps,
                   "diverged": None, "folder": str(folder)})
    reported = False

    def save() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=1))

    def report(value: float, step: int, meta_loss: float) -> None:
        nonlocal reported
        reported = True
        tune.report({context.metric: value, "meta_step": step, "meta_loss": meta_loss})

    tracking = TrainingTracking(cfg, context.wandb_mode, group=context.group)

    def on_step(trainer: Any, metrics: dict[str, float]) -> None:
        tracking(trainer, metrics)
        record["step"] = trainer.step
        if context.metric in metrics:
            value = float(metrics[context.metric])
            record["validation"] = [v for v in record["validation"] if v[0] < trainer.step] + [[trainer.step, value]]
            save()
            report(value, trainer.step, float(metrics["meta_loss"]))

    try:
        trainer = train(cfg, resume=(folder / "checkpoint.pt").is_file(), progress=False, on_step=on_step)
    except DivergenceError as e:
        record["diverged"] = e.step
        save()
        report(float("inf") if context.mode == "min" else float("-inf"), e.step or 0, float("nan"))
        return
    finally:
        tracking.close(cfg.run_dir / "checkpoint.pt")
    record["step"] = trainer.step
    save()
    if not reported:  # a run that was already complete: tell Ray its result
        final = record["validation"][-1][1] if record["validation"] else float("nan")
        report(final, trainer.step, float("nan"))


def read_record(path: Path) -> dict[str, Any] | None:
    """A trial's record, or None when it is missing or unreadable (the trial then rewrites it)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("validation"), list) else None
