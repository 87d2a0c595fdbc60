"""A suite's parallel runs: one run that dies (killed, out of memory) ends only itself."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from metaplastic.errors import ConfigError
from metaplastic.meta.job_pool import Job, run_jobs


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _exit_quietly() -> None:
    os._exit(3)


def _finish_after(seconds: float, marker: str) -> str:
    time.sleep(seconds)
    Path(marker).write_text("done")
    return marker


def _raise_config_error() -> None:
    raise ConfigError("bad value")


def test_a_killed_job_does_not_stop_its_sibling(tmp_path: Path) -> None:
    marker = str(tmp_path / "sibling")
    seen: list[str] = []
    outcomes = run_jobs([Job("sibling", _finish_after, (1.0, marker)), Job("victim", _kill_self),
                         Job("quiet", _exit_quietly), Job("queued", _finish_after, (0.0, str(tmp_path / "q")))],
                        workers=2, on_outcome=lambda o: seen.append(o.key))
    assert list(outcomes) == ["sibling", "victim", "quiet", "queued"]  # the jobs' order, not the finishing order
    assert outcomes["sibling"].ok and outcomes["sibling"].result == marker and Path(marker).read_text() == "done"
    assert outcomes["victim"].died == "killed by signal 9 (SIGKILL)" and not outcomes["victim"].ok
    assert outcomes["quiet"].died == "ended with exit code 3 before reporting a result"
    assert outcomes["queued"].ok  # a death does not stop the queue
    assert sorted(seen) == sorted(outcomes) and seen.index("victim") < seen.index("sibling")


def test_an_error_stops_new_jobs_but_lets_running_ones_finish(tmp_path: Path) -> None:
    marker = str(tmp_path / "running")
    outcomes = run_jobs([Job("running", _finish_after, (1.0, marker)), Job("bad", _raise_config_error),
                         Job("never", _finish_after, (0.0, str(tmp_path / "never")))], workers=2)
    assert outcomes["running"].ok and Path(marker).is_file()
    error = outcomes["bad"].error
    assert isinstance(error, ConfigError) and str(error) == "bad value"
    assert "never" not in outcomes and not (tmp_path / "never").exists()


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        run_jobs([], workers=0)


def test_a_suite_run_killed_from_outside_ends_only_itself(tmp_path: Path) -> None:
    import subprocess
    import sys

    import yaml
    from test_cli import TINY

    long = {**TINY, "meta": {**TINY["meta"], "steps": 100_000, "checkpoint_every": 50}}
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(long))
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(TINY))
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "s", "references": False,
                                     "runs": {"long": "long.yaml", "short": "short.yaml"}}))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "metaplastic", "suite", str(suite), "--out", str(out),
                             "--no-progress", "--jobs", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lock, deadline = out / "long" / ".lock", time.monotonic() + 120
    while not (lock.is_file() and lock.read_text().strip() and (out / "long" / "metrics.jsonl").is_file()):
        assert time.monotonic() < deadline and proc.poll() is None, "the long run never started"
        time.sleep(0.1)
    os.kill(int(lock.read_text()), signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2  # the CLI's exit code for a MetaplasticError
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: long: killed by signal 9 (SIGKILL); the other runs went on"), err
    assert "Traceback" not in err
    assert (out / "short" / "results.json").is_file()  # the sibling finished and kept its results
