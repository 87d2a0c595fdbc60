"""What the meta-objective, the evaluations and the analyses ask of a learner, whatever it is.

Two kinds of learner fill the config's ``rule`` section:

- ``PlasticLearner``: an MLP whose weights change by a plasticity rule (``metaplastic.rules``);
  its state is the dict of weights, its lifetime ``run_lifetime``;
- ``MemoryStreamLearner``: a memory learner (``metaplastic.memory``: LSTM, RMC, SAM) whose
  weights never change; its state is its activations, its lifetime the stream of samples.

Both give ``init`` (meta-parameters), ``final_state`` (after a lifetime, with the meta-gradient
path of ``meta.unroll``), ``states`` (along the lifetime, after chosen minibatch steps),
``outputs`` (queries read from a state), ``statistics`` (scalars to track) and ``analyses``
(which of ``metaplastic analyze``'s analyses exist for it), so no consumer branches on the kind.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from metaplastic.config import UnrollConfig
from metaplastic.config_utils import build_named
from metaplastic.errors import ConfigError, ShapeError
from metaplastic.lifetime_paths import SUPPORT, check_path_config, check_support
from metaplastic.losses import Loss
from metaplastic.memory import MEMORY_LEARNERS, MemoryLearner, is_memory
from metaplastic.memory.stream import boundary_states, final_state
from metaplastic.meta.lifetime import FULL, iterate_lifetime, run_lifetime
from metaplastic.networks import MLP
from metaplastic.params import INIT, prefixed
from metaplastic.rules import RULES, Rule
from metaplastic.tasks import Episodes

State = dict[str, Tensor]
ANALYSES = ("alignment", "interference", "overlap", "forgetting")


class Learner(Protocol):
    analyses: tuple[str, ...]

    @property
    def groups(self) -> tuple[str, ...]:
        """Its meta-parameter groups, ``init`` first: each gets an optimiser and ``meta.lr.<group>``."""
        ...

    def init(self, generator: torch.Generator, dtype: torch.dtype) -> dict[str, Tensor]: ...

    def final_state(self, meta: dict[str, Tensor], episodes: Episodes, unroll: UnrollConfig = FULL) -> State: ...

    def states(
        self, meta: dict[str, Tensor], episodes: Episodes, steps: set[int] | None = None
    ) -> Iterator[tuple[int, State]]: ...

    def outputs(self, meta: dict[str, Tensor], state: State, query_x: Tensor) -> Tensor: ...

    def statistics(self, meta: dict[str, Tensor]) -> dict[str, float]: ...


@dataclass(frozen=True)
class PlasticLearner:
    """An MLP learning by its rule: the lifetime of ``metaplastic.meta.lifetime``."""

    net: MLP
    rule: Rule
    loss: Loss
    analyses: tuple[str, ...] = ANALYSES

    @property
    def groups(self) -> tuple[str, ...]:
        return (INIT, *self.rule.groups)

    def init(self, generator: torch.Generator, dtype: torch.dtype) -> dict[str, Tensor]:
        return {**prefixed(self.net.init(generator, dtype), INIT), **self.rule.init(self.net, generator, dtype)}

    def final_state(self, meta: dict[str, Tensor], episodes: Episodes, unroll: UnrollConfig = FULL) -> State:
        return run_lifetime(self.net, self.rule, meta, episodes.x, episodes.y, self.loss, unroll)

    def states(
        self, meta: dict[str, Tensor], episodes: Episodes, steps: set[int] | None = None
    ) -> Iterator[tuple[int, State]]:
        for step, weights in iterate_lifetime(self.net, self.rule, meta, episodes.x, episodes.y, self.loss):
            if steps is None or step in steps:
                yield step, weights

    def outputs(self, meta: dict[str, Tensor], state: State, query_x: Tensor) -> Tensor:
        return self.net.forward(state, query_x).output

    def statistics(self, meta: dict[str, Tensor]) -> dict[str, float]:
        from metaplastic.tracking.stats import rule_statistics

        return rule_statistics(self.net, self.rule, meta)


NO_WEIGHT_UPDATES = "a memory learner's weights do not change in its lifetime (it learns in its activations)"


@dataclass(frozen=True)
class MemoryStreamLearner:
    """A memory learner fed the lifetime sample by sample (``metaplastic.memory.stream``)."""

    memory: MemoryLearner
    n_in: int
    n_out: int
    analyses: tuple[str, ...] = ("forgetting",)

    @property
    def groups(self) -> tuple[str, ...]:
        return (INIT,)  # its parameters are keyed init.<name>.*

    def init(self, generator: torch.Generator, dtype: torch.dtype) -> dict[str, Tensor]:
        return self.memory.init(self.n_in, self.n_out, generator, dtype)

    def check(self, x: Tensor, y: Tensor) -> None:
        if x.dim() != 4 or y.dim() != 4 or x.shape[:3] != y.shape[:3]:
            raise ShapeError(f"lifetime data must be x (T, S, B, n_in) and y (T, S, B, n_out) with matching T, S, B; "
                             f"got x {tuple(x.shape)} and y {tuple(y.shape)}")
        if x.shape[-1] != self.n_in or y.shape[-1] != self.n_out:
            raise ShapeError(f"{self.memory.label()} expects {self.n_in} inputs and {self.n_out} outputs, "
                             f"data has {x.shape[-1]} and {y.shape[-1]}")

    def final_state(self, meta: dict[str, Tensor], episodes: Episodes, unroll: UnrollConfig = FULL) -> State:
        self.check(episodes.x, episodes.y)
        return final_state(self.memory, meta, episodes.x, episodes.y, unroll)

    def states(
        self, meta: dict[str, Tensor], episodes: Episodes, steps: set[int] | None = None
    ) -> Iterator[tuple[int, State]]:
        self.check(episodes.x, episodes.y)
        return boundary_states(self.memory, meta, episodes.x, episodes.y, steps)

    def outputs(self, meta: dict[str, Tensor], state: State, query_x: Tensor) -> Tensor:
        return self.memory.read(meta, state, query_x)

    def statistics(self, meta: dict[str, Tensor]) -> dict[str, float]:
        return {}


def build_rule_section(spec: Any) -> Any:
    """The plasticity rule or memory learner a config's ``rule`` section names."""
    return build_named({**RULES, **MEMORY_LEARNERS}, spec, "rule", "rule")


