"""The README's memory-learner table from the runs of the four memory suites.

    python scripts/memory_table.py runs/memory_quick runs/memory_quick_walltime \
        runs/memory_omniglot runs/memory_omniglot_walltime --page README.md

Each suite folder's ``results.json`` (written by ``metaplastic suite``) gives, per run, the
meta-steps, the meta-training seconds and the evaluation of the last checkpoint. Regression
suites give continual and i.i.d. MSE (± standard error over the test episodes), classification
suites accuracy at every class count (± 95% interval over the evaluation runs). The table goes
to stdout and, with ``--page``, into the page's ``<!-- table:memory -->`` ... ``<!-- end -->``
block. Nothing is typed in: a run that is missing is not in the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from repro_report import _records, fill_page  # noqa: E402

ORDERS = ("continual", "iid")


def _runs(suite: Path) -> list[dict[str, Any]]:
    """The suite's finished runs: from its results.json, or (a suite still running) from the
    results.json of every run folder that has one."""
    if (suite / "results.json").is_file():
        return list(_records([suite]).values())
    return [json.loads(p.read_text()) for p in sorted(suite.glob("*/results.json"))]


def _budget(suite: Path) -> str:
    return "equal wall time" if suite.name.endswith("_walltime") else "equal meta-steps"


def regression_rows(suites: list[Path]) -> list[str]:
    lines = ["| learner | budget | meta-steps | train s | continual MSE | i.i.d. MSE |", "|---|---|---|---|---|---|"]
    for suite in suites:
        for r in _runs(suite):
            t = r["last"]["trained"]
            cells = [f"{t[o]['mse']:.3f} ± {t[o]['mse_se']:.3f}" for o in ORDERS]
            lines.append(f"| {r['label']} | {_budget(suite)} | {r['step']} | {r['train_seconds_total']:.0f} | "
                         + " | ".join(cells) + " |")
    return lines


def classification_rows(suites: list[Path]) -> list[str]:
    first = _runs(suites[0])[0]["last"]["trained"]["continual"]
    counts = first["classes"]
    lines = ["| learner | budget | meta-steps | train s | order | " + " | ".join(f"{n} classes" for n in counts) + " |",
             "|---|---|---|---|---|" + "---|" * len(counts)]
    for suite in suites:
        for r in _runs(suite):
            for order in ORDERS:
                t = r["last"]["trained"][order]
                cells = [f"{a:.3f} ± {c:.3f}" for a, c in zip(t["accuracy"], t["ci95"])]
                lines.append(f"| {r['label']} | {_budget(suite)} | {r['step']} | {r['train_seconds_total']:.0f} | "
                             f"{order} | " + " | ".join(cells) + " |")
    references = _runs(suites[0])[0]["last"].get("references", {})
    for name, ref in references.items():
        if "pixels" in name:  # references on the learners' own features differ per learner
            lines.append(f"| {name} | - | - | - | continual | "
                         + " | ".join(f"{a:.3f}" for a in ref["continual"]["accuracy"]) + " |")
    return lines


def _seconds_per_step(run: dict[str, Any], first_steps: int | None) -> float:
    """Mean seconds per meta-step: over the whole run (``train_seconds_total``), or over the logged
    steps up to ``first_steps`` (its ``metrics.jsonl``), a window in which every learner of the
    suite ran under the same load."""
    if first_steps is None:
        return run["train_seconds_total"] / run["step"]
    rows = [json.loads(line) for line in (Path(run["run_dir"]) / "metrics.jsonl").read_text().splitlines() if line]
    times = [r["seconds"] for r in rows if "seconds" in r and r.get("step", 0) <= first_steps]
    if not times:
        raise SystemExit(f"memory_table: {run['run_dir']} logged no step up to {first_steps}")
    return sum(times) / len(times)


def wall_time_steps(suite: Path, reference: str = "FLP", first_steps: int | None = None) -> dict[str, int]:
    """Meta-steps that give each memory learner of ``suite`` the reference learner's wall time:
    reference steps x (reference s/step) / (learner s/step), seconds per step from
    ``_seconds_per_step``."""
    runs = {r["label"]: r for r in _runs(suite)}
    ref = runs[reference]
    per_step = _seconds_per_step(ref, first_steps)
    return {label: max(1, round(ref["step"] * per_step / _seconds_per_step(r, first_steps)))
            for label, r in runs.items() if label not in (reference, "OML")}


def is_classification(suite: Path) -> bool:
    return "accuracy" in _runs(suite)[0]["last"]["trained"]["continual"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="+", type=Path)
    parser.add_argument("--page", type=Path, help="markdown page with a <!-- table:memory --> block")
    parser.add_argument("--wall-time-steps", action="store_true",
                        help="print, per suite, the meta-steps that give each memory learner FLP's wall time "
                        "(for the *_walltime suites) and stop")
    parser.add_argument("--first-steps", type=int, metavar="N",
                        help="with --wall-time-steps: seconds per step over each run's first N meta-steps only "
                        "(a window in which all ran under the same load), not the whole run")
    args = parser.parse_args()
    if args.wall_time_steps:
        for suite in args.suites:
            print(suite, wall_time_steps(suite, first_steps=args.first_steps))
        return
    present = [s for s in args.suites if _runs(s)]
    for s in sorted(set(args.suites) - set(present)):
        print(f"memory_table: {s} has no finished run: left out", file=sys.stderr)
    regression = [s for s in present if not is_classification(s)]
    classification = [s for s in present if is_classification(s)]
    parts = []
    if regression:
        parts += ["Quick continual sine protocol (10 functions x 10 steps x batch 16; held-out MSE after the stream, "
                  "± s.e. over 100 test episodes):", "", *regression_rows(regression), ""]
    if classification:
        parts += ["CPU-sized continual Omniglot (held-out alphabets; accuracy after learning n classes, ± 95% "
                  "interval over 20 evaluation runs):", "", *classification_rows(classification), ""]
    text = "\n".join(parts)
    print(text)
    if args.page is not None:
        fill_page(args.page, "memory", text)


if __name__ == "__main__":
    main()
