"""``metaplastic sweep``: a sweep file run on Ray Tune.

Ray does the scheduling (an embedded Ray on this machine by default, or an existing cluster
with ``address``), the search (grid through Ray's variant generator; random and TPE through
Optuna's samplers, seeded) and the early stopping (ASHA). Seeds are a dimension: on a grid they
are one more grid axis; for random and TPE search Ray's ``Repeater`` runs every suggested point
once per seed and gives the searcher the mean over seeds. Every trial is an ordinary run folder
under ``<out>/trials``; Ray's own state lives in ``<out>/ray`` and is what ``--resume`` restores.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from metaplastic.errors import ConfigError
from metaplastic.sweep.spec import Dimension, Sweep, load_sweep
from metaplastic.sweep.trial import TRIAL_INDEX, TrialContext, run_trial

RAY_DIR = "ray"
TRIALS_DIR = "trials"


def is_available() -> bool:
    """Whether the ``[sweep]`` extra (Ray Tune and Optuna) is installed."""
    try:
        import optuna  # noqa: F401
        import ray.tune  # noqa: F401
    except ImportError:
        return False
    return True


def _require() -> None:
    if not is_available():
        raise ConfigError("metaplastic sweep needs Ray Tune and Optuna: pip install 'metaplastic[sweep]'")


def _domain(dim: Dimension, grid: bool) -> Any:
    from ray import tune

    if dim.kind == "uniform":
        return tune.uniform(*dim.values)
    if dim.kind == "loguniform":
        return tune.loguniform(*dim.values)
    return tune.grid_search(list(dim.values)) if grid else tune.choice(list(dim.values))


def param_space(sweep: Sweep) -> dict[str, Any]:
    from ray import tune

    grid = sweep.spec.search == "grid"
    space = {d.key: _domain(d, grid) for d in sweep.dimensions}
    if grid:
        space["seed"] = tune.grid_search(list(sweep.seeds))
    return space


def search_algorithm(sweep: Sweep) -> Any:
    """None for grid (Ray's variant generator); otherwise Optuna's sampler, repeated over seeds."""
    if sweep.spec.search == "grid":
        return None
    import optuna
    from ray.tune.search import Repeater
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = sweep.spec.search_seed
    sampler = optuna.samplers.TPESampler(seed=seed) if sweep.spec.search == "tpe" else \
        optuna.samplers.RandomSampler(seed=seed)
    searcher = OptunaSearch(sampler=sampler, metric=sweep.metric, mode=sweep.mode)
    return Repeater(searcher, repeat=len(sweep.seeds), set_index=True)


def scheduler(sweep: Sweep) -> Any:
    if sweep.spec.scheduler is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    sch = sweep.spec.scheduler
    return ASHAScheduler(time_attr="meta_step", max_t=sweep.base.meta.steps, grace_period=sch.grace_period,
                         reduction_factor=sch.reduction_factor)


def trial_count(sweep: Sweep) -> int:
    if sweep.spec.search == "grid":
        n = len(sweep.seeds)
        for d in sweep.dimensions:
            n *= len(d.values)
        return n
    return sweep.spec.samples * len(sweep.seeds)


def _init_ray(address: str | None) -> None:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our one line per trial instead of Ray's tables
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR",
                              "runtime_env": {"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}}}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "an embedded Ray"
        raise ConfigError(f"cannot start {where}: {str(e).strip().splitlines()[0]}") from None


def progress_callback(total: int, metric: str, seeds: tuple[int, ...]) -> Any:
    """A Ray Tune callback printing one line per finished trial (Ray's own reporter is off)."""
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self) -> None:
            self.done = 0

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.done += 1
            value = (trial.last_result or {}).get(metric)
            params = {k: v for k, v in trial.config.items() if k != TRIAL_INDEX}
            if TRIAL_INDEX in trial.config:
                params["seed"] = seeds[int(trial.config[TRIAL_INDEX]) % len(seeds)]
            print(f"[{self.done}/{total}] {metric}={value} {params}", file=sys.stderr, flush=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.done += 1
            print(f"[{self.done}/{total}] trial failed: {trial.config} (see {trial.local_path})",
                  file=sys.stderr, flush=True)

    return Progress()


def run_sweep(
    path: str | Path,
    overrides: list[str] | None = None,
    address: str | None = None,
    max_concurrent: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    wandb_mode: str = "disabled",
) -> dict[str, Any]:
    """Run (or resume) a sweep; returns the summary that ``sweep.summary`` wrote."""
    sweep = load_sweep(path, overrides)  # every check before anything starts
    _require()
    from metaplastic.sweep.summary import summarize

    out_dir = sweep.out_dir(out).resolve()
    ray_dir = out_dir / RAY_DIR
    trials_dir = out_dir / TRIALS_DIR
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"sweep output {out_dir} exists and is not a folder")
    started = ray_dir.exists() or trials_dir.exists()
    if started and not resume:
        raise ConfigError(f"{out_dir} already holds a sweep: pass --resume to continue it or choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create sweep output {out_dir}: {e.strerror}") from None
    _init_ray(address)
    from ray import tune

    context = TrialContext(
        base_path=str(sweep.base_path), overrides=sweep.overrides, keys=sweep.keys, seeds=sweep.seeds,
        metric=sweep.metric, mode=sweep.mode, trials_dir=str(trials_dir), cwd=os.getcwd(),
        threads=sweep.spec.threads, wandb_mode=wandb_mode, group=sweep.name,
    )
    res = sweep.spec.resources
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context),
                                    {"cpu": res.cpu, "gpu": res.gpu})
    total = trial_count(sweep)
    run_config = tune.RunConfig(name=RAY_DIR, storage_path=str(out_dir), verbose=0,
                                callbacks=[progress_callback(total, sweep.metric, sweep.seeds)],
                                failure_config=tune.FailureConfig(max_failures=0))
    start = time.perf_counter()
    if resume and tune.Tuner.can_restore(str(ray_dir)):
        tuner = tune.Tuner.restore(str(ray_dir), trainable, resume_unfinished=True, resume_errored=True)
    else:  # nothing of Ray's saved yet: start again; trials continue from their run folders
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(sweep),
            tune_config=tune.TuneConfig(
                metric=sweep.metric, mode=sweep.mode, search_alg=search_algorithm(sweep), scheduler=scheduler(sweep),
                num_samples=1 if sweep.spec.search == "grid" else total,
                max_concurrent_trials=max_concurrent or sweep.spec.max_concurrent,
                time_budget_s=sweep.spec.time_budget_s,
            ),
            run_config=run_config,
        )
    tuner.fit()
    return summarize(sweep, out_dir, seconds=time.perf_counter() - start)
