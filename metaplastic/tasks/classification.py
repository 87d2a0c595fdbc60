"""N-way k-shot continual classification streams (OML / FLP Omniglot protocol).

An episode draws N classes of one split and, for each class, k + q distinct samples: the k
"shots" form the lifetime (batch 1, online), the q others are the held-out query set, so query
and trajectory never share a sample. ``continual`` presents the classes one after another, all
k shots of a class in a row; ``iid`` shuffles the same N*k samples. Each episode maps its N
classes to N distinct output units drawn at random from ``n_outputs``, so every output unit is
used across meta-training and a lifetime cannot rely on fixed class identities. Targets are
one-hot. Everything is drawn from the generator passed to ``sample``.

Sources: ``omniglot`` (images, split by alphabet or by character), ``folder`` (images of your
own, ``<root>/<class>/<image>``, preprocessed like Omniglot and split by class with
``test_fraction``/``split_seed``), ``digits`` and ``mnist1d`` (feature vectors; their train and
test samples of the same 10 classes).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from metaplastic.data.images import as_vectors, load_image_folder, preprocess_image
from metaplastic.errors import ConfigError, DataError
from metaplastic.tasks.base import Episodes

ORDERS = ("continual", "iid")
SOURCES = ("omniglot", "folder", "digits", "mnist1d")
IMAGE_SOURCES = ("omniglot", "folder")
SPLITS = ("alphabet", "character")


class ClassPool(NamedTuple):
    """Samples of one split: x (N, D) float32 and the sample indices of every class."""

    x: Tensor
    members: tuple[Tensor, ...]
    names: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        return len(self.members)


def assemble_episodes(
    traj: Tensor, query: Tensor, labels: Tensor, n_outputs: int, order: str, remember_size: int, g: torch.Generator
) -> Episodes:
    """Episodes from per-class samples: traj (T, N, k, D), query (T, N, q, D), labels (T, N)
    output units of the N classes. The lifetime is batch 1: x (T, N*k, 1, D)."""
    T, N, k, D = traj.shape
    q = query.shape[2]
    slot = torch.arange(N).view(1, N, 1).expand(T, N, k).reshape(T, N * k)
    x = traj.reshape(T, N * k, D)
    if order == "iid":
        perm = torch.argsort(torch.rand(T, N * k, generator=g), dim=1)
        x, slot = x.gather(1, perm.unsqueeze(-1).expand(T, N * k, D)), slot.gather(1, perm)
    y = F.one_hot(labels.gather(1, slot), n_outputs).to(x.dtype)
    query_y = F.one_hot(labels.unsqueeze(-1).expand(T, N, q), n_outputs).to(x.dtype)
    idx = torch.randint(0, N * k, (T, remember_size), generator=g)
    remember_x = x.gather(1, idx.unsqueeze(-1).expand(T, remember_size, D))
    remember_y = y.gather(1, idx.unsqueeze(-1).expand(T, remember_size, n_outputs))
    boundaries = tuple(k * (i + 1) for i in range(N))
    return Episodes(x.unsqueeze(2), y.unsqueeze(2), query, query_y, remember_x, remember_y, boundaries)


@functools.lru_cache(maxsize=8)
def split_validation(pool: ClassPool, fraction: float, seed: int, by_class: bool) -> tuple[ClassPool, ClassPool]:
    """(train, validation) from a training pool: a seeded ``fraction`` of its classes
    (``by_class``: new classes, as the test split has) or of every class's samples."""
    g = torch.Generator().manual_seed(seed)
    if by_class:
        order = torch.randperm(pool.n_classes, generator=g).tolist()
        n_val = max(1, int(round(fraction * pool.n_classes)))
        val = sorted(order[:n_val])
        train = sorted(order[n_val:])
        pick = lambda ids: ClassPool(pool.x, tuple(pool.members[i] for i in ids), tuple(pool.names[i] for i in ids))  # noqa: E731
        return pick(train), pick(val)
    train_m, val_m = [], []
    for m in pool.members:
        perm = m[torch.randperm(len(m), generator=g)]
        n_val = max(1, int(round(fraction * len(m))))
        val_m.append(perm[:n_val].sort().values)
        train_m.append(perm[n_val:].sort().values)
    return ClassPool(pool.x, tuple(train_m), pool.names), ClassPool(pool.x, tuple(val_m), pool.names)


