"""The outer loop: one Adam per meta-parameter group, learning-rate schedules, clipping,
divergence guard, meta-validation, checkpoints (last and best).

A group whose learning rate is null in ``meta.lr`` is held fixed (no gradient is computed for
it), which is how e.g. beta is fixed at 1 in the classification protocol. Meta-validation runs
without gradients on its own fixed episodes, so it cannot change the training numbers.

With a ``Parallel`` (``metaplastic.meta.distributed``, under torchrun) each rank computes its
slice of the meta-batch and the gradients are summed across ranks; rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from metaplastic.config import ExperimentConfig, config_from_dict
from metaplastic.errors import CheckpointError, ConfigError, DivergenceError
from metaplastic.kernels import selection
from metaplastic.meta.checkpoint import CHECKPOINT_FILES, atomic_write_text, load_checkpoint, save_checkpoint
from metaplastic.meta.distributed import Parallel, check_divisible
from metaplastic.meta.experiment import Experiment
from metaplastic.meta.run_lock import LOCK_FILE, RunLock
from metaplastic.params import by_group, group_of
from metaplastic.schedules import schedule_for
from metaplastic.tasks import check_finite


class MetaTrainer:
    def __init__(
        self, experiment: Experiment, initial_meta: dict[str, Tensor] | None = None, parallel: Parallel | None = None
    ):
        self.experiment = experiment
        self.parallel = parallel  # None: one process computes the whole meta-batch
        cfg = experiment.config
        if parallel is not None:
            check_divisible(cfg.meta.meta_batch, parallel.world_size)
        initial = initial_meta if initial_meta is not None else experiment.init_meta()
        self.initial_meta = {k: v.detach().clone() for k, v in initial.items()}
        self.meta = {k: v.detach().clone() for k, v in initial.items()}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        fixed = experiment.fixed_meta_keys()
        self.lifetime = experiment.lifetime_path()  # resolved once, logged at train start
        for group, members in by_group(self.meta, experiment.groups(), f"rule '{cfg.rule['name']}'").items():
            keys = [k for k in members if k not in fixed]
            lr = cfg.meta.lr.get(group)
            if not keys or lr is None:
                continue
            for k in keys:
                self.meta[k].requires_grad_(True)
            self.optimizers[group] = torch.optim.Adam([self.meta[k] for k in keys], lr=lr)
        self.step = 0
        self.best: dict[str, Any] | None = None  # {"step", "metric", "value"} of the best validation so far

    def learning_rate(self, group: str, step: int | None = None) -> float:
        """meta.lr[group] times the group's schedule factor at ``step`` (default: the next step)."""
        meta_cfg = self.config.meta
        base = meta_cfg.lr[group]
        schedule = schedule_for(meta_cfg.schedule, group)
        k = self.step if step is None else step
        return base if schedule is None else base * schedule.factor(k, meta_cfg.steps)

    def validate(self) -> tuple[dict[str, float], bool]:
        """Score the current meta-parameters on the validation episodes; keep track of the best.
        Returns the logged values and whether this step is the new best."""
        from metaplastic.evaluation.validation import higher_is_better, validate, validation_metric

        values = validate(self.experiment, {k: v.detach() for k, v in self.meta.items()})
        metric = validation_metric(self.experiment)
        value = values[metric]
        best = self.best
        better = best is None or (value > best["value"] if higher_is_better(metric) else value < best["value"])
        improved = better and math.isfinite(value)
        if improved:
            self.best = {"step": self.step, "metric": metric, "value": value}
        return values, improved

    @property
    def config(self) -> ExperimentConfig:
        return self.experiment.config

    def trainable(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.meta.items() if v.requires_grad}

    def meta_step(self) -> dict[str, float]:
        """One meta-update on a fresh meta-batch of episodes; returns its metrics."""
        start = time.perf_counter()
        exp = self.experiment
        episodes = exp.training_episodes(self.step)  # the full meta-batch, whatever the rank
        check_finite(episodes)
        parallel = self.parallel
        lifetime = self.lifetime
        measuring = lifetime is not None and lifetime.measured and not lifetime.choices
        with selection.recording() if measuring else contextlib.nullcontext({}) as chosen:
            if parallel is None:
                loss = exp.meta_loss(self.meta, episodes, self.config.meta.unroll)
                value = float(loss.detach())
            else:  # local mean x local/total: the sums over ranks are the mean over the meta-batch
                local = exp.meta_loss(self.meta, parallel.shard(episodes), self.config.meta.unroll)
                loss = local * parallel.loss_weight(self.config.meta.meta_batch)
                value = parallel.sum_value(loss)
        if chosen:  # what ``kernels: auto`` measured, for the run log
            self.lifetime = dataclasses.replace(lifetime, choices=tuple(c.describe() for c in chosen.values()))
        if not math.isfinite(value):
            raise DivergenceError(
                f"inner loop diverged at meta-step {self.step}: meta-loss is {value}; "
                "lower meta.lr (coef, beta) or rule.coef_init, or set meta.grad_clip",
                self.step,
            )
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        metrics: dict[str, float] = {"meta_loss": value}
        if self.optimizers:
            loss.backward()
            grads = {k: v.grad for k, v in self.trainable().items() if v.grad is not None}
            if parallel is not None:  # which grads are None is structural: the same on every rank
                parallel.sum_(list(grads.values()))
            for group in self.optimizers:
                sq = [g.pow(2).sum() for k, g in grads.items() if group_of(k) == group]
                metrics[f"grad_norm/{group}"] = float(torch.stack(sq).sum().sqrt()) if sq else 0.0
            total = math.sqrt(sum(metrics[f"grad_norm/{g}"] ** 2 for g in self.optimizers))
            metrics["grad_norm/total"] = total
            if not math.isfinite(total):
                raise DivergenceError(
                    f"meta-gradient is not finite at meta-step {self.step}; lower meta.lr or set meta.grad_clip",
                    self.step,
                )
            clip = self.config.meta.grad_clip
            if clip is not None and total > clip:
                scale = clip / (total + 1e-12)
                for g in grads.values():
                    g.mul_(scale)
            for group, opt in self.optimizers.items():
                for param_group in opt.param_groups:
                    param_group["lr"] = self.learning_rate(group)
                opt.step()
            if self.config.meta.schedule:
                metrics.update({f"lr/{g}": self.learning_rate(g) for g in self.optimizers})
        self.step += 1
        metrics["step"] = self.step
        metrics["seconds"] = time.perf_counter() - start
        return metrics

    # ---- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "step": self.step,
            "meta": {k: v.detach().cpu() for k, v in self.meta.items()},
            "initial_meta": {k: v.cpu() for k, v in self.initial_meta.items()},
            "optimizers": {g: opt.state_dict() for g, opt in self.optimizers.items()},
            "best": dict(self.best) if self.best is not None else None,
        }

    @classmethod
    def from_state_dict(
        cls, payload: dict[str, Any], config: ExperimentConfig | None = None, parallel: Parallel | None = None
    ) -> MetaTrainer:
        cfg = config if config is not None else config_from_dict(payload["config"])
        experiment = Experiment.from_config(cfg)
        device, dtype = experiment.device, cfg.torch_dtype
        shapes = {k: tuple(v.shape) for k, v in experiment.init_meta().items()}  # what the config builds
        for k, v in payload["initial_meta"].items():
            if k in shapes and tuple(v.shape) != shapes[k]:
                raise CheckpointError(f"checkpoint parameter '{k}' has shape {tuple(v.shape)}, but the config "
                                      f"builds {shapes[k]}: the config does not describe this checkpoint's model")
        initial = {k: v.to(device=device, dtype=dtype) for k, v in payload["initial_meta"].items()}
        trainer = cls(experiment, initial, parallel)
        expected = set(trainer.meta)
        if set(payload["meta"]) != expected:
            raise CheckpointError("checkpoint meta-parameters do not match the config's network and rule")
        with torch.no_grad():
            for k, v in payload["meta"].items():
                if v.shape != trainer.meta[k].shape:
                    raise CheckpointError(
                        f"checkpoint parameter '{k}' has shape {tuple(v.shape)}, "
                        f"expected {tuple(trainer.meta[k].shape)}"
                    )
                trainer.meta[k].copy_(v.to(device=device, dtype=dtype))
        if set(payload["optimizers"]) != set(trainer.optimizers):
            raise CheckpointError("checkpoint optimiser groups do not match the config's meta.lr")
        for g, state in payload["optimizers"].items():
            _check_adam_state(g, state, trainer.optimizers[g])
            try:
                trainer.optimizers[g].load_state_dict(state)
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"checkpoint optimiser state of group '{g}' is inconsistent: {e}") from None
            for group in trainer.optimizers[g].param_groups:
                group["lr"] = cfg.meta.lr[g]
        step = payload["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise CheckpointError(f"checkpoint step must be an integer >= 0, got {step!r}")
        trainer.step = step
        best = payload.get("best")
        trainer.best = dict(best) if isinstance(best, dict) else None
        return trainer


def _check_adam_state(group: str, state: Any, optimizer: torch.optim.Optimizer) -> None:
    """Adam's moments must have the shapes of the parameters they belong to: torch's own
    load_state_dict accepts wrong shapes and the first step then fails far from the cause."""
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict):
        raise CheckpointError(f"checkpoint optimiser state of group '{group}' is not an optimiser state")
    params = [p for pg in optimizer.param_groups for p in pg["params"]]
    for index, entry in state["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            raise CheckpointError(f"checkpoint optimiser state of group '{group}' names parameter {index!r}, "
                                  f"which the group does not have")
        for name in ("exp_avg", "exp_avg_sq"):
            value = entry.get(name)
            if value is not None and (not isinstance(value, Tensor) or value.shape != params[index].shape):
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise CheckpointError(f"checkpoint optimiser state '{name}' of group '{group}' has shape {shape}, "
                                      f"expected {tuple(params[index].shape)}")


