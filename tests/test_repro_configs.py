"""The reproduction study's configs (experiments/repro): every suite plans (all its configs
validate), and every regression learner takes meta-steps, validates and evaluates at a tiny size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metaplastic.config import load_config
from metaplastic.meta import train
from metaplastic.suite import load_suite, plan_runs

REPRO = Path(__file__).resolve().parents[1] / "experiments" / "repro"
SUITES = sorted(p for p in REPRO.glob("*.yaml") if "runs:" in p.read_text())
SMALL = ["task.steps_per_function=2", "task.n_functions=3", "task.batch_size=4", "task.query_per_function=4",
         "network.hidden=[8,8,8,8]", "meta.steps=2", "meta.validate_every=1", "meta.validate_episodes=2",
         "meta.meta_batch=2", "eval.episodes=2", "eval.points_per_function=4", "eval.batch=2"]


@pytest.mark.parametrize("suite", SUITES, ids=lambda p: p.stem)
def test_suite_plans(suite: Path, tmp_path: Path) -> None:
    spec = load_suite(suite)
    runs = plan_runs(suite, spec, [], tmp_path, None)
    assert len(runs) == len(spec.runs) * len(spec.seeds or (None,))
    assert len({r.overrides[-1] for r in runs}) == len(runs)  # every run has its own folder


@pytest.mark.parametrize("name", ["flp_oja", "flp_hebb", "oml", "oml_published", "flp_oja_semi_implicit"])
def test_regression_learner_trains(name: str, tmp_path: Path) -> None:
    cfg = load_config(REPRO / f"{name}.yaml", [*SMALL, f"out_dir={tmp_path / name}"])
    trainer = train(cfg, progress=False)
    assert trainer.step == 2 and trainer.best is not None
    assert (tmp_path / name / "best.pt").is_file()
    if name == "oml_published":
        assert cfg.rule["first_order"] and cfg.network.reset_output and cfg.meta.lr["lr"] is None
        last = len(trainer.experiment.net.layers) - 1
        assert torch.count_nonzero(trainer.meta[f"init.layers.{last}.weight"]) == 0
    if name == "oml":
        assert not cfg.rule["first_order"] and cfg.meta.lr["lr"] is not None