def _split_by_class(
    x: Tensor, members: list[Tensor], names: tuple[str, ...], is_test: list[bool]
) -> dict[str, ClassPool]:
    pools = {}
    for name, want in (("train", False), ("test", True)):
        ids = [i for i, t in enumerate(is_test) if t == want]
        pools[name] = ClassPool(x, tuple(members[i] for i in ids), tuple(names[i] for i in ids))
    return pools


def _random_test_classes(n_classes: int, test_fraction: float, split_seed: int) -> list[bool]:
    """A seeded ``test_fraction`` of the classes, for splits that have no named groups."""
    order = torch.randperm(n_classes, generator=torch.Generator().manual_seed(split_seed))
    test_set = set(order[: int(round(test_fraction * n_classes))].tolist())
    return [i in test_set for i in range(n_classes)]


@functools.lru_cache(maxsize=8)
def _omniglot_pools(
    root: str, image_size: int, cache_dir: str | None, split: str, test_alphabets: tuple[str, ...],
    test_fraction: float, split_seed: int,
) -> dict[str, ClassPool]:
    from metaplastic.data.omniglot import load_omniglot

    data = load_omniglot(root, image_size, cache_dir)
    x = as_vectors(data.images)
    members = data.class_members()
    if split == "alphabet":
        unknown = sorted(set(test_alphabets) - set(data.alphabets))
        if unknown:
            raise DataError(f"test alphabet '{unknown[0]}' not in the data (alphabets: {', '.join(data.alphabets)})")
        is_test = [c.split("/")[0] in test_alphabets for c in data.classes]
    else:
        is_test = _random_test_classes(len(data.classes), test_fraction, split_seed)
    return _split_by_class(x, members, data.classes, is_test)


@functools.lru_cache(maxsize=8)
def _folder_pools(
    root: str, image_size: int, invert: bool, test_fraction: float, split_seed: int
) -> dict[str, ClassPool]:
    data = load_image_folder(root, image_size, invert)
    is_test = _random_test_classes(len(data.classes), test_fraction, split_seed)
    return _split_by_class(as_vectors(data.images), data.class_members(), data.classes, is_test)


@functools.lru_cache(maxsize=4)
def _array_pools(source: str) -> dict[str, ClassPool]:
    from metaplastic.data.arrays import load_array_dataset

    data = load_array_dataset(source)
    pools = {}
    for name, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        members = tuple(torch.nonzero(y == c).flatten() for c in range(data.n_classes))
        pools[name] = ClassPool(x, members, tuple(str(c) for c in range(data.n_classes)))
    return pools


