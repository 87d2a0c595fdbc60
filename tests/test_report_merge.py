"""scripts/repro_report.py never drops a committed run: seeds trained in another session are merged."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from metaplastic.evaluation.aggregate import aggregate_runs, merge_runs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("repro_report", ROOT / "scripts" / "repro_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(label: str, seed: int, mse: float, run_dir: str) -> dict:
    result = {"mse": mse, "mse_se": 0.01, "curve": [mse + 1.0, mse], "per_function_mse": [mse, mse]}
    return {"label": label, "seed": seed, "step": 10, "run_dir": run_dir, "train_seconds_total": 5.0,
            "train_seconds_this_session": 5.0, "last": {"trained": {"continual": result}},
            "validation_curve": {"step": [0, 10], "val/mse": [2.0, mse]}}


def write_suite(folder: Path, records: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    summary = aggregate_runs(records, {})
    (folder / "results.json").write_text(json.dumps({"suite": folder.name, "summary": summary, "runs": records}))


def test_merge_runs_orders_by_learner_then_seed_and_later_wins():
    a = {"A [seed 1]": record("A", 1, 0.5, "x"), "B [seed 0]": record("B", 0, 0.7, "x")}
    b = {"A [seed 0]": record("A", 0, 0.3, "y"), "A [seed 1]": record("A", 1, 0.4, "y")}
    merged = merge_runs(a, b)
    assert list(merged) == ["A [seed 0]", "A [seed 1]", "B [seed 0]"]
    assert merged["A [seed 1]"]["last"]["trained"]["continual"]["mse"] == 0.4


def test_report_keeps_committed_seeds_and_their_analysis(report, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    committed = tmp_path / "docs" / "suite"
    write_suite(committed, {"A [seed 0]": record("A", 0, 0.2, "gone/seed0")})
    kept = {"A [seed 0]": {"label": "A", "seed": 0, "episodes": 4,
                           "summary": {"interference_exact": -0.5}}}
    (committed / "analysis_summary.json").write_text(json.dumps(kept))
    fresh = tmp_path / "runs" / "suite"
    write_suite(fresh, {"A [seed 1]": record("A", 1, 0.4, "runs/suite/seed1")})

    source = report.merge_committed(fresh, committed)
    assert source == committed
    data = json.loads((committed / "results.json").read_text())
    assert list(data["runs"]) == ["A [seed 0]", "A [seed 1]"]
    assert data["summary"]["methods"]["A"]["last"]["continual"]["mse"]["per_seed"] == [0.2, 0.4]
    assert (committed / "validation.png").is_file()
    # the fresh run has no analysis on disk, the committed one keeps its summary
    summaries = report.analysis_summaries(source, committed / "analysis_summary.json")
    assert list(summaries) == ["A [seed 0]"]
    # a fresh folder with every committed run: reported as it is
    write_suite(fresh, {"A [seed 0]": record("A", 0, 0.25, "r0"), "A [seed 1]": record("A", 1, 0.4, "r1")})
    assert report.merge_committed(fresh, committed) == fresh
