"""The sweep file: a base config, a search space over dotted config keys, seeds, a metric.

Everything a sweep can get wrong is checked here, before Ray starts or a folder is written:
unknown or mistyped keys (every value of every dimension is applied to the base config and
built), empty dimensions, a metric that no trial would report (the metric must be one that the
base config's meta-validation logs, so ``meta.validate_every`` must be set) and a scheduler
whose rungs do not fit the budget.

    name: quick_flp_coef
    base: ../quick_flp.yaml            # relative to the sweep file
    overrides: [meta.steps=300]        # applied to every trial, before the space's values
    space:
      meta.lr.coef: {loguniform: [1.0e-4, 1.0e-1]}
      rule.coef_init: {grid: [1.0e-4, 1.0e-3]}
      rule.scope: {choice: [synapse, neuron]}
      rule.beta_init: {uniform: [0.5, 1.5]}
    seeds: [0, 1]                      # every point of the space runs once per seed
    metric: val/mse                    # default: the base config's validation metric
    search: random                     # grid | random | tpe (Optuna's TPE through Ray Tune)
    samples: 8                         # points drawn by random/tpe; grid runs the whole product
    scheduler: {name: asha, grace_period: 100, reduction_factor: 2}   # optional, in meta-steps
    resources: {cpu: 1, gpu: 0}        # per trial
    threads: 1                         # torch threads per trial
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metaplastic.config import ExperimentConfig, load_config
from metaplastic.config_utils import build_dataclass, read_yaml_mapping
from metaplastic.errors import ConfigError, MetaplasticError

KINDS = ("grid", "choice", "uniform", "loguniform")
SEARCHES = ("grid", "random", "tpe")
RESERVED_KEYS = ("seed", "out_dir", "name")  # set by the sweep itself


@dataclass(frozen=True)
class Dimension:
    """One swept key: ``grid``/``choice`` list values, ``uniform``/``loguniform`` a [low, high] range."""

    key: str
    kind: str
    values: tuple[Any, ...]

    @property
    def is_range(self) -> bool:
        return self.kind in ("uniform", "loguniform")


@dataclass(frozen=True)
class SchedulerConfig:
    name: str = "asha"
    grace_period: int = 1  # meta-steps a trial runs before it can be stopped
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class ResourcesConfig:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class SweepFile:
    name: str
    base: str
    space: dict[str, Any]
    overrides: tuple[str, ...] = ()
    seeds: tuple[int, ...] | None = None
    metric: str | None = None
    mode: str | None = None
    search: str = "grid"
    samples: int = 1
    search_seed: int = 0
    scheduler: SchedulerConfig | None = None
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    threads: int = 1
    max_concurrent: int | None = None
    time_budget_s: float | None = None
    out_dir: str | None = None


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: the file's settings resolved against its base config."""

    spec: SweepFile
    path: Path  # the sweep file
    base_path: Path  # the base config, absolute
    overrides: tuple[str, ...]  # the file's, then the command line's
    dimensions: tuple[Dimension, ...]
    seeds: tuple[int, ...]
    metric: str
    mode: str  # "min" or "max"
    base: ExperimentConfig  # the base config with the overrides applied

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(d.key for d in self.dimensions)

    def out_dir(self, override: str | Path | None = None) -> Path:
        if override is not None:
            return Path(override)
        return Path(self.spec.out_dir) if self.spec.out_dir else Path("runs") / "sweeps" / self.name


def point_overrides(params: dict[str, Any]) -> list[str]:
    """key=value strings whose values YAML parses back to exactly ``params``' values."""
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True, width=1_000_000).strip().removesuffix('...').strip()}"
            for k, v in params.items()]


def _read(path: Path) -> dict[str, Any]:
    data = read_yaml_mapping(path, "sweep")
    data.setdefault("name", path.stem)
    for key in ("base", "space"):
        if key not in data:
            raise ConfigError(f"sweep {path} has no '{key}'")
    return data


def _dimension(key: str, entry: Any) -> Dimension:
    where = f"space.{key}"
    if key in RESERVED_KEYS:
        raise ConfigError(f"{where}: '{key}' is set by the sweep itself (use 'seeds:' for seeds)")
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ConfigError(f"{where} must be one of {{{': ..., '.join(KINDS)}: ...}}, got {entry!r}")
    (kind, values), = entry.items()
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown kind '{kind}' (known: {', '.join(KINDS)})")
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{where}.{kind} must be a list, got {values!r}")
    if kind in ("grid", "choice"):
        if not values:
            raise ConfigError(f"{where}.{kind} is empty: list at least one value")
        return Dimension(key, kind, tuple(values))
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}.{kind} must be [low, high] numbers, got {values!r}")
    low, high = (float(v) for v in values)
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise ConfigError(f"{where}.{kind}: need finite low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}.loguniform: low must be > 0, got {low}")
    return Dimension(key, kind, (low, high))


