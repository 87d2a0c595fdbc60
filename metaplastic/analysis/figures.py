"""Figures of an analysis (PNG): alignment, interference, overlap, forgetting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FIGURES = ("alignment", "interference", "overlap", "forgetting")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    _plt().close(fig)
    tmp.replace(path)
    return path


def _nan(m: list) -> list:
    return [[float("nan") if v is None else v for v in row] for row in m]


def _boundaries(ax: Any, results: dict[str, Any]) -> None:
    for b in results["boundaries"][:-1]:
        ax.axvline(b - 0.5, color="0.8", lw=0.6, zorder=0)


def plot_alignment(results: dict[str, Any], path: Path, title: str) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, stat, label in ((axes[0], "cos", "cos(dW, -grad)"), (axes[1], "proj", "<dW, -grad> / |grad|")):
        for layer, v in results["alignment"][stat].items():
            name = "all plastic" if layer == "all" else f"layer {layer}"
            ax.plot(v["per_step"], lw=2.0 if layer == "all" else 1.0, color="k" if layer == "all" else None, label=name)
        _boundaries(ax, results)
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_xlabel("inner step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: update vs. gradient of the minibatch loss (mean over episodes)")
    fig.tight_layout()
    return _save(fig, path)


def plot_interference(results: dict[str, Any], path: Path, title: str) -> Path:
    import numpy as np

    plt = _plt()
    inter = results["interference"]
    panels = [("exact", "rule: exact dL_i"), ("first_order", "rule: first order")]
    if "sgd_exact" in inter:
        panels += [("sgd_exact", "SGD matched norm: exact"), ("sgd_first_order", "SGD matched: first order")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels), 3.8), squeeze=False)
    for start in range(0, len(panels), 2):  # one colour scale per method (rule, SGD)
        pair = panels[start : start + 2]
        mats = [np.array(_nan(inter[k]["matrix"])) for k, _ in pair]
        finite = [float(np.abs(m[np.isfinite(m)]).max()) for m in mats if np.isfinite(m).any()]
        lim = max(finite, default=0.0) or 1.0
        for ax, m, (_, label) in zip(axes[0][start : start + 2], mats, pair):
            im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("update on task j")
        fig.colorbar(im, ax=axes[0][start : start + 2].tolist(), shrink=0.8, label="change in held-out loss")
    axes[0][0].set_ylabel("loss of task i (red = forgetting)")
    fig.suptitle(f"{title}: interference I[i, j]")
    return _save(fig, path)


def plot_overlap(results: dict[str, Any], path: Path, title: str) -> Path:
    import numpy as np

    plt = _plt()
    ov = results["overlap"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    m = np.array(_nan(ov["update_cos"]["all"]["matrix"]))
    im = axes[0].imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(im, ax=axes[0], shrink=0.8)
    axes[0].set_title("cos(dW_i, dW_j), all plastic parameters", fontsize=9)
    axes[0].set_xlabel("task j")
    axes[0].set_ylabel("task i")
    layers = list(ov["units"])
    means = [ov["units"][k]["mean"] or 0.0 for k in layers]
    chance = [ov["units"][k]["chance"] for k in layers]
    xs = np.arange(len(layers))
    axes[1].bar(xs - 0.2, means, 0.4, label="measured")
    axes[1].bar(xs + 0.2, chance, 0.4, label="chance", color="0.7")
    axes[1].set_xticks(xs, [f"layer {k}" for k in layers])
    axes[1].set_ylabel(f"Jaccard of top-{ov['top_fraction']:.0%} changed units")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{title}: overlap of the tasks' updates")
    fig.tight_layout()
    return _save(fig, path)


def plot_forgetting(results: dict[str, Any], path: Path, title: str) -> Path:
    import numpy as np

    plt = _plt()
    m = np.array(_nan(results["forgetting"]["matrix"]))  # (K, F): after task k, loss of task i
    K, F = m.shape
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    cmap = plt.get_cmap("viridis")
    for i in range(F):
        ks = list(range(i, K))
        axes[0].plot([k + 1 for k in ks], m[i:, i], marker="o", ms=3, color=cmap(i / max(F - 1, 1)), label=f"task {i}")
    axes[0].set_xlabel("tasks learned")
    axes[0].set_ylabel("held-out loss of task i")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=6, ncol=2)
    curve = results["forgetting"]["curve"]["curve"]
    axes[1].plot(range(1, len(curve) + 1), curve, marker="o", color="k")
    axes[1].set_xlabel("tasks learned")
    axes[1].set_ylabel("mean loss on tasks learned so far")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: forgetting curves")
    fig.tight_layout()
    return _save(fig, path)


def write_figures(results: dict[str, Any], out: Path, title: str = "") -> dict[str, Path]:
    """Every figure of ``FIGURES`` whose analysis is in the results, as ``out/<name>.png``."""
    out = Path(out)
    title = title or str(results.get("rule", ""))
    plots = {"alignment": plot_alignment, "interference": plot_interference, "overlap": plot_overlap,
             "forgetting": plot_forgetting}
    return {name: plots[name](results, out / f"{name}.png", title) for name in FIGURES if name in results}
