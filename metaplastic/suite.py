"""Suites: meta-train several configs, evaluate them with references, report side by side.

A suite file names the runs (label -> config path, relative to the suite file). Each run
trains into ``<out_dir>/<label>`` and resumes if that folder already holds a checkpoint, so a
killed suite continues where it stopped and a finished one is only re-evaluated.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from metaplastic.config import load_config
from metaplastic.config_utils import build_dataclass
from metaplastic.errors import ConfigError
from metaplastic.evaluation.checkpoint_eval import evaluate_trained, rule_label
from metaplastic.evaluation.references import evaluate_online_sgd
from metaplastic.evaluation.report import format_table, plot_curves, write_json
from metaplastic.meta.trainer import train


@dataclass(frozen=True)
class SuiteConfig:
    name: str
    runs: dict[str, str]
    out_dir: str | None = None
    references: bool = True


def load_suite(path: Path) -> SuiteConfig:
    if not path.is_file():
        raise ConfigError(f"suite file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"malformed YAML in {path}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"suite {path} must be a mapping")
    data.setdefault("name", path.stem)
    suite = build_dataclass(SuiteConfig, data, "suite")
    if not suite.runs:
        raise ConfigError(f"suite {path} lists no runs")
    return suite


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_").lower() or "run"


def run_suite(
    path: str | Path, overrides: list[str] | None = None, progress: bool = True, out_dir: str | None = None, log=print
) -> dict[str, Any]:
    path = Path(path)
    suite = load_suite(path)
    out = Path(out_dir or suite.out_dir or Path("runs") / suite.name)
    results: dict[str, Any] = {}
    train_seconds: dict[str, float] = {}
    configs: dict[str, Any] = {}
    first_experiment = None
    for label, cfg_path in suite.runs.items():
        cfg = load_config(path.parent / cfg_path, [*(overrides or []), f"out_dir={out / _slug(label)}"])
        start = time.perf_counter()
        trainer = train(cfg, resume=True, progress=progress)
        train_seconds[label] = time.perf_counter() - start
        configs[label] = cfg.to_dict()
        log(
            f"{label}: {rule_label(trainer.experiment.rule)} meta-trained for {trainer.step} steps "
            f"({train_seconds[label]:.0f} s this session) -> {cfg.run_dir}"
        )
        results.update(evaluate_trained(trainer, label=label, untrained=suite.references))
        first_experiment = first_experiment or trainer.experiment
    if suite.references and first_experiment is not None:
        sgd = evaluate_online_sgd(first_experiment)
        lrs = f"lr {sgd['continual']['lr']:g}/{sgd['iid']['lr']:g}"
        results[f"online SGD, random init ({lrs})"] = sgd
    table = format_table(results)
    log("")
    log(table)
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "results.json",
        {"suite": suite.name, "results": results, "train_seconds": train_seconds, "configs": configs},
    )
    plot_curves(results, out / "mse_vs_functions.png", title=f"{suite.name}: sine regression")
    (out / "table.txt").write_text(table + "\n")
    log(f"\nwrote {out / 'results.json'}, {out / 'mse_vs_functions.png'}, {out / 'table.txt'}")
    return results