def expected_metrics(config: ExperimentConfig) -> list[str]:
    """The names the config's meta-validation logs (see ``evaluation.validation``)."""
    if config.task.get("name") == "classification":
        return ["val/accuracy", *(f"val/accuracy@{c}" for c in config.eval.classes)]
    return ["val/mse"]


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and check a sweep file; ``overrides`` (key=value) apply to every trial."""
    path = Path(path)
    data = _read(path)
    spec = build_dataclass(SweepFile, data, "sweep")
    if spec.search not in SEARCHES:
        raise ConfigError(f"sweep.search must be one of {', '.join(SEARCHES)}, got '{spec.search}'")
    if not spec.space:
        raise ConfigError(f"sweep {path}: the space is empty: name at least one key to sweep")
    dims = tuple(_dimension(str(k), v) for k, v in spec.space.items())
    if spec.seeds is not None and not spec.seeds:
        raise ConfigError(f"sweep {path}: seeds must list at least one seed (or be left out)")
    if spec.seeds is not None and len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(f"sweep {path}: seeds repeat a seed: {list(spec.seeds)}")
    if spec.samples < 1:
        raise ConfigError(f"sweep.samples must be at least 1, got {spec.samples}")
    if spec.threads < 1:
        raise ConfigError(f"sweep.threads must be at least 1, got {spec.threads}")
    if spec.max_concurrent is not None and spec.max_concurrent < 1:
        raise ConfigError(f"sweep.max_concurrent must be at least 1, got {spec.max_concurrent}")
    if spec.resources.cpu < 0 or spec.resources.gpu < 0 or spec.resources.cpu + spec.resources.gpu == 0:
        raise ConfigError(f"sweep.resources needs cpu or gpu > 0, got {spec.resources}")
    if spec.search == "grid":
        ranges = [d.key for d in dims if d.is_range]
        if ranges:
            raise ConfigError(
                f"sweep.search 'grid' needs list values, but '{ranges[0]}' is a range: use search random or tpe"
            )
    base_path = (path.parent / spec.base).resolve()
    all_overrides = (*spec.overrides, *(overrides or []))
    base = _build(base_path, list(all_overrides), path)
    seeds = tuple(spec.seeds) if spec.seeds is not None else (base.seed,)
    for dim in dims:  # every value a trial can get must build
        for value in dim.values:  # a range's values are its two ends
            _build(base_path, [*all_overrides, *point_overrides({dim.key: value})], path)
    metric, mode = _metric(spec, base, path)
    if spec.scheduler is not None:
        sch = spec.scheduler
        if sch.name != "asha":
            raise ConfigError(f"sweep.scheduler.name must be 'asha', got '{sch.name}'")
        if not 1 <= sch.grace_period <= base.meta.steps:
            raise ConfigError(f"sweep.scheduler.grace_period must be in [1, meta.steps={base.meta.steps}]")
        if sch.reduction_factor <= 1:
            raise ConfigError(f"sweep.scheduler.reduction_factor must be > 1, got {sch.reduction_factor}")
    return Sweep(spec, path, base_path, tuple(all_overrides), dims, seeds, metric, mode, base)


def _build(base_path: Path, overrides: list[str], sweep_path: Path) -> ExperimentConfig:
    try:
        return load_config(base_path, overrides)  # the device is checked where the trial runs
    except MetaplasticError as e:
        raise ConfigError(f"sweep {sweep_path}: {e}") from None


def _metric(spec: SweepFile, base: ExperimentConfig, path: Path) -> tuple[str, str]:
    known = expected_metrics(base)
    metric = spec.metric or known[0]
    if metric not in known:
        raise ConfigError(f"sweep {path}: no trial reports metric '{metric}' (its config's validation logs: "
                          f"{', '.join(known)})")
    if not base.meta.validate_every:
        raise ConfigError(f"sweep {path}: metric '{metric}' comes from meta-validation, but the base config "
                          "has meta.validate_every 0: set it (e.g. overrides: [meta.validate_every=50])")
    mode = spec.mode or ("max" if metric.startswith("val/accuracy") else "min")
    if mode not in ("min", "max"):
        raise ConfigError(f"sweep.mode must be min or max, got '{mode}'")
    return metric, mode
