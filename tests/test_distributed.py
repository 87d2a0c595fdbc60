"""Data-parallel meta-training (torchrun, gloo): the same numbers as one process, resumable,
one-line errors. Two-process runs go through real torchrun subprocesses on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config, tiny_config_dict

from metaplastic.config import load_config
from metaplastic.errors import ConfigError
from metaplastic.meta import train
from metaplastic.meta.checkpoint import load_checkpoint
from metaplastic.meta.distributed import Parallel
from metaplastic.meta.experiment import Experiment

ROOT = Path(__file__).resolve().parent.parent
STEPS = 3
TOL = 1e-12


def write_config(path: Path, **meta) -> Path:
    """The tiny float64 config at meta-batch 4, validated every 2 steps (best.pt is written too)."""
    meta = {"meta_batch": 4, "steps": STEPS, "checkpoint_every": 1, "validate_every": 2,
            "validate_episodes": 2, **meta}
    path.write_text(yaml.safe_dump(tiny_config_dict(meta=meta)))
    return path


def run_cli(args: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """``python -m metaplastic ARGS`` (or under ``python -m torch.distributed.run LAUNCHER``)."""
    prefix = ["-m", "torch.distributed.run", *launcher, "-m", "metaplastic"] if launcher else ["-m", "metaplastic"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *prefix, *args, "--no-progress", "--wandb", "disabled"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_run(a: Path, b: Path) -> None:
    """Meta-parameters, Adam moments and logged meta-losses within TOL, in checkpoint and best."""
    for name in ("checkpoint.pt", "best.pt"):
        pa, pb = load_checkpoint(a / name), load_checkpoint(b / name)
        assert pa["step"] == pb["step"] and pa["best"]["step"] == pb["best"]["step"]
        assert set(pa["meta"]) == set(pb["meta"])
        for k in pa["meta"]:
            assert torch.allclose(pa["meta"][k], pb["meta"][k], rtol=0, atol=TOL), (name, k)
        for g, state in pa["optimizers"].items():
            for idx, values in state["state"].items():
                for key, v in values.items():
                    assert torch.allclose(torch.as_tensor(v), torch.as_tensor(pb["optimizers"][g]["state"][idx][key]),
                                          rtol=0, atol=TOL), (name, g, key)
    rows_a, rows_b = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, b))
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]  # one line per step: rank 0 alone logs
    for ra, rb in zip(rows_a, rows_b):
        for key in ("meta_loss", "grad_norm/total", "val/mse"):
            if key in ra:
                assert abs(ra[key] - rb[key]) <= TOL, key


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config file, run folder) of the uninterrupted single-process run."""
    root = tmp_path_factory.mktemp("distributed")
    config = write_config(root / "tiny.yaml")
    cfg = load_config(config, [f"out_dir={root / 'one'}"])
    train(cfg, progress=False)
    return config, root / "one"


def test_shard_is_the_rank_slice_of_the_full_meta_batch():
    exp = Experiment.from_config(tiny_config(meta={"meta_batch": 4}))
    full = exp.training_episodes(0)
    for rank in range(2):
        part = Parallel(rank, 2).shard(full)
        for a, b in zip(part[:6], full[:6]):
            assert torch.equal(a, b[2 * rank:2 * rank + 2])
        assert part.boundaries == full.boundaries
    assert Parallel(1, 4).loss_weight(4) == 0.25
    with pytest.raises(ConfigError, match="divisible"):
        Parallel(0, 3).task_slice(4)


def test_two_processes_equal_one(reference, tmp_path):
    config, one = reference
    two = tmp_path / "two"
    result = run_cli(["train", "--nproc", "2", str(config), f"out_dir={two}"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("meta-trained") == 1  # rank 0 alone reports
    assert sorted(p.name for p in two.iterdir()) == [".lock", "best.pt", "checkpoint.pt", "config.yaml",
                                                     "metrics.jsonl", "tracking"]
    assert_same_run(one, two)


def test_two_processes_resumed_equal_uninterrupted(reference, tmp_path):
    config, one = reference
    run = tmp_path / "resumed"
    rdzv = ["--nnodes", "1", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "test"]
    first = run_cli(["train", str(config), f"out_dir={run}", "meta.steps=2"], launcher=rdzv)
    assert first.returncode == 0, first.stderr
    assert load_checkpoint(run)["step"] == 2
    second = run_cli(["train", "--nproc", "2", str(config), f"out_dir={run}", "--resume"])
    assert second.returncode == 0, second.stderr
    assert_same_run(one, run)


def test_meta_batch_not_divisible_is_one_line_error(reference, tmp_path):
    config, _ = reference
    run = tmp_path / "bad"
    result = run_cli(["train", "--nproc", "2", str(config), f"out_dir={run}", "meta.meta_batch=3"])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "divisible" in lines[0], result.stderr
    assert not run.exists()
    # inside a torchrun worker: the same error before anything is written
    cfg = load_config(config, [f"out_dir={run}", "meta.meta_batch=3"])
    with pytest.raises(ConfigError, match="divisible"):
        train(cfg, progress=False, parallel=Parallel(0, 2))
    assert not run.exists()
