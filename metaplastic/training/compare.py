"""The rule comparison (Bartunov et al. 2018 style) on data available offline.

Every rule of the config trains (no meta-learning) the same MLP from the same seeded init with
the same budget (epochs x minibatch size) on every dataset; a linear model (softmax
regression trained by SGD, i.e. backprop without hidden layers) gives the floor. Output: a
table of final train/test error per rule and dataset, ``results.json`` and a PNG of the
learning curves. Labels say which rules give the last hidden layer true backprop.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metaplastic.config import _read_yaml, apply_overrides
from metaplastic.config_utils import build_dataclass, check_finite_numbers, to_plain
from metaplastic.data.arrays import ARRAY_DATASETS, check_dataset_options, load_array_dataset
from metaplastic.errors import ConfigError, DivergenceError
from metaplastic.evaluation.checkpoint_eval import rule_label
from metaplastic.evaluation.report import write_json
from metaplastic.meta.checkpoint import atomic_write_text, check_output_folder
from metaplastic.networks import MLP
from metaplastic.rules import BackwardPathRule, Rule, build_rule
from metaplastic.training.fit import fit_rule

LINEAR = "linear (softmax regression, SGD)"


@dataclass(frozen=True)
class CompareConfig:
    name: str = "compare"
    seed: int = 0
    datasets: tuple[str, ...] = ("mnist1d", "digits")
    dataset_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "tanh"
    epochs: int = 40
    batch_size: int = 32
    linear_lr: float = 0.2
    rules: tuple[dict[str, Any], ...] = ({"name": "bp"},)
    out_dir: str | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if not self.datasets or not self.rules:
            raise ConfigError("a comparison needs at least one dataset and one rule")
        for d in (*self.datasets, *self.dataset_options):
            if d not in ARRAY_DATASETS:
                raise ConfigError(f"unknown dataset '{d}' (known: {', '.join(sorted(ARRAY_DATASETS))})")
        check_finite_numbers(to_plain(self))
        if not self.linear_lr > 0:
            raise ConfigError(f"linear_lr must be > 0, got {self.linear_lr}")
        for d, options in self.dataset_options.items():
            if not isinstance(options, dict):
                raise ConfigError(f"dataset_options.{d} must be a mapping of loader options, got {options!r}")
            check_dataset_options(d, options)
        MLP.build([1, *self.hidden, 1], self.activation)
        labels = [label for label, _ in self.built_rules()]
        if len(set(labels)) != len(labels):
            raise ConfigError("two rules of the comparison have the same label: give one a 'label'")

    def built_rules(self) -> list[tuple[str, Rule]]:
        """(label, rule) per entry of ``rules``; an entry may carry its own ``label``."""
        out = []
        for i, spec in enumerate(self.rules):
            if not isinstance(spec, dict):
                raise ConfigError(f"rules[{i}] must be a mapping with a 'name'")
            spec = copy.deepcopy(spec)
            label = spec.pop("label", None)
            rule = build_rule(spec)
            out.append((str(label) if label is not None else rule_label(rule), rule))
        return out

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name


def load_compare_config(path: str | Path, overrides: list[str] | None = None) -> CompareConfig:
    data = apply_overrides(_read_yaml(Path(path)), overrides or [])
    data.setdefault("name", Path(path).stem)
    return build_dataclass(CompareConfig, data, "")


def run_compare(cfg: CompareConfig, progress: bool = True) -> dict[str, dict[str, dict[str, Any]]]:
    """results[dataset][label] = {train_error, test_error, curve: {epochs, train_error, test_error}, seconds}."""
    torch.set_num_threads(1)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for dataset in cfg.datasets:
        data = load_array_dataset(dataset, **cfg.dataset_options.get(dataset, {}))
        sizes = [data.n_features, *cfg.hidden, data.n_classes]
        runs = [(LINEAR, MLP.build([data.n_features, data.n_classes]), BackwardPathRule("bp", lr_init=cfg.linear_lr))]
        runs += [(label, MLP.build(sizes, cfg.activation), rule) for label, rule in cfg.built_rules()]
        results[dataset] = {}
        for label, net, rule in runs:
            try:
                fit = fit_rule(net, rule, data, cfg.epochs, cfg.batch_size, cfg.seed)
                res = {
                    "train_error": fit.train_error[-1],
                    "test_error": fit.test_error[-1],
                    "curve": {"epochs": fit.epochs, "train_error": fit.train_error, "test_error": fit.test_error},
                    "seconds": fit.seconds,
                }
            except DivergenceError as e:
                res = {"train_error": math.nan, "test_error": math.nan, "diverged": str(e)}
            results[dataset][label] = res
            if progress:
                print(f"{dataset:>8}  {label:<36} train {_pct(res['train_error'])}  test {_pct(res['test_error'])}",
                      file=sys.stderr, flush=True)
    return results


def _pct(v: float) -> str:
    return f"{100 * v:6.2f}%" if math.isfinite(v) else "diverged"


def format_compare_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown table: one row per rule, train and test error (%) per dataset."""
    datasets = list(results)
    labels = list(dict.fromkeys(label for d in datasets for label in results[d]))
    header = ["rule", *[f"{d} {s} error" for d in datasets for s in ("train", "test")]]
    rows = [header, ["---"] * len(header)]
    for label in labels:
        row = [label]
        for d in datasets:
            r = results[d].get(label)
            row += [_pct(r["train_error"]).strip(), _pct(r["test_error"]).strip()] if r else ["-", "-"]
        rows.append(row)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def plot_compare(results: dict[str, dict[str, dict[str, Any]]], path: Path, title: str = "") -> None:
    """Test (solid) and train (dashed) error against epochs, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results) + 3.0, 4.5), squeeze=False)
    labels = list(dict.fromkeys(label for res in results.values() for label in res))
    colours = {label: plt.get_cmap("tab20")(i % 20) for i, label in enumerate(labels)}
    for ax, (dataset, res) in zip(axes[0], results.items()):
        for label, r in res.items():
            if "curve" not in r:
                continue
            c = r["curve"]
            ax.plot(c["epochs"], [100 * v for v in c["test_error"]], label=label, color=colours[label])
            ax.plot(c["epochs"], [100 * v for v in c["train_error"]], ls="--", color=colours[label], alpha=0.5)
        ax.set_title(f"{dataset} (solid: test, dashed: train)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("error (%)")
        ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=7, loc="center right")
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1 - 2.8 / fig.get_figwidth(), 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(cfg: CompareConfig, progress: bool = True) -> tuple[str, dict[str, Any]]:
    """Run the comparison and write results.json, table.md and learning_curves.png to run_dir."""
    check_output_folder(cfg.run_dir)  # before minutes of training, not after
    results = run_compare(cfg, progress)
    table = format_compare_table(results)
    out = cfg.run_dir
    out.mkdir(parents=True, exist_ok=True)
    budget = f"{cfg.epochs} epochs, minibatch {cfg.batch_size}, MLP hidden {list(cfg.hidden)} {cfg.activation}"
    write_json(out / "results.json", {"config": to_plain(cfg), "budget": budget, "results": results})
    atomic_write_text(out / "table.md", table + "\n")
    plot_compare(results, out / "learning_curves.png", title=f"{cfg.name}: {budget}")
    return table, results

