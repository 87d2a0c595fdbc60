"""The end of a sweep: trials sorted by the metric, the best point as a config, one plot.

Built from the trials' own records (``sweep_trial.json`` in every run folder), so resuming,
re-running or summarising a sweep copied from a cluster give the same table. A point's value
is the mean over its seeds of each trial's metric at its last validation (what Ray's scheduler
and searcher saw); a trial stopped early by ASHA counts with the value it was stopped at and is
marked, a diverged one counts as the worst value.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from metaplastic.evaluation.report import save_figure, write_json
from metaplastic.meta.checkpoint import atomic_write_text
from metaplastic.sweep.spec import Sweep
from metaplastic.sweep.trial import RECORD, read_record

TABLE, TRIALS, BEST, FIGURE = "table.md", "trials.json", "best_config.yaml", "metric_vs_keys.png"


def collect(trials_dir: Path) -> list[dict[str, Any]]:
    """Every readable trial record under ``trials_dir`` (sorted by folder: stable)."""
    records = []
    for path in sorted(trials_dir.glob(f"*/*/{RECORD}")):
        record = read_record(path)
        if record is not None and "params" in record:
            records.append(record)
    return records


def trial_value(record: dict[str, Any], mode: str) -> float:
    if record.get("diverged") is not None or not record["validation"]:
        return math.inf if mode == "min" else -math.inf
    return float(record["validation"][-1][1])


def points(records: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """One row per point of the space: its trials' values, their mean, sorted best first."""
    rows: dict[str, dict[str, Any]] = {}
    for r in records:
        key = json.dumps(r["params"], sort_keys=True, default=str)
        row = rows.setdefault(key, {"params": r["params"], "seeds": [], "values": [], "stopped": 0, "diverged": 0})
        row["seeds"].append(r["seed"])
        row["values"].append(trial_value(r, mode))
        row["stopped"] += int(r.get("step", 0) < r["steps"] and r.get("diverged") is None)
        row["diverged"] += int(r.get("diverged") is not None)
    out = []
    for row in rows.values():
        finite = [v for v in row["values"] if math.isfinite(v)]
        row["mean"] = sum(row["values"]) / len(row["values"]) if len(finite) == len(row["values"]) else \
            (math.inf if mode == "min" else -math.inf)
        out.append(row)
    out.sort(key=lambda r: r["mean"] if mode == "min" else -r["mean"])
    return out


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_table(sweep: Sweep, rows: list[dict[str, Any]]) -> str:
    keys = list(sweep.keys)
    head = ["rank", *keys, f"{sweep.metric} (mean over seeds)", "per seed", "stopped early", "diverged"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows, 1):
        per_seed = ", ".join(f"{s}: {_fmt(v)}" for s, v in sorted(zip(r["seeds"], r["values"])))
        cells = [str(i), *(_fmt(r["params"].get(k)) for k in keys), _fmt(r["mean"]), per_seed,
                 str(r["stopped"]), str(r["diverged"])]
        lines.append("| " + " | ".join(cells) + " |")
    better = "lower" if sweep.mode == "min" else "higher"
    return (f"sweep {sweep.name}: {len(rows)} points, metric {sweep.metric} at each trial's last validation "
            f"({better} is better)\n\n" + "\n".join(lines))


def plot(sweep: Sweep, records: list[dict[str, Any]], rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sweep.dimensions
    fig, axes = plt.subplots(1, len(dims), figsize=(4 * len(dims), 3.4), squeeze=False)
    for ax, dim in zip(axes[0], dims):
        categorical = not dim.is_range and not all(isinstance(v, (int, float)) for v in dim.values)
        labels = [str(v) for v in dim.values]

        def x_of(value: Any, dim: Any = dim, categorical: bool = categorical, labels: list[str] = labels) -> float:
            return float(labels.index(str(value))) if categorical else float(value)

        xs = [x_of(r["params"][dim.key]) for r in records if math.isfinite(trial_value(r, sweep.mode))]
        ys = [trial_value(r, sweep.mode) for r in records if math.isfinite(trial_value(r, sweep.mode))]
        ax.scatter(xs, ys, s=14, alpha=0.5, label="trial")
        mean = [(x_of(r["params"][dim.key]), r["mean"]) for r in rows if math.isfinite(r["mean"])]
        if mean:
            ax.scatter(*zip(*mean), marker="x", color="k", label="mean over seeds")
        if categorical:
            ax.set_xticks(range(len(labels)), labels)
        elif dim.kind == "loguniform" or (min(dim.values) > 0 and max(dim.values) / min(dim.values) >= 10):
            ax.set_xscale("log")
        ax.set_xlabel(dim.key)
        ax.set_ylabel(sweep.metric)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{sweep.name}: {sweep.metric} against each swept key", fontsize=9)
    save_figure(fig, path)


def best_config(sweep: Sweep, row: dict[str, Any]) -> dict[str, Any]:
    """The base config with the best point's values (the base config's seed, no run folder)."""
    from metaplastic.config import load_config
    from metaplastic.sweep.spec import point_overrides

    cfg = load_config(sweep.base_path, [*sweep.overrides, *point_overrides(row["params"])])
    data = cfg.to_dict()
    data["out_dir"] = None
    return data


def _previous_invocations(path: Path) -> list[dict[str, Any]]:
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict):
        return []
    if isinstance(old.get("invocations"), list):
        return list(old["invocations"])
    return [{"seconds": old["seconds"]}] if isinstance(old.get("seconds"), (int, float)) else []


def summarize(sweep: Sweep, out_dir: Path, seconds: float | None = None) -> dict[str, Any]:
    from metaplastic.sweep.runner import TRIALS_DIR

    records = collect(out_dir / TRIALS_DIR)
    rows = points(records, sweep.mode)
    table = format_table(sweep, rows)
    print(table)
    atomic_write_text(out_dir / TABLE, table + "\n")
    invocations = _previous_invocations(out_dir / TRIALS) + ([{"seconds": seconds}] if seconds is not None else [])
    summary = {"sweep": sweep.name, "metric": sweep.metric, "mode": sweep.mode, "trials": len(records),
               "invocations": invocations, "points": rows}  # invocations: wall seconds of each start and resume
    write_json(out_dir / TRIALS, summary)
    if rows and math.isfinite(rows[0]["mean"]):
        text = f"# best point of sweep {sweep.name} by {sweep.metric} ({_fmt(rows[0]['mean'])})\n"
        atomic_write_text(out_dir / BEST, text + yaml.safe_dump(best_config(sweep, rows[0]), sort_keys=False))
    if records:
        plot(sweep, records, rows, out_dir / FIGURE)
    print(f"wrote {out_dir / TABLE}, {out_dir / TRIALS}, {out_dir / BEST} and {out_dir / FIGURE}")
    return summary