def _config_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += _config_differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            diffs.append(f"{prefix}{k}")
    return diffs


RESUMABLE_CHANGES = {
    "meta.steps", "meta.checkpoint_every", "meta.log_every", "out_dir", "device", "eval",
    "meta.validate_every", "meta.validate_episodes",  # validation never changes the training numbers
    "meta.unroll.segment", "meta.unroll.compile",  # how the same gradient is computed
}
EXACT_UNROLL_MODES = {"full", "checkpoint"}  # the same meta-gradients: switching them is resumable


def _is_validation_record(line: str) -> bool:
    return any(k.startswith("val/") for k in json.loads(line))  # lines kept by _read_metrics are objects


def _read_metrics(path: Path, upto: int) -> list[str]:
    if not path.exists():
        return []
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut by a kill: drop it and everything after
        if not isinstance(row, dict) or not isinstance(row.get("step", 0), int):
            break
        if row.get("step", 0) <= upto:
            lines.append(line)
    return lines


def train(
    config: ExperimentConfig,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[MetaTrainer, dict[str, float]], None] | None = None,
    parallel: Parallel | None = None,
) -> MetaTrainer:
    """Meta-train into ``config.run_dir`` (config.yaml, metrics.jsonl, checkpoint.pt and, with
    meta-validation, best.pt: the meta-parameters of the best validation step).

    With ``parallel`` every rank trains on its slice of each meta-batch and loads the same
    checkpoint on resume; only rank 0 writes, validates, shows progress and calls ``on_step``."""
    if parallel is not None:
        check_divisible(config.meta.meta_batch, parallel.world_size)
    main = parallel is None or parallel.is_main
    run_dir = config.run_dir
    ckpt = run_dir / CHECKPOINT_FILES["last"]
    for name in ("config.yaml", "metrics.jsonl", *CHECKPOINT_FILES.values()):
        if (run_dir / name).exists() and not (run_dir / name).is_file():
            raise ConfigError(f"{run_dir / name} is not a regular file: move it away or choose another out_dir")
    if ckpt.exists() and not resume:
        raise ConfigError(
            f"{run_dir} already holds a checkpoint: pass --resume to continue it or choose another out_dir"
        )
    if resume and ckpt.exists():
        payload = load_checkpoint(ckpt)
        try:  # spell out options this version added with their defaults, as the new config does
            saved = config_from_dict(payload["config"]).to_dict()
        except ConfigError as e:
            raise ConfigError(f"the checkpoint in {run_dir} has a config this version cannot read: {e}") from None
        modes = {saved["meta"]["unroll"]["mode"], config.meta.unroll.mode}
        diffs = [
            d
            for d in _config_differences(saved, config.to_dict())
            if not any(d == r or d.startswith(r + ".") for r in RESUMABLE_CHANGES)
            and not (d == "meta.unroll.mode" and modes <= EXACT_UNROLL_MODES)
        ]
        if diffs:
            raise ConfigError(f"config differs from the checkpoint in {run_dir} at '{diffs[0]}': cannot resume")
        trainer = MetaTrainer.from_state_dict(payload, config, parallel)
    else:
        trainer = MetaTrainer(Experiment.from_config(config), parallel=parallel)
    # Load the data (the first meta-batch) before writing anything: a wrong data path must not
    # leave a run folder with a step-0 checkpoint behind that blocks the corrected run.
    check_finite(trainer.experiment.training_episodes(trainer.step))  # NaN in the data: refused here too
    if config.meta.validate_every:
        from metaplastic.evaluation.validation import check_can_validate

        check_can_validate(trainer.experiment)
    if parallel is not None:
        # every rank has checked the folder and read the checkpoint before rank 0 writes there
        parallel.barrier()
        if not main:
            return _follow(trainer, parallel)
    fresh = not (resume and ckpt.exists())
    existed = run_dir.exists()
    before = set(run_dir.iterdir()) if existed else set()
    lock = run_dir / LOCK_FILE
    refused: DivergenceError | None = None
    with RunLock(run_dir):
        if fresh and ckpt.exists():  # another process wrote it between the checks and the lock
            raise ConfigError(f"{run_dir} already holds a checkpoint (written by another run meanwhile): "
                              "pass --resume to continue it or choose another out_dir")
        if resume and fresh:  # --resume means "start or continue" (one command for preemptible jobs): say which
            print(f"metaplastic: no checkpoint in {run_dir}: starting a fresh run", file=sys.stderr)
        try:
            _train_into(trainer, config, progress, on_step)
        except DivergenceError as e:
            if not (fresh and e.step == 0):
                raise
            # The config diverges before its first update: a step-0 checkpoint of it is worth
            # nothing and would make the corrected command refuse the folder. Leave none behind.
            _remove_new(run_dir, before, keep=lock)
            refused = DivergenceError(f"{str(e).split(' (last checkpoint')[0]}; nothing was kept in {run_dir}", 0)
    if refused is not None:
        if not existed:
            lock.unlink(missing_ok=True)
            run_dir.rmdir()
        raise refused
    if parallel is not None:
        parallel.barrier()  # every rank returns once the last checkpoint is written
    return trainer


