"""A suite's runs summarised over seeds: tables with 95% intervals, curves, validation plots.

For every method (suite label) and checkpoint (last; best by meta-validation where the runs were
validated), the seed is the unit of replication: a cell is the mean over seeds of each run's
result (MSE after the whole stream, or accuracy at each class count, each itself a mean over the
same held-out episodes) with the half-width of the 95% Student-t interval over seeds (nan for
one seed). The untrained rows are the same methods from their initial meta-parameters.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from metaplastic.evaluation.classification import mean_ci95
from metaplastic.evaluation.report import save_figure, write_json

ORDERS = ("continual", "iid")


def _is_classification(result: dict[str, Any]) -> bool:
    return "accuracy" in next(iter(result.values()))


def _cell(values: list[float], se: list[float] | None = None) -> dict[str, Any]:
    """Mean and 95% t-interval over seeds; one seed keeps its standard error over episodes."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):
        return {"per_seed": values, "mean": float("nan"), "ci95": float("nan"), "n": len(values), "diverged": True}
    mean, half = mean_ci95(values)
    cell = {"per_seed": values, "mean": mean, "ci95": half, "n": len(values)}
    if se is not None and len(values) == 1:
        cell["se_episodes"] = se[0]
    return cell


def _summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per order: the final metric and the curve (after each function / at each class count) over seeds."""
    out: dict[str, Any] = {}
    classification = _is_classification(results[0])
    for order in ORDERS:
        rows = [r[order] for r in results if order in r]
        if not rows:
            continue
        if classification:
            classes = rows[0]["classes"]
            out[order] = {
                "classes": classes,
                "accuracy": [_cell([r["accuracy"][i] for r in rows]) for i in range(len(classes))],
            }
        else:
            n_points = len(rows[0]["curve"])
            out[order] = {
                "mse": _cell([r["mse"] for r in rows], [r["mse_se"] for r in rows]),
                "curve": [_cell([r["curve"][k] for r in rows]) for k in range(n_points)],
                "per_function_mse": [_cell([r["per_function_mse"][f] for r in rows])
                                     for f in range(len(rows[0]["per_function_mse"]))],
            }
    return out


def _train_seconds(record: dict[str, Any]) -> float:
    """Meta-training seconds of a run, from its metrics file when it is there."""
    from metaplastic.suite import estimated_train_seconds

    path = Path(record["run_dir"]) / "metrics.jsonl"
    return estimated_train_seconds(path, record["step"]) if path.is_file() else record["train_seconds_total"]


def aggregate_runs(records: dict[str, dict[str, Any]], references: dict[str, Any]) -> dict[str, Any]:
    """{"methods": {label: {"last", "best"?, "untrained"?, "validation", "seeds"}}, "references"}."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for record in records.values():
        by_label.setdefault(record["label"], []).append(record)
    methods: dict[str, Any] = {}
    for label, recs in by_label.items():
        entry: dict[str, Any] = {
            "seeds": [r["seed"] for r in recs],
            "steps": [r["step"] for r in recs],
            "train_seconds": [_train_seconds(r) for r in recs],
            "diverged_at": [(r.get("diverged") or {}).get("step") for r in recs],
            "last": _summarise([r["last"]["trained"] for r in recs]),
        }
        if all("best" in r for r in recs):
            entry["best"] = _summarise([r["best"]["trained"] for r in recs])
            entry["best_steps"] = [r["best"]["validation"]["step"] for r in recs]
        if all("untrained" in r["last"] for r in recs):
            entry["untrained"] = _summarise([r["last"]["untrained"] for r in recs])
        for name in recs[0]["last"].get("references", {}):
            if all(name in r["last"].get("references", {}) for r in recs):
                entry.setdefault("references", {})[name] = _summarise([r["last"]["references"][name] for r in recs])
        entry["validation"] = [r["validation_curve"] for r in recs]
        methods[label] = entry
    return {"methods": methods, "references": references}


