"""Experiment configs: YAML files with optional ``base:`` inheritance and key=value overrides.

The task and rule sections are polymorphic (selected by their ``name``); they are validated
by building the task and rule objects when the config is loaded, so a typo fails at once. The
rule section may name a memory learner (``metaplastic.memory``) instead of a plasticity rule.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from metaplastic.config_utils import build_dataclass, check_finite_numbers, read_yaml_mapping, to_plain
from metaplastic.errors import ConfigError
from metaplastic.lifetime_paths import KERNELS, PATHS, UNROLL_MODES
from metaplastic.schedules import ALL_GROUPS, ScheduleConfig

DTYPES = {"float32": torch.float32, "float64": torch.float64}
READOUTS = ("all_units", "episode_units")
LABEL_MAPS = ("random", "ordered")
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")  # devices that hold data ('meta' has none)


@dataclass(frozen=True)
class ConvConfig:
    """Convolutional feature extractor for image tasks: meta-learned, frozen in the lifetime
    unless ``plastic`` (then fast weights updated by inner-loop gradient descent, with a
    meta-learned step size per layer starting at ``lr_init``)."""

    channels: tuple[int, ...] = (64, 64, 64, 64)
    strides: tuple[int, ...] = (2, 1, 2, 1)
    kernel: int = 3
    padding: int = 0
    normalize: bool = False
    plastic: bool = False
    lr_init: float = 0.01

    def __post_init__(self) -> None:
        if self.lr_init < 0:
            raise ConfigError(f"network.conv.lr_init must be >= 0, got {self.lr_init}")


@dataclass(frozen=True)
class NetworkConfig:
    hidden: tuple[int, ...] = (300, 300, 300, 300, 300, 900, 300, 300)
    activation: str = "relu"
    output_activation: str = "identity"
    plastic: tuple[int, ...] | None = None
    conv: ConvConfig | None = None
    # The output layer starts every lifetime from zero weights and biases, which are not
    # meta-learned: what the original code's OML baseline did (see docs/reproduction.md).
    reset_output: bool = False


@dataclass(frozen=True)
class UnrollConfig:
    """How the meta-gradient goes through the inner loop (``meta.unroll``).

    - ``full``: exact, through every inner step;
    - ``checkpoint``: exact (the same numbers), keeping only every ``segment``-th state and
      recomputing each segment in the backward pass: memory ~ steps/segment + segment weight
      copies instead of steps, for about one more forward pass;
    - ``truncate``: through the last ``last_steps`` inner steps only (the state before them is
      treated as a constant, so plastic layers' initial weights get no meta-gradient);
    - ``first_order``: every update is computed at detached weights, W' = W + u(stopgrad(W)):
      the meta-gradient reaches the initial weights through the identity path only and the
      rule's parameters through each update directly (first-order MAML generalised).

    ``compile`` runs the inner step of the step-by-step path (rules without a fused lifetime)
    through ``torch.compile``: a one-off compilation (tens of seconds), then
    faster steps; the fused path (FLP, poly) is hand-written and not compiled.

    ``path`` (``auto``, ``fused``, ``step``) and ``kernels`` (``auto``, ``native``, ``torch``)
    choose which implementation computes that gradient: see ``metaplastic.lifetime_paths``,
    which also holds the table of the modes each path supports. ``auto`` is the choice made
    before these fields existed.
    """

    mode: str = "full"
    segment: int | None = None  # checkpoint: inner steps per segment; null: about sqrt(steps)
    last_steps: int | None = None  # truncate: K
    compile: bool = False  # torch.compile the inner step (step-by-step path; not the fused one)
    path: str = "auto"  # fused | step | auto (fused where the rule has a fused lifetime)
    kernels: str = "auto"  # native | torch | auto (native where they apply): the fused path's kernels

    def __post_init__(self) -> None:
        if self.mode not in UNROLL_MODES:
            raise ConfigError(f"meta.unroll.mode must be one of {', '.join(UNROLL_MODES)}, got '{self.mode}'")
        if self.segment is not None and self.segment < 1:
            raise ConfigError(f"meta.unroll.segment must be >= 1 or null, got {self.segment}")
        if self.mode == "truncate" and (self.last_steps is None or self.last_steps < 1):
            raise ConfigError("meta.unroll.mode 'truncate' needs meta.unroll.last_steps >= 1")
        if self.last_steps is not None and self.last_steps < 1:
            raise ConfigError(f"meta.unroll.last_steps must be >= 1 or null, got {self.last_steps}")
        if self.path not in PATHS:
            raise ConfigError(f"meta.unroll.path must be one of {', '.join(PATHS)}, got '{self.path}'")
        if self.kernels not in KERNELS:
            raise ConfigError(f"meta.unroll.kernels must be one of {', '.join(KERNELS)}, got '{self.kernels}'")

    def segment_length(self, n_steps: int) -> int:
        """Steps per checkpointed segment: ``segment`` or ceil(sqrt(n_steps))."""
        return self.segment or max(1, math.ceil(math.sqrt(n_steps)))

    def first_graph_step(self, n_steps: int) -> int:
        """The first inner step the meta-gradient goes through."""
        return max(0, n_steps - self.last_steps) if self.mode == "truncate" and self.last_steps else 0


@dataclass(frozen=True)
class MetaConfig:
    steps: int = 1000
    meta_batch: int = 1
    lr: dict[str, float | None] = field(
        default_factory=lambda: {
            "init": 1e-4, "feedback": 1e-4, "coef": 1e-8, "beta": 1e-4, "lr": None, "inverse": None, "tp": None
        }
    )
    grad_clip: float | None = None
    unroll: UnrollConfig = field(default_factory=UnrollConfig)
    checkpoint_every: int = 100
    log_every: int = 10
    # Meta-validation: every N meta-steps (and at the first and last) score the meta-parameters
    # on validate_episodes fixed held-out episodes; the best are kept in best.pt.
    validate_every: int | None = None
    validate_episodes: int = 20
    # Classification: the class counts validation scores at; null: those of eval.classes that
    # the validation split holds (a validation split is small: 27 classes for 20% of Omniglot's
    # background characters, so 50 or 100 cannot be drawn from it).
    validate_classes: tuple[int, ...] | None = None
    # Learning-rate schedule per meta-parameter group (key 'all' for every group without its own).
    schedule: dict[str, ScheduleConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.meta_batch < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ConfigError("meta.steps must be >= 0 and meta.meta_batch, meta.checkpoint_every, meta.log_every >= 1")
        if self.validate_every is not None and self.validate_every < 1:
            raise ConfigError(f"meta.validate_every must be >= 1 or null, got {self.validate_every}")
        if self.validate_episodes < 1:
            raise ConfigError(f"meta.validate_episodes must be >= 1, got {self.validate_episodes}")
        if self.validate_classes is not None and (not self.validate_classes or min(self.validate_classes) < 1):
            raise ConfigError(
                f"meta.validate_classes must list numbers of classes >= 1 or be null, got {list(self.validate_classes)}"
            )
        from metaplastic.rules.registry import known_groups  # the groups the registered rules declare

        groups = known_groups()
        unknown_schedule = sorted(set(self.schedule) - set(groups) - {ALL_GROUPS})
        if unknown_schedule:
            raise ConfigError(
                f"unknown key 'meta.schedule.{unknown_schedule[0]}' (groups: {', '.join(groups)}, or '{ALL_GROUPS}')"
            )
        unknown = sorted(set(self.lr) - set(groups))
        if unknown:
            raise ConfigError(f"unknown key 'meta.lr.{unknown[0]}' (meta-parameter groups: {', '.join(groups)})")
        for g, v in self.lr.items():
            if v is not None and v < 0:
                raise ConfigError(f"meta.lr.{g} must be >= 0 or null, got {v}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"meta.grad_clip must be > 0 or null, got {self.grad_clip}")


@dataclass(frozen=True)
class EvalConfig:
    episodes: int = 100
    points_per_function: int = 100
    seed: int = 12345
    batch: int = 50
    sgd_lrs: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.05, 0.1)
    validation_episodes: int = 20
    classes: tuple[int, ...] = (5, 10, 20, 50, 100)  # classification: numbers of classes learned
    # Classification: the prediction is the argmax over every output unit (``all_units``) or
    # over the units of the episode's classes only (``episode_units``); the episode's classes go
    # to random output units (``random``, as in training) or to units 0..N-1 (``ordered``).
    readout: str = "all_units"
    label_map: str = "random"

    def __post_init__(self) -> None:
        if self.readout not in READOUTS:
            raise ConfigError(f"eval.readout must be one of {', '.join(READOUTS)}, got '{self.readout}'")
        if self.label_map not in LABEL_MAPS:
            raise ConfigError(f"eval.label_map must be one of {', '.join(LABEL_MAPS)}, got '{self.label_map}'")
        if not self.classes or min(self.classes) < 1:
            raise ConfigError(f"eval.classes must list numbers of classes >= 1, got {list(self.classes)}")
        if self.episodes < 1 or self.points_per_function < 1 or self.batch < 1 or self.validation_episodes < 1:
            raise ConfigError(
                "eval.episodes, eval.points_per_function, eval.batch, eval.validation_episodes must be >= 1"
            )
        if not self.sgd_lrs:
            raise ConfigError("eval.sgd_lrs must list at least one learning rate")
        if not all(lr > 0 for lr in self.sgd_lrs):
            raise ConfigError(f"eval.sgd_lrs must be > 0, got {list(self.sgd_lrs)}")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    out_dir: str | None = None
    task: dict[str, Any] = field(default_factory=lambda: {"name": "sine"})
    network: NetworkConfig = field(default_factory=NetworkConfig)
    rule: dict[str, Any] = field(default_factory=lambda: {"name": "flp"})
    meta: MetaConfig = field(default_factory=MetaConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got '{self.dtype}'")
        if not self.name or self.name in (".", "..") or "/" in self.name or "\\" in self.name or "\0" in self.name:
            raise ConfigError(f"name must be a non-empty folder name (no '/'), got {self.name!r}: runs go to "
                              "runs/<name>")
        try:
            kind = torch.device(self.device).type
        except (RuntimeError, TypeError):
            raise ConfigError(f"device must name a torch device such as cpu or cuda:0, got '{self.device}'") from None
        if kind not in DEVICE_TYPES:
            raise ConfigError(f"device '{self.device}' cannot train (devices: {', '.join(DEVICE_TYPES)}[:N])")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def replace(self, **changes: Any) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)


def _read_yaml(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in _chain:
        raise ConfigError(f"config {path} inherits from itself through 'base:'")
    data = read_yaml_mapping(path, "config")
    if not data:
        # an empty file would silently train the built-in defaults: a paper-size network
        raise ConfigError(f"config {path} is empty: give at least a task, network or rule (see experiments/)")
    base = data.pop("base", None)
    if base is not None:
        merged = _read_yaml((path.parent / str(base)).resolve(), (*_chain, resolved))
        data = deep_merge(merged, data)
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        # A rule/task section that changes its name starts from a clean slate.
        same_kind = not (
            isinstance(v, dict) and "name" in v and isinstance(out.get(k), dict) and out[k].get("name") != v["name"]
        )
        if isinstance(v, dict) and isinstance(out.get(k), dict) and same_kind:
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML (lists, numbers, null)."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override key '{key}' is malformed")
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override '{key}': '{p}' is not a section")
            node[p] = dict(child)
            node = node[p]
        node[parts[-1]] = value
    return data


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    from metaplastic.meta.learner import build_rule_section, check_lifetime_path, check_memory_config
    from metaplastic.tasks import build_task

    check_finite_numbers(data)
    cfg = build_dataclass(ExperimentConfig, data, "")
    # Store the task and rule sections complete, with every default spelled out and values
    # coerced to their declared types: the saved config.yaml and checkpoint then describe the
    # run fully, and ``coef_init=1e-4`` (a string to YAML 1.1), ``0.0001`` or leaving a default
    # implicit all give equal configs, so resuming is not blocked by spelling.
    rule = build_rule_section(cfg.rule)
    full = dataclasses.replace(cfg, task=to_plain(build_task(cfg.task)), rule=to_plain(rule))
    check_finite_numbers(full.to_dict())  # again after coercion: "1e300" reaches here as a string
    check_memory_config(full)
    check_lifetime_path(full, rule)
    return full


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    data = _read_yaml(Path(path))
    data = apply_overrides(data, overrides or [])
    data.setdefault("name", Path(path).stem)
    return config_from_dict(data)
