"""`metaplastic compare`: every rule and the linear model on the same data and budget, a table
whose labels state the last-hidden-BP option, results.json and a PNG; same seed, same numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

from metaplastic.cli.main import main
from metaplastic.training.compare import LINEAR, load_compare_config, run_compare

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
TINY = [
    "datasets=[digits]",
    "hidden=[16]",
    "epochs=2",
    "rules=[{name: bp, lr_init: 0.2}, {name: fa, lr_init: 0.2, last_hidden_bp: true}, "
    "{name: dtp, lr_init: 0.2, schedule: alternating, alternate_every: 10}, "
    "{name: usf, lr_init: 0.2, label: my sign rule}]",
]


def test_default_config_lists_every_rule_family():
    cfg = load_compare_config(EXPERIMENTS / "compare.yaml")
    names = {spec["name"] for spec in cfg.rules}
    assert {"bp", "fa", "dfa", "usf", "frsf", "brsf", "dtp", "sdtp"} <= names
    assert set(cfg.datasets) == {"mnist1d", "digits"}
    labels = [label for label, _ in cfg.built_rules()]
    assert "FA + last-hidden BP" in labels and "FA" in labels and "uSF + BM" in labels


def test_compare_cli_writes_table_json_and_png(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(EXPERIMENTS / "compare.yaml"), *TINY, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for label in (LINEAR, "BP", "FA + last-hidden BP", "DTP (alternating)", "my sign rule"):
        assert f"| {label} |" in printed
    assert "digits train error" in printed
    data = json.loads((out / "results.json").read_text())
    rows = data["results"]["digits"]
    assert len(rows) == 5
    for res in rows.values():
        assert 0.0 <= res["test_error"] <= 1.0 and math.isfinite(res["train_error"])
        assert len(res["curve"]["epochs"]) == 3  # before training and after each epoch
    assert rows["BP"]["train_error"] < rows["BP"]["curve"]["train_error"][0]
    assert (out / "learning_curves.png").stat().st_size > 1000
    assert (out / "table.md").read_text().startswith("| rule |")


def test_same_seed_same_numbers():
    cfg = load_compare_config(EXPERIMENTS / "compare.yaml", [*TINY[:3], "rules=[{name: brsf, lr_init: 0.2}]"])
    first, second = run_compare(cfg, progress=False), run_compare(cfg, progress=False)
    for runs in (first, second):
        for res in runs["digits"].values():
            res.pop("seconds")  # wall-clock time is the one thing allowed to differ
    assert first == second
