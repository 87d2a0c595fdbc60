"""Assemble network, rule (or memory learner), task and loss from a config, and draw seeded data.

Data for meta-step k comes from a generator seeded by (seed, k) alone, so a resumed run sees
exactly the data an uninterrupted run would have seen, with no RNG state to save.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metaplastic.config import ExperimentConfig, UnrollConfig
from metaplastic.errors import ConfigError
from metaplastic.lifetime_paths import SUPPORT, LifetimePath, choose_path
from metaplastic.losses import Loss, get_loss
from metaplastic.memory import build_memory, is_memory
from metaplastic.meta.learner import Learner, MemoryStreamLearner, PlasticLearner, check_memory_config
from metaplastic.meta.memory import check_fits
from metaplastic.meta.objective import learner_meta_loss
from metaplastic.meta.plastic_conv import LR_PREFIX, conv_lr_init, plastic_conv_meta_loss
from metaplastic.networks import MLP, bias_key, weight_key
from metaplastic.networks.conv import PREFIX as FEATURES
from metaplastic.networks.conv import ConvEncoder
from metaplastic.params import prefixed
from metaplastic.rules import Rule, build_rule
from metaplastic.tasks import Episodes, build_task


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator whose seed is a fixed mix of integer keys."""
    seed = 0x9E3779B97F4A7C15
    for k in keys:
        seed = (seed * 6364136223846793005 + int(k) + 1442695040888963407) % (1 << 63)
    return torch.Generator().manual_seed(seed)


def check_device(name: str) -> torch.device:
    """The torch device ``name``, or a one-line ConfigError when it cannot be used here."""
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"device '{name}' cannot be used on this machine: {first}") from None
    return device


