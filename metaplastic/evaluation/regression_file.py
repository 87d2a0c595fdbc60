"""Fixed regression episodes from a file: score a run on exactly the functions and points you choose.

An ``.npz`` file (``numpy.savez``) with four arrays, the functions of each episode in the order
they are learned and the samples of each function in the order they are presented::

    x, y              (E, F, N) trajectory inputs and targets (or (F, N) for one episode)
    query_x, query_y  (E, F, Q) held-out points of every function, scored after the stream

F must be the run's ``task.n_functions`` (the input carries the one-hot slot of the function)
and N a multiple of its ``task.batch_size`` (N / batch_size minibatches per function). The
``continual`` order presents the file's order; ``iid`` shuffles every episode's samples across
the lifetime (seeded by ``eval.seed``). The results have the fields of random evaluation (MSE
after the stream, per function, and the curve over functions learned) plus the MSE of every
episode. A missing array, a wrong shape or a non-finite value is a one-line error naming the file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metaplastic.errors import ConfigError, DataError
from metaplastic.evaluation.regression import episode_errors, summarize
from metaplastic.meta.experiment import Experiment, seeded_generator
from metaplastic.tasks import Episodes

ARRAYS = ("x", "y", "query_x", "query_y")


def load_regression_file(path: str | Path) -> dict[str, np.ndarray]:
    """The four arrays as float64 (E, F, N) / (E, F, Q), checked for presence, shape and finiteness."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"episode file not found: {path}" if not path.exists() else f"not a regular file: {path}")
    if not zipfile.is_zipfile(path):  # np.load would also take .npy or, with pickles, arbitrary objects
        raise DataError(f"{path}: a regression run takes fixed episodes as an .npz (numpy.savez) of "
                        f"{', '.join(ARRAYS)}; this file is not one")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: not a readable .npz file ({first})") from None
    missing = [k for k in ARRAYS if k not in arrays]
    if missing:
        raise ConfigError(f"{path}: missing array '{missing[0]}' (needs {', '.join(ARRAYS)})")
    out = {}
    for key in ARRAYS:
        a = arrays[key]
        if a.dtype.kind not in "fiu":
            raise DataError(f"{path}: array '{key}' holds {a.dtype}, not numbers")
        a = a.astype(np.float64)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise ConfigError(f"{path}: array '{key}' must be (episodes, functions, samples), got shape {a.shape}")
        if not np.isfinite(a).all():
            raise DataError(f"{path}: array '{key}' contains NaN or inf")
        out[key] = a
    if out["x"].shape != out["y"].shape or out["query_x"].shape != out["query_y"].shape:
        raise ConfigError(f"{path}: x and y, query_x and query_y must have the same shapes, got "
                          f"{out['x'].shape}, {out['y'].shape}, {out['query_x'].shape}, {out['query_y'].shape}")
    if out["x"].shape[:2] != out["query_x"].shape[:2]:
        raise ConfigError(f"{path}: x and query_x must list the same episodes and functions, got "
                          f"{out['x'].shape[:2]} and {out['query_x'].shape[:2]}")
    if min(out["x"].shape[2], out["query_x"].shape[2]) < 1:
        raise ConfigError(f"{path}: every function needs at least one trajectory and one query point")
    return out


def build_regression_episodes(experiment: Experiment, arrays: dict[str, np.ndarray], order: str,
                              where: str = "") -> Episodes:
    """The file's episodes as one batch of the run's stream (inputs built by the task)."""
    task = experiment.task
    if getattr(task, "name", None) != "sine" or not hasattr(task, "inputs"):
        raise ConfigError(f"fixed regression episodes need a sine-regression run; this run's task is '{task.name}'")
    E, F, N = arrays["x"].shape
    B = task.batch_size
    if F != task.n_functions:
        raise ConfigError(f"{where}: {F} functions per episode, but the run learns {task.n_functions} "
                          "(its input has one slot per function)")
    if N % B:
        raise ConfigError(f"{where}: {N} samples per function is not a multiple of the run's task.batch_size {B}")
    x, y = torch.from_numpy(arrays["x"]).reshape(E, F * N), torch.from_numpy(arrays["y"]).reshape(E, F * N)
    slot = torch.arange(F).view(1, F, 1).expand(E, F, N).reshape(E, F * N)
    if order == "iid":
        perm = torch.argsort(torch.rand(E, F * N, generator=seeded_generator(experiment.config.eval.seed, 3)), dim=1)
        x, y, slot = x.gather(1, perm), y.gather(1, perm), slot.gather(1, perm)
    elif order != "continual":
        raise ConfigError(f"order must be 'continual' or 'iid', got '{order}'")
    Q = arrays["query_x"].shape[2]
    qslot = torch.arange(F).view(1, F, 1).expand(E, F, Q)
    empty = torch.zeros(E, 0, F + 1, dtype=torch.float64)
    return Episodes(
        task.inputs(slot, x).reshape(E, F * N // B, B, F + 1), y.reshape(E, F * N // B, B, 1),
        task.inputs(qslot, torch.from_numpy(arrays["query_x"])), torch.from_numpy(arrays["query_y"]).unsqueeze(-1),
        empty, empty[..., :1], tuple(N // B * (k + 1) for k in range(F)),
    )


@torch.no_grad()
def evaluate_regression_file(
    experiment: Experiment, meta: dict[str, Tensor], arrays: dict[str, np.ndarray], where: str = "",
    orders: tuple[str, ...] = ("continual", "iid"),
) -> dict[str, Any]:
    """{order: summary} of the file's episodes, as ``evaluate_learner`` gives for random ones,
    with ``per_episode`` (the MSE after the stream of every listed episode)."""
    exp = experiment
    results = {}
    for order in orders:
        episodes = build_regression_episodes(exp, arrays, order, where).to(exp.device, exp.config.torch_dtype)
        batch = exp.config.eval.batch
        errors = torch.cat([episode_errors(exp.learner, meta, episodes.tasks(slice(i, i + batch)))
                            for i in range(0, episodes.x.shape[0], batch)])
        results[order] = {**summarize(errors, order), "per_episode": errors[:, -1, :].mean(-1).tolist()}
    return results

