"""Continual classification: accuracy on held-out samples of all classes learned, vs their number.

For every N in ``eval.classes`` and both orders, ``eval.episodes`` independent lifetimes each
learn N unseen classes (test split) from their k shots, then classify the query samples of all
N classes (argmax over every output unit, or with ``eval.readout: episode_units`` over the units
of the episode's classes; ``eval.label_map`` says which units those are). Continual and i.i.d.
use the same generator seed, so they see the same classes, samples and labels and differ only in presentation order. The
interval is the 95% Student-t confidence interval of the mean over lifetimes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metaplastic.meta.experiment import Experiment, seeded_generator
from metaplastic.meta.plastic_conv import plastic_conv_lifetime, plastic_conv_outputs
from metaplastic.tasks import Episodes
from metaplastic.tasks.classification import ORDERS


def is_classification(experiment: Experiment) -> bool:
    return getattr(experiment.task, "name", None) == "classification"


@torch.no_grad()
def episode_accuracy(
    experiment: Experiment, meta: dict[str, Tensor], episodes: Episodes, readout: str = "all_units"
) -> Tensor:
    """Per-episode accuracy (T,) on the query samples after the whole lifetime."""
    output, qy = query_outputs(experiment, meta, episodes)
    return (predict(output, qy, readout) == qy.argmax(-1)).to(torch.float64).mean(-1)


@torch.no_grad()
def query_outputs(experiment: Experiment, meta: dict[str, Tensor], episodes: Episodes) -> tuple[Tensor, Tensor]:
    """(output, query_y), both (T, Q, units): the learner's logits on every query sample after
    the whole lifetime, and the one-hot labels; kept apart from accuracy so they can be saved."""
    exp = experiment
    if exp.plastic_conv:  # the convs learn in the lifetime: classify with the adapted ones
        conv, weights = plastic_conv_lifetime(exp.encoder, exp.net, exp.rule, meta, episodes.x, episodes.y, exp.loss)
        qx, qy = episodes.query_x.flatten(1, 2), episodes.query_y.flatten(1, 2)
        output = plastic_conv_outputs(exp.encoder, exp.net, conv, weights, qx)
    else:
        episodes, head = exp.encode(meta, episodes), exp.head_meta(meta)
        state = exp.learner.final_state(head, episodes)
        qx, qy = episodes.query_x.flatten(1, 2), episodes.query_y.flatten(1, 2)
        output = exp.learner.outputs(head, state, qx)
    return output, qy


def predict(output: Tensor, query_y: Tensor, readout: str) -> Tensor:
    """Predicted units (T, Q): argmax over all units, or over the units that the episode's
    classes use (those of its one-hot query labels)."""
    if readout == "episode_units":
        used = query_y.sum(1, keepdim=True) > 0  # (T, 1, units)
        output = output.masked_fill(~used, float("-inf"))
    return output.argmax(-1)


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t confidence interval."""
    from scipy.stats import t

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def evaluate_classification(
    experiment: Experiment,
    meta: dict[str, Tensor],
    split: str = "test",
    seed: int | None = None,
    episodes: int | None = None,
    orders: tuple[str, ...] = ORDERS,
    predictions: dict[str, np.ndarray] | None = None,
    classes: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """{order: {"classes", "accuracy", "ci95", "chance", "runs"}} over ``classes`` (default
    ``eval.classes``), on
    ``episodes`` (default ``eval.episodes``) lifetimes of ``split`` drawn from ``seed``
    (default ``eval.seed``). A ``predictions`` dict receives, per order and N, every query's
    ``{order}_{N}_logits`` (runs, Q, units), ``_prediction`` and ``_label`` (runs, Q) units, so
    the accuracy can be recomputed (and errors inspected) outside this code."""
    exp = experiment
    ev = exp.config.eval
    dtype = exp.config.torch_dtype
    n_runs = episodes or ev.episodes
    seed = ev.seed if seed is None else seed
    counts = tuple(classes or ev.classes)
    results: dict[str, Any] = {}
    for order in orders:
        task = exp.task.with_order(order)
        acc, ci, per_position = [], [], []
        for n in counts:
            g = seeded_generator(seed, n)
            runs: list[float] = []
            kept: list[tuple[Tensor, Tensor, Tensor]] = []
            hits, seen = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
            while len(runs) < n_runs:
                size = min(ev.batch, n_runs - len(runs))
                episodes_ = task.sample(size, g, split=split, n_classes=n, label_map=ev.label_map)
                output, qy = query_outputs(exp, meta, episodes_.to(exp.device, dtype))
                pred, label = predict(output, qy, ev.readout), qy.argmax(-1)
                correct = (pred == label).to(torch.float64).cpu()
                runs += correct.mean(-1).tolist()
                position = learned_position(episodes_.y, label.cpu()).flatten()
                hits.index_add_(0, position, correct.flatten())
                seen.index_add_(0, position, torch.ones_like(correct.flatten()))
                if predictions is not None:
                    kept.append((output.cpu(), pred.cpu(), label.cpu()))
            if predictions is not None:
                for name, parts in zip(("logits", "prediction", "label"), zip(*kept)):
                    predictions[f"{order}_{n}_{name}"] = torch.cat(parts).numpy()
            m, h = mean_ci95(runs)
            acc.append(m)
            ci.append(h)
            per_position.append((hits / seen.clamp_min(1)).tolist())
        results[order] = {
            "classes": list(counts),
            "accuracy": acc,
            "ci95": ci,
            # accuracy on the k-th class of the stream (by first appearance) after the whole stream,
            # one list per number of classes; meaningful as "k-th learned" in continual order
            "per_position": per_position,
            "chance": [1.0 / n for n in counts],
            "runs": n_runs,
            "readout": ev.readout,
            "label_map": ev.label_map,
        }
    return results


def learned_position(stream_y: Tensor, query_label: Tensor) -> Tensor:
    """(T, Q) position of each query's class in the stream, by first appearance (0 = the first
    class presented): in continual order, the k-th class learned."""
    present = stream_y.sum(2) > 0  # (T, S, units)
    steps = torch.arange(present.shape[1]).view(1, -1, 1).expand_as(present)
    never = present.shape[1]
    first = torch.where(present, steps, torch.full_like(steps, never)).amin(1)  # (T, units)
    first_q = first.gather(1, query_label)  # (T, Q)
    earlier = (first.unsqueeze(1) < first_q.unsqueeze(-1)) & (first.unsqueeze(1) < never)  # (T, Q, units)
    return earlier.sum(-1)


def plot_per_position(curves: dict[str, list[float | None]], path: Path, title: str = "", chance: float | None = None
                      ) -> None:
    """Accuracy on the k-th class learned after the whole stream, one line per method: the
    continual-learning curve (early classes low: forgotten; late ones high: recent)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, acc in curves.items():
        xs = [k + 1 for k, a in enumerate(acc) if a is not None]
        ax.plot(xs, [a for a in acc if a is not None], marker="o", markersize=3, label=name)
    if chance is not None:
        ax.axhline(chance, color="k", linestyle="--", label="chance")
    ax.set_xlabel("class position in the stream (1 = learned first)")
    ax.set_ylabel("accuracy after the whole stream")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    from metaplastic.evaluation.report import save_figure

    save_figure(fig, path)


def format_accuracy_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per method and order: accuracy (mean ± 95% CI) for each number of classes."""
    first = next(iter(results.values()))
    classes = first["continual"]["classes"]
    name_w = max(len("method"), *(len(n) for n in results))
    head = f"{'method':<{name_w}}  {'order':<9}" + "".join(f"  {f'{n} classes':>15}" for n in classes)
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        for order in ORDERS:
            r = res[order]
            cells = "".join(f"  {f'{a:.3f} ± {h:.3f}':>15}" for a, h in zip(r["accuracy"], r["ci95"]))
            lines.append(f"{name:<{name_w}}  {order:<9}{cells}")
    chance = "".join(f"  {f'{1.0 / n:.3f}':>15}" for n in classes)
    lines.append(f"{'chance':<{name_w}}  {'':<9}{chance}")
    r = first["continual"]
    if "readout" in r:
        over = "every output unit" if r["readout"] == "all_units" else "the units of the episode's classes"
        lines.append(f"readout: {r['readout']} (argmax over {over}); label map: {r['label_map']}")
    return "\n".join(lines)


def plot_accuracy(results: dict[str, dict[str, Any]], path: Path, title: str = "") -> None:
    """Accuracy vs number of classes learned, continual and i.i.d. panels, 95% CI bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, order in zip(axes, ORDERS):
        for name, res in results.items():
            r = res[order]
            ax.errorbar(r["classes"], r["accuracy"], yerr=r["ci95"], marker="o", capsize=3, label=name)
        r = next(iter(results.values()))[order]
        ax.plot(r["classes"], r["chance"], "k--", label="chance")
        ax.set_xscale("log")
        ax.set_xticks(r["classes"], [str(n) for n in r["classes"]])
        ax.set_xlabel("classes learned")
        ax.set_title(order)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy on held-out samples")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    from metaplastic.evaluation.report import save_figure

    save_figure(fig, path)
