"""CLI: a tiny config trains, evaluates and runs as a suite; bad input gives one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from metaplastic.cli.main import main

TINY = {
    "name": "tiny",
    "seed": 3,
    "task": {"name": "sine", "n_functions": 3, "steps_per_function": 2, "batch_size": 4, "query_per_function": 4},
    "network": {"hidden": [8, 8]},
    "rule": {"name": "flp", "coef_init": 0.01},
    "meta": {"steps": 3, "meta_batch": 2, "checkpoint_every": 2, "log_every": 1,
             "lr": {"init": 1.0e-3, "feedback": 1.0e-3, "coef": 1.0e-5, "beta": 1.0e-3}},
    "eval": {"episodes": 4, "points_per_function": 5, "batch": 2, "validation_episodes": 2, "sgd_lrs": [0.01, 0.1]},
}


def write(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metaplastic", *args], capture_output=True, text=True, timeout=300)


def test_train_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = write(tmp_path / "tiny.yaml", TINY)
    run_dir = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run_dir), "--no-progress"]) == 0
    assert (run_dir / "checkpoint.pt").is_file()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert main(["evaluate", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "continual MSE" in out and "online SGD" in out and "untrained init" in out
    data = json.loads((run_dir / "evaluation.json").read_text())
    assert len(data["results"]) == 3
    for res in data["results"].values():
        assert res["continual"]["mse"] > 0 and len(res["continual"]["curve"]) == 3
    assert (run_dir / "evaluation.png").stat().st_size > 1000


def test_train_refuses_to_overwrite_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = write(tmp_path / "tiny.yaml", TINY)
    run_dir = tmp_path / "run"
    assert main(["train", str(cfg), "meta.steps=2", "--out", str(run_dir), "--no-progress"]) == 0
    assert main(["train", str(cfg), "meta.steps=3", "--out", str(run_dir), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", str(cfg), "meta.steps=3", "--out", str(run_dir), "--no-progress", "--resume"]) == 0
    assert "for 3 steps" in capsys.readouterr().out


def test_suite_writes_table_json_and_plot(tmp_path: Path) -> None:
    write(tmp_path / "flp.yaml", TINY)
    oml = {**TINY, "network": {"hidden": [8, 8], "plastic": [1, 2]},
           "rule": {"name": "sgd", "lr_init": 0.05}, "meta": {**TINY["meta"], "lr": {"init": 1.0e-3}}}
    write(tmp_path / "oml.yaml", oml)
    suite = write(tmp_path / "suite.yaml", {"name": "s", "runs": {"FLP": "flp.yaml", "OML": "oml.yaml"}})
    out = tmp_path / "out"
    assert main(["suite", str(suite), "--out", str(out), "--no-progress"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert list(data["summary"]["methods"]) == ["FLP", "OML"]
    assert list(data["summary"]["references"])[0].startswith("online SGD")
    for label in ("flp", "oml"):
        record = json.loads((out / label / "results.json").read_text())  # one results file per run
        assert record["step"] == 3 and set(record["last"]) == {"trained", "untrained"}
    assert (out / "curves.png").stat().st_size > 1000
    table = (out / "table.txt").read_text()
    assert "FLP (last)" in table and "OML untrained init" in table
    # A second run resumes finished runs instead of retraining or failing.
    before = (out / "flp" / "results.json").stat().st_mtime_ns
    assert main(["suite", str(suite), "--out", str(out), "--no-progress"]) == 0
    assert (out / "flp" / "results.json").stat().st_mtime_ns == before  # finished: not evaluated again


def test_suite_over_seeds_in_parallel_equals_sequential(tmp_path: Path) -> None:
    tiny = {**TINY, "meta": {**TINY["meta"], "validate_every": 1}}
    write(tmp_path / "flp.yaml", tiny)
    suite = write(tmp_path / "suite.yaml", {"name": "s", "runs": {"FLP": "flp.yaml"}, "seeds": [0, 1],
                                            "references": False})
    assert main(["suite", str(suite), "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert main(["suite", str(suite), "--out", str(tmp_path / "b"), "--no-progress", "--jobs", "2"]) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())["summary"]["methods"]["FLP"]
    b = json.loads((tmp_path / "b" / "results.json").read_text())["summary"]["methods"]["FLP"]
    assert a["last"] == b["last"] and a["best"] == b["best"]
    cell = a["last"]["continual"]["mse"]
    assert cell["n"] == 2 and cell["per_seed"][0] != cell["per_seed"][1] and cell["ci95"] > 0
    assert (tmp_path / "a" / "validation.png").stat().st_size > 1000
    assert (tmp_path / "a" / "flp" / "seed1" / "best.pt").is_file()
    # --seed runs a slice of the seeds; the summary still covers every finished run of the folder
    assert main(["suite", str(suite), "--out", str(tmp_path / "e"), "--no-progress", "--seed", "1"]) == 0
    assert not (tmp_path / "e" / "flp" / "seed0").exists()
    e = json.loads((tmp_path / "e" / "results.json").read_text())["summary"]["methods"]["FLP"]
    assert e["last"]["continual"]["mse"]["per_seed"] == [cell["per_seed"][1]]
    assert main(["suite", str(suite), "--out", str(tmp_path / "e"), "--no-progress", "--seed", "0"]) == 0
    e = json.loads((tmp_path / "e" / "results.json").read_text())["summary"]["methods"]["FLP"]
    assert e["last"] == a["last"]
    assert main(["suite", str(suite), "--out", str(tmp_path / "f"), "--no-progress", "--seed", "7"]) == 2
    assert not (tmp_path / "f").exists()
    assert main(["suite", str(suite), "--out", str(tmp_path / "c"), "--no-progress", "--only", "OML"]) == 2
    clash = write(tmp_path / "clash.yaml", {"name": "s", "runs": {"A/B": "flp.yaml", "a_b": "flp.yaml"}})
    assert main(["suite", str(clash), "--out", str(tmp_path / "d"), "--no-progress"]) == 2
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "content, overrides, expected",
    [
        ("task: [unclosed\n", [], "malformed YAML"),
        (yaml.safe_dump({**TINY, "metaa": {"steps": 2}}), [], "unknown key 'metaa'"),
        (yaml.safe_dump({**TINY, "rule": {"name": "flp", "fomr": "oja"}}), [], "unknown key 'rule.fomr'"),
        (yaml.safe_dump({**TINY, "rule": {"name": "backpropp"}}), [], "unknown rule 'backpropp'"),
        (yaml.safe_dump(TINY), ["meta.steps=many"], "meta.steps: expected an integer"),
        (yaml.safe_dump(TINY), ["network.hidden=[4, 0]"], "network sizes"),
        (yaml.safe_dump(TINY), ["device=gpu"], "device must name a torch device"),
        (yaml.safe_dump(TINY), ["meta.unroll.mode=truncate"], "needs meta.unroll.last_steps"),
    ],
)
def test_bad_config_gives_one_line_error(tmp_path: Path, content: str, overrides: list[str], expected: str) -> None:
    cfg = write(tmp_path / "bad.yaml", content)
    proc = run_cli("train", str(cfg), *overrides, "--out", str(tmp_path / "run"), "--no-progress")
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and expected in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_cuda_gives_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = write(tmp_path / "tiny.yaml", TINY)
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--device", "cuda", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: device 'cuda' cannot be used on this machine") and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_missing_and_corrupt_checkpoint_give_one_line_errors(tmp_path: Path) -> None:
    proc = run_cli("evaluate", str(tmp_path / "nothing.pt"))
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: checkpoint not found")
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint at all")
    proc = run_cli("evaluate", str(bad))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot read checkpoint" in proc.stderr


def test_sigkilled_run_resumes_to_the_same_numbers(tmp_path: Path) -> None:
    import signal
    import time

    import torch

    from metaplastic.meta.checkpoint import load_checkpoint

    cfg = write(tmp_path / "tiny.yaml", {**TINY, "meta": {**TINY["meta"], "steps": 400, "checkpoint_every": 5}})
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    proc = subprocess.Popen(
        [sys.executable, "-m", "metaplastic", "train", str(cfg), "--out", str(killed), "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for a checkpoint past the first one, then kill -9
        ckpt = killed / "checkpoint.pt"
        if ckpt.exists() and load_checkpoint(ckpt)["step"] >= 10:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = load_checkpoint(killed / "checkpoint.pt")["step"]
    assert 10 <= step_at_kill < 400, "the run must have been killed mid-way"
    assert main(["train", str(cfg), "--out", str(killed), "--resume", "--no-progress"]) == 0
    assert main(["train", str(cfg), "--out", str(whole), "--no-progress"]) == 0
    a, b = load_checkpoint(killed / "checkpoint.pt"), load_checkpoint(whole / "checkpoint.pt")
    assert a["step"] == b["step"] == 400
    for key in a["meta"]:
        assert torch.equal(a["meta"][key], b["meta"][key]), key
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 401))


def test_suite_reports_a_diverged_run_instead_of_stopping(tmp_path: Path) -> None:
    write(tmp_path / "ok.yaml", TINY)
    write(tmp_path / "bad.yaml", {**TINY, "rule": {"name": "flp", "coef_init": 50.0}})
    suite = write(tmp_path / "suite.yaml", {"name": "s", "runs": {"bad": "bad.yaml", "ok": "ok.yaml"},
                                            "references": False})
    out = tmp_path / "out"
    assert main(["suite", str(suite), "--out", str(out), "--no-progress"]) == 0
    bad = json.loads((out / "bad" / "results.json").read_text())
    assert bad["diverged"]["step"] == 0 and bad["step"] == 0
    assert json.loads((out / "ok" / "results.json").read_text())["diverged"] is None
    table = (out / "table.txt").read_text()
    assert "diverged at meta-step 0" in table and "ok (last)" in table
    before = (out / "bad" / "results.json").stat().st_mtime_ns
    assert main(["suite", str(suite), "--out", str(out), "--no-progress"]) == 0  # not retried
    assert (out / "bad" / "results.json").stat().st_mtime_ns == before


def test_sigkill_at_random_moments_resumes_to_the_same_numbers(tmp_path: Path) -> None:
    """Killed 4 times at seeded random moments (once in start-up, then at a random moment after the
    process's first step: mid-step or during a checkpoint write, one is written at every step),
    resumed each time: bitwise the uninterrupted run, the same metrics record, no temp files."""
    import random
    import signal
    import time

    import torch

    from metaplastic.meta.checkpoint import load_checkpoint

    cfg = write(tmp_path / "tiny.yaml", {**TINY, "meta": {**TINY["meta"], "steps": 150, "checkpoint_every": 1}})
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    rng = random.Random(7)
    at_kill = []
    for attempt in range(4):
        args = [sys.executable, "-m", "metaplastic", "train", str(cfg), "--out", str(killed), "--no-progress"]
        if (killed / "checkpoint.pt").exists():
            args.append("--resume")
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if attempt == 0:  # during start-up
            time.sleep(rng.uniform(0.2, 1.0))
        else:  # once this process has trained a step, at a random moment of its steps and writes
            before = at_kill[-1] or 0
            deadline = time.time() + 60
            while time.time() < deadline and proc.poll() is None:
                try:
                    if load_checkpoint(killed / "checkpoint.pt")["step"] > before:
                        break
                except Exception:  # not there yet, or being replaced
                    pass
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = killed / "checkpoint.pt"
        at_kill.append(load_checkpoint(ckpt)["step"] if ckpt.exists() else None)
    assert sum(s is not None and s < 150 for s in at_kill) >= 2, at_kill  # killed mid-run
    assert main(["train", str(cfg), "--out", str(killed), "--no-progress",
                 *(["--resume"] if (killed / "checkpoint.pt").exists() else [])]) == 0
    assert main(["train", str(cfg), "--out", str(whole), "--no-progress"]) == 0
    a, b = load_checkpoint(killed / "checkpoint.pt"), load_checkpoint(whole / "checkpoint.pt")
    assert a["step"] == b["step"] == 150
    for key in a["meta"]:
        assert torch.equal(a["meta"][key], b["meta"][key]), key
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [json.loads(line)["step"] for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert not list(killed.glob(".*.tmp"))
