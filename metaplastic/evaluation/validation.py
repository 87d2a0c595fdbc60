"""Meta-validation: the current meta-parameters scored on fixed held-out validation episodes.

The episodes are the same at every validation (a fixed seed, distinct from the training
stream's and the test episodes'); classification draws them from the validation split
(``task.validation_fraction`` of the training classes), never from the test split. The metric
is the one the evaluation reports, in the task's presentation order: MSE after the whole stream
(regression, lower is better) or the accuracy averaged over ``eval.classes`` (classification,
higher is better), with the accuracy at each class count logged beside it. The class counts
are ``meta.validate_classes``, by default those of ``eval.classes`` the validation split holds.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metaplastic.errors import ConfigError
from metaplastic.meta.experiment import Experiment

VALIDATION_SEED_OFFSET = 2  # eval.seed: test episodes; eval.seed + 1: the SGD reference's step-size pick


def validation_metric(experiment: Experiment) -> str:
    """The name under which the selection metric is logged."""
    return "val/accuracy" if _is_classification(experiment) else "val/mse"


def higher_is_better(metric: str) -> bool:
    return metric.endswith("accuracy")


def _is_classification(experiment: Experiment) -> bool:
    return getattr(experiment.task, "name", None) == "classification"


def validation_classes(experiment: Experiment) -> tuple[int, ...]:
    """The class counts validation scores at: ``meta.validate_classes``, else those of
    ``eval.classes`` the validation split holds; a ConfigError when none can be drawn."""
    cfg = experiment.config
    available = experiment.task.pool("validation").n_classes
    wanted = cfg.meta.validate_classes
    if wanted is not None:
        too_many = [n for n in wanted if n > available]
        if too_many:
            raise ConfigError(
                f"meta.validate_classes asks for {too_many[0]} classes but the validation split has {available} "
                "(raise task.validation_fraction or lower meta.validate_classes)"
            )
        return tuple(wanted)
    fitting = tuple(n for n in cfg.eval.classes if n <= available)
    if not fitting:
        raise ConfigError(
            f"the validation split has {available} classes, fewer than every count in eval.classes "
            f"{list(cfg.eval.classes)}: set meta.validate_classes or raise task.validation_fraction"
        )
    return fitting


def check_can_validate(experiment: Experiment) -> None:
    """Raise the ConfigError validation would raise, before a run writes anything."""
    if _is_classification(experiment):
        validation_classes(experiment)


@torch.no_grad()
def validate(experiment: Experiment, meta: dict[str, Tensor]) -> dict[str, float]:
    """{"val/mse": ...} or {"val/accuracy": mean, "val/accuracy@N": ...} for ``meta``."""
    cfg = experiment.config
    ev = cfg.eval
    seed = ev.seed + VALIDATION_SEED_OFFSET
    n = cfg.meta.validate_episodes
    order = experiment.task.order
    if _is_classification(experiment):
        from metaplastic.evaluation.classification import evaluate_classification

        res = evaluate_classification(
            experiment, meta, split="validation", seed=seed, episodes=n, orders=(order,),
            classes=validation_classes(experiment),
        )
        acc = res[order]["accuracy"]
        out = {"val/accuracy": sum(acc) / len(acc)}
        out.update({f"val/accuracy@{c}": a for c, a in zip(res[order]["classes"], acc)})
        return out
    from metaplastic.evaluation.regression import evaluate_learner

    head = experiment.head_meta(meta)
    res = evaluate_learner(
        experiment.learner, head, experiment.task, n, ev.points_per_function, seed, ev.batch, orders=(order,)
    )
    mse = res[order]["mse"]
    return {"val/mse": mse if mse == mse else float("inf")}
