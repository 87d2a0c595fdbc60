"""Bad input, as a hostile new user gives it: one line ``error: ...``, exit 2, nothing written.

Every case runs in-process through the CLI's ``main`` in a fresh working folder, from the quick
FLP config trained for one meta-step (so a case that is wrongly accepted finishes quickly and
fails the test instead of training for minutes). A case passes only if ``main`` returns 2,
stderr is exactly one line starting with ``error:``, and no file or folder was created.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from metaplastic.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "experiments" / "quick_flp.yaml")
FAST = ["meta.steps=1", "eval.episodes=2", "task.n_functions=2", "task.steps_per_function=2", "network.hidden=[8]"]
OML_FAST = [*FAST[:-1], "network.hidden=[8,8,8,8]"]  # quick_oml's plastic layers are 3 and 4


def train(*overrides: str) -> list[str]:
    return ["train", QUICK, *FAST, *overrides, "--no-progress", "--wandb", "disabled"]


CASES: dict[str, list[str]] = {
    # non-finite numbers name their key
    "lr init nan": train("meta.lr.init=.nan"),
    "lr coef nan": train("meta.lr.coef=.nan"),
    "lr init 1e300": train("meta.lr.init=1e300"),
    "grad_clip nan": train("meta.grad_clip=.nan"),
    "sgd_lrs nan": train("eval.sgd_lrs=[.nan]"),
    "sgd_lrs negative": train("eval.sgd_lrs=[-1]"),
    "coef_init nan": train("rule.coef_init=.nan"),
    "coef_init inf": train("rule.coef_init=.inf"),
    "x_range infinite": train("task.x_range=[-.inf,.inf]"),
    "amplitude nan": train("task.amplitude=[.nan,1.0]"),
    # impossible values
    "feedback_hidden 0": train("rule.feedback_hidden=[0]"),
    "feedback_hidden -1": train("rule.feedback_hidden=[-1]"),
    "feedback_init_scale -1": train("rule.feedback_init_scale=-1"),
    "hidden_multiplier -1": train("rule.hidden_multiplier=-1"),
    "hidden 0": train("network.hidden=[0]"),
    # sizes that cannot be allocated: refused with the estimate, before anything is built
    "hidden 2e9": train("network.hidden=[2000000000]"),
    "meta_batch 1e8": train("meta.meta_batch=100000000"),
    "batch_size 1e9": train("task.batch_size=1000000000"),
    # wrong types
    "rule name list": train("rule.name=[flp]"),
    "task name mapping": train("task.name={name: sine}"),
    "device meta": train("device=meta"),
    # sizes of a conv stage
    "conv padding 1000": ["train", str(ROOT / "experiments" / "omniglot_flp_cpu.yaml"), "meta.steps=1",
                          "network.conv.padding=1000", "--no-progress", "--wandb", "disabled"],
    # a value that diverges at the first meta-step leaves nothing behind
    "inner lr 1e30": ["train", str(ROOT / "experiments" / "quick_oml.yaml"), *OML_FAST, "rule.lr_init=1e30",
                      "--out", "run", "--no-progress", "--wandb", "disabled"],
    "coef_init huge": train("rule.coef_max=1e30", "rule.coef_init=1e29", "--out", "run"),
    # run folder and config file
    "name without out": ["train", QUICK, *FAST, "name=", "--no-progress", "--wandb", "disabled"],
    "config is a directory": ["train", str(ROOT / "experiments"), "--no-progress"],
    "config is dev null": ["train", "/dev/null", "--no-progress"],
}


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_error_and_writes_nothing(name: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    before = snapshot(tmp_path)
    code = main(CASES[name])
    err = capsys.readouterr().err.strip()
    assert code == 2, f"{name}: exit {code}, stderr {err[-300:]!r}"
    assert err.startswith("error: ") and "\n" not in err, err
    assert snapshot(tmp_path) == before, f"{name} wrote {sorted(snapshot(tmp_path) - before)}"


def test_a_corrected_command_runs_after_a_first_step_divergence(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    oml = ["train", str(ROOT / "experiments" / "quick_oml.yaml"), *OML_FAST, "--out", "run", "--no-progress",
           "--wandb", "disabled"]
    assert main([*oml, "rule.lr_init=1e30"]) == 2
    assert "nothing was kept in run" in capsys.readouterr().err and not (tmp_path / "run").exists()
    assert main(oml) == 0  # the same command, corrected: no "already holds a checkpoint"


def test_suite_label_clash_and_out_dir_under_a_file(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name, out, labels in (("clash", "o", ("A/B", "a_b")), ("devnull", "/dev/null/x", ("A",))):
        runs = "".join(f"  {label}: {ROOT / 'experiments' / 'quick_flp.yaml'}\n" for label in labels)
        (tmp_path / f"{name}.yaml").write_text(f"name: {name}\nout_dir: {out}\nruns:\n{runs}")
        before = snapshot(tmp_path)
        assert main(["suite", f"{name}.yaml", *FAST[:1], "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
        assert snapshot(tmp_path) == before


def test_empty_config_is_refused(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for text in ("", "# only a comment\n"):
        path = tmp_path / "empty.yaml"
        path.write_text(text)
        assert main(["train", str(path), "--no-progress", "--wandb", "disabled"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "empty" in err
        path.unlink()
    assert not any(tmp_path.iterdir())


def test_nul_byte_in_yaml_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "nul.yaml"
    path.write_bytes(b"name: x\x00\nmeta: {steps: 1}\n")
    assert main(["train", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_atomic_writes_follow_the_umask(tmp_path: Path) -> None:
    from metaplastic.meta.checkpoint import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_second_process_on_a_run_folder_is_refused_and_dead_locks_are_not_stale(tmp_path: Path, capsys) -> None:
    import signal
    import subprocess
    import sys

    from metaplastic.meta.run_lock import RunLock

    out = tmp_path / "run"
    with RunLock(out):  # another process trains into it
        assert main([*train(), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "in use by another process" in err and "\n" not in err
        assert not (out / "checkpoint.pt").exists()
    # a process that holds the lock and is killed leaves no stale lock behind
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from metaplastic.meta.run_lock import RunLock; "
                               f"RunLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert main([*train(), "--out", str(out)]) == 2
    capsys.readouterr()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    (out / ".checkpoint.pt.abc123.tmp").write_bytes(b"")  # a write that a kill interrupted
    assert main([*train(), "--out", str(out)]) == 0
    assert (out / "checkpoint.pt").is_file()
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("tamper", ["step text", "step negative", "exp_avg size", "state index"])
def test_inconsistent_checkpoints_are_refused_by_evaluate_and_resume(tamper: str, tmp_path: Path, capsys) -> None:
    import torch

    out = tmp_path / "run"
    assert main([*train(), "--out", str(out)]) == 0
    capsys.readouterr()
    path = out / "checkpoint.pt"
    payload = torch.load(path, weights_only=True)
    group = next(iter(payload["optimizers"]))
    state = payload["optimizers"][group]["state"]
    if tamper == "step text":
        payload["step"] = "abc"
    elif tamper == "step negative":
        payload["step"] = -5
    elif tamper == "exp_avg size":
        state[0]["exp_avg"] = torch.zeros(7)
    else:
        state[999] = state[0]
    torch.save(payload, path)
    for argv in (["evaluate", str(out), "--no-references"], [*train("meta.steps=2"), "--out", str(out), "--resume"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err


def test_damaged_metrics_record_does_not_block_resume(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main([*train(), "--out", str(out)]) == 0
    (out / "metrics.jsonl").write_bytes(bytes(range(256)) * 2)  # random bytes: dropped, the run goes on
    assert main([*train("meta.steps=2"), "--out", str(out), "--resume"]) == 0
    (out / "metrics.jsonl").unlink()
    (out / "metrics.jsonl").mkdir()  # a directory in its place: one line, nothing lost
    capsys.readouterr()
    assert main([*train("meta.steps=3"), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not a regular file" in err and "\n" not in err


def test_curves_of_a_diverged_lifetime_still_plot(tmp_path: Path) -> None:
    from metaplastic.evaluation.report import plot_curves

    inf, nan = float("inf"), float("nan")
    results = {
        "diverged": {o: {"curve": [inf, nan, inf], "curve_se": [nan, nan, nan]} for o in ("continual", "iid")},
        "partly": {o: {"curve": [1.0, inf, 0.5], "curve_se": [0.1, nan, 0.2]} for o in ("continual", "iid")},
        "fine": {o: {"curve": [2.0, 1.0, 0.5], "curve_se": [0.1, 0.1, 0.1]} for o in ("continual", "iid")},
    }
    plot_curves(results, tmp_path / "curves.png", title="x")
    assert (tmp_path / "curves.png").stat().st_size > 0


@pytest.mark.parametrize("override, message", [
    ("dataset_options={digits: {bogus: 1}}", "dataset_options.digits.bogus"),
    ("dataset_options={digits: {test_fraction: 2.0}}", "test_fraction must lie in (0, 1)"),
    ("linear_lr=.nan", "linear_lr is not a number"),
    ("linear_lr=.inf", "linear_lr is infinite"),
    ("linear_lr=-1", "linear_lr must be > 0"),
])
def test_compare_bad_options(override: str, message: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(ROOT / "experiments" / "compare.yaml"), override, "epochs=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not any(tmp_path.iterdir())


def test_overrides_after_options_are_overrides(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", QUICK, *FAST, "--out", str(out), "--no-progress", "--wandb", "disabled", "meta.steps=2"]) == 0
    assert "for 2 steps" in capsys.readouterr().out


def test_full_or_read_only_filesystem_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    import errno

    from metaplastic.meta import checkpoint

    out = tmp_path / "run"
    assert main([*train(), "--out", str(out)]) == 0
    capsys.readouterr()
    real = checkpoint.atomic_write_bytes

    def full_disk(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full_disk)
    monkeypatch.setattr("metaplastic.evaluation.report.atomic_write_bytes", full_disk, raising=False)
    monkeypatch.setattr("metaplastic.meta.checkpoint.atomic_write_bytes", full_disk)
    for argv in ([*train("meta.steps=2"), "--out", str(out), "--resume"],
                 ["evaluate", str(out), "--no-references", "--out", str(tmp_path / "ev")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: cannot write ") and "No space left" in err and "\n" not in err, err
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", real)
    assert main([*train("meta.steps=2"), "--out", str(out), "--resume"]) == 0  # nothing was lost
