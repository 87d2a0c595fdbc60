"""Fixed regression episodes from an .npz file: the same numbers as the same episodes sampled,
the i.i.d. order a shuffle of them, the CLI, and one-line errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from metaplastic.cli.main import main
from metaplastic.errors import ConfigError, DataError
from metaplastic.evaluation.regression import episode_errors
from metaplastic.evaluation.regression_file import (
    build_regression_episodes,
    evaluate_regression_file,
    load_regression_file,
)
from metaplastic.meta import Experiment, train
from metaplastic.meta.experiment import seeded_generator


def as_arrays(episodes, n_functions: int) -> dict[str, np.ndarray]:
    """Raw x, y per function of sampled continual episodes (the input's last feature is x)."""
    E = episodes.x.shape[0]
    return {
        "x": episodes.x[..., -1].reshape(E, n_functions, -1).numpy(),
        "y": episodes.y[..., 0].reshape(E, n_functions, -1).numpy(),
        "query_x": episodes.query_x[..., -1].numpy(),
        "query_y": episodes.query_y[..., 0].numpy(),
    }


def test_fixed_regression_episodes_reproduce_the_sampled_ones(tmp_path: Path) -> None:
    exp = Experiment.from_config(tiny_config(eval={"batch": 2}))
    meta = exp.init_meta()
    sampled = exp.task.sample(5, seeded_generator(11))
    path = tmp_path / "functions.npz"
    np.savez(path, **as_arrays(sampled, exp.task.n_functions))
    arrays = load_regression_file(path)
    rebuilt = build_regression_episodes(exp, arrays, "continual")
    for a, b in zip(rebuilt[:4], sampled[:4]):
        assert torch.equal(a, b)
    direct = episode_errors(exp.learner, meta, sampled)
    res = evaluate_regression_file(exp, meta, arrays)
    assert res["continual"]["per_episode"] == pytest.approx(direct[:, -1, :].mean(-1).tolist(), rel=1e-12)
    assert len(set(res["continual"]["per_episode"])) > 1 and res["continual"]["episodes"] == 5
    assert len(res["continual"]["per_function_mse"]) == exp.task.n_functions
    iid = build_regression_episodes(exp, arrays, "iid")
    key = lambda e: sorted(zip(e.x.flatten(1, 2).tolist()[0], e.y.flatten(1, 2).tolist()[0]))  # noqa: E731
    assert key(iid) == key(rebuilt) and not torch.equal(iid.x, rebuilt.x)  # the same samples, shuffled
    assert torch.equal(iid.query_x, rebuilt.query_x)


def test_cli_regression_episodes(tmp_path: Path, capsys) -> None:
    cfg = tiny_config(out_dir=str(tmp_path / "run"), meta={"steps": 1})
    train(cfg, progress=False)
    exp = Experiment.from_config(cfg)
    path = tmp_path / "f.npz"
    np.savez(path, **as_arrays(exp.task.sample(3, seeded_generator(2)), exp.task.n_functions))
    assert main(["evaluate", str(cfg.run_dir), "--episodes", str(path), "--out", str(tmp_path / "ev"),
                 "--wandb", "disabled"]) == 0
    out = capsys.readouterr().out
    assert "fixed episodes from" in out and "meta-trained (1 steps)" in out
    report = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert report["episodes_file"] == str(path.resolve())
    assert len(next(iter(report["results"].values()))["continual"]["per_episode"]) == 3


@pytest.mark.parametrize("damage, error, match", [
    ("missing", ConfigError, "missing array 'query_y'"),
    ("functions", ConfigError, "functions per episode"),
    ("samples", ConfigError, "not a multiple"),
    ("nan", DataError, "NaN or inf"),
    ("shape", ConfigError, "same shapes"),
    ("not npz", DataError, "takes fixed episodes as an .npz"),
])
def test_bad_regression_files_are_one_line(damage: str, error: type, match: str, tmp_path: Path) -> None:
    exp = Experiment.from_config(tiny_config())
    arrays = as_arrays(exp.task.sample(2, seeded_generator(0)), exp.task.n_functions)
    path = tmp_path / "bad.npz"
    if damage == "missing":
        arrays.pop("query_y")
    elif damage == "functions":
        arrays = {k: np.concatenate([v, v], axis=1) for k, v in arrays.items()}
    elif damage == "samples":
        arrays["x"], arrays["y"] = arrays["x"][..., :-1], arrays["y"][..., :-1]
    elif damage == "nan":
        arrays["y"][0, 0, 0] = np.nan
    elif damage == "shape":
        arrays["y"] = arrays["y"][..., :-1]
    np.savez(path, **arrays)
    if damage == "not npz":
        path.write_bytes(b"not a zip at all")
    with pytest.raises(error, match=match) as info:
        build_regression_episodes(exp, load_regression_file(path), "continual", str(path))
    assert "\n" not in str(info.value)
