"""Reference learners scored beside a meta-trained rule.

- ``untrained``: the same rule starting from the meta-parameters before meta-training;
- ``online SGD``: every layer trained by plain SGD from a fresh random init, with its step size
  picked from a grid on separate validation episodes (per presentation order), so the
  baseline is not handicapped by an arbitrary learning rate.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from metaplastic.evaluation.regression import evaluate_rule
from metaplastic.meta.experiment import Experiment, seeded_generator
from metaplastic.networks import MLP
from metaplastic.params import prefixed
from metaplastic.rules import SGDRule


def online_sgd(experiment: Experiment, lr: float) -> tuple[MLP, SGDRule, dict[str, Tensor]]:
    """All-plastic copy of the experiment's network, random init, SGD at ``lr``."""
    cfg = experiment.config
    base = experiment.net
    net = MLP(tuple(type(s)(s.in_features, s.out_features, s.activation, True) for s in base.layers))
    rule = SGDRule(lr_init=lr)
    g = seeded_generator(cfg.eval.seed, 424242)
    meta = {**prefixed(net.init(g, cfg.torch_dtype), "init"), **rule.init(net, g, cfg.torch_dtype)}
    return net, rule, {k: v.to(experiment.device) for k, v in meta.items()}


def evaluate_online_sgd(experiment: Experiment, episodes: int | None = None) -> dict[str, Any]:
    """Best-of-grid online SGD, the learning rate chosen per order on validation episodes."""
    ev = experiment.config.eval

    def score(lr: float, order: str, n_episodes: int, seed: int) -> dict[str, Any]:
        net, rule, meta = online_sgd(experiment, lr)
        res = evaluate_rule(net, rule, meta, experiment.task, experiment.loss, n_episodes,
                            ev.points_per_function, seed, ev.batch, orders=(order,))
        return res[order]

    out: dict[str, Any] = {}
    validation: dict[str, dict[str, float]] = {}
    for order in ("continual", "iid"):
        mses = {lr: score(lr, order, ev.validation_episodes, ev.seed + 1)["mse"] for lr in ev.sgd_lrs}
        scores = {lr: m if math.isfinite(m) else float("inf") for lr, m in mses.items()}
        best = min(scores, key=scores.get)
        validation[order] = {str(lr): m for lr, m in scores.items()}
        out[order] = {**score(best, order, episodes or ev.episodes, ev.seed), "lr": best}
    out["validation_mse_by_lr"] = validation
    return out
