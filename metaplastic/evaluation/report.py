"""Result tables, plots and JSON files for evaluations of several methods."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from metaplastic.meta.checkpoint import atomic_write_bytes, atomic_write_text


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per method: continual and i.i.d. final MSE (mean ± standard error)."""
    name_w = max(len("method"), *(len(n) for n in results))
    header = f"{'method':<{name_w}}  {'continual MSE':>17}  {'i.i.d. MSE':>17}"
    lines = [header, "-" * len(header)]
    for name, res in results.items():
        cells = []
        for order in ("continual", "iid"):
            r = res.get(order)
            if not r:
                cells.append(f"{'-':>17}")
            elif math.isfinite(r["mse"]):
                cells.append(f"{r['mse']:8.4f} ± {r['mse_se']:6.4f}")
            else:
                cells.append(f"{'diverged':>17}")
        lines.append(f"{name:<{name_w}}  {cells[0]:>17}  {cells[1]:>17}")
    return "\n".join(lines)


def result_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The final MSEs as flat rows (method, order, mse, mse_se), e.g. for a tracker's table."""
    return [
        {"method": name, "order": order, "mse": res[order]["mse"], "mse_se": res[order]["mse_se"]}
        for name, res in results.items()
        for order in ("continual", "iid")
        if res.get(order)
    ]


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(Path(path), json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_npz(path: Path, arrays: dict[str, Any]) -> None:
    """Arrays in one ``.npz`` (written atomically; plain dtypes, so ``np.load`` needs no pickle)."""
    import numpy as np

    atomic_write_bytes(Path(path), lambda f: np.savez(f, **arrays))


def plot_curves(results: dict[str, dict[str, Any]], path: Path, title: str = "") -> None:
    """MSE on functions learned so far (continual) and on all functions (i.i.d.) after each function."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, order, label in (
        (axes[0], "continual", "MSE on functions learned so far"),
        (axes[1], "iid", "MSE on all functions"),
    ):
        for name, res in results.items():
            r = res.get(order)
            if not r:
                continue
            # a diverged lifetime has inf/NaN points: plot the finite ones (log scale needs > 0)
            points = [(i + 1, m, s) for i, (m, s) in enumerate(zip(r["curve"], r["curve_se"]))
                      if math.isfinite(m) and m > 0]
            if not points:
                ax.plot([], [], label=f"{name} (diverged)")
                continue
            k, curve, se = zip(*points)
            lo = [max(m - s, m * 1e-3) for m, s in zip(curve, se)]
            hi = [m + s if math.isfinite(s) else m for m, s in zip(curve, se)]
            label = name if len(points) == len(r["curve"]) else f"{name} (diverged points left out)"
            (line,) = ax.plot(k, curve, marker="o", ms=3, label=label)
            ax.fill_between(k, lo, hi, color=line.get_color(), alpha=0.2)
        ax.set_title(f"{order}: {label}")
        ax.set_xlabel("functions learned")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out MSE")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> None:
    """Lay out, write atomically (a temporary PNG renamed over ``path``) and close a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
