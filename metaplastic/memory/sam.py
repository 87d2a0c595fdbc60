"""Sparse Access Memory (Rae et al. 2016, "Scaling memory-augmented neural networks with
sparse reads and writes"): an LSTM controller with an external memory M (N slots x W) that
it reads and writes at K slots per step, so the differentiable part of a step does not grow
with N.

With u_t = [x_t, y_{t-1}] and the previous read r_{t-1}:

    h_t, c_t = LSTM([u_t, r_{t-1}], h_{t-1}, c_{t-1})                 (``lstm.lstm_cell``)
    [q, b, a, alpha, gamma] = h_t W_i + b_i                          (read key, strength, write word, gates)

Write (Sec. 3.2): to the K slots read at t-1 and to the least recently used slot U_t,

    w^W_t  = sigma(alpha) * (sigma(gamma) w^R_{t-1} + (1 - sigma(gamma)) 1_{U_t})
    M_t    = (1 - R_t) * M_{t-1} + w^W_t a^T,   R_t = 1_{U_t} 1^T  (the LRU slot is erased)

Read (Sec. 3.1): the top-K slots by cosine similarity to q, softmax over those K only,

    S_t = topK_i cos(q, M_t[i]);  w^R_t(i) = softmax_{i in S_t}(beta cos(q, M_t[i])),  beta = 1 + softplus(b)
    r_t = sum_{i in S_t} w^R_t(i) M_t[i]

Usage (Sec. 3.3): the time of each slot's last access, set to t wherever w^W_t + w^R_t > delta;
U_t = argmin over slots of that time. The output is y_hat_t = [h_t, r_t] W_y + b_y.

Cost. Reads and writes gather and scatter K + 1 rows; there is no dense N-slot softmax. Two
O(N) parts remain, both outside the differentiable computation: the top-K search is exact
(``torch.topk`` over the N similarities, one matrix-vector product without a graph, where the
paper uses an approximate nearest-neighbour index, which at these sizes would only add
overhead) and the LRU slot is an argmin over the N usage times. The memory itself is updated
out of place (a copy of M per step, O(N W) bytes moved) so that states stay values, which
checkpointing and evaluation at stream boundaries need. With ``k = slots`` the same module is
the dense-attention memory (every slot read and written), the comparison of
``benchmarks/memory_slots.py``.

Initial state: M = 0, r = 0, w^R = 0 (so the first write goes to the LRU slot only), slot i
last used at time i - N (slots are first used in order 0, 1, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from metaplastic.errors import ConfigError
from metaplastic.memory.base import State, like, params_of, uniform, with_prefix
from metaplastic.memory.lstm import lstm_cell, lstm_init

NORM_EPS = 1e-8  # inside the square root of a slot's norm: empty slots (M = 0) stay differentiable


def cosine(q: Tensor, rows: Tensor) -> Tensor:
    """cos(q, row) for rows (..., K, W) and q (..., W) -> (..., K)."""
    dot = (rows * q.unsqueeze(-2)).sum(-1)
    norms = torch.sqrt((rows * rows).sum(-1) + NORM_EPS) * torch.sqrt((q * q).sum(-1, keepdim=True) + NORM_EPS)
    return dot / norms


def gather_rows(memory: Tensor, index: Tensor) -> Tensor:
    """memory (T, N, W), index (T, ...) -> rows (T, ..., W). ``index_select`` on the flat memory
    keeps only the indices for the backward pass (``gather`` would keep every step's memory
    alive: O(N W) memory per step)."""
    T, N, W = memory.shape
    flat = (index.reshape(T, -1) + N * torch.arange(T, device=index.device).unsqueeze(1)).flatten()
    return memory.reshape(T * N, W).index_select(0, flat).reshape(*index.shape, W)


@torch.no_grad()
def top_k_slots(memory: Tensor, q: Tensor, k: int) -> Tensor:
    """Indices (T, ..., K) of the k slots most similar to each key q (T, ..., W): the exact
    search, one matrix product and one norm per slot, without a graph."""
    T, _, W = memory.shape
    keys = q.reshape(T, -1, W)
    dots = keys @ memory.transpose(1, 2)  # (T, Q, N)
    norms = torch.linalg.vector_norm(memory, dim=-1).unsqueeze(1) + NORM_EPS  # ranking only: eps placement immaterial
    return (dots / norms).topk(k, dim=-1).indices.reshape(*q.shape[:-1], k)


def sparse_read(memory: Tensor, q: Tensor, beta: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(read vectors (T, ..., W), slot indices (T, ..., K), read weights (T, ..., K))."""
    index = top_k_slots(memory, q, k)
    rows = gather_rows(memory, index)  # (T, ..., K, W)
    weights = torch.softmax(beta.unsqueeze(-1) * cosine(q, rows), dim=-1)
    return (weights.unsqueeze(-1) * rows).sum(-2), index, weights


