"""How a memory learner consumes a lifetime: sample by sample, each with the previous label.

The lifetime's minibatches x (T, S, B, n_in), y (T, S, B, n_out) become S*B samples in the
order they are presented; the learner sees u_t = [x_t, y_{t-1}] (y_{-1} = 0), the protocol of
Santoro et al. 2016 and Rae et al. 2016, so it must bind each label to the input seen one step
before. After the last sample one more step presents that sample's label with a zero input
(the "flush"), so the final state holds every label of the stream; queries then read it.

``unroll`` (``meta.unroll``) sets the meta-gradient path over the samples: ``full``;
``checkpoint`` (``torch.utils.checkpoint`` over segments of ``segment`` samples, default
ceil(sqrt(samples)): the same numbers, memory ~ sqrt of the stream); ``truncate`` (the state
is a constant before the last ``last_steps`` samples, which run without a graph).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from metaplastic.config import UnrollConfig
from metaplastic.memory.base import MemoryLearner, State


def stream_samples(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(inputs (T, S*B, n_in), previous targets (T, S*B, n_out)) in presentation order."""
    xs, ys = x.flatten(1, 2), y.flatten(1, 2)
    prev = torch.cat([torch.zeros_like(ys[:, :1]), ys[:, :-1]], 1)
    return xs, prev


def copied(state: State) -> State:
    """A state a step may consume: learners may update their state in place (SAM's memory), so a
    state used again later (a branch, a checkpointed segment's input) is copied first (once per
    branch, not per step; the copy's backward passes the gradient through)."""
    return {k: v.clone() for k, v in state.items()}


def run_samples(
    learner: MemoryLearner, meta: dict[str, Tensor], state: State, xs: Tensor, prev: Tensor, begin: int, end: int
) -> State:
    """The state after samples begin..end-1; consumes ``state``."""
    for t in range(begin, end):
        state, _ = learner.step(meta, state, xs[:, t], prev[:, t])
    return state


def flush(learner: MemoryLearner, meta: dict[str, Tensor], state: State, xs: Tensor, last_target: Tensor) -> State:
    """Present the last sample's label (T, n_out) with a zero input, so the state has seen it."""
    return learner.step(meta, state, torch.zeros_like(xs[:, 0]), last_target)[0]


def run_stream(
    learner: MemoryLearner, meta: dict[str, Tensor], state: State, xs: Tensor, prev: Tensor, unroll: UnrollConfig
) -> State:
    """The state after every sample, with the meta-gradient path ``unroll`` asks for."""
    n = xs.shape[1]
    if unroll.mode == "checkpoint" and torch.is_grad_enabled():
        segment = unroll.segment_length(n)
        for begin in range(0, n, segment):
            state = checkpoint(_segment, learner, meta, state, xs, prev, begin, min(begin + segment, n),
                               use_reentrant=False)
        return state
    start = unroll.first_graph_step(n)
    if start:
        with torch.no_grad():
            state = run_samples(learner, meta, state, xs, prev, 0, start)
        state = {k: v.detach() for k, v in state.items()}
    return run_samples(learner, meta, state, xs, prev, start, n)


def _segment(
    learner: MemoryLearner, meta: dict[str, Tensor], state: State, xs: Tensor, prev: Tensor, begin: int, end: int
) -> State:
    """A checkpointed segment: its input state is kept intact for the recomputation."""
    return run_samples(learner, meta, copied(state), xs, prev, begin, end)


def final_state(
    learner: MemoryLearner, meta: dict[str, Tensor], x: Tensor, y: Tensor, unroll: UnrollConfig
) -> State:
    """The state after the whole lifetime (x (T, S, B, n_in), y (T, S, B, n_out)) and the flush."""
    state = learner.initial_state(meta, x.shape[0])
    if x.shape[1] * x.shape[2] == 0:
        return state
    xs, prev = stream_samples(x, y)
    state = run_stream(learner, meta, state, xs, prev, unroll)
    return flush(learner, meta, state, xs, y.flatten(1, 2)[:, -1])


def boundary_states(
    learner: MemoryLearner, meta: dict[str, Tensor], x: Tensor, y: Tensor, steps: set[int] | None = None
) -> Iterator[tuple[int, State]]:
    """(step, flushed state) after each minibatch step in ``steps`` (default: every step), for
    evaluation along the stream; the stream itself continues from the unflushed state."""
    state = learner.initial_state(meta, x.shape[0])
    xs, prev = stream_samples(x, y)
    per_step = x.shape[2]
    for step in range(x.shape[1]):
        state = run_samples(learner, meta, state, xs, prev, step * per_step, (step + 1) * per_step)
        if steps is None or step in steps:
            yield step, flush(learner, meta, copied(state), xs, y[:, step, -1])
