"""Evaluate a saved checkpoint, optionally beside its references."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from metaplastic.config import apply_overrides, config_from_dict
from metaplastic.errors import ConfigError
from metaplastic.evaluation.classification import evaluate_classification, is_classification
from metaplastic.evaluation.episodes_file import (
    EpisodeFile,
    check_task,
    episode_file_references,
    evaluate_episode_file,
    image_vectors,
    load_episode_file,
)
from metaplastic.evaluation.references import evaluate_online_sgd
from metaplastic.evaluation.regression import evaluate_learner
from metaplastic.meta.checkpoint import load_checkpoint
from metaplastic.meta.experiment import Experiment
from metaplastic.meta.trainer import MetaTrainer
from metaplastic.rules import FLPRule, SGDRule


def rule_label(rule: Any) -> str:
    if isinstance(rule, FLPRule):
        return f"FLP-{rule.form.capitalize()}"
    if isinstance(rule, SGDRule):
        return "OML (first-order)" if rule.first_order else "OML"
    if callable(getattr(rule, "label", None)):
        return rule.label()  # rules of the rule library label themselves (e.g. "FA + last-hidden BP")
    return str(getattr(rule, "name", type(rule).__name__))


def evaluate_trained(trainer: MetaTrainer, label: str | None = None, untrained: bool = True) -> dict[str, Any]:
    """The meta-trained rule and, if asked, the same rule from its initial meta-parameters."""
    exp = trainer.experiment
    ev = exp.config.eval
    label = label or rule_label(exp.rule)
    args = (exp.task, ev.episodes, ev.points_per_function, ev.seed, ev.batch)
    results = {f"{label} meta-trained ({trainer.step} steps)": evaluate_learner(exp.learner, trainer.meta, *args)}
    if untrained:
        results[f"{label} untrained init"] = evaluate_learner(exp.learner, trainer.initial_meta, *args)
    return results


def evaluate_trained_classification(
    trainer: MetaTrainer, untrained: bool = True, predictions: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """Accuracy vs classes learned for the meta-trained rule and, if asked, its initial
    meta-parameters; ``predictions`` receives the meta-trained rule's query outputs."""
    exp = trainer.experiment
    label = rule_label(exp.rule)
    trained = evaluate_classification(exp, trainer.meta, predictions=predictions)
    results = {f"{label} meta-trained ({trainer.step} steps)": trained}
    if untrained:
        results[f"{label} untrained init"] = evaluate_classification(exp, trainer.initial_meta)
        from metaplastic.evaluation.nearest import nearest_references

        results.update(nearest_references(exp, trainer.meta))
    return results


EVALUATION_SECTIONS = ("eval", "task")  # what evaluation may change: never the model


def load_trainer(
    path: str | Path, device: str | None = None, which: str = "last", overrides: list[str] | None = None
) -> MetaTrainer:
    """The trainer saved in a checkpoint (or a run folder's last or best one), optionally moved
    to another device, with ``eval.*`` and ``task.*`` overrides (key=value) of its config:
    checked like training overrides, and refused for any other key."""
    payload = load_checkpoint(path, which=which)
    data = payload["config"]
    for item in overrides or []:
        key = item.split("=", 1)[0].strip()
        if key.split(".", 1)[0] not in EVALUATION_SECTIONS or "." not in key:
            raise ConfigError(f"evaluate override '{item}': only eval.* and task.* keys can change at evaluation "
                              "(the rest would change the meta-trained model)")
    if overrides:
        data = apply_overrides(data, list(overrides))
    config = config_from_dict(data)
    if device:
        config = config.replace(device=device)
    return MetaTrainer.from_state_dict(payload, config)


def evaluate_trained_episodes(
    trainer: MetaTrainer, file: EpisodeFile, untrained: bool = True, predictions: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """Accuracy on a file's fixed episodes for the meta-trained rule and, if asked, its initial
    meta-parameters; ``predictions`` receives the meta-trained rule's query outputs."""
    exp = trainer.experiment
    label = rule_label(exp.rule)
    check_task(exp, file)
    vectors = image_vectors(exp, file)  # decoded once for every row of the table
    results = {f"{label} meta-trained ({trainer.step} steps)": evaluate_episode_file(
        exp, trainer.meta, file, predictions=predictions, vectors=vectors)}
    if untrained:
        results[f"{label} untrained init"] = evaluate_episode_file(exp, trainer.initial_meta, file, vectors=vectors)
        results.update(episode_file_references(exp, trainer.meta, file, vectors))
    return results


def evaluate_trained_regression_file(trainer: MetaTrainer, path: str | Path, untrained: bool = True) -> dict[str, Any]:
    """MSE on a file's fixed regression episodes for the meta-trained learner and, if asked, its
    initial meta-parameters (``metaplastic.evaluation.regression_file``)."""
    from metaplastic.evaluation.regression_file import evaluate_regression_file, load_regression_file

    exp = trainer.experiment
    arrays = load_regression_file(path)
    label = rule_label(exp.rule)
    results = {f"{label} meta-trained ({trainer.step} steps)": evaluate_regression_file(exp, trainer.meta, arrays,
                                                                                         str(path))}
    if untrained:
        results[f"{label} untrained init"] = evaluate_regression_file(exp, trainer.initial_meta, arrays, str(path))
    return results


def evaluate_checkpoint(
    path: str | Path, references: bool = True, device: str | None = None, which: str = "last",
    overrides: list[str] | None = None, episodes: str | Path | None = None,
    predictions: dict[str, np.ndarray] | None = None,
) -> tuple[Experiment, dict[str, Any]]:
    """Results of a checkpoint: random episodes, or the fixed ones of an ``episodes`` file (a
    YAML/JSON episode list for classification, an ``.npz`` of functions for regression);
    ``predictions`` (classification only) receives every query's output. The run and the file
    are both checked before anything is evaluated."""
    trainer = load_trainer(path, device, which, overrides)
    exp = trainer.experiment
    if predictions is not None and not is_classification(exp):
        raise ConfigError(f"--predictions needs a classification run; this run's task is '{exp.task.name}'")
    if episodes is not None and not is_classification(exp):
        return exp, evaluate_trained_regression_file(trainer, episodes, untrained=references)
    if episodes is not None:
        file = load_episode_file(episodes)
        return exp, evaluate_trained_episodes(trainer, file, untrained=references, predictions=predictions)
    if is_classification(trainer.experiment):
        return trainer.experiment, evaluate_trained_classification(
            trainer, untrained=references, predictions=predictions
        )
    results = evaluate_trained(trainer, untrained=references)
    if references and trainer.experiment.net is not None:  # a memory learner has no network to train by SGD
        results["online SGD, random init"] = evaluate_online_sgd(trainer.experiment)
    return trainer.experiment, results