@dataclass(frozen=True)
class SparseAccessMemory:
    name: str = "sam"
    hidden: int = 64
    slots: int = 128
    width: int = 32
    k: int = 4
    delta: float = 0.005
    forget_bias: float = 1.0

    def __post_init__(self) -> None:
        if min(self.hidden, self.slots, self.width, self.k) < 1:
            raise ConfigError(f"rule.hidden, rule.slots, rule.width and rule.k must be >= 1, got "
                              f"{self.hidden}, {self.slots}, {self.width}, {self.k}")
        if self.k > self.slots:
            raise ConfigError(f"rule.k ({self.k}) must be at most rule.slots ({self.slots})")
        if not 0 <= self.delta < 1:
            raise ConfigError(f"rule.delta must be in [0, 1), got {self.delta}")

    def label(self) -> str:
        return "SAM"

    def init(self, n_in: int, n_out: int, generator: torch.Generator, dtype: torch.dtype) -> dict[str, Tensor]:
        H, W, g = self.hidden, self.width, generator
        p = lstm_init(n_in + n_out + W, H, self.forget_bias, g, dtype)
        p["W_i"] = uniform(g, (H, 2 * W + 3), H, dtype)
        p["b_i"] = uniform(g, (2 * W + 3,), H, dtype)
        p["W_y"] = uniform(g, (H + W, n_out), H + W, dtype)
        p["b_y"] = uniform(g, (n_out,), H + W, dtype)
        return with_prefix(p, self.name)

    def initial_state(self, meta: dict[str, Tensor], n_tasks: int) -> State:
        opts = like(meta)
        T, N, K = n_tasks, self.slots, self.k
        return {
            "h": torch.zeros(T, self.hidden, **opts),
            "c": torch.zeros(T, self.hidden, **opts),
            "read": torch.zeros(T, self.width, **opts),
            "memory": torch.zeros(T, N, self.width, **opts),
            "read_index": torch.arange(K, device=opts["device"]).expand(T, K),
            "read_weights": torch.zeros(T, K, **opts),
            "last_used": (torch.arange(N, **opts) - N).expand(T, N),
            "time": torch.zeros(T, **opts),
        }

    def controller(self, p: dict[str, Tensor], u: Tensor, state: State, lead: int = 0) -> tuple[Tensor, ...]:
        """(h, c, key, strength, write word, write gate, interpolation gate) from u and the state;
        ``lead`` extra dimensions after the task one (queries) broadcast against the state."""
        h0, c0, r0 = (state[k].reshape(state[k].shape[0], *([1] * lead), -1) for k in ("h", "c", "read"))
        r0 = r0.expand(*u.shape[:-1], -1)
        h, c = lstm_cell(p, torch.cat([u, r0], -1), h0, c0)
        W = self.width
        q, b, a, alpha, gamma = (h @ p["W_i"] + p["b_i"]).split([W, 1, W, 1, 1], dim=-1)
        return h, c, q, 1 + F.softplus(b.squeeze(-1)), a, torch.sigmoid(alpha), torch.sigmoid(gamma)

    def step(self, meta: dict[str, Tensor], state: State, x: Tensor, prev_target: Tensor) -> tuple[State, Tensor]:
        p = params_of(meta, self.name)
        h, c, q, beta, a, alpha, gamma = self.controller(p, torch.cat([x, prev_target], -1), state)
        memory, last_used, t = state["memory"], state["last_used"], state["time"]
        # write: erase the LRU slot, add w^W a^T at the previous read slots and the LRU slot
        lru = last_used.argmin(-1, keepdim=True)  # (T, 1): an O(N) reduction
        write_index = torch.cat([state["read_index"], lru], -1)  # (T, K + 1)
        write_weights = alpha * torch.cat([gamma * state["read_weights"], 1 - gamma], -1)
        rows = torch.cat([-gather_rows(memory, lru), write_weights.unsqueeze(-1) * a.unsqueeze(1)], 1)
        index = torch.cat([lru, write_index], -1)
        memory = memory.scatter_add(1, index.unsqueeze(-1).expand(*index.shape, self.width), rows)
        # read the top-K slots of the new memory
        read, read_index, read_weights = sparse_read(memory, q, beta, self.k)
        # usage: slots accessed above delta were last used now
        touched = torch.cat([read_index, write_index], -1)
        weights = torch.cat([read_weights, write_weights], -1).detach()
        stamp = torch.where(weights > self.delta, t.unsqueeze(-1), torch.full_like(weights, -float("inf")))
        last_used = last_used.scatter_reduce(1, touched, stamp, reduce="amax")
        new = {"h": h, "c": c, "read": read, "memory": memory, "read_index": read_index,
               "read_weights": read_weights, "last_used": last_used, "time": t + 1}
        return new, torch.cat([h, read], -1) @ p["W_y"] + p["b_y"]

    def read(self, meta: dict[str, Tensor], state: State, query_x: Tensor) -> Tensor:
        p = params_of(meta, self.name)
        u = torch.cat([query_x, query_x.new_zeros(*query_x.shape[:-1], p["W_y"].shape[1])], -1)
        h, _, q, beta, *_ = self.controller(p, u, state, lead=1)
        read, _, _ = sparse_read(state["memory"], q, beta, self.k)
        return torch.cat([h, read], -1) @ p["W_y"] + p["b_y"]
