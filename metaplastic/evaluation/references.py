"""Reference learners scored beside a meta-trained rule.

- ``untrained``: the same rule starting from the meta-parameters before meta-training;
- ``online SGD``: every layer trained by plain SGD from a fresh random init, with its step size
  picked from a grid on separate validation episodes (per presentation order), so the
  baseline is not handicapped by an arbitrary learning rate.
"""

from __future__ import annotations

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
    cfg = experiment.config
    ev = cfg.eval
    out: dict[str, Any] = {}
    validation: dict[str, dict[float, float]] = {}
    for order in ("continual", "iid"):
        scores = {}
        for lr in ev.sgd_lrs:
            net, rule, meta = online_sgd(experiment, lr)
            res = evaluate_rule(
                net,
                rule,
                meta,
                experiment.task,
                experiment.loss,
                ev.validation_episodes,
                ev.points_per_function,
                ev.seed + 1,
                ev.batch,
                orders=(order,),
            )
            mse = res[order]["mse"]
            scores[lr] = mse if mse == mse else float("inf")
        best = min(scores, key=scores.get)
        validation[order] = scores
        net, rule, meta = online_sgd(experiment, best)
        res = evaluate_rule(
            net,
            rule,
            meta,
            experiment.task,
            experiment.loss,
            episodes or ev.episodes,
            ev.points_per_function,
            ev.seed,
            ev.batch,
            orders=(order,),
        )
        out[order] = {**res[order], "lr": best}
    out["validation_mse_by_lr"] = {o: {str(k): v for k, v in s.items()} for o, s in validation.items()}
    return out
