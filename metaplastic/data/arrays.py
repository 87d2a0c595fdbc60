"""Small classification datasets that need no download: scikit-learn digits and mnist1d.

Both return an :class:`ArrayDataset` of float32 features (standardised with the training
split's statistics) and int64 labels, with a fixed train/test split, so every rule and every
task stream sees the same numbers for the same seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from metaplastic.errors import ConfigError, DataError


class ArrayDataset(NamedTuple):
    name: str
    train_x: Tensor  # (N, D) float32
    train_y: Tensor  # (N,) int64
    test_x: Tensor
    test_y: Tensor
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(self.train_x.shape[1])


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[Tensor, Tensor]:
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.0)
    as_tensor = lambda a: torch.from_numpy(((a - mean) / std).astype(np.float32))  # noqa: E731
    return as_tensor(train), as_tensor(test)


def _finish(name: str, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> ArrayDataset:
    if not (np.isfinite(x).all() and np.isfinite(xt).all()):
        raise DataError(f"dataset '{name}' contains NaN or inf")
    train_x, test_x = _standardise(x.astype(np.float64), xt.astype(np.float64))
    train_y = torch.from_numpy(np.asarray(y, dtype=np.int64))
    test_y = torch.from_numpy(np.asarray(yt, dtype=np.int64))
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    return ArrayDataset(name, train_x, train_y, test_x, test_y, n_classes)


def load_digits(test_fraction: float = 0.25, split_seed: int = 0) -> ArrayDataset:
    """scikit-learn's 8x8 digits (1797 images, 64 features, 10 classes), stratified split."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise DataError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    data = sk_load_digits()
    x, y = data.data, data.target
    rng = np.random.default_rng(split_seed)
    test_idx = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test_idx.extend(idx[: int(round(test_fraction * len(idx)))])
    test = np.zeros(len(y), dtype=bool)
    test[test_idx] = True
    return _finish("digits", x[~test], y[~test], x[test], y[test])


def load_mnist1d(num_samples: int = 5000, seed: int = 42) -> ArrayDataset:
    """mnist1d (Greydanus 2020), generated offline: 40 features, 10 classes, 80/20 split.

    The default arguments are the package's own defaults (4000 train / 1000 test)."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise DataError("the mnist1d dataset needs the mnist1d package: pip install mnist1d") from None
    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    data = make_dataset(args)
    return _finish("mnist1d", data["x"], data["y"], data["x_test"], data["y_test"])


ARRAY_DATASETS: dict[str, Callable[..., ArrayDataset]] = {"digits": load_digits, "mnist1d": load_mnist1d}


def check_dataset_options(name: str, options: dict[str, Any]) -> None:
    """The options a loader takes, with sensible values: before anything runs or is written."""
    import inspect

    try:
        loader = ARRAY_DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset '{name}' (known: {', '.join(sorted(ARRAY_DATASETS))})") from None
    known = inspect.signature(loader).parameters
    for key, value in options.items():
        if key not in known:
            raise ConfigError(f"unknown key 'dataset_options.{name}.{key}' (options of {name}: {', '.join(known)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"dataset_options.{name}.{key} must be a number, got {value!r}")
    fraction = options.get("test_fraction")
    if fraction is not None and not 0.0 < fraction < 1.0:
        raise ConfigError(f"dataset_options.{name}.test_fraction must lie in (0, 1), got {fraction}")
    samples = options.get("num_samples")
    if samples is not None and samples < 10:
        raise ConfigError(f"dataset_options.{name}.num_samples must be >= 10, got {samples}")


def load_array_dataset(name: str, **kwargs) -> ArrayDataset:
    check_dataset_options(name, kwargs)
    return ARRAY_DATASETS[name](**kwargs)