def _remove_new(run_dir: Path, before: set[Path], keep: Path) -> None:
    """Remove what a run wrote into ``run_dir`` (entries not in ``before``), except ``keep``."""
    import shutil

    for path in set(run_dir.iterdir()) - before - {keep}:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _train_into(
    trainer: MetaTrainer,
    config: ExperimentConfig,
    progress: bool,
    on_step: Callable[[MetaTrainer, dict[str, float]], None] | None,
) -> None:
    """The writing part of ``train``: run by the one process that holds the folder's lock."""
    run_dir = config.run_dir
    ckpt = run_dir / CHECKPOINT_FILES["last"]
    best_ckpt = run_dir / CHECKPOINT_FILES["best"]
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    logged = trainer.lifetime
    if progress and logged is not None:  # with the progress bar; always in the tracking config
        print(f"metaplastic: {config.name}: {logged.describe()}", file=sys.stderr)
    metrics_path = run_dir / "metrics.jsonl"
    kept = _read_metrics(metrics_path, trainer.step)
    atomic_write_text(metrics_path, "".join(line + "\n" for line in kept))
    meta_cfg = config.meta
    every = meta_cfg.validate_every

    def validate_into(metrics: dict[str, float]) -> None:
        values, improved = trainer.validate()
        if improved:
            save_checkpoint(best_ckpt, trainer.state_dict())  # before the last checkpoint records it
        metrics.update(values)

    if every and trainer.step == 0 and not any(_is_validation_record(line) for line in kept):
        first = {"step": 0}
        validate_into(first)
        with metrics_path.open("a") as log:
            log.write(json.dumps(first) + "\n")
    if not ckpt.exists() or (every and trainer.step == 0):
        save_checkpoint(ckpt, trainer.state_dict())

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=meta_cfg.steps,
            initial=trainer.step,
            desc=config.name,
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.5,
        )
    try:
        with metrics_path.open("a") as log:
            while trainer.step < meta_cfg.steps:
                try:
                    metrics = trainer.meta_step()
                except DivergenceError as e:
                    raise DivergenceError(f"{e} (last checkpoint intact: {ckpt})", e.step) from None
                validated = bool(every) and (trainer.step % every == 0 or trainer.step == meta_cfg.steps)
                if validated:
                    validate_into(metrics)
                if trainer.step % meta_cfg.log_every == 0 or trainer.step == meta_cfg.steps or validated:
                    log.write(json.dumps(metrics) + "\n")
                    log.flush()
                if trainer.step % meta_cfg.checkpoint_every == 0 or trainer.step == meta_cfg.steps:
                    save_checkpoint(ckpt, trainer.state_dict())
                if progress and trainer.lifetime is not logged:  # what kernels: auto measured
                    logged = trainer.lifetime
                    print(f"metaplastic: {config.name}: {logged.describe()}", file=sys.stderr)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(meta_loss=f"{metrics['meta_loss']:.4g}", s_per_step=f"{metrics['seconds']:.3g}")
                if on_step is not None:
                    on_step(trainer, metrics)
    finally:
        if bar is not None:
            bar.close()


def _follow(trainer: MetaTrainer, parallel: Parallel) -> MetaTrainer:
    """A rank other than 0: the same meta-steps, nothing written; it waits for rank 0's
    validation and checkpoints in the next collective."""
    while trainer.step < trainer.config.meta.steps:
        trainer.meta_step()
    parallel.barrier()
    return trainer
