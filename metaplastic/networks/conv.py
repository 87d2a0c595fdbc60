"""A functional convolutional feature extractor, frozen within a lifetime and meta-learned.

Parameters ``{"features.{i}.weight": (out, in, k, k), "features.{i}.bias": (out,)}`` live in
the ``init`` meta-parameter group. Each lifetime encodes all its images once with the shared
weights; the plastic fully connected layers (an :class:`MLP`) then learn on the feature
vectors, and meta-gradients reach the convolutions through the features.

With ``network.conv.plastic`` the convolutions are fast weights instead (one copy per task,
updated by gradient descent in the inner loop); :meth:`ConvEncoder.forward_tasks` runs the
task-batched forward pass for them as one grouped convolution per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from metaplastic.errors import ConfigError, ShapeError
from metaplastic.networks.activations import get_activation

PREFIX = "features."


@dataclass(frozen=True)
class ConvEncoder:
    image_size: int
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    kernel: int = 3
    padding: int = 0
    in_channels: int = 1
    activation: str = "relu"
    normalize: bool = False  # standardise each feature vector (no parameters): removes the common offset

    def __post_init__(self) -> None:
        if not self.channels or len(self.channels) != len(self.strides):
            raise ConfigError(
                f"network.conv.channels and network.conv.strides need the same non-zero length, "
                f"got {list(self.channels)} and {list(self.strides)}"
            )
        if min(self.channels) < 1 or min(self.strides) < 1 or self.kernel < 1 or self.padding < 0:
            raise ConfigError("network.conv: channels, strides and kernel must be >= 1 and padding >= 0")
        get_activation(self.activation)
        size = self.image_size
        for i, s in enumerate(self.strides):
            size = (size + 2 * self.padding - self.kernel) // s + 1
            if size < 1:
                raise ConfigError(
                    f"network.conv: {self.image_size}x{self.image_size} images shrink to nothing at conv layer {i}"
                )

    @property
    def out_size(self) -> int:
        size = self.image_size
        for s in self.strides:
            size = (size + 2 * self.padding - self.kernel) // s + 1
        return size

    @property
    def in_features(self) -> int:
        return self.in_channels * self.image_size**2

    @property
    def out_features(self) -> int:
        return self.channels[-1] * self.out_size**2

    def init(self, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """PyTorch's nn.Conv2d default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
        params = {}
        c_in = self.in_channels
        for i, c_out in enumerate(self.channels):
            bound = 1.0 / math.sqrt(c_in * self.kernel**2)
            w = torch.rand(c_out, c_in, self.kernel, self.kernel, generator=generator, dtype=torch.float64)
            b = torch.rand(c_out, generator=generator, dtype=torch.float64)
            params[f"{PREFIX}{i}.weight"] = ((2 * w - 1) * bound).to(dtype)
            params[f"{PREFIX}{i}.bias"] = ((2 * b - 1) * bound).to(dtype)
            c_in = c_out
        return params

    def forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """x: (..., in_channels * H * W) flat images -> (..., out_features)."""
        if x.shape[-1] != self.in_features:
            raise ShapeError(f"conv encoder expects {self.in_features} input values per image, got {x.shape[-1]}")
        lead = x.shape[:-1]
        h = x.reshape(-1, self.in_channels, self.image_size, self.image_size)
        act = get_activation(self.activation).fn
        for i, s in enumerate(self.strides):
            w, b = params[f"{PREFIX}{i}.weight"], params[f"{PREFIX}{i}.bias"]
            h = act(F.conv2d(h, w, b, stride=s, padding=self.padding))
        return self._finish(h.reshape(*lead, -1))

    def forward_tasks(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """x: (T, ..., in_features) images of T tasks -> (T, ..., out_features).

        Each weight is shared, (out, in, k, k), or per task, (T, out, in, k, k). Tasks are folded
        into channels and every layer is one convolution with groups=T, so per-task fast conv
        weights cost no Python loop over tasks.
        """
        if x.shape[-1] != self.in_features:
            raise ShapeError(f"conv encoder expects {self.in_features} input values per image, got {x.shape[-1]}")
        lead, n_tasks, side = x.shape[:-1], x.shape[0], self.image_size
        h = x.reshape(n_tasks, -1, self.in_channels, side, side)
        n = h.shape[1]
        h = h.transpose(0, 1).reshape(n, n_tasks * self.in_channels, side, side)
        act = get_activation(self.activation).fn
        for i, s in enumerate(self.strides):
            w, b = params[f"{PREFIX}{i}.weight"], params[f"{PREFIX}{i}.bias"]
            if w.dim() == 4:
                w, b = w.expand(n_tasks, *w.shape), b.expand(n_tasks, *b.shape)
            if w.shape[0] != n_tasks or b.shape[0] != n_tasks:
                raise ShapeError(f"per-task conv weights for {w.shape[0]} tasks, data has {n_tasks}")
            w, b = w.reshape(-1, *w.shape[2:]), b.reshape(-1)
            h = act(F.conv2d(h, w, b, stride=s, padding=self.padding, groups=n_tasks))
        h = h.reshape(n, n_tasks, -1).transpose(0, 1)
        return self._finish(h.reshape(*lead, -1))

    def _finish(self, h: Tensor) -> Tensor:
        if self.normalize:
            # Hebbian updates on all-positive features all point along their common mean; centred,
            # unit-variance features keep the classes apart for a local rule.
            h = F.layer_norm(h, h.shape[-1:])
        return h
