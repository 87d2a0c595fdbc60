"""`metaplastic analyze` on checkpoints of the quick configs (FLP and OML) writes every figure and number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metaplastic.analysis.figures import FIGURES
from metaplastic.cli.main import main

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@pytest.mark.parametrize("config", ["quick_flp.yaml", "quick_oml.yaml"])
def test_analyze_quick_checkpoint_writes_every_figure(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    args = ["meta.steps=2", "meta.meta_batch=1", "--out", str(run), "--no-progress", "--wandb", "disabled"]
    assert main(["train", str(EXPERIMENTS / config), *args]) == 0
    out = tmp_path / "analysis"
    assert main(["analyze", str(run), "--episodes", "2", "--out", str(out), "--wandb", "disabled"]) == 0
    printed = capsys.readouterr().out
    assert "interference" in printed and "SGD (matched)" in printed
    for name in FIGURES:
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert (out / "tracking" / "analyze" / "figures" / f"{name}.png").is_file()
    results = json.loads((out / "analysis.json").read_text())
    assert results["meta_step"] == 2 and results["episodes"] == 2
    n_functions = len(results["boundaries"])
    assert len(results["interference"]["exact"]["matrix"]) == n_functions
    assert len(results["alignment"]["cos"]["all"]["per_step"]) == results["boundaries"][-1]
    summary = json.loads((out / "tracking" / "analyze" / "summary.json").read_text())
    assert summary["analysis/interference"] == results["interference"]["exact"]["mean_earlier"]


def test_analyze_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["analyze", str(tmp_path / "missing"), "--wandb", "disabled"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint not found") and err.count("\n") == 1
    assert main(["analyze", str(tmp_path), "--episodes", "0"]) == 2  # argparse errors are one line too
    err = capsys.readouterr().err
    assert err.startswith("error: metaplastic analyze: argument --episodes") and err.count("\n") == 1


def test_analyze_a_classification_checkpoint(tmp_path: Path) -> None:
    """Cross-entropy streams (digits, one class per task) go through the same analysis."""
    import yaml

    cfg = tmp_path / "digits.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "digits_oml", "seed": 0, "dtype": "float32",
        "task": {"name": "classification", "source": "digits", "n_classes": 3, "shots": 2, "query_per_class": 3,
                 "n_outputs": 10},
        "network": {"hidden": [16], "plastic": None},
        "rule": {"name": "sgd", "lr_init": 0.05},
        "meta": {"steps": 1, "meta_batch": 2, "lr": {"init": 3e-3, "lr": 3e-3}},
    }))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "--no-progress", "--wandb", "disabled"]) == 0
    assert main(["analyze", str(run), "--episodes", "2", "--wandb", "disabled"]) == 0
    results = json.loads((run / "analysis" / "analysis.json").read_text())
    assert len(results["forgetting"]["matrix"]) == 3
    assert results["alignment"]["cos"]["all"]["mean"] == pytest.approx(1.0, abs=1e-9)  # the sgd rule
