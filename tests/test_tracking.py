"""Tracking: the run folder is complete, wandb offline files hold the logged metrics, modes resolve."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metaplastic.cli.main import main
from metaplastic.errors import ConfigError
from metaplastic.kernels import native
from metaplastic.tracking import LocalTracker, make_tracker, resolve_mode

TINY = {
    "name": "tiny_track",
    "seed": 3,
    "task": {"name": "sine", "n_functions": 2, "steps_per_function": 2, "batch_size": 4, "query_per_function": 4},
    "network": {"hidden": [6]},
    "rule": {"name": "flp", "coef_init": 0.01},
    "meta": {"steps": 4, "meta_batch": 2, "checkpoint_every": 2, "log_every": 2,
             "lr": {"init": 1.0e-3, "feedback": 1.0e-3, "coef": 1.0e-3, "beta": 1.0e-3}},
    "eval": {"episodes": 2, "points_per_function": 4, "batch": 2, "validation_episodes": 2, "sgd_lrs": [0.1]},
}


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network, no account, nothing written outside tmp_path."""
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / sub))


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_local_tracker_writes_every_kind_of_record(tmp_path: Path) -> None:
    fig = tmp_path / "f.png"
    fig.write_bytes(b"\x89PNG fake")
    t = LocalTracker(tmp_path / "run", {"name": "x"})
    t.log({"a": 1.0}, step=1)
    t.log({"a": 2.0}, step=2)
    t.table("results", [{"method": "m", "mse": 0.5}])
    t.image("curve", fig)
    t.summary({"best": 0.5})
    t.artifact(fig, "fig", "figure")
    t.finish()
    root = tmp_path / "run"
    assert json.loads((root / "config.json").read_text()) == {"name": "x"}
    assert _rows(root / "metrics.jsonl") == [{"step": 1, "a": 1.0}, {"step": 2, "a": 2.0}]
    assert json.loads((root / "tables" / "results.json").read_text()) == [{"method": "m", "mse": 0.5}]
    assert (root / "figures" / "curve.png").read_bytes() == fig.read_bytes()
    assert json.loads((root / "summary.json").read_text()) == {"best": 0.5}
    assert _rows(root / "artifacts.jsonl")[0]["bytes"] == fig.stat().st_size


