"""A functional multilayer perceptron whose fast weights may carry a task dimension.

Parameters live in a flat dict ``{"layers.{i}.weight": (out, in), "layers.{i}.bias": (out,)}``.
During a lifetime the plastic layers get a leading task (meta-batch) dimension,
``(T, out, in)`` and ``(T, out)``, so a meta-batch of tasks runs in one pass; frozen layers keep
their shared shape and are broadcast, which lets one GEMM serve all tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from metaplastic.errors import ConfigError, ShapeError
from metaplastic.networks.activations import get_activation


@dataclass(frozen=True)
class LayerSpec:
    in_features: int
    out_features: int
    activation: str
    plastic: bool


class Trace(NamedTuple):
    """Everything one forward pass exposes to a plasticity rule.

    ``inputs[l]`` is the presynaptic activity of layer l (the network input for l = 0),
    ``pre[l]`` its pre-activation and ``post[l]`` its postsynaptic activity; all (T, B, n).
    """

    output: Tensor
    inputs: list[Tensor]
    pre: list[Tensor]
    post: list[Tensor]


def weight_key(layer: int) -> str:
    return f"layers.{layer}.weight"


def bias_key(layer: int) -> str:
    return f"layers.{layer}.bias"


@dataclass(frozen=True)
class MLP:
    layers: tuple[LayerSpec, ...]

    @classmethod
    def build(
        cls,
        sizes: list[int],
        activation: str = "relu",
        output_activation: str = "identity",
        plastic: list[int] | None = None,
    ) -> MLP:
        """Build from layer sizes [in, h1, ..., out]; ``plastic`` lists layer indices
        (negative indices count from the output); None makes every layer plastic."""
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ConfigError(f"network sizes must be >= 2 positive integers, got {sizes}")
        n = len(sizes) - 1
        get_activation(activation)
        get_activation(output_activation)
        if plastic is None:
            plastic_set = set(range(n))
        else:
            plastic_set = set()
            for p in plastic:
                if not -n <= p < n:
                    raise ConfigError(f"plastic layer index {p} out of range for {n} layers")
                plastic_set.add(p % n)
        layers = tuple(
            LayerSpec(
                int(sizes[i]),
                int(sizes[i + 1]),
                output_activation if i == n - 1 else activation,
                i in plastic_set,
            )
            for i in range(n)
        )
        return cls(layers)

    @property
    def plastic_layers(self) -> list[int]:
        return [i for i, spec in enumerate(self.layers) if spec.plastic]

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    @property
    def out_features(self) -> int:
        return self.layers[-1].out_features

    def init(self, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for W and b."""
        params = {}
        for i, spec in enumerate(self.layers):
            bound = 1.0 / math.sqrt(spec.in_features)
            w = torch.rand(spec.out_features, spec.in_features, generator=generator, dtype=torch.float64)
            b = torch.rand(spec.out_features, generator=generator, dtype=torch.float64)
            params[weight_key(i)] = ((2 * w - 1) * bound).to(dtype)
            params[bias_key(i)] = ((2 * b - 1) * bound).to(dtype)
        return params

    def forward(self, params: dict[str, Tensor], x: Tensor) -> Trace:
        """x: (T, B, in). Weights (out, in) are shared by all tasks, (T, out, in) are per task."""
        if x.dim() != 3 or x.shape[-1] != self.in_features:
            raise ShapeError(
                f"network input must be (tasks, batch, {self.in_features}), got {tuple(x.shape)}"
            )
        h = x
        inputs, pre, post = [], [], []
        for i, spec in enumerate(self.layers):
            w, b = params[weight_key(i)], params[bias_key(i)]
            inputs.append(h)
            if w.dim() == 2:
                a = torch.addmm(b, h.reshape(-1, h.shape[-1]), w.t()).reshape(*h.shape[:-1], -1)
            else:
                a = torch.baddbmm(b.unsqueeze(-2), h, w.transpose(-1, -2))
            h = get_activation(spec.activation).fn(a)
            pre.append(a)
            post.append(h)
        return Trace(h, inputs, pre, post)
