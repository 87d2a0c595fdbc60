"""The analysis of a rule (or a checkpoint) on held-out continual episodes, as one JSON-able dict.

Alignment, interference and overlap measure weight updates; a memory learner makes none, so for
it only forgetting is measured and ``analyses`` in the results says which apply and why.

Episodes come from ``seeded_generator(seed, 4, first_episode_index)`` in continual order, so
the same checkpoint, seed and episode count give the same numbers; the analysis runs in
float64 by default so first-order and exact changes can be compared closely.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metaplastic.analysis.forgetting import forgetting
from metaplastic.analysis.interference import block_interference, summarize_matrix
from metaplastic.analysis.overlap import TOP_FRACTION, off_diagonal_mean, unit_jaccard, update_cosines
from metaplastic.analysis.trajectory import Trajectory, record
from metaplastic.analysis.vectors import query_losses
from metaplastic.errors import ConfigError
from metaplastic.losses import Loss
from metaplastic.meta.experiment import seeded_generator
from metaplastic.meta.learner import ANALYSES, Learner
from metaplastic.networks import MLP
from metaplastic.rules import Rule
from metaplastic.tasks import Episodes

BASELINES = ("sgd", "none")


def _blocks(boundaries: tuple[int, ...]) -> list[tuple[int, int]]:
    starts = (0, *boundaries[:-1])
    return list(zip(starts, boundaries))


def _analyze_batch(
    net: MLP, rule: Rule, meta: dict[str, Tensor], loss: Loss, episodes: Any, baseline: bool
) -> dict[str, Any]:
    traj: Trajectory = record(net, rule, meta, loss, episodes)
    keys, snaps = traj.keys, traj.snapshots
    qx, qy = episodes.query_x, episodes.query_y
    columns: dict[str, list[Tensor]] = {}
    norms = []
    for j, (start, end) in enumerate(_blocks(episodes.boundaries)):
        tx = episodes.x[:, start:end].flatten(1, 2)
        ty = episodes.y[:, start:end].flatten(1, 2)
        col = block_interference(net, loss, snaps[j], snaps[j + 1], keys, j, tx, ty, qx, qy, baseline)
        norms.append(col.pop("norm"))
        for name, value in col.items():
            columns.setdefault(name, []).append(value)
    with torch.no_grad():
        errors = torch.stack([query_losses(net, loss, w, qx, qy) for w in snaps[1:]], dim=1)
        updates = [{k: b[k] - a[k] for k in keys} for a, b in zip(snaps[:-1], snaps[1:])]
        cos = update_cosines(updates, keys)
        units = unit_jaccard(updates, keys, TOP_FRACTION)
    return {"keys": keys, "alignment": traj.alignment, "columns": columns, "norms": norms,
            "errors": errors, "cos": cos, "units": units}


def _cat(parts: list[Tensor]) -> Tensor:
    return torch.cat([p.detach().double().cpu() for p in parts], dim=0)


def _finite(x: Any) -> Any:
    """NaN/inf -> None, so the JSON is standard."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def analyze_rule(
    net: MLP,
    rule: Rule,
    meta: dict[str, Tensor],
    loss: Loss,
    task: Any,
    episodes: int = 32,
    batch: int = 32,
    seed: int = 12345,
    baseline: str = "sgd",
    encode: Callable[[Episodes], Episodes] | None = None,
) -> dict[str, Any]:
    """Alignment, interference (rule and matched-norm SGD), overlap and forgetting, averaged
    over ``episodes`` held-out continual episodes. ``encode`` maps sampled episodes to the
    network's inputs (e.g. an image task's frozen conv features)."""
    if baseline not in BASELINES:
        raise ConfigError(f"baseline must be one of {', '.join(BASELINES)}, got '{baseline}'")
    if episodes < 1 or batch < 1:
        raise ConfigError(f"episodes and batch must be >= 1, got {episodes} and {batch}")
    if hasattr(task, "with_order"):
        task = task.with_order("continual")
    some = next(iter(meta.values()))
    device, dtype = some.device, some.dtype
    batches, done = [], 0
    while done < episodes:
        n = min(batch, episodes - done)
        ep = task.sample(n, seeded_generator(seed, 4, done)).to(device, dtype)
        if encode is not None:
            with torch.no_grad():
                ep = encode(ep)
        batches.append(_analyze_batch(net, rule, meta, loss, ep, baseline == "sgd"))
        done += n
    keys = batches[0]["keys"]
    layers = list(batches[0]["alignment"][0]["cos"])
    steps = len(batches[0]["alignment"])

    align: dict[str, Any] = {}
    for stat in ("cos", "proj", "norm"):
        per_layer = {}
        for layer in layers:
            values = torch.stack([_cat([b["alignment"][s][stat][layer] for b in batches]) for s in range(steps)])
            per_layer[layer] = {"per_step": values.nanmean(1).tolist(), "mean": float(values.nanmean())}
        align[stat] = per_layer

    interference: dict[str, Any] = {}
    F = len(batches[0]["norms"])
    norms = [_cat([b["norms"][j] for b in batches]) for j in range(F)]
    for name in batches[0]["columns"]:
        cols = [_cat([b["columns"][name][j] for b in batches]) for j in range(F)]
        interference[name] = summarize_matrix(cols, norms)
    interference["update_norm"] = [float(n.mean()) for n in norms]

    cos = {layer: _cat([b["cos"][layer] for b in batches]) for layer in batches[0]["cos"]}
    units = {}
    for layer, info in batches[0]["units"].items():
        m = _cat([b["units"][layer]["matrix"] for b in batches])
        units[layer] = {"matrix": m.mean(0).tolist(), "mean": off_diagonal_mean(m), "k": info["k"],
                        "n": info["n"], "chance": info["chance"]}
    overlap = {
        "top_fraction": TOP_FRACTION,
        "update_cos": {k: {"matrix": v.mean(0).tolist(), "mean": off_diagonal_mean(v)} for k, v in cos.items()},
        "units": units,
    }
    errors = _cat([b["errors"] for b in batches])
    return _finite({
        "episodes": episodes,
        "seed": seed,
        "dtype": str(dtype).replace("torch.", ""),
        "parameters": keys,
        "boundaries": list(task.sample(1, seeded_generator(seed, 4, 0)).boundaries),
        "alignment": align,
        "interference": interference,
        "overlap": overlap,
        "forgetting": forgetting(errors),
    })


