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
overhead) and the LRU slot is an argmin over the N usage times. The memory is written in place
and its gradient is one buffer handed down the stream (``write_and_read``; Sec. 3.5 of
the paper: only the touched rows are stored per step), so neither pass copies M. A step
therefore consumes its input state's memory: ``metaplastic.memory.stream`` copies a state it
reuses (a flushed boundary state, a checkpointed segment's input). With ``k = slots`` the same
module is the dense-attention memory (every slot read and written), the comparison of
``benchmarks/memory_slots.py``.

The state also keeps each slot's norm |M[i]|, updated at the written rows only.

Initial state: M = 0, r = 0, w^R = 0 (so the first write goes to the LRU slot only), slot i
last used at time i - N (slots are first used in order 0, 1, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from metaplastic.errors import ConfigError
from metaplastic.memory.base import State, like, params_of, uniform, with_prefix
from metaplastic.memory.lstm import lstm_cell, lstm_init

NORM_EPS = 1e-8  # inside the square root of a slot's norm: empty slots (M = 0) stay differentiable


def cosine(q: Tensor, rows: Tensor) -> Tensor:
    """cos(q, row) for rows (..., K, W) and q (..., W) -> (..., K)."""
    dot = (rows * q.unsqueeze(-2)).sum(-1)
    norms = torch.sqrt((rows * rows).sum(-1) + NORM_EPS) * torch.sqrt((q * q).sum(-1, keepdim=True) + NORM_EPS)
    return dot / norms


def _row_offsets(memory: Tensor) -> Tensor:
    """(T, 1): the first row of each task's slots in the flat (T * N, W) memory."""
    T, N, _ = memory.shape
    return N * torch.arange(T, device=memory.device).unsqueeze(1)


def _flat_index(memory: Tensor, index: Tensor, offsets: Tensor | None = None) -> Tensor:
    """Rows of the flat (T * N, W) memory for per-task slot indices (T, ...)."""
    offsets = _row_offsets(memory) if offsets is None else offsets
    return (index.reshape(offsets.shape[0], -1) + offsets).flatten()


def attend(rows: Tensor, q: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """(read vector (T, ..., W), weights (T, ..., K)): softmax of beta * cosine over the K rows."""
    weights = torch.softmax(beta.unsqueeze(-1) * cosine(q, rows), dim=-1)
    return (weights.unsqueeze(-1) * rows).sum(-2), weights


class _ReadRows(torch.autograd.Function):
    """(memory, rows at ``flat``): the memory passes through (marked dirty, so it is not turned
    into a view); backward adds the rows' gradient into the memory's gradient buffer in place."""

    @staticmethod
    def forward(ctx, memory: Tensor, flat: Tensor) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        ctx.mark_dirty(memory)
        ctx.save_for_backward(flat)
        ctx.shape = memory.shape
        return memory, memory.view(-1, memory.shape[-1]).index_select(0, flat)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_memory: Tensor | None, grad_rows: Tensor | None) -> tuple[Tensor | None, None]:
        if grad_rows is None:
            return grad_memory, None
        (flat,) = ctx.saved_tensors
        if grad_memory is None:  # the last read of a lifetime: the buffer starts here, once per lifetime
            grad_memory = grad_rows.new_zeros(ctx.shape)
        grad_memory.view(-1, ctx.shape[-1]).index_add_(0, flat, grad_rows)
        return grad_memory, None


class _WriteAndRead(torch.autograd.Function):
    """One step's memory access, in place: erase the rows ``erase`` and add ``delta`` at the rows
    ``written`` (repeated rows accumulate), refresh those rows' norms, find the top-K slots for
    the key and gather them. Backward adds the read rows' gradient into the memory's gradient
    buffer, reads the delta's gradient at the written rows, zeroes the erased rows and hands the
    buffer down: O((K + 1) W) per step in both passes, plus the O(N) search."""

    @staticmethod
    def forward(ctx, memory: Tensor, norms: Tensor, erase: Tensor, written: Tensor, delta: Tensor, key: Tensor,
                k: int, offsets: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        W = memory.shape[-1]
        rows = memory.view(-1, W)
        rows.index_fill_(0, erase, 0)
        rows.index_add_(0, written, delta)
        norms.view(-1).index_copy_(0, written, torch.linalg.vector_norm(rows.index_select(0, written), dim=-1))
        index = top_k_slots(memory, norms, key, k)
        read = _flat_index(memory, index, offsets)
        ctx.mark_dirty(memory, norms)
        ctx.mark_non_differentiable(norms, index)
        ctx.save_for_backward(erase, written, read)
        ctx.shape = memory.shape
        return memory, norms, rows.index_select(0, read).reshape(*index.shape, W), index

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_memory: Tensor | None, _norms: None, grad_rows: Tensor | None, _index: None):
        erase, written, read = ctx.saved_tensors
        if grad_rows is not None:
            if grad_memory is None:  # the last write of a lifetime whose memory is not read again
                grad_memory = grad_rows.new_zeros(ctx.shape)
            grad_memory.view(-1, grad_memory.shape[-1]).index_add_(0, read, grad_rows.reshape(-1, grad_rows.shape[-1]))
        if grad_memory is None:
            return (None,) * 8
        rows = grad_memory.view(-1, grad_memory.shape[-1])
        grad_delta = rows.index_select(0, written)
        rows.index_fill_(0, erase, 0)
        return grad_memory, None, None, None, grad_delta, None, None, None


def write_and_read(memory: Tensor, norms: Tensor, erase: Tensor, written: Tensor, delta: Tensor, key: Tensor,
                   k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(memory, norms, rows (T, K, W), slot indices (T, K)) after erasing slots ``erase`` (T, E),
    adding delta (T, R, W) at slots ``written`` (T, R) and searching the top-``k`` slots for
    ``key`` (T, W); memory and norms are updated in place."""
    offsets = _row_offsets(memory)  # once per step, shared by the three index sets
    return _WriteAndRead.apply(memory, norms, _flat_index(memory, erase, offsets),
                               _flat_index(memory, written, offsets), delta.reshape(-1, memory.shape[-1]),
                               key.detach(), k, offsets)


def read_rows(memory: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """(memory, rows (T, ..., W)) for memory (T, N, W) and slot indices (T, ...): O(rows W) in
    both passes. The returned memory is the same tensor; use it from here on."""
    memory, rows = _ReadRows.apply(memory, _flat_index(memory, index))
    return memory, rows.reshape(*index.shape, memory.shape[-1])


@torch.no_grad()
def top_k_slots(memory: Tensor, norms: Tensor, q: Tensor, k: int) -> Tensor:
    """Indices (T, ..., K) of the k slots most similar to each key q (T, ..., W): the exact
    search, one matrix-vector product over the slots (row-major, as M is stored) divided by the
    slots' norms (T, N), kept up to date by ``write_and_read``, without a graph."""
    T, _, W = memory.shape
    dots = (memory @ q.reshape(T, -1, W).transpose(1, 2)).transpose(1, 2)  # (T, Q, N)
    return (dots / (norms.unsqueeze(1) + NORM_EPS)).topk(k, dim=-1).indices.reshape(*q.shape[:-1], k)


def sparse_read(memory: Tensor, norms: Tensor, q: Tensor, beta: Tensor, k: int
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(memory, read vectors (T, ..., W), slot indices (T, ..., K), read weights (T, ..., K))."""
    index = top_k_slots(memory, norms, q, k)
    memory, rows = read_rows(memory, index)  # (T, ..., K, W)
    read, weights = attend(rows, q, beta)
    return memory, read, index, weights


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
            "norms": torch.zeros(T, N, **opts),  # of the memory's rows, for the top-K search
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
        # then read the top-K slots of the new memory
        memory, norms, rows, read_index = write_and_read(memory, state["norms"], lru, write_index,
                                                         write_weights.unsqueeze(-1) * a.unsqueeze(1), q, self.k)
        read, read_weights = attend(rows, q, beta)
        # usage: slots accessed above delta were last used now
        touched = torch.cat([read_index, write_index], -1)
        weights = torch.cat([read_weights, write_weights], -1).detach()
        stamp = torch.where(weights > self.delta, t.unsqueeze(-1), torch.full_like(weights, -float("inf")))
        last_used = last_used.scatter_reduce(1, touched, stamp, reduce="amax")
        new = {"h": h, "c": c, "read": read, "memory": memory, "norms": norms, "read_index": read_index,
               "read_weights": read_weights, "last_used": last_used, "time": t + 1}
        return new, torch.cat([h, read], -1) @ p["W_y"] + p["b_y"]

    def read(self, meta: dict[str, Tensor], state: State, query_x: Tensor) -> Tensor:
        p = params_of(meta, self.name)
        u = torch.cat([query_x, query_x.new_zeros(*query_x.shape[:-1], p["W_y"].shape[1])], -1)
        h, _, q, beta, *_ = self.controller(p, u, state, lead=1)
        _, read, _, _ = sparse_read(state["memory"], state["norms"], q, beta, self.k)
        return torch.cat([h, read], -1) @ p["W_y"] + p["b_y"]
