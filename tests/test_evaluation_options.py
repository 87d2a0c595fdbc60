"""Evaluation options: readout over the episode's units, ordered label maps, evaluate overrides."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from metaplastic.cli.main import main
from metaplastic.config import config_from_dict
from metaplastic.evaluation.classification import episode_accuracy, evaluate_classification, predict
from metaplastic.meta.experiment import Experiment, seeded_generator
from metaplastic.meta.trainer import MetaTrainer

DIGITS = {
    "name": "digits_oml", "seed": 0, "dtype": "float32",
    "task": {"name": "classification", "source": "digits", "n_classes": 3, "shots": 2, "query_per_class": 3,
             "n_outputs": 10},
    "network": {"hidden": [16], "plastic": None},
    "rule": {"name": "sgd", "lr_init": 0.05},
    "meta": {"steps": 2, "meta_batch": 2, "lr": {"init": 3e-3, "lr": 3e-3}, "checkpoint_every": 1},
    "eval": {"episodes": 4, "classes": [2, 3], "batch": 4},
}


def test_predict_by_hand() -> None:
    output = torch.tensor([[[0.1, 0.9, 0.5, 0.2], [0.8, 0.1, 0.3, 0.4]]])  # (T=1, Q=2, units=4)
    query_y = torch.tensor([[[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]]])  # the episode uses units 0 and 2
    assert predict(output, query_y, "all_units").tolist() == [[1, 0]]
    assert predict(output, query_y, "episode_units").tolist() == [[2, 0]]


def test_ordered_label_map_changes_labels_only() -> None:
    exp = Experiment.from_config(config_from_dict(DIGITS))
    a = exp.task.sample(3, seeded_generator(5), split="test", n_classes=3)
    b = exp.task.sample(3, seeded_generator(5), split="test", n_classes=3, label_map="ordered")
    assert torch.equal(a.x, b.x) and torch.equal(a.query_x, b.query_x)
    assert set(b.query_y.argmax(-1).unique().tolist()) == {0, 1, 2}
    assert not torch.equal(a.y, b.y)


def test_episode_readout_never_loses_accuracy_and_is_reported() -> None:
    exp = Experiment.from_config(config_from_dict(DIGITS))
    meta = exp.init_meta()
    episodes = exp.task.sample(16, seeded_generator(3), split="test")
    every = episode_accuracy(exp, meta, episodes, "all_units")
    own = episode_accuracy(exp, meta, episodes, "episode_units")
    assert bool((own >= every).all()) and float(own.mean()) > float(every.mean())  # 10 units, 3 classes
    res = evaluate_classification(Experiment.from_config(config_from_dict({**DIGITS, "eval": {
        **DIGITS["eval"], "readout": "episode_units", "label_map": "ordered"}})), meta)
    assert res["continual"]["readout"] == "episode_units" and res["continual"]["label_map"] == "ordered"


def test_evaluate_overrides(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    trainer = MetaTrainer(Experiment.from_config(config_from_dict({**DIGITS, "out_dir": str(tmp_path / "run")})))
    from metaplastic.meta.trainer import train

    train(trainer.config, progress=False)
    run = str(tmp_path / "run")
    assert main(["evaluate", run, "eval.episodes=3", "eval.readout=episode_units", "--no-references",
                 "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "readout: episode_units" in out
    results = json.loads((tmp_path / "ev" / "evaluation.json").read_text())["results"]
    entry = next(iter(results.values()))["continual"]
    assert entry["runs"] == 3 and entry["readout"] == "episode_units"
    for bad, message in [("meta.steps=3", "only eval.* and task.* keys"), ("eval.readout=best", "eval.readout"),
                         ("eval.episodes=.nan", "eval.episodes"), ("task.n_outputs=20", "shape")]:
        assert main(["evaluate", run, bad, "--no-references", "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not (tmp_path / "bad").exists()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["eval"]["episodes"] == 4  # unchanged