@torch.no_grad()
def learner_errors(learner: Learner, meta: dict[str, Tensor], loss: Loss, episodes: Episodes) -> Tensor:
    """(T, K, F): every task's held-out loss after each boundary of the stream, for any learner."""
    qx, qy = episodes.query_x, episodes.query_y
    T, F, Q, _ = qx.shape
    rows = []
    for _, state in learner.states(meta, episodes, {b - 1 for b in episodes.boundaries}):
        out = learner.outputs(meta, state, qx.flatten(1, 2))
        rows.append(loss.value(out.view(T, F, Q, -1), qy))
    return torch.stack(rows, dim=1)


def analyze_forgetting(
    learner: Learner,
    meta: dict[str, Tensor],
    loss: Loss,
    task: Any,
    episodes: int = 32,
    batch: int = 32,
    seed: int = 12345,
    encode: Callable[[Episodes], Episodes] | None = None,
) -> dict[str, Any]:
    """Forgetting alone, on the episodes ``analyze_rule`` uses: the analysis that exists for a
    learner without weight updates (a memory learner)."""
    if episodes < 1 or batch < 1:
        raise ConfigError(f"episodes and batch must be >= 1, got {episodes} and {batch}")
    if hasattr(task, "with_order"):
        task = task.with_order("continual")
    some = next(iter(meta.values()))
    parts, done = [], 0
    while done < episodes:
        n = min(batch, episodes - done)
        ep = task.sample(n, seeded_generator(seed, 4, done)).to(some.device, some.dtype)
        if encode is not None:
            with torch.no_grad():
                ep = encode(ep)
        parts.append(learner_errors(learner, meta, loss, ep))
        done += n
    return _finite({
        "episodes": episodes,
        "seed": seed,
        "dtype": str(some.dtype).replace("torch.", ""),
        "boundaries": list(task.sample(1, seeded_generator(seed, 4, 0)).boundaries),
        "forgetting": forgetting(_cat(parts)),
    })


def applicable(learner: Learner) -> dict[str, str]:
    """{analysis: "applies" or why it does not} for a learner."""
    from metaplastic.meta.learner import NO_WEIGHT_UPDATES

    return {name: "applies" if name in learner.analyses else f"does not apply: {NO_WEIGHT_UPDATES}"
            for name in ANALYSES}


def summary(results: dict[str, Any]) -> dict[str, float | None]:
    """The headline scalars of one analysis (flat, for tables and trackers); forgetting alone
    when that is all that applies to the learner."""
    if "interference" not in results:
        return {"forgetting": results["forgetting"]["mean"], "final_loss": results["forgetting"]["curve"]["mse"]}
    inter = results["interference"]
    out: dict[str, float | None] = {
        "alignment_cos": results["alignment"]["cos"]["all"]["mean"],
        "alignment_proj": results["alignment"]["proj"]["all"]["mean"],
        "interference": inter["exact"]["mean_earlier"],
        "interference_se": inter["exact"]["mean_earlier_se"],
        "interference_first_order": inter["first_order"]["mean_earlier"],
        "interference_per_norm": inter["exact"]["mean_earlier_per_norm"],
        "interference_first_order_per_norm": inter["first_order"]["mean_earlier_per_norm"],
        "own_loss_change": inter["exact"]["mean_own"],
    }
    if "sgd_exact" in inter:
        out["sgd_interference"] = inter["sgd_exact"]["mean_earlier"]
        out["sgd_interference_se"] = inter["sgd_exact"]["mean_earlier_se"]
        out["sgd_interference_first_order"] = inter["sgd_first_order"]["mean_earlier"]
        out["sgd_interference_per_norm"] = inter["sgd_exact"]["mean_earlier_per_norm"]
        out["sgd_interference_first_order_per_norm"] = inter["sgd_first_order"]["mean_earlier_per_norm"]
        out["sgd_own_loss_change"] = inter["sgd_exact"]["mean_own"]
    # interference per unit of learning: earlier tasks' loss increase / own task's loss decrease
    for prefix in ("", "sgd_"):
        if f"{prefix}interference" in out:
            own, inter_ = out[f"{prefix}own_loss_change"], out[f"{prefix}interference"]
            ok = own is not None and inter_ is not None and own < 0
            out[f"{prefix}interference_per_learning"] = inter_ / -own if ok else None
    out["update_overlap_cos"] = results["overlap"]["update_cos"]["all"]["mean"]
    for layer, u in results["overlap"]["units"].items():
        out[f"unit_jaccard/{layer}"] = u["mean"]
        out[f"unit_jaccard_chance/{layer}"] = u["chance"]
    out["forgetting"] = results["forgetting"]["mean"]
    out["final_loss"] = results["forgetting"]["curve"]["mse"]
    return out


