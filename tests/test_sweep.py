"""metaplastic sweep: sweep files checked before anything starts, real sweeps on an embedded Ray."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from metaplastic.cli.main import main
from metaplastic.config import load_config
from metaplastic.errors import ConfigError
from metaplastic.meta.checkpoint import load_checkpoint
from metaplastic.meta.trainer import train
from metaplastic.sweep import is_available, load_sweep

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "experiments" / "quick_flp.yaml"
TINY = [
    "meta.steps=4", "meta.validate_every=2", "meta.validate_episodes=2", "meta.checkpoint_every=2",
    "meta.log_every=1", "task.n_functions=2", "task.steps_per_function=2", "network.hidden=[8]",
    "meta.meta_batch=2", "eval.episodes=2",
]


def write_sweep(tmp_path: Path, **fields) -> Path:
    data = {"name": "tiny", "base": str(BASE), "overrides": TINY,
            "space": {"meta.lr.coef": {"grid": [1.0e-3, 1.0e-2]}}, "seeds": [0, 1], "search": "grid"}
    data.update(fields)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ---- checks before anything starts ---------------------------------------------------------

@pytest.mark.parametrize(
    "fields, message",
    [
        ({"space": {}}, "the space is empty"),
        ({"space": {"meta.lr.coeff": {"grid": [1e-3]}}}, "unknown key 'meta.lr.coeff'"),
        ({"space": {"rule.coef_init": {"grid": []}}}, "is empty"),
        ({"space": {"rule.coef_init": {"between": [1, 2]}}}, "unknown kind 'between'"),
        ({"space": {"rule.coef_init": {"uniform": [2.0, 1.0]}}}, "low < high"),
        ({"space": {"rule.coef_init": {"loguniform": [0.0, 1.0]}}}, "low must be > 0"),
        ({"space": {"rule.coef_init": {"uniform": [1e-4, 1e-3]}}}, "search 'grid' needs list values"),
        ({"space": {"seed": {"grid": [0, 1]}}}, "use 'seeds:'"),
        ({"space": {"meta.steps": {"grid": ["many"]}}}, "meta.steps: expected an integer"),
        ({"metric": "val/accuracy"}, "no trial reports metric 'val/accuracy'"),
        ({"overrides": [o for o in TINY if not o.startswith("meta.validate_every")]}, "meta.validate_every"),
        ({"search": "bayes"}, "sweep.search must be one of"),
        ({"seeds": []}, "seeds must list at least one seed"),
        ({"scheduler": {"name": "asha", "grace_period": 100}}, "grace_period must be in"),
        ({"bogus": 1}, "unknown key 'sweep.bogus'"),
    ],
)
def test_bad_sweep_files_fail_before_anything_starts(tmp_path: Path, fields, message) -> None:
    path = write_sweep(tmp_path, **fields)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_sweep(path)


def test_bad_sweep_is_one_line_error_and_writes_nothing(tmp_path: Path, capsys) -> None:
    path = write_sweep(tmp_path, space={"meta.lr.coeff": {"grid": [1e-3]}})
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--wandb", "disabled"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_sweep_file_binary_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError):
        load_sweep(path)


# ---- real sweeps on an embedded Ray --------------------------------------------------------

needs_ray = pytest.mark.skipif(not is_available(), reason="the [sweep] extra (ray[tune], optuna) is not installed")


@pytest.fixture(scope="module")
def ray_session():
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


def run(path: Path, out: Path, *extra: str) -> int:
    return main(["sweep", str(path), "--out", str(out), "--wandb", "disabled", *extra])


def trial_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in (out / "trials").glob("*/*/checkpoint.pt"))


@needs_ray
def test_grid_sweep_writes_run_folders_summary_and_resumes_without_rerunning(tmp_path: Path, ray_session) -> None:
    path = write_sweep(tmp_path)
    out = tmp_path / "out"
    assert run(path, out) == 0
    dirs = trial_dirs(out)
    assert len(dirs) == 4  # 2 points x 2 seeds
    summary = json.loads((out / "trials.json").read_text())
    assert summary["trials"] == 4 and len(summary["points"]) == 2
    means = [p["mean"] for p in summary["points"]]
    assert means == sorted(means)  # best (lowest MSE) first
    for point in summary["points"]:
        assert sorted(point["seeds"]) == [0, 1]
    assert (out / "metric_vs_keys.png").stat().st_size > 0
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["meta"]["lr"]["coef"] == summary["points"][0]["params"]["meta.lr.coef"]
    assert best["meta"]["steps"] == 4 and best["out_dir"] is None

    # every trial is an ordinary run: bitwise what `metaplastic train` of the same config gives
    record = json.loads((dirs[0] / "sweep_trial.json").read_text())
    coef = record["params"]["meta.lr.coef"]
    cfg = load_config(BASE, [*TINY, f"meta.lr.coef={coef}", f"seed={record['seed']}", f"out_dir={tmp_path / 'direct'}"])
    direct = train(cfg, progress=False)
    swept = load_checkpoint(dirs[0] / "checkpoint.pt")["meta"]
    assert all(torch.equal(swept[k], direct.meta[k].detach()) for k in swept)
    assert record["validation"][-1][0] == 4

    # resumed: nothing re-runs (checkpoints untouched, metrics identical), the same table
    before = {d: ((d / "checkpoint.pt").stat().st_mtime_ns, (d / "metrics.jsonl").read_text()) for d in dirs}
    table = (out / "table.md").read_text()
    assert run(path, out) == 2  # without --resume the folder is refused
    assert run(path, out, "--resume") == 0
    assert {d: ((d / "checkpoint.pt").stat().st_mtime_ns, (d / "metrics.jsonl").read_text()) for d in dirs} == before
    assert (out / "table.md").read_text() == table
    assert len(json.loads((out / "trials.json").read_text())["invocations"]) == 2  # the start and the resume

    # Ray's state lost and one trial deleted (a kill before Ray saved anything): the resumed
    # sweep draws the same points, re-trains only the missing trial and ends with the same table
    shutil.rmtree(out / "ray")
    shutil.rmtree(dirs[1])
    assert run(path, out, "--resume") == 0
    assert trial_dirs(out) == dirs
    for d in (dirs[0], dirs[2], dirs[3]):
        assert (d / "checkpoint.pt").stat().st_mtime_ns == before[d][0]
    assert (out / "table.md").read_text() == table


@needs_ray
def test_tpe_sweep_with_asha_repeats_points_over_seeds(tmp_path: Path, ray_session) -> None:
    path = write_sweep(
        tmp_path, search="tpe", samples=2, space={"meta.lr.coef": {"loguniform": [1e-3, 1e-1]}},
        scheduler={"name": "asha", "grace_period": 2, "reduction_factor": 2},
    )
    out = tmp_path / "out"
    assert run(path, out) == 0
    summary = json.loads((out / "trials.json").read_text())
    assert summary["trials"] == 4
    assert len(summary["points"]) == 2  # every suggested point ran at both seeds
    for point in summary["points"]:
        assert sorted(point["seeds"]) == [0, 1]
        assert 1e-3 <= point["params"]["meta.lr.coef"] <= 1e-1
    for d in trial_dirs(out):  # stopped early or not, every trial folder is a loadable run
        record = json.loads((d / "sweep_trial.json").read_text())
        payload = load_checkpoint(d / "checkpoint.pt")
        assert payload["step"] == record["step"] or payload["step"] % 2 == 0