def test_train_run_folder_is_complete_and_disabled_never_imports_wandb(tmp_path: Path) -> None:
    cfg, run = _config(tmp_path), tmp_path / "run"
    code = (
        "import sys; from metaplastic.cli.main import main; "
        f"rc = main(['train', {str(cfg)!r}, '--out', {str(run)!r}, '--no-progress', '--wandb', 'disabled']); "
        "assert rc == 0, rc; assert 'wandb' not in sys.modules, 'wandb was imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    track = run / "tracking" / "train"
    assert not (run / "wandb").exists()
    assert json.loads((track / "config.json").read_text())["name"] == "tiny_track"
    # the lifetime path meta.unroll resolved to, logged once: on stderr and in the tracking config
    lifetime = json.loads((track / "config.json").read_text())["lifetime"]
    assert lifetime["path"] == "fused", lifetime
    if native.library() is None:
        assert lifetime["kernels"] == "torch", lifetime
    else:  # kernels auto: measured on this CPU (a real measurement: this runs in a subprocess)
        assert lifetime["kernels"] == "native or torch by measurement", lifetime
        assert re.fullmatch(r"kernels (native|torch) by measurement \((measured|from the kernel choices file): "
                            r"native \d+ us, torch \d+ us per inner step\)", lifetime["measured"]), lifetime
    assert "lifetime path" not in proc.stderr, proc.stderr  # --no-progress: the tracking config only
    rows = _rows(track / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4]
    trainer_rows = {r["step"]: r for r in _rows(run / "metrics.jsonl")}
    for r in rows:
        assert r["meta_loss"] == trainer_rows[r["step"]]["meta_loss"]
        for group in ("init", "feedback", "coef", "beta"):
            assert r[f"grad_norm/{group}"] == trainer_rows[r["step"]][f"grad_norm/{group}"]
        assert {"coef/0.weight/mean", "coef/1.weight/max", "beta/0", "beta/1"} <= set(r)
    artifacts = _rows(track / "artifacts.jsonl")
    assert artifacts[0]["type"] == "checkpoint" and Path(artifacts[0]["path"]) == (run / "checkpoint.pt").resolve()

    # evaluating into the same folder keeps the training record and adds its own
    assert main(["evaluate", str(run), "--no-references", "--wandb", "disabled"]) == 0
    evaluation = json.loads((run / "evaluation.json").read_text())["results"]
    [(method, res)] = evaluation.items()
    rows = json.loads((run / "tracking" / "evaluate" / "tables" / "evaluation.json").read_text())
    assert rows == [{"method": method, "order": o, "mse": res[o]["mse"], "mse_se": res[o]["mse_se"]}
                    for o in ("continual", "iid")]
    assert (run / "tracking" / "evaluate" / "figures" / "evaluation.png").is_file()
    assert json.loads((track / "config.json").read_text())["job_type"] == "train"


def test_wandb_offline_files_hold_the_logged_metrics(tmp_path: Path, offline_wandb: None) -> None:
    from metaplastic.tracking.wandb_files import read_offline_run

    cfg, run = _config(tmp_path), tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "--no-progress"]) == 0  # offline: no key configured
    [offline] = sorted((run / "wandb").glob("offline-run-*"))
    recorded = read_offline_run(offline)
    history = [h for h in recorded["history"] if "meta_loss" in h]
    local = _rows(run / "tracking" / "train" / "metrics.jsonl")
    assert [h["_step"] for h in history] == [r["step"] for r in local] == [2, 4]
    for h, r in zip(history, local):
        for key in ("meta_loss", "grad_norm/coef", "grad_norm/total", "coef/0.weight/mean", "beta/1"):
            assert h[key] == pytest.approx(r[key], rel=1e-12)
    assert recorded["config"]["name"] == "tiny_track" and recorded["config"]["job_type"] == "train"
    assert "tiny_track-checkpoint" in recorded["artifacts"]


def test_make_tracker_rejects_an_unknown_mode(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--wandb must be one of"):
        make_tracker(tmp_path / "run", "train", mode="sometimes")
    assert not (tmp_path / "run").exists()


def test_resolve_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert resolve_mode() == "offline"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password not-a-real-key\n")
    netrc.chmod(0o600)
    assert resolve_mode() == "online"
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode() == "online"
    assert resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "bogus")
    with pytest.raises(ConfigError, match="WANDB_MODE"):
        resolve_mode()
    assert main(["train", "no-such.yaml", "--wandb", "disabled"]) == 2


def test_local_record_has_no_repeated_steps_after_a_resume(tmp_path) -> None:
    import json

    from metaplastic.tracking.local import LocalTracker

    first = LocalTracker(tmp_path)
    for s in range(1, 6):
        first.log({"x": float(s)}, step=s)
    resumed = LocalTracker(tmp_path)  # the run resumed from its checkpoint at step 2
    for s in range(3, 5):
        resumed.log({"x": 10.0 * s}, step=s)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[2]["x"] == 30.0


def test_rule_statistics_cover_every_group_the_rule_declares() -> None:
    """A rule's own groups are tracked without a global list (target propagation adds 'inverse'
    and 'tp', which no other rule has)."""
    import torch

    from metaplastic.meta.experiment import Experiment
    from metaplastic.tracking import rule_statistics
    from tests.conftest import tiny_config

    exp = Experiment.from_config(tiny_config(rule={"name": "dtp"}))
    meta = exp.learner.init(torch.Generator().manual_seed(0), torch.float64)
    stats = rule_statistics(exp.net, exp.rule, meta)
    groups = {key.split("/")[0] for key in stats}
    prepared = {key.split(".")[0] for key in exp.rule.prepare(exp.net, meta)}
    assert groups == prepared & set(exp.rule.groups)
    assert {"inverse", "tp"} <= groups
