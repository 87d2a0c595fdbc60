"""Tables and figures of the reproduction study from the suites' own output files.

Every number in docs/reproduction/ comes from here, read from the results.json files that
``metaplastic suite`` wrote and the analysis.json files of ``metaplastic analyze``: none is typed
in by hand.

    python scripts/repro_report.py SUITE_DIR [SUITE_DIR ...] --out docs/reproduction
        [--pairs "FLP-Oja:OML (corrected)" ...] [--analysis SUITE_DIR]

For each suite: ``<out>/<suite>/table.md`` (every cell: mean ± 95% t-interval over seeds, with
the per-seed values), validation MSE at fixed meta-steps, paired differences between learners
(the same seed gives every learner the same training and test episodes), wall times, and copies
of the suite's curves.png, validation.png and results.json. With ``--analysis``, the
interference measures of ``metaplastic analyze`` (in ``<run>/analysis/analysis.json``) averaged
over seeds (kept in ``<out>/<suite>/analysis_summary.json``).

Runs of one suite may be trained in several sessions or on several machines: when the committed
``<out>/<suite>/results.json`` has runs that SUITE_DIR lacks, the report keeps them (merged with
SUITE_DIR's, which win for the same run) and says so; ``--replace`` reports SUITE_DIR alone.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path
from typing import Any

from metaplastic.analysis.runner import summary as analysis_summary
from metaplastic.evaluation.aggregate import aggregate_runs, merge_runs, write_suite_outputs
from metaplastic.evaluation.classification import mean_ci95
from metaplastic.evaluation.report import write_json
from metaplastic.suite import estimated_train_seconds

ORDERS = ("continual", "iid")


def fmt(values: list[float], digits: int = 3, se: float | None = None) -> str:
    """Mean ± 95% t-interval (per-seed values); one seed: its value ± its s.e. over episodes."""
    if any(not math.isfinite(v) for v in values):
        return "diverged (" + ", ".join(f"{v:.{digits}f}" for v in values) + ")"
    mean, half = mean_ci95(values)
    per_seed = ", ".join(f"{v:.{digits}f}" for v in values)
    if len(values) < 2:
        return f"{mean:.{digits}f}" + (f" ± {se:.{digits}f} (s.e.)" if se is not None else "")
    return f"{mean:.{digits}f} ± {half:.{digits}f} ({per_seed})"


def suite_tables(suite_dir: Path, pairs: list[tuple[str, str]]) -> str:
    data = json.loads((suite_dir / "results.json").read_text())
    methods = data["summary"]["methods"]
    runs = data["runs"]
    first = next(iter(methods.values()))["last"]
    if "accuracy" in next(iter(first.values())):
        return classification_tables(data, pairs)
    lines = [f"### {data['suite']}", ""]
    lines += ["| learner | checkpoint | continual MSE | i.i.d. MSE | seeds |", "|---|---|---|---|---|"]
    for label, entry in methods.items():
        for which in ("last", "best", "untrained"):
            res = entry.get(which)
            if not res or "mse" not in next(iter(res.values())):
                continue
            name = {"last": "last", "best": "best by validation", "untrained": "untrained init"}[which]
            cells = [fmt(res[o]["mse"]["per_seed"], se=res[o]["mse"].get("se_episodes")) if o in res else "-"
                     for o in ORDERS]
            lines.append(f"| {label} | {name} | {cells[0]} | {cells[1]} | {len(entry['seeds'])} |")
    for name, ref in data["summary"].get("references", {}).items():
        cells = [f"{ref[o]['mse']:.3f} ± {ref[o]['mse_se']:.3f} (s.e., lr {ref[o]['lr']:g})" for o in ORDERS]
        lines.append(f"| {name} | - | {cells[0]} | {cells[1]} | - |")
    lines += ["", "Mean ± half-width of the 95% Student-t interval over seeds (per-seed values in brackets); "
              "each per-seed value is the MSE after the whole stream, averaged over the same 100 held-out "
              "test episodes. A one-seed cell gives its standard error over those episodes (s.e.).", ""]

    # forgetting profile: test MSE on each function after the whole continual stream
    profile = [(label, entry["last"]["continual"]["per_function_mse"]) for label, entry in methods.items()
               if "continual" in entry["last"] and "per_function_mse" in entry["last"]["continual"]]
    if profile:
        n_fn = len(profile[0][1])
        picks = sorted({0, 1, n_fn // 2, n_fn - 2, n_fn - 1})
        lines += ["Forgetting profile, continual order, last checkpoint: test MSE on function k (in the order "
                  "learned) after all functions:", "",
                  "| learner | " + " | ".join(f"function {k + 1}" for k in picks) + " |",
                  "|---|" + "---|" * len(picks)]
        for label, cells in profile:
            lines.append(f"| {label} | " + " | ".join(fmt(cells[k]["per_seed"], 2) for k in picks) + " |")
        lines.append("")

    # validation MSE against meta-step
    steps_all = None
    rows = []
    for label, entry in methods.items():
        curves = [c for c in entry["validation"] if c["step"]]
        if not curves:
            continue
        longest = max((c["step"] for entry_ in methods.values() for c in entry_["validation"]), key=len)
        marks = sorted({s for s in longest if s in (0, 250, 500, 1000, 1500, 2000, 2500)} | {longest[-1]})
        steps_all = steps_all or marks
        cells = []
        for s in steps_all:
            vals = [c["val/mse"][c["step"].index(s)] for c in curves if s in c["step"]]
            cells.append(fmt(vals, 2) if vals else "-")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    if rows and steps_all:
        lines += ["Validation MSE (20 fixed held-out episodes, the task's order) at meta-step:", ""]
        lines += ["| learner | " + " | ".join(str(s) for s in steps_all) + " |",
                  "|---|" + "---|" * len(steps_all)]
        lines += rows + [""]

    # paired differences
    by_key = {(r["label"], r["seed"]): r for r in runs.values()}
    if pairs:
        lines += ["Paired differences (same seed: same training and test episodes), last checkpoint, "
                  "negative = the first learner is better:", "",
                  "| difference | continual MSE | i.i.d. MSE |", "|---|---|---|"]
        for a, b in pairs:
            if a not in methods or b not in methods:
                continue
            cells = []
            for order in ORDERS:
                diffs = []
                for seed in methods[a]["seeds"]:
                    ra, rb = by_key.get((a, seed)), by_key.get((b, seed))
                    if ra and rb:
                        diffs.append(ra["last"]["trained"][order]["mse"] - rb["last"]["trained"][order]["mse"])
                cells.append(fmt(diffs) if diffs else "-")
            lines.append(f"| {a} − {b} | {cells[0]} | {cells[1]} |")
        lines.append("")

    lines += wall_time_table(methods, runs)
    lines.append("")
    return "\n".join(lines)


def wall_time_table(methods: dict[str, Any], runs: dict[str, Any]) -> list[str]:
    lines = ["Wall time per run in seconds (the `train` call of the session that trained it, validation "
              "included; diverged runs: mean logged seconds per meta-step x steps). Several runs shared the "
              "2-core machine at every moment (2 to 5 processes), so these are upper bounds of a run alone:", ""]
    lines += ["| learner | meta-steps (evaluated checkpoint) | diverged at meta-step | wall seconds per run "
              "(train + validation) | best validation at step |", "|---|---|---|---|---|"]
    records: dict[str, list[dict[str, Any]]] = {}
    for record in runs.values():
        records.setdefault(record["label"], []).append(record)
    for label, entry in methods.items():
        walls = []
        for record in records.get(label, []):
            wall = record.get("train_seconds_this_session", 0.0)
            if record.get("diverged"):  # resumed to record the divergence: per-step estimate instead
                wall = estimated_train_seconds(Path(record["run_dir"]) / "metrics.jsonl", record["step"])
            walls.append(f"{wall:.0f}")
        best = ", ".join(str(s) for s in entry.get("best_steps", [])) or "-"
        div = ", ".join("-" if s is None else str(s) for s in entry.get("diverged_at", [])) or "-"
        lines.append(f"| {label} | {', '.join(str(s) for s in entry['steps'])} | {div} | {', '.join(walls)} | {best} |")
    return lines


def classification_tables(data: dict[str, Any], pairs: list[tuple[str, str]]) -> str:
    """Accuracy vs classes learned per learner and checkpoint, the nearest-neighbour and prototype
    references on pixels and on each learner's own frozen features, the gap between a learner and
    1-NN on its features, validation accuracy over meta-steps, paired differences, wall times."""
    methods, runs = data["summary"]["methods"], data["runs"]
    first = next(iter(methods.values()))["last"]
    classes = first[next(iter(first))]["classes"]
    head = "| " + " | ".join(f"{n} classes" for n in classes) + " |"
    rule = "---|" * len(classes)
    lines = [f"### {data['suite']}", "", "Accuracy on held-out samples of every class learned, after the whole "
             "stream, at each number of classes learned:", "",
             "| learner | checkpoint | order " + head, "|---|---|---|" + rule]
    for label, entry in methods.items():
        for which in ("last", "best", "untrained"):
            res = entry.get(which)
            if not res:
                continue
            name = {"last": "last", "best": "best by validation", "untrained": "untrained init"}[which]
            for order in ORDERS:
                if order in res:
                    cells = [fmt(c["per_seed"]) for c in res[order]["accuracy"]]
                    lines.append(f"| {label} | {name} | {order} | " + " | ".join(cells) + " |")
    lines += ["", "Mean ± half-width of the 95% Student-t interval over seeds (per-seed values in brackets); "
              "each per-seed value is the mean over the same held-out test episodes (alphabets never seen "
              "in meta-training).", ""]

    lines += ["Non-plastic references on the same episodes (1-NN: nearest trajectory sample; prototypes: "
              "nearest class mean), on pixels and on each learner's own meta-trained frozen features:", "",
              "| features of | reference " + head, "|---|---|" + rule]
    pixels_done = False
    for label, entry in methods.items():
        for name, ref in entry.get("references", {}).items():
            if "pixels" in name:
                if pixels_done:
                    continue
                owner = "(pixels: the same for all)"
            else:
                owner = label
            cells = [fmt(c["per_seed"]) for c in ref["continual"]["accuracy"]]
            lines.append(f"| {owner} | {name} | " + " | ".join(cells) + " |")
        pixels_done = pixels_done or any("pixels" in n for n in entry.get("references", {}))
    lines.append("")

    by_key = {(r["label"], r["seed"]): r for r in runs.values()}
    gap_rows = []
    for label, entry in methods.items():
        cells = []
        for i in range(len(classes)):
            diffs = []
            for seed in entry["seeds"]:
                record = by_key.get((label, seed))
                refs = (record or {}).get("last", {}).get("references", {})
                nn = refs.get("1-NN on meta-trained features")
                if record and nn:
                    diffs.append(record["last"]["trained"]["continual"]["accuracy"][i] - nn["continual"]["accuracy"][i])
            cells.append(fmt(diffs) if diffs else "-")
        if any(c != "-" for c in cells):
            gap_rows.append(f"| {label} | " + " | ".join(cells) + " |")
    if gap_rows:
        lines += ["Learner (continual order) minus 1-NN on its own frozen features, paired by seed (negative: the "
                  "plastic layers use less of the features' information than a lookup table):", "",
                  "| learner " + head, "|---|" + rule, *gap_rows, ""]

    val_rows, marks = [], []
    longest = max((c["step"] for e in methods.values() for c in e["validation"]), key=len, default=[])
    if longest:
        stride = max(1, (len(longest) - 1) // 5)
        marks = sorted(set(longest[::stride]) | {longest[-1]})
    for label, entry in methods.items():
        curves = [c for c in entry["validation"] if c["step"]]
        if not curves:
            continue
        cells = []
        for step in marks:
            vals = [c["val/accuracy"][c["step"].index(step)] for c in curves if step in c["step"]]
            cells.append(fmt(vals) if vals else "-")
        val_rows.append(f"| {label} | " + " | ".join(cells) + " |")
    if val_rows:
        counts = [k.split("@")[1] for k in next(c for e in methods.values() for c in e["validation"] if c["step"])
                  if k.startswith("val/accuracy@")]
        lines += [f"Validation accuracy (held-out characters of the training alphabets, mean over "
                  f"{', '.join(counts)} classes) at meta-step:", "",
                  "| learner | " + " | ".join(str(m) for m in marks) + " |", "|---|" + "---|" * len(marks),
                  *val_rows, ""]

    if pairs:
        lines += ["Paired differences in accuracy (same seed: same training and test episodes), last checkpoint, "
                  "positive = the first learner is better:", "", "| difference | order " + head, "|---|---|" + rule]
        for a, b in pairs:
            if a not in methods or b not in methods:
                continue
            for order in ORDERS:
                cells = []
                for i in range(len(classes)):
                    diffs = [by_key[(a, s)]["last"]["trained"][order]["accuracy"][i]
                             - by_key[(b, s)]["last"]["trained"][order]["accuracy"][i]
                             for s in methods[a]["seeds"] if (a, s) in by_key and (b, s) in by_key]
                    cells.append(fmt(diffs) if diffs else "-")
                lines.append(f"| {a} − {b} | {order} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += wall_time_table(methods, runs)
    lines.append("")
    return "\n".join(lines)


ANALYSIS_ROWS = [
    ("alignment cos(dW, -g)", "alignment_cos"),
    ("interference on earlier tasks, exact (mean dL_i, i<j)", "interference"),
    ("same, SGD at matched update norm", "sgd_interference"),
    ("interference per unit |dW|", "interference_per_norm"),
    ("same, SGD at matched norm", "sgd_interference_per_norm"),
    ("own-task loss change dL_j", "own_loss_change"),
    ("interference per unit own-task decrease", "interference_per_learning"),
    ("update overlap cos(dW_i, dW_j)", "update_overlap_cos"),
    ("forgetting (final - just learned)", "forgetting"),
    ("final loss, all tasks", "final_loss"),
]


def analysis_summaries(suite_dir: Path, committed: Path | None = None) -> dict[str, Any]:
    """{run key: {"label", "seed", "episodes", "summary"}} of every analysed run: from the run's
    own ``analysis/analysis.json`` where it is on this machine, else from ``committed`` (the
    summaries a previous report kept beside the results, for runs trained elsewhere)."""
    kept = json.loads(committed.read_text()) if committed is not None and committed.is_file() else {}
    out: dict[str, Any] = {}
    for key, record in json.loads((suite_dir / "results.json").read_text())["runs"].items():
        path = Path(record["run_dir"]) / "analysis" / "analysis.json"
        if path.is_file():
            results = json.loads(path.read_text())
            out[key] = {"label": record["label"], "seed": record["seed"], "episodes": results.get("episodes"),
                        "summary": analysis_summary(results)}
        elif key in kept:
            out[key] = kept[key]
    return out


def analysis_table(summaries: dict[str, Any]) -> str:
    per_label: dict[str, list[dict[str, Any]]] = {}
    for entry in summaries.values():
        per_label.setdefault(entry["label"], []).append(entry["summary"])
    if not per_label:
        return ""
    labels = list(per_label)
    lines = ["| measure | " + " | ".join(f"{lab} ({len(per_label[lab])} seeds)" for lab in labels) + " |",
             "|---|" + "---|" * len(labels)]
    for name, key in ANALYSIS_ROWS:
        cells = []
        for lab in labels:
            vals = [s.get(key) for s in per_label[lab]]
            cells.append(fmt([float(v) for v in vals], 4) if vals and all(v is not None for v in vals) else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Mean ± 95% t-interval over seeds (per-seed values in brackets) of `metaplastic analyze` "
              "on each run's last checkpoint, continual held-out episodes.", ""]
    return "\n".join(lines)


def _records(dirs: list[Path]) -> dict[tuple[str, int], dict[str, Any]]:
    out = {}
    for d in dirs:
        for record in json.loads((d / "results.json").read_text())["runs"].values():
            out[(record["label"], record["seed"])] = record
    return out


def crossed_table(continual: list[Path], iid: list[Path], pairs: list[tuple[str, str]]) -> str:
    """Training order x test order per learner, and whether FLP's margin over OML is larger when
    both are meta-trained and tested on continual streams than on shuffled ones (claim 2)."""
    trained = {"continual": _records(continual), "iid": _records(iid)}
    in_both = {k[0] for k in trained["continual"]}
    labels = [lab for lab in dict.fromkeys(k[0] for k in trained["iid"]) if lab in in_both]
    seeds = sorted({k[1] for k in trained["iid"]})

    def mse(train_order: str, label: str, seed: int, test_order: str) -> float | None:
        record = trained[train_order].get((label, seed))
        return None if record is None else record["last"]["trained"][test_order]["mse"]

    lines = ["| learner | meta-trained on | tested continual | tested i.i.d. | seeds |", "|---|---|---|---|---|"]
    for label in labels:
        for train_order in ORDERS:
            cells, n = [], 0
            for test_order in ORDERS:
                vals = [v for v in (mse(train_order, label, s, test_order) for s in seeds) if v is not None]
                n = len(vals)
                cells.append(fmt(vals) if vals else "-")
            name = "continual streams" if train_order == "continual" else "shuffled (i.i.d.) streams"
            lines.append(f"| {label} | {name} | {cells[0]} | {cells[1]} | {n} |")
    lines += ["", "Every cell: MSE after the whole stream on the same 100 held-out test episodes, last checkpoint, "
              "mean ± 95% t-interval over seeds (per-seed values in brackets).", ""]
    if pairs:
        lines += ["Paired differences A − B, each learner tested in the order it was meta-trained on (negative = A "
                  "better); the last column is the continual margin minus the i.i.d. margin (negative = A's "
                  "advantage is larger on continual streams):", "",
                  "| difference | continual → continual | i.i.d. → i.i.d. | continual margin − i.i.d. margin |",
                  "|---|---|---|---|"]
        for a, b in pairs:
            cont, shuf, dd = [], [], []
            for s in seeds:
                va, vb = mse("continual", a, s, "continual"), mse("continual", b, s, "continual")
                wa, wb = mse("iid", a, s, "iid"), mse("iid", b, s, "iid")
                if None not in (va, vb):
                    cont.append(va - vb)
                if None not in (wa, wb):
                    shuf.append(wa - wb)
                if None not in (va, vb, wa, wb):
                    dd.append((va - vb) - (wa - wb))
            if cont or shuf:
                cells = [fmt(v) if v else "-" for v in (cont, shuf, dd)]
                lines.append(f"| {a} − {b} | {cells[0]} | {cells[1]} | {cells[2]} |")
        lines.append("")
    return "\n".join(lines)


def oneshot_table(suite_dir: Path) -> str:
    """Fixed one-shot episodes (``metaplastic evaluate RUN --episodes FILE --out RUN/oneshot``)
    per learner over seeds: the learner in both orders, 1-NN on pixels and on its own frozen
    features, and the learner minus 1-NN on its features, paired by seed."""
    data = json.loads((suite_dir / "results.json").read_text())
    per_label: dict[str, list[dict[str, Any]]] = {}
    source = ""
    for record in data["runs"].values():
        path = Path(record["run_dir"]) / "oneshot" / "evaluation.json"
        if path.is_file():
            report = json.loads(path.read_text())
            source = source or report.get("episodes_file", "")
            per_label.setdefault(record["label"], []).append(report["results"])
    if not per_label:
        return ""
    lines = ["| learner | seeds | continual | i.i.d. | 1-NN on pixels | 1-NN on its features | learner − 1-NN on its "
             "features |", "|---|---|---|---|---|---|---|"]
    info = None
    for label, reports in per_label.items():
        def acc(report: dict[str, Any], prefix: str, order: str = "continual") -> float:
            name = next(k for k in report if k.startswith(prefix))
            return report[name][order]["accuracy"]

        cont = [acc(r, f"{next(iter(r)).split(' meta-trained')[0]} meta-trained") for r in reports]
        iid = [acc(r, f"{next(iter(r)).split(' meta-trained')[0]} meta-trained", "iid") for r in reports]
        pixels = [acc(r, "1-NN on pixels") for r in reports]
        feats = [acc(r, "1-NN on meta-trained features") for r in reports]
        info = info or next(iter(reports[0].values()))["continual"]
        lines.append(f"| {label} | {len(reports)} | {fmt(cont)} | {fmt(iid)} | {fmt(pixels)} | {fmt(feats)} | "
                     f"{fmt([c - f for c, f in zip(cont, feats)])} |")
    assert info is not None
    lines += ["", f"{info['episodes']} fixed episodes ({info['classes'][0]}-way, {info['shots'][0]}-shot) from "
              f"`{Path(source).parent.name}/{Path(source).name}`; chance {info['chance']:.3f}; readout: "
              f"{info['readout']}; label map: {info['label_map']}. Mean ± 95% t-interval over seeds (per-seed "
              "values in brackets); 1-NN equals the class prototype at one shot.", ""]
    return "\n".join(lines)


def across_table(first: Path, second: Path, pairs: list[tuple[str, str]]) -> str:
    """Paired differences A − B (classification accuracy at every class count, or regression MSE)
    between a learner of one suite and a learner of another on the same seeds (same episodes)."""
    a_runs, b_runs = _records([first]), _records([second])
    sample = next(iter(a_runs.values()))["last"]["trained"]
    classification = "accuracy" in next(iter(sample.values()))
    counts = sample["continual"]["classes"] if classification else []
    head = " | ".join(f"{n} classes" for n in counts) if classification else "MSE"
    lines = [f"| difference ({first.name} − {second.name}) | order | {head} |",
             "|---|---|" + "---|" * max(1, len(counts))]
    for a, b in pairs:
        seeds = sorted(seed for (label, seed) in a_runs if label == a and (b, seed) in b_runs)
        if not seeds:
            continue
        for order in ORDERS:
            ra = [a_runs[(a, s)]["last"]["trained"][order] for s in seeds]
            rb = [b_runs[(b, s)]["last"]["trained"][order] for s in seeds]
            if classification:
                cells = [fmt([x["accuracy"][i] - y["accuracy"][i] for x, y in zip(ra, rb)]) for i in range(len(counts))]
            else:
                cells = [fmt([x["mse"] - y["mse"] for x, y in zip(ra, rb)])]
            lines.append(f"| {a} − {b} | {order} | " + " | ".join(cells) + " |")
    lines += ["", "Paired by seed (the same seed gives both the same training and test episodes); mean ± 95% "
              "t-interval (per-seed values in brackets); last checkpoints.", ""]
    return "\n".join(lines)


def width_table(narrow: Path, wide: Path) -> str:
    """Validation MSE at the meta-steps both suites validated, per learner and width, and the
    wide minus narrow difference paired by seed (same seeds: same validation episodes)."""
    def curves(suite: Path) -> dict[tuple[str, int], dict[int, float]]:
        out = {}
        for record in json.loads((suite / "results.json").read_text())["runs"].values():
            c = record.get("validation_curve", {})
            out[(record["label"], record["seed"])] = dict(zip(c.get("step", []), c.get("val/mse", [])))
        return out

    small, big = curves(narrow), curves(wide)
    labels = list(dict.fromkeys(label for label, _ in big if any(k[0] == label for k in small)))
    steps = sorted(set.intersection(*(set(v) for k, v in big.items() if k[0] in labels),
                                    *(set(v) for k, v in small.items() if k[0] in labels)))
    lines = ["| learner | width | " + " | ".join(f"meta-step {s}" for s in steps) + " |",
             "|---|---|" + "---|" * len(steps)]
    for label in labels:
        seeds = sorted(seed for (lab, seed) in big if lab == label and (lab, seed) in small)
        for name, table in (("64", small), ("300", big)):
            cells = [fmt([table[(label, seed)][s] for seed in seeds], 2) for s in steps]
            lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
        diffs = [fmt([big[(label, seed)][s] - small[(label, seed)][s] for seed in seeds], 2) for s in steps]
        lines.append(f"| {label} | 300 − 64 (paired) | " + " | ".join(diffs) + " |")
    lines += ["", "Validation MSE on the same 20 fixed held-out episodes (same seeds), mean ± 95% t-interval over "
              "seeds (per-seed values in brackets).", ""]
    return "\n".join(lines)


def budget_table(shorts: list[Path], long: Path, episodes: list[int]) -> str:
    """Validation MSE against meta-training episodes (meta-steps x meta-batch) for the learners of
    two suites that differ in budget and meta-batch: the same seeds validate on the same
    episodes, so the columns compare the two budgets at equal numbers of episodes seen."""
    def curves(suite: Path) -> tuple[dict[tuple[str, int], dict[int, float]], dict[str, int]]:
        out, batch = {}, {}
        for record in json.loads((suite / "results.json").read_text())["runs"].values():
            c = record.get("validation_curve", {})
            per_step = record["config"]["meta"]["meta_batch"]
            batch[record["label"]] = per_step
            out[(record["label"], record["seed"])] = {s * per_step: v for s, v in zip(c.get("step", []),
                                                                                     c.get("val/mse", []))}
        return out, batch

    big, big_batch = curves(long)
    labels = list(dict.fromkeys(label for label, _ in big))
    short_of = {}
    for short in shorts:
        table, batch = curves(short)
        for label in batch:
            short_of.setdefault(label, (short, table, batch))
    lines = ["| learner | budget | " + " | ".join(f"{e:,} episodes" for e in episodes) + " |",
             "|---|---|" + "---|" * len(episodes)]
    for label in labels:
        for suite, table, batch in ([short_of[label]] if label in short_of else []) + [(long, big, big_batch)]:
            seeds = sorted(seed for (lab, seed) in table if lab == label)
            if not seeds:
                continue
            cells = [fmt([table[(label, s)][e] for s in seeds], 3)
                     if all(e in table[(label, s)] for s in seeds) else "-" for e in episodes]
            lines.append(f"| {label} | {suite.name} (meta-batch {batch[label]}, {len(seeds)} seeds) | "
                         + " | ".join(cells) + " |")
    lines += ["", "Validation MSE on the same 20 fixed held-out episodes, mean ± 95% t-interval over seeds "
              "(per-seed values in brackets; one seed: its value); '-': not reached by that budget.", ""]
    return "\n".join(lines)


def fill_page(page: Path, suite: str, text: str) -> None:
    """Replace the page's block for ``suite`` (between its markers) with ``text``."""
    begin, end = f"<!-- table:{suite} -->", "<!-- end -->"
    content = page.read_text()
    if begin not in content:
        return
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    page.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/reproduction"))
    parser.add_argument("--pairs", nargs="*", default=[], help="'A:B' learner pairs for paired differences")
    parser.add_argument("--analysis", nargs="*", type=Path, default=[], help="suites whose runs were analysed")
    parser.add_argument("--oneshot", nargs="*", type=Path, default=[],
                        help="suites whose runs were scored on fixed one-shot episodes (<run>/oneshot/evaluation.json)")
    parser.add_argument("--page", type=Path, help="a markdown page whose <!-- table:SUITE --> ... <!-- end --> "
                        "blocks are replaced by the generated tables")
    parser.add_argument("--crossed", nargs=2, metavar=("CONTINUAL_DIRS", "IID_DIRS"),
                        help="comma-separated suite folders meta-trained on continual and on i.i.d. streams: "
                        "writes <out>/crossed.md (block 'crossed' of --page)")
    parser.add_argument("--across", nargs=2, metavar=("SUITE_A", "SUITE_B"), type=Path,
                        help="--pairs 'A:B' with A from SUITE_A and B from SUITE_B: writes <out>/<SUITE_A>_vs_"
                        "<SUITE_B>.md (block '<SUITE_A>_vs_<SUITE_B>' of --page)")
    parser.add_argument("--width", nargs=2, metavar=("NARROW_SUITE", "WIDE_SUITE"), type=Path,
                        help="two suites of the same learners at two widths: writes <out>/width.md (block 'width')")
    parser.add_argument("--budget", nargs=2, metavar=("SHORT_SUITES", "LONG_SUITE"),
                        help="comma-separated suites and one suite of the same learners at a longer budget: "
                        "validation against episodes, "
                        "writes <out>/budget.md (block 'budget')")
    parser.add_argument("--episodes", default="0,2000,4000,8000,12000,16000,20000",
                        help="episode counts of the --budget table (comma-separated)")
    parser.add_argument("--block", help="name of the --width table's file and page block (default 'width')")
    parser.add_argument("--replace", action="store_true",
                        help="report only the runs in SUITE_DIR, dropping runs only in the committed results.json")
    args = parser.parse_args()
    pairs = [tuple(p.split(":", 1)) for p in args.pairs]
    if args.budget:
        shorts = [Path(d) for d in args.budget[0].split(",")]
        text = budget_table(shorts, Path(args.budget[1]), [int(e) for e in args.episodes.split(",")])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "budget.md").write_text(text)
        if args.page is not None:
            fill_page(args.page, "budget", text)
        print(f"wrote {args.out / 'budget.md'}")
    if args.across:
        name = f"{args.across[0].name}_vs_{args.across[1].name}"
        text = across_table(*args.across, pairs)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{name}.md").write_text(text)
        if args.page is not None:
            fill_page(args.page, name, text)
        print(f"wrote {args.out / name}.md")
        pairs = []  # used up: the suites below get none
    if args.width:
        text = width_table(*args.width)
        name = args.block or "width"
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{name}.md").write_text(text)
        if args.page is not None:
            fill_page(args.page, name, text)
        print(f"wrote {args.out / name}.md")
    if args.crossed:
        cont, iid = ([Path(d) for d in group.split(",")] for group in args.crossed)
        text = crossed_table(cont, iid, pairs)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "crossed.md").write_text(text)
        if args.page is not None:
            fill_page(args.page, "crossed", text)
        print(f"wrote {args.out / 'crossed.md'}")
    for suite_dir in args.suites:
        target = args.out / suite_dir.name
        target.mkdir(parents=True, exist_ok=True)
        source = merge_committed(suite_dir, target) if not args.replace else suite_dir
        text = suite_tables(source, pairs)
        if suite_dir in args.analysis:
            summaries = analysis_summaries(source, target / "analysis_summary.json")
            write_json(target / "analysis_summary.json", summaries)
            text += "\n#### Interference (metaplastic analyze)\n\n" + analysis_table(summaries)
        if suite_dir in args.oneshot:
            text += "\n#### Fixed one-shot episodes on the held-out alphabets\n\n" + oneshot_table(source)
        (target / "table.md").write_text(text)
        if args.page is not None:
            fill_page(args.page, suite_dir.name, text)
        if source == suite_dir:
            for name in ("curves.png", "validation.png", "results.json", "table.txt"):
                if (suite_dir / name).is_file():
                    shutil.copyfile(suite_dir / name, target / name)
        print(f"wrote {target / 'table.md'}")


def merge_committed(suite_dir: Path, target: Path) -> Path:
    """The folder to report from: ``suite_dir`` itself, or ``target`` rewritten with the union of
    the runs in ``suite_dir`` and those only in the committed ``target/results.json`` (seeds
    trained in an earlier session or on another machine), so a report never drops a run."""
    if target.resolve() == suite_dir.resolve() or not (target / "results.json").is_file():
        return suite_dir
    fresh = json.loads((suite_dir / "results.json").read_text())
    committed = json.loads((target / "results.json").read_text())
    only_committed = [key for key in committed["runs"] if key not in fresh["runs"]]
    if not only_committed:
        return suite_dir
    runs = merge_runs(committed["runs"], fresh["runs"])
    references = fresh["summary"].get("references") or committed["summary"].get("references", {})
    write_suite_outputs(target, fresh["suite"], runs, aggregate_runs(runs, references), log=lambda *_: None)
    print(f"kept {len(only_committed)} run(s) of the committed {target / 'results.json'} that "
          f"{suite_dir} does not have: {', '.join(only_committed)} (--replace drops them)")
    return target


if __name__ == "__main__":
    main()