@dataclass(frozen=True)
class ClassificationStream:
    name: str = "classification"
    source: str = "omniglot"
    root: str = "data/omniglot"
    image_size: int = 28
    cache_dir: str | None = None  # Omniglot's tensor cache (default ~/.cache/metaplastic; each write is announced)
    invert: bool = True  # folder images: 255 - x, as Omniglot (dark strokes on light paper become bright)
    split: str = "alphabet"
    test_alphabets: tuple[str, ...] = ("Japanese_(katakana)", "Sanskrit", "Tagalog")
    test_fraction: float = 0.5
    split_seed: int = 0
    n_classes: int = 5
    shots: int = 5
    query_per_class: int = 5
    order: str = "continual"
    remember_size: int = 0
    n_outputs: int = 100
    validation_fraction: float = 0.0  # of the training classes (Omniglot) or samples (arrays), for meta.validate_every

    def __post_init__(self) -> None:
        for key, allowed in (("source", SOURCES), ("order", ORDERS), ("split", SPLITS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"task.{key} must be one of {', '.join(allowed)}, got '{getattr(self, key)}'")
        for key in ("image_size", "n_classes", "shots", "query_per_class", "n_outputs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"task.{key} must be >= 1, got {getattr(self, key)}")
        if self.remember_size < 0:
            raise ConfigError(f"task.remember_size must be >= 0, got {self.remember_size}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"task.test_fraction must lie in (0, 1), got {self.test_fraction}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"task.validation_fraction must lie in [0, 1), got {self.validation_fraction}")
        if self.n_classes > self.n_outputs:
            raise ConfigError(f"task.n_classes ({self.n_classes}) exceeds task.n_outputs ({self.n_outputs})")

    # ---- what the experiment needs to know ------------------------------------------
    @property
    def image_side(self) -> int | None:
        """Side of the square images, or None for feature-vector sources."""
        return self.image_size if self.source in IMAGE_SOURCES else None

    @property
    def n_inputs(self) -> int:
        if self.source in IMAGE_SOURCES:
            return self.image_size**2
        return int(self.pool("train").x.shape[1])

    @property
    def loss_name(self) -> str:
        return "cross_entropy"

    @property
    def n_steps(self) -> int:
        return self.n_classes * self.shots

    def with_order(self, order: str) -> ClassificationStream:
        return dataclasses.replace(self, order=order)

    def pool(self, split: str) -> ClassPool:
        """The samples of ``split``: train, validation (carved from train when
        ``validation_fraction`` > 0; never the test split) or test."""
        if split not in ("train", "validation", "test"):
            raise ConfigError(f"split must be 'train', 'validation' or 'test', got '{split}'")
        if split == "validation" and self.validation_fraction == 0.0:
            raise ConfigError("a validation split needs task.validation_fraction > 0 (e.g. 0.2)")
        if self.source == "omniglot":
            pools = _omniglot_pools(
                self.root, self.image_size, self.cache_dir, self.split, tuple(self.test_alphabets),
                self.test_fraction, self.split_seed,
            )
        elif self.source == "folder":
            pools = _folder_pools(self.root, self.image_size, self.invert, self.test_fraction, self.split_seed)
        else:
            pools = _array_pools(self.source)
        if split == "test" or self.validation_fraction == 0.0:
            return pools[split]
        train, validation = split_validation(
            pools["train"], self.validation_fraction, self.split_seed + 1, by_class=self.source in IMAGE_SOURCES
        )
        return train if split == "train" else validation

    def image_vectors(self, paths: list[str | Path]) -> Tensor:
        """(n, D) inputs from image files, preprocessed exactly as this task's pools (for
        episodes of your own); a feature-vector source has no image preprocessing to offer."""
        if self.source not in IMAGE_SOURCES:
            raise ConfigError(
                f"images need an image task (task.source {' or '.join(IMAGE_SOURCES)}), this run's is '{self.source}'"
            )
        invert = True if self.source == "omniglot" else self.invert
        return as_vectors(np.stack([preprocess_image(p, self.image_size, invert) for p in paths]))

    # ---- sampling --------------------------------------------------------------------
    def sample(
        self, n_tasks: int, generator: torch.Generator, split: str = "train", n_classes: int | None = None,
        label_map: str = "random",
    ) -> Episodes:
        """Draw ``n_tasks`` episodes of ``n_classes`` (default: the task's) classes of ``split``.

        ``label_map``: the k-th class of an episode goes to a random output unit (``random``, as
        in training) or to unit k (``ordered``); the same classes and samples either way."""
        N = self.n_classes if n_classes is None else n_classes
        k, q = self.shots, self.query_per_class
        pool = self.pool(split)
        if not 1 <= N <= min(pool.n_classes, self.n_outputs):
            raise ConfigError(
                f"cannot draw {N} classes: the {split} split has {pool.n_classes} classes and the network "
                f"{self.n_outputs} outputs"
            )
        g = generator
        picks, labels = [], []
        for _ in range(n_tasks):
            classes = torch.randperm(pool.n_classes, generator=g)[:N]
            for c in classes.tolist():
                m = pool.members[c]
                if len(m) < k + q:
                    raise DataError(
                        f"class '{pool.names[c]}' has {len(m)} samples; shots + query_per_class need {k + q}"
                    )
                picks.append(m[torch.randperm(len(m), generator=g)[: k + q]])
            units = torch.randperm(self.n_outputs, generator=g)[:N]  # drawn in both maps: same stream after
            labels.append(units if label_map == "random" else torch.arange(N))
        samples = pool.x[torch.stack(picks)].reshape(n_tasks, N, k + q, -1)
        return assemble_episodes(
            samples[:, :, :k], samples[:, :, k:], torch.stack(labels), self.n_outputs, self.order,
            self.remember_size, g,
        )
