"""Relational Memory Core (Santoro et al. 2018, "Relational recurrent neural networks").

The state is a memory matrix M (N slots x d, d = heads * head_size). At every step the input
u_t = [x_t, y_{t-1}] is embedded as a row x~ = u_t W_in + b_in, and the slots attend, head by
head, over the memory and the input together (multi-head dot-product attention, Vaswani et al.):

    A   = [M; x~]                                   ((N + 1) x d)
    Q_h = M W_q^h,  K_h = A W_k^h,  V_h = A W_v^h   (head size s)
    M^  = concat_h softmax(Q_h K_h^T / sqrt(s)) V_h
    M~  = LN(M + M^);   M~ = LN(M~ + MLP(M~))       (row-wise 2-layer ReLU MLP, LN without gain)

and each slot (row) is gated like an LSTM cell, from the input and its own previous content:

    [i, f] = x~ W_gx + tanh(M) W_gm + b_g           (per row, per unit)
    M_t    = sigma(i + input_bias) * tanh(M~) + sigma(f + forget_bias) * M

The output is read from the whole memory: y_hat_t = vec(M_t) W_y + b_y. M_0 is the identity
matrix padded with zeros (or truncated) to N x d, as in the authors' Sonnet code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from metaplastic.errors import ConfigError
from metaplastic.memory.base import State, like, params_of, uniform, with_prefix

LN_EPS = 1e-5


def layer_norm(z: Tensor) -> Tensor:
    """Normalise every row to zero mean and unit variance (no learned gain or bias)."""
    mean = z.mean(-1, keepdim=True)
    var = ((z - mean) ** 2).mean(-1, keepdim=True)
    return (z - mean) / torch.sqrt(var + LN_EPS)


@dataclass(frozen=True)
class RelationalMemory:
    name: str = "rmc"
    slots: int = 4
    heads: int = 2
    head_size: int = 32
    forget_bias: float = 1.0
    input_bias: float = 0.0

    def __post_init__(self) -> None:
        if min(self.slots, self.heads, self.head_size) < 1:
            raise ConfigError(f"rule.slots, rule.heads and rule.head_size must be >= 1, got "
                              f"{self.slots}, {self.heads}, {self.head_size}")

    @property
    def width(self) -> int:
        return self.heads * self.head_size

    def label(self) -> str:
        return "RMC"

    def init(self, n_in: int, n_out: int, generator: torch.Generator, dtype: torch.dtype) -> dict[str, Tensor]:
        d, g = self.width, generator
        shapes = {"W_in": (n_in + n_out, d), "b_in": (d,), "W_q": (d, d), "W_k": (d, d), "W_v": (d, d),
                  "W_m1": (d, d), "b_m1": (d,), "W_m2": (d, d), "b_m2": (d,),
                  "W_gx": (d, 2 * d), "W_gm": (d, 2 * d), "b_g": (2 * d,),
                  "W_y": (self.slots * d, n_out), "b_y": (n_out,)}
        fan = {"W_in": n_in + n_out, "b_in": n_in + n_out, "W_y": self.slots * d, "b_y": self.slots * d}
        return with_prefix({k: uniform(g, s, fan.get(k, d), dtype) for k, s in shapes.items()}, self.name)

    def initial_state(self, meta: dict[str, Tensor], n_tasks: int) -> State:
        m0 = torch.eye(self.slots, self.width, **like(meta))
        return {"memory": m0.expand(n_tasks, *m0.shape)}

    def core(self, p: dict[str, Tensor], memory: Tensor, u: Tensor) -> Tensor:
        """The next memory; memory (..., N, d) and u (..., n_u) with the same leading dims."""
        xt = u @ p["W_in"] + p["b_in"]  # (..., d)
        rows = torch.cat([memory, xt.unsqueeze(-2)], -2)  # (..., N + 1, d)
        lead = memory.shape[:-2]

        def heads(z: Tensor) -> Tensor:  # (..., R, d) -> (..., heads, R, s)
            return z.reshape(*z.shape[:-1], self.heads, self.head_size).transpose(-2, -3)

        q, k, v = heads(memory @ p["W_q"]), heads(rows @ p["W_k"]), heads(rows @ p["W_v"])
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_size), dim=-1)
        attended = (att @ v).transpose(-2, -3).reshape(*lead, self.slots, self.width)
        m = layer_norm(memory + attended)
        m = layer_norm(m + torch.relu(m @ p["W_m1"] + p["b_m1"]) @ p["W_m2"] + p["b_m2"])
        i, f = (xt.unsqueeze(-2) @ p["W_gx"] + torch.tanh(memory) @ p["W_gm"] + p["b_g"]).chunk(2, dim=-1)
        return torch.sigmoid(i + self.input_bias) * torch.tanh(m) + torch.sigmoid(f + self.forget_bias) * memory

    def output(self, p: dict[str, Tensor], memory: Tensor) -> Tensor:
        return memory.flatten(-2) @ p["W_y"] + p["b_y"]

    def step(self, meta: dict[str, Tensor], state: State, x: Tensor, prev_target: Tensor) -> tuple[State, Tensor]:
        p = params_of(meta, self.name)
        memory = self.core(p, state["memory"], torch.cat([x, prev_target], -1))
        return {"memory": memory}, self.output(p, memory)

    def read(self, meta: dict[str, Tensor], state: State, query_x: Tensor) -> Tensor:
        p = params_of(meta, self.name)
        u = torch.cat([query_x, query_x.new_zeros(*query_x.shape[:-1], p["W_y"].shape[1])], -1)
        memory = state["memory"].unsqueeze(1).expand(-1, query_x.shape[1], -1, -1)
        return self.output(p, self.core(p, memory, u))