def check_memory_config(config: Any) -> None:
    """One-line ConfigErrors for settings that have no meaning with a memory learner, which
    takes the place of the network and its rule (only ``network.conv`` still applies;
    ``network.activation`` and ``output_activation`` are not used)."""
    if not is_memory(config.rule):
        return
    name = config.rule["name"]
    net, unroll = config.network, config.meta.unroll
    what = f"rule '{name}' is a memory learner that replaces the network and its rule"
    if net.hidden:
        raise ConfigError(f"{what}: set network.hidden: [] (its sizes are rule.* options), got {list(net.hidden)}")
    if net.plastic is not None:
        raise ConfigError(f"{what}: network.plastic must be null (no weight is plastic in a memory learner)")
    if net.reset_output:
        raise ConfigError(f"{what}: network.reset_output has no meaning for it")
    if net.conv is not None and net.conv.plastic:
        raise ConfigError(f"{what}: network.conv.plastic is not supported with it (the convs are frozen features)")
    modes = SUPPORT["memory"].modes
    if unroll.mode not in modes:
        raise ConfigError(f"meta.unroll.mode '{unroll.mode}' has no meaning for memory learner '{name}' "
                          f"(it makes no inner updates): use {', '.join(modes)}")
    check_support("memory", unroll.mode, unroll.compile, f"memory learner '{name}'")
    for key in ("path", "kernels"):
        if getattr(unroll, key) != "auto":
            raise ConfigError(f"meta.unroll.{key} has no meaning for memory learner '{name}' (leave it auto)")


def check_lifetime_path(config: Any, rule: Any) -> None:
    """One-line ConfigErrors for a ``meta.unroll.path`` / ``kernels`` the rule cannot take."""
    if not is_memory(config.rule):
        check_path_config(rule, config.meta.unroll, config.device, config.rule["name"])
