"""Non-plastic references for classification streams: how much the learned features offer.

On exactly the episodes ``evaluate_classification`` draws (same seed, classes, shots and query
samples), classify every query sample by

- 1-NN: the label of the nearest trajectory sample (Euclidean distance);
- prototypes: the nearest class mean of the trajectory samples (Snell et al.'s rule without
  a learned metric),

on the raw inputs (pixels) and, for models with a feature extractor, on its meta-learned frozen
features (the input of the plastic layers). A plastic learner far below 1-NN on its own features
uses less of their information than a lookup table would. Presentation order does not matter to
these rules; the same numbers are reported under both orders so the tables line up.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from metaplastic.evaluation.classification import mean_ci95
from metaplastic.meta.experiment import Experiment, seeded_generator
from metaplastic.tasks import Episodes
from metaplastic.tasks.classification import ORDERS


def nearest_predictions(support: Tensor, support_y: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
    """Predicted units (T, Q) of 1-NN and of the nearest prototype; support (T, S, D) with one-hot
    labels (T, S, C), query (T, Q, D)."""
    dist = torch.cdist(query, support)  # (T, Q, S)
    nn_unit = support_y.argmax(-1).gather(1, dist.argmin(-1))
    counts = support_y.sum(1)  # (T, C)
    protos = support_y.transpose(1, 2) @ support / counts.clamp_min(1).unsqueeze(-1)  # (T, C, D)
    pdist = torch.cdist(query, protos).masked_fill((counts == 0).unsqueeze(1), float("inf"))
    return nn_unit, pdist.argmin(-1)


def _accuracies(support: Tensor, support_y: Tensor, query: Tensor, query_y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-episode 1-NN and prototype accuracy."""
    nn_unit, proto_unit = nearest_predictions(support, support_y, query)
    truth = query_y.argmax(-1)
    return (nn_unit == truth).double().mean(-1), (proto_unit == truth).double().mean(-1)


def _flatten(episodes: Episodes) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return (episodes.x.flatten(1, 2), episodes.y.flatten(1, 2),
            episodes.query_x.flatten(1, 2), episodes.query_y.flatten(1, 2))


@torch.no_grad()
def nearest_references(experiment: Experiment, meta: dict[str, Tensor]) -> dict[str, dict[str, Any]]:
    """{"1-NN on pixels": {order: {...}}, "prototypes on pixels": ..., and on features if any}."""
    exp, ev = experiment, experiment.config.eval
    dtype = exp.config.torch_dtype
    spaces = ["pixels"] + (["meta-trained features"] if exp.encoder is not None else [])
    runs: dict[str, dict[int, list[float]]] = {f"{rule} on {space}": {} for space in spaces
                                               for rule in ("1-NN", "prototypes")}
    task = exp.task.with_order("continual")
    for n in ev.classes:
        g = seeded_generator(ev.seed, n)
        done = 0
        for key in runs:
            runs[key][n] = []
        while done < ev.episodes:
            size = min(ev.batch, ev.episodes - done)
            raw = task.sample(size, g, split="test", n_classes=n).to(exp.device, dtype)
            for space in spaces:
                episodes = raw if space == "pixels" else exp.encode(meta, raw)
                nn, proto = _accuracies(*_flatten(episodes))
                runs[f"1-NN on {space}"][n] += nn.tolist()
                runs[f"prototypes on {space}"][n] += proto.tolist()
            done += size
    out: dict[str, dict[str, Any]] = {}
    for key, per_n in runs.items():
        acc, ci = zip(*(mean_ci95(per_n[n]) for n in ev.classes))
        row = {"classes": list(ev.classes), "accuracy": list(acc), "ci95": list(ci),
               "chance": [1.0 / n for n in ev.classes], "runs": ev.episodes}
        out[key] = {order: row for order in ORDERS}
    return out