@dataclass
class Experiment:
    """``learner`` is what the meta-objective and the evaluations run: the network with its
    rule, or a memory learner (then ``net`` is None and ``rule`` is the memory learner)."""

    config: ExperimentConfig
    net: MLP | None
    rule: Rule
    task: Any
    loss: Loss
    encoder: ConvEncoder | None = None  # image tasks: features computed once per lifetime
    learner: Learner | None = None  # default: PlasticLearner(net, rule, loss)

    def __post_init__(self) -> None:
        if self.learner is None:
            self.learner = PlasticLearner(self.net, self.rule, self.loss)

    @classmethod
    def from_config(cls, config: ExperimentConfig) -> Experiment:
        check_device(config.device)
        task = build_task(config.task)
        encoder, n_in = None, None
        conv = config.network.conv
        if conv is not None:
            side = getattr(task, "image_side", None)
            if side is None:
                raise ConfigError("network.conv needs an image task (e.g. task.source: omniglot)")
            encoder = ConvEncoder(
                side, conv.channels, conv.strides, conv.kernel, conv.padding, normalize=conv.normalize
            )
            n_in = encoder.out_features
            unroll = config.meta.unroll
            support = SUPPORT["plastic_conv"]
            if conv.plastic and (unroll.mode not in support.modes or (unroll.compile and not support.compile)):
                raise ConfigError(
                    f"network.conv.plastic supports only meta.unroll.mode {', '.join(support.modes)} without compile, "
                    f"got mode '{unroll.mode}'{' with compile' if unroll.compile else ''}"
                )
            if conv.plastic and (unroll.path == "fused" or unroll.kernels != "auto"):
                raise ConfigError("network.conv.plastic runs its own step-by-step lifetime: leave meta.unroll.path "
                                  "and meta.unroll.kernels auto (or path step)")
        loss = get_loss(task.loss_name)
        if is_memory(config.rule):
            check_memory_config(config)
            memory = build_memory(config.rule)
            n = n_in or task.n_inputs
            device = torch.device(config.device)
            check_fits([n, task.n_outputs], task, config.meta.meta_batch, config.torch_dtype, device)
            return cls(config, None, memory, task, loss, encoder, MemoryStreamLearner(memory, n, task.n_outputs))
        sizes = [n_in or task.n_inputs, *config.network.hidden, task.n_outputs]
        check_fits(sizes, task, config.meta.meta_batch, config.torch_dtype, torch.device(config.device))
        plastic = list(config.network.plastic) if config.network.plastic is not None else None
        net = MLP.build(sizes, config.network.activation, config.network.output_activation, plastic)
        if config.network.reset_output and not net.layers[-1].plastic:
            raise ConfigError("network.reset_output needs a plastic output layer (it starts every lifetime at zero)")
        return cls(config, net, build_rule(config.rule), task, loss, encoder)

    @property
    def device(self) -> torch.device:
        return torch.device(self.config.device)

    @property
    def plastic_conv(self) -> bool:
        """Whether the conv stage learns in the lifetime (``network.conv.plastic``)."""
        conv = self.config.network.conv
        return self.encoder is not None and conv is not None and conv.plastic

    def init_meta(self) -> dict[str, Tensor]:
        """Initial meta-parameters, identical for the same seed on every device."""
        g = seeded_generator(self.config.seed, 0)
        dtype = self.config.torch_dtype
        meta = self.learner.init(g, dtype)
        if self.encoder is not None:
            meta.update(prefixed(self.encoder.init(g, dtype), "init"))
        if self.plastic_conv:
            meta.update(conv_lr_init(self.encoder, self.config.network.conv.lr_init, dtype))
        for key in self.fixed_meta_keys():
            meta[key] = torch.zeros_like(meta[key])
        return {k: v.to(self.device) for k, v in meta.items()}

    def groups(self) -> tuple[str, ...]:
        """The meta-parameter groups, in the order their optimisers run: the learner's, then the
        plastic convs' step sizes (``lr``) when it has none."""
        groups = self.learner.groups
        return groups + ("lr",) if self.plastic_conv and "lr" not in groups else groups

    def lifetime_path(self) -> LifetimePath | None:
        """The lifetime path training takes (None: a memory learner or plastic convs, which have
        one path each)."""
        if self.net is None or self.plastic_conv:
            return None
        return choose_path(self.rule, self.config.meta.unroll, self.device, self.config.torch_dtype)

    def fixed_meta_keys(self) -> set[str]:
        """Meta-parameters held at their initial value whatever ``meta.lr`` says: the output
        layer's initial weights under ``network.reset_output`` (zero at every lifetime)."""
        if not self.config.network.reset_output:
            return set()
        last = len(self.net.layers) - 1
        return {f"init.{weight_key(last)}", f"init.{bias_key(last)}"}

    def head_meta(self, meta: dict[str, Tensor]) -> dict[str, Tensor]:
        """The meta-parameters of the learner (network and rule, or memory learner), without the
        feature extractor's."""
        return {k: v for k, v in meta.items() if not k.startswith(("init." + FEATURES, LR_PREFIX))}

    def meta_loss(self, meta: dict[str, Tensor], episodes: Episodes, unroll: UnrollConfig) -> Tensor:
        """The meta-objective on raw episodes: frozen features computed once, then the head's
        lifetime; or, with plastic convs, the lifetime in which the convs learn too."""
        if self.plastic_conv:
            return plastic_conv_meta_loss(self.encoder, self.net, self.rule, meta, episodes, self.loss)
        return learner_meta_loss(self.learner, self.head_meta(meta), self.encode(meta, episodes), self.loss, unroll)

    def encode(self, meta: dict[str, Tensor], episodes: Episodes) -> Episodes:
        """Episodes of feature vectors: every image through the shared (frozen) conv stage."""
        if self.encoder is None:
            return episodes
        params = {k[len("init."):]: v for k, v in meta.items() if k.startswith("init." + FEATURES)}
        xs = (episodes.x, episodes.query_x, episodes.remember_x)
        flat = torch.cat([t.reshape(-1, t.shape[-1]) for t in xs])
        feats = self.encoder.forward(params, flat).split([t[..., 0].numel() for t in xs])
        x, qx, rx = (f.reshape(*t.shape[:-1], self.encoder.out_features) for f, t in zip(feats, xs))
        return episodes._replace(x=x, query_x=qx, remember_x=rx)

    def training_episodes(self, step: int) -> Episodes:
        g = seeded_generator(self.config.seed, 1, step)
        return self.task.sample(self.config.meta.meta_batch, g).to(self.device, self.config.torch_dtype)