def merge_runs(*record_sets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One suite's run records gathered from several folders (runs of one suite trained in
    different sessions or on different machines): a later set wins for the same run; the
    result is ordered by learner (first appearance) and seed, so the summary does not depend
    on which session trained which seed."""
    merged: dict[str, dict[str, Any]] = {}
    for records in record_sets:
        merged.update(records)
    rank = {label: i for i, label in enumerate(dict.fromkeys(r["label"] for r in merged.values()))}

    def order(item: tuple[str, dict[str, Any]]) -> tuple[int, float]:
        seed = item[1]["seed"]
        return rank[item[1]["label"]], -1.0 if seed is None else float(seed)

    return dict(sorted(merged.items(), key=order))


def _fmt(cell: dict[str, Any], digits: int = 3) -> str:
    if cell.get("diverged"):
        return "diverged"
    if cell["n"] < 2 or not math.isfinite(cell["ci95"]):
        if "se_episodes" in cell:
            return f"{cell['mean']:.{digits}f} ± {cell['se_episodes']:.{digits}f} (se)"
        return f"{cell['mean']:.{digits}f}"
    return f"{cell['mean']:.{digits}f} ± {cell['ci95']:.{digits}f}"


def format_summary(summary: dict[str, Any]) -> str:
    """One row per method and checkpoint: mean ± 95% CI over seeds (n seeds in the last column)."""
    rows: list[tuple[str, list[str], str]] = []
    header: list[str] = []
    shown: set[str] = set()  # references on raw inputs are the same for every method: one row
    for label, entry in summary["methods"].items():
        variants = [(f"{label} (last)", entry.get("last")), (f"{label} (best by validation)", entry.get("best")),
                    (f"{label} untrained init", entry.get("untrained"))]
        for name, res in entry.get("references", {}).items():
            if "features" in name:
                variants.append((f"{name} ({label}'s features)", res))
            elif name not in shown:
                shown.add(name)
                variants.append((name, res))
        for name, res in variants:
            if not res:
                continue
            cells = []
            if any("accuracy" in res[o] for o in res):
                for order in ORDERS:
                    if order in res:
                        if not header or len(header) < 2 * len(res[order]["classes"]):
                            header = [f"{o} acc@{c}" for o in ORDERS if o in res for c in res[o]["classes"]]
                        cells += [_fmt(c) for c in res[order]["accuracy"]]
            else:
                header = [f"{o} MSE" for o in ORDERS]
                cells = [_fmt(res[o]["mse"]) if o in res else "-" for o in ORDERS]
            rows.append((name, cells, str(len(entry["seeds"]))))
        if any(s is not None for s in entry.get("diverged_at", [])):
            at = ", ".join("-" if s is None else str(s) for s in entry["diverged_at"])
            steps = ", ".join(str(s) for s in entry["steps"])
            rows.append((f"  ({label}: diverged at meta-step {at}; evaluated at {steps})", [""] * len(header), ""))
    for name, ref in summary.get("references", {}).items():
        lr = "/".join(f"{ref[o]['lr']:g}" for o in ORDERS if o in ref)
        rows.append((f"{name} (lr {lr})", [f"{ref[o]['mse']:.3f} ± {ref[o]['mse_se']:.3f} (se)" for o in ORDERS], "-"))
    width = max([len("method")] + [len(r[0]) for r in rows])
    cols = [max([len(h)] + [len(r[1][i]) for r in rows if i < len(r[1])]) for i, h in enumerate(header)]
    line = f"{'method':<{width}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(header, cols)) + "  seeds"
    out = [line, "-" * len(line)]
    for name, cells, n in rows:
        out.append(f"{name:<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, cols)) + f"  {n:>5}")
    out.append(
        "(several seeds: mean ± half-width of the 95% Student-t interval over seeds; one seed and the references: "
        "± standard error over episodes (se))"
    )
    return "\n".join(out)


def plot_validation(summary: dict[str, Any], path: Path, title: str = "") -> bool:
    """The validation metric against meta-step, every method on one plot (mean over seeds, band:
    min to max over seeds). False when no run was validated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    drew, metric = False, ""
    for label, entry in summary["methods"].items():
        curves = [c for c in entry["validation"] if len(c["step"]) > 0]
        if not curves:
            continue
        metric = next(k for k in curves[0] if k.startswith("val/") and "@" not in k)
        n = min(len(c["step"]) for c in curves)
        steps = curves[0]["step"][:n]
        values = [[c[metric][i] for c in curves] for i in range(n)]
        mean = [sum(v) / len(v) for v in values]
        (line,) = ax.plot(steps, mean, label=f"{label} ({len(curves)} seeds)")
        ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], color=line.get_color(), alpha=0.2)
        drew = True
    if not drew:
        plt.close(fig)
        return False
    ax.set_xlabel("meta-step")
    ax.set_ylabel(metric.replace("val/", "validation "))
    if metric.endswith("mse"):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    save_figure(fig, path)
    return True


def plot_seed_curves(summary: dict[str, Any], path: Path, title: str = "") -> None:
    """MSE on functions learned so far vs functions learned (regression), or accuracy vs classes
    learned (classification), mean over seeds with 95% intervals, at the last checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    classification = False
    for ax, order in zip(axes, ORDERS):
        for label, entry in summary["methods"].items():
            res = entry["last"].get(order)
            if not res:
                continue
            if "accuracy" in res:
                classification = True
                xs, cells = res["classes"], res["accuracy"]
            else:
                cells = res["curve"]
                xs = list(range(1, len(cells) + 1))
            mean = [c["mean"] for c in cells]
            err = [c["ci95"] if math.isfinite(c["ci95"]) else 0.0 for c in cells]
            ax.errorbar(xs, mean, yerr=err, marker="o", ms=3, capsize=3, label=label)
        ax.set_title(order)
        ax.set_xlabel("classes learned" if classification else "functions learned")
        if classification:
            ax.set_xscale("log")
        else:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy on held-out samples" if classification else "MSE on functions learned so far")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def write_suite_outputs(out: Path, name: str, records: dict[str, Any], summary: dict[str, Any], log=print) -> None:
    table = format_summary(summary)
    log("")
    log(table)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {"suite": name, "summary": summary, "runs": records})
    (out / "table.txt").write_text(table + "\n")
    plot_seed_curves(summary, out / "curves.png", title=name)
    written = [out / "results.json", out / "table.txt", out / "curves.png"]
    if plot_validation(summary, out / "validation.png", title=f"{name}: meta-validation"):
        written.append(out / "validation.png")
    log("\nwrote " + ", ".join(str(p) for p in written))
