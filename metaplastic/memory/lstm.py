"""An LSTM that learns a stream in its activations (Hochreiter & Schmidhuber 1997, with the
forget gate of Gers et al. 2000): the baseline memory learner.

With u_t = [x_t, y_{t-1}] and sigma the logistic function,

    [i, f, g, o] = u_t W_x + h_{t-1} W_h + b
    c_t = sigma(f) * c_{t-1} + sigma(i) * tanh(g)
    h_t = sigma(o) * tanh(c_t)
    y_hat_t = h_t W_y + b_y

The forget gate's bias starts at ``forget_bias`` (1, Gers et al. / Jozefowicz et al. 2015) so
that the cell keeps what it saw early in meta-training. h_0 = c_0 = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metaplastic.errors import ConfigError
from metaplastic.memory.base import State, like, params_of, uniform, with_prefix


def lstm_init(n_u: int, hidden: int, forget_bias: float, g: torch.Generator, dtype: torch.dtype) -> dict[str, Tensor]:
    """W_x (n_u, 4H), W_h (H, 4H), b (4H) in gate order i, f, g, o."""
    b = uniform(g, (4 * hidden,), hidden, dtype)
    b[hidden:2 * hidden] += forget_bias
    return {"W_x": uniform(g, (n_u, 4 * hidden), hidden, dtype), "W_h": uniform(g, (hidden, 4 * hidden), hidden, dtype),
            "b": b}


def lstm_cell(p: dict[str, Tensor], u: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM step; leading dimensions of u, h, c broadcast (queries share one state)."""
    i, f, g, o = (u @ p["W_x"] + h @ p["W_h"] + p["b"]).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


@dataclass(frozen=True)
class LSTMLearner:
    name: str = "lstm"
    hidden: int = 64
    forget_bias: float = 1.0

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise ConfigError(f"rule.hidden must be >= 1, got {self.hidden}")

    def label(self) -> str:
        return "LSTM"

    def init(self, n_in: int, n_out: int, generator: torch.Generator, dtype: torch.dtype) -> dict[str, Tensor]:
        p = lstm_init(n_in + n_out, self.hidden, self.forget_bias, generator, dtype)
        p["W_y"] = uniform(generator, (self.hidden, n_out), self.hidden, dtype)
        p["b_y"] = uniform(generator, (n_out,), self.hidden, dtype)
        return with_prefix(p, self.name)

    def initial_state(self, meta: dict[str, Tensor], n_tasks: int) -> State:
        zeros = torch.zeros(n_tasks, self.hidden, **like(meta))
        return {"h": zeros, "c": zeros}

    def step(self, meta: dict[str, Tensor], state: State, x: Tensor, prev_target: Tensor) -> tuple[State, Tensor]:
        p = params_of(meta, self.name)
        h, c = lstm_cell(p, torch.cat([x, prev_target], -1), state["h"], state["c"])
        return {"h": h, "c": c}, h @ p["W_y"] + p["b_y"]

    def read(self, meta: dict[str, Tensor], state: State, query_x: Tensor) -> Tensor:
        p = params_of(meta, self.name)
        u = torch.cat([query_x, query_x.new_zeros(*query_x.shape[:-1], p["W_y"].shape[1])], -1)
        h, _ = lstm_cell(p, u, state["h"].unsqueeze(1), state["c"].unsqueeze(1))
        return h @ p["W_y"] + p["b_y"]