def format_summary(results: dict[str, Any]) -> str:
    """A short two-column table: the rule, and SGD at matched update norm where measured; for a
    learner without weight updates, forgetting and the analyses that do not apply."""
    s = summary(results)
    if "interference" not in results:
        lines = [f"{'forgetting (final - just learned)':<34}  {s['forgetting']:>12.4g}",
                 f"{'final loss, all tasks':<34}  {s['final_loss']:>12.4g}"]
        lines += [f"{name}: {why}" for name, why in results.get("analyses", {}).items() if why != "applies"]
        return "\n".join(lines)
    rows = [
        ("alignment cos(dW, -g), all layers", s["alignment_cos"], None),
        ("projection <dW, -g>/|g|", s["alignment_proj"], None),
        ("interference: mean dL_i, i<j (exact)", s["interference"], s.get("sgd_interference")),
        ("  standard error (episodes)", s["interference_se"], s.get("sgd_interference_se")),
        ("interference: first order", s["interference_first_order"], s.get("sgd_interference_first_order")),
        ("interference per unit |dW|", s["interference_per_norm"], s.get("sgd_interference_per_norm")),
        ("first order per unit |dW|", s["interference_first_order_per_norm"],
         s.get("sgd_interference_first_order_per_norm")),
        ("own-task loss change dL_j", s["own_loss_change"], s.get("sgd_own_loss_change")),
        ("interference / own-task decrease", s["interference_per_learning"], s.get("sgd_interference_per_learning")),
        ("update overlap cos(dW_i, dW_j)", s["update_overlap_cos"], None),
        ("forgetting (final - just learned)", s["forgetting"], None),
        ("final loss, all tasks", s["final_loss"], None),
    ]
    for key, value in s.items():
        if key.startswith("unit_jaccard/"):
            layer = key.split("/")[1]
            rows.append((f"unit Jaccard layer {layer} (chance {s['unit_jaccard_chance/' + layer]:.3f})", value, None))

    def cell(v: float | None) -> str:
        return f"{v:>12.4g}" if v is not None else f"{'-':>12}"

    w = max(len(r[0]) for r in rows)
    header = f"{'measure':<{w}}  {'rule':>12}  {'SGD (matched)':>13}"
    lines = [header, "-" * len(header)]
    lines += [f"{name:<{w}}  {cell(a)}  {cell(b):>13}" for name, a, b in rows]
    return "\n".join(lines)


def analyze_checkpoint(
    path: str | Path,
    episodes: int = 32,
    baseline: str = "sgd",
    device: str | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[Any, dict[str, Any]]:
    """Load a checkpoint and analyse its meta-trained rule; returns (trainer, results)."""
    from metaplastic.evaluation.checkpoint_eval import load_trainer, rule_label

    trainer = load_trainer(path, device)
    exp, config = trainer.experiment, trainer.config
    full = {k: v.detach().to(dtype) for k, v in trainer.meta.items()}
    meta = exp.head_meta(full)  # without a frozen feature stage's parameters, if any

    def encode(ep: Episodes) -> Episodes:
        return exp.encode(full, ep)

    if set(ANALYSES) <= set(exp.learner.analyses):
        results = analyze_rule(exp.net, exp.rule, meta, exp.loss, exp.task, episodes, min(episodes, 32),
                               config.eval.seed, baseline, encode)
    else:
        if baseline not in BASELINES:
            raise ConfigError(f"baseline must be one of {', '.join(BASELINES)}, got '{baseline}'")
        results = analyze_forgetting(exp.learner, meta, exp.loss, exp.task, episodes, min(episodes, 32),
                                     config.eval.seed, encode)
    results = {"checkpoint": str(path), "rule": rule_label(exp.rule), "config": config.name,
               "meta_step": trainer.step, "analyses": applicable(exp.learner), **results}
    return trainer, results
