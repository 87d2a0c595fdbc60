"""Suites: meta-train several configs (optionally over seeds), evaluate them with references,
report side by side.

A suite file names the runs (label -> config path, relative to the suite file) and, with
``seeds``, repeats every run once per seed. Each run trains into ``<out_dir>/<label>`` (or
``<out_dir>/<label>/seed<k>``), resumes if that folder already holds a checkpoint, and writes its
own ``results.json`` there (its evaluation at the last checkpoint and, when meta-validated, at the
best one); a finished run whose results file matches its checkpoint is not evaluated again. So a
killed suite continues where it stopped. ``jobs`` > 1 trains that many runs at once in separate
processes (one thread each unless ``threads`` says otherwise); every run is seeded by its own
config, so the numbers do not depend on ``jobs``. With seeds, the suite table gives the mean
over seeds with a 95% Student-t interval (``metaplastic.evaluation.aggregate``). A killed
suite takes its workers with it (``metaplastic.meta.worker_guard``).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaplastic.config import load_config
from metaplastic.config_utils import build_dataclass, read_yaml_mapping
from metaplastic.errors import ConfigError, DivergenceError, JobError, MetaplasticError
from metaplastic.meta.job_pool import Job, JobOutcome, run_jobs


@dataclass(frozen=True)
class SuiteConfig:
    name: str
    runs: dict[str, Any]  # label -> config path, or {config: path, overrides: [key=value, ...]}
    out_dir: str | None = None
    references: bool = True
    seeds: tuple[int, ...] | None = None  # one run per seed and label (the config's seed is replaced)
    overrides: tuple[str, ...] = ()  # key=value applied to every run, before the command line's


@dataclass(frozen=True)
class RunSpec:
    """One run of a suite: its label, seed (None: the config's) and the config's arguments."""

    label: str
    seed: int | None
    config_path: str
    overrides: tuple[str, ...]

    @property
    def key(self) -> str:
        return self.label if self.seed is None else f"{self.label} [seed {self.seed}]"


def load_suite(path: Path) -> SuiteConfig:
    data = read_yaml_mapping(path, "suite")
    data.setdefault("name", path.stem)
    suite = build_dataclass(SuiteConfig, data, "suite")
    if not suite.runs:
        raise ConfigError(f"suite {path} lists no runs")
    if suite.seeds is not None and not suite.seeds:
        raise ConfigError(f"suite {path}: seeds must list at least one seed (or be left out)")
    for label, entry in suite.runs.items():
        _run_entry(label, entry)
    return suite


def _run_entry(label: str, entry: Any) -> tuple[str, tuple[str, ...]]:
    """(config path, overrides) of one suite entry: a path, or {config, overrides}."""
    if isinstance(entry, str):
        return entry, ()
    if isinstance(entry, dict) and isinstance(entry.get("config"), str) and set(entry) <= {"config", "overrides"}:
        overrides = entry.get("overrides") or []
        if isinstance(overrides, list) and all(isinstance(o, str) for o in overrides):
            return entry["config"], tuple(overrides)
    raise ConfigError(
        f"suite run '{label}' must be a config path or {{config: PATH, overrides: [key=value, ...]}}, got {entry!r}"
    )


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_").lower() or "run"


def plan_runs(path: Path, suite: SuiteConfig, overrides: list[str], out: Path, only: list[str] | None,
              only_seeds: list[int] | None = None) -> list[RunSpec]:
    """Every (label, seed) of the suite, its config validated now: a typo fails before any run."""
    labels = list(suite.runs)
    seeds = suite.seeds if suite.seeds is not None else [None]
    if only_seeds:
        unknown_seeds = [s for s in only_seeds if s not in seeds]
        if unknown_seeds:
            listed = ", ".join(map(str, suite.seeds)) if suite.seeds is not None else "none"
            raise ConfigError(f"--seed {unknown_seeds[0]} is not a seed of {path} (seeds: {listed})")
        seeds = [s for s in seeds if s in only_seeds]
    if only:
        unknown = [o for o in only if o not in suite.runs]
        if unknown:
            raise ConfigError(f"--only '{unknown[0]}' is not a run of {path} (runs: {', '.join(labels)})")
        labels = [label for label in labels if label in only]
    specs = []
    # seed-major: every learner's first seed before any learner's second, so a suite stopped
    # early has compared all learners on the seeds it finished
    for seed in seeds:
        for label in labels:
            config_path, own = _run_entry(label, suite.runs[label])
            run_dir = out / _slug(label) / (f"seed{seed}" if seed is not None else "")
            extra = [*suite.overrides, *own, *overrides, *([f"seed={seed}"] if seed is not None else []),
                     f"out_dir={run_dir.as_posix().rstrip('/')}"]
            spec = RunSpec(label, seed, str(path.parent / config_path), tuple(extra))
            load_config(spec.config_path, list(spec.overrides))
            specs.append(spec)
    folders: dict[str, str] = {}
    for spec in specs:
        folder = spec.overrides[-1]
        if folder in folders:
            raise ConfigError(f"suite runs '{folders[folder]}' and '{spec.key}' would share one folder ({folder[8:]}): "
                              "rename one")
        folders[folder] = spec.key
    return specs


def run_one(spec: RunSpec, references: bool, progress: bool, threads: int | None = None) -> dict[str, Any]:
    """Train (or resume) one run and evaluate it; the record is also written to its results.json."""
    import torch

    from metaplastic.evaluation.checkpoint_eval import evaluate_trained, evaluate_trained_classification, load_trainer
    from metaplastic.evaluation.classification import is_classification
    from metaplastic.evaluation.report import write_json
    from metaplastic.meta.checkpoint import CHECKPOINT_FILES
    from metaplastic.meta.trainer import train

    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(spec.config_path, list(spec.overrides))
    results_path = cfg.run_dir / "results.json"
    done = _finished_record(results_path, cfg.to_dict())
    if done is not None:
        return done
    start = time.perf_counter()
    diverged: dict[str, Any] | None = None
    try:
        trainer = train(cfg, resume=True, progress=progress)
    except DivergenceError as e:
        # A study reports a diverged run instead of stopping: its last checkpoint (before the
        # divergence) and best checkpoint are evaluated, and re-running does not retry it.
        diverged = {"step": e.step, "message": str(e)}
        if (cfg.run_dir / CHECKPOINT_FILES["last"]).is_file():
            trainer = load_trainer(cfg.run_dir)
        else:  # diverged in its first meta-step, so train kept nothing: its state is the initial one
            from metaplastic.meta.experiment import Experiment
            from metaplastic.meta.trainer import MetaTrainer

            trainer = MetaTrainer(Experiment.from_config(cfg))
    seconds = time.perf_counter() - start
    evaluate = evaluate_trained_classification if is_classification(trainer.experiment) else evaluate_trained
    record: dict[str, Any] = {
        "label": spec.label,
        "seed": spec.seed,
        "run_dir": str(cfg.run_dir),
        "step": trainer.step,
        "train_seconds_this_session": seconds,
        "config": cfg.to_dict(),
        "diverged": diverged,
        "last": _strip_labels(evaluate(trainer, untrained=references)),
    }
    if trainer.best is not None and (cfg.run_dir / CHECKPOINT_FILES["best"]).is_file():
        best = load_trainer(cfg.run_dir, which="best")
        record["best"] = {**_strip_labels(evaluate(best, untrained=False)), "validation": trainer.best}
    record["validation_curve"] = validation_curve(cfg.run_dir / "metrics.jsonl")
    record["train_seconds_total"] = estimated_train_seconds(cfg.run_dir / "metrics.jsonl", trainer.step)
    write_json(results_path, record)
    return record


def _strip_labels(results: dict[str, Any]) -> dict[str, Any]:
    """{"trained", "untrained"?, "references"?: {name: ...}} from the evaluators' labelled rows."""
    out: dict[str, Any] = {}
    for name, res in results.items():
        if " meta-trained (" in name:
            out["trained"] = res
        elif name.endswith("untrained init"):
            out["untrained"] = res
        else:
            out.setdefault("references", {})[name] = res
    return out


def _metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if isinstance(row, dict):
            rows.append(row)
    return rows


def estimated_train_seconds(path: Path, steps: int) -> float:
    """Meta-training seconds of a run over all its sessions: the mean of the logged per-step
    times (every ``meta.log_every`` steps) times the number of steps."""
    times = [r["seconds"] for r in _metrics(path) if isinstance(r.get("seconds"), (int, float))]
    return sum(times) / len(times) * steps if times else 0.0


def validation_curve(path: Path) -> dict[str, list[float]]:
    """{"step": [...], "<metric>": [...]} of every meta-validation in a run's metrics.jsonl."""
    curve: dict[str, list[float]] = {"step": []}
    for row in _metrics(path):
        vals = {k: v for k, v in row.items() if k.startswith("val/")}
        if vals:
            curve["step"].append(row["step"])
            for k, v in vals.items():
                curve.setdefault(k, []).append(v)
    return curve


def _finished_record(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The run's results.json if it records this config at its final step, else None."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("config") != config:
        return None
    finished = record.get("step") == config["meta"]["steps"] or record.get("diverged") is not None
    return record if finished else None


def run_suite(
    path: str | Path,
    overrides: list[str] | None = None,
    progress: bool = True,
    out_dir: str | None = None,
    log=print,
    jobs: int = 1,
    only: list[str] | None = None,
    threads: int | None = None,
    only_seeds: list[int] | None = None,
) -> dict[str, Any]:
    from metaplastic.evaluation.aggregate import aggregate_runs, write_suite_outputs
    from metaplastic.evaluation.references import evaluate_online_sgd
    from metaplastic.meta.experiment import Experiment

    path = Path(path)
    suite = load_suite(path)
    out = Path(out_dir or suite.out_dir or Path("runs") / suite.name)
    specs = plan_runs(path, suite, list(overrides or []), out, only, only_seeds)
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    records: dict[str, dict[str, Any]] = {}
    if jobs == 1:
        for spec in specs:
            records[spec.key] = run_one(spec, suite.references, progress, threads)
            _log_run(log, records[spec.key])
    else:
        per_job = threads or max(1, (os.cpu_count() or 1) // jobs)

        def log_finished(outcome: JobOutcome) -> None:
            if outcome.ok:
                _log_run(log, outcome.result)

        outcomes = run_jobs([Job(spec.key, run_one, (spec, suite.references, False, per_job)) for spec in specs],
                            workers=jobs, on_outcome=log_finished)
        records = {key: o.result for key, o in outcomes.items() if o.ok}
        errors = [o for o in outcomes.values() if o.error is not None]
        if errors:  # the runs in flight finished; no new one started
            error = errors[0].error
            if isinstance(error, MetaplasticError):
                raise type(error)(f"{errors[0].key}: {error}") from None
            raise error
        died = [o for o in outcomes.values() if o.died is not None]
        if died:
            names = "; ".join(f"{o.key}: {o.died}" for o in died)
            raise JobError(f"{names}; the other runs went on. The same command resumes "
                           f"{'it' if len(died) == 1 else 'them'} from the last checkpoint")
    if only or only_seeds:
        # the suite's summary covers every finished run in its folder, not only this call's slice
        everything = plan_runs(path, suite, list(overrides or []), out, None)
        for spec in everything:
            if spec.key not in records:
                cfg = load_config(spec.config_path, list(spec.overrides))
                done = _finished_record(cfg.run_dir / "results.json", cfg.to_dict())
                if done is not None:
                    records[spec.key] = done
        records = {spec.key: records[spec.key] for spec in everything if spec.key in records}  # the suite's order
    references = {}
    if suite.references and specs:
        # online SGD trains the network of the first run that has one (memory learners have none)
        experiments = (Experiment.from_config(load_config(s.config_path, list(s.overrides))) for s in specs)
        experiment = next((e for e in experiments if e.net is not None), None)
        if experiment is not None and getattr(experiment.task, "name", None) != "classification":
            references["online SGD, random init"] = evaluate_online_sgd(experiment)
    summary = aggregate_runs(records, references)
    write_suite_outputs(out, suite.name, records, summary, log)
    return summary


def _log_run(log, record: dict[str, Any]) -> None:
    seed = "" if record["seed"] is None else f" seed {record['seed']}"
    diverged = record.get("diverged")
    note = f", diverged at meta-step {diverged['step']} (evaluated at its last checkpoint)" if diverged else ""
    seconds = estimated_train_seconds(Path(record["run_dir"]) / "metrics.jsonl", record["step"])
    log(f"{record['label']}{seed}: {record['step']} meta-steps ({seconds:.0f} s of training"
        f"{note}) -> {record['run_dir']}")
