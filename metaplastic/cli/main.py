"""``metaplastic`` command line: train, evaluate, analyze, suite, compare.

Errors caused by input (configs, data, checkpoints, a diverging run) print one line
``error: ...`` on stderr and exit with status 2; nothing is lost, since checkpoints are written
atomically and ``--resume`` continues a stopped run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metaplastic.errors import MetaplasticError, UsageError


def _train(args: argparse.Namespace) -> None:
    from metaplastic.config import load_config
    from metaplastic.meta import distributed
    from metaplastic.meta.trainer import train

    with distributed.one_report():  # under torchrun, rank 0 alone prints an error all ranks share
        overrides = list(args.overrides)
        if args.out:
            overrides.append(f"out_dir={args.out}")
        if args.device:
            overrides.append(f"device={args.device}")
        cfg = load_config(args.config, overrides)
        if args.nproc is not None and args.nproc > 1:  # this command again, in nproc torchrun workers
            flags = [*(["--resume"] if args.resume else []), *(["--no-progress"] if args.no_progress else []),
                     *(["--wandb", args.wandb] if args.wandb else [])]
            distributed.launch(args.nproc, ["train", args.config, *overrides, *flags], cfg.meta.meta_batch,
                               cfg.device)
            return
        parallel = distributed.setup(cfg.device)
        main = parallel is None or parallel.is_main
        from metaplastic.tracking import TrainingTracking, resolve_mode

        tracking = TrainingTracking(cfg, resolve_mode(args.wandb)) if main else None
        try:
            trainer = train(cfg, resume=args.resume, progress=main and not args.no_progress, on_step=tracking,
                            parallel=parallel)
        finally:
            if tracking is not None:
                tracking.close(cfg.run_dir / "checkpoint.pt")
            if parallel is not None:
                parallel.close()
        if main:
            print(f"meta-trained {cfg.name} for {trainer.step} steps; checkpoint: {cfg.run_dir / 'checkpoint.pt'}")


def _evaluate(args: argparse.Namespace) -> None:
    from metaplastic.evaluation.checkpoint_eval import evaluate_checkpoint
    from metaplastic.evaluation.classification import (
        format_accuracy_table,
        is_classification,
        plot_accuracy,
        plot_per_position,
    )
    from metaplastic.evaluation.report import format_table, plot_curves, result_rows, write_json, write_npz
    from metaplastic.tracking import make_tracker, resolve_mode

    mode = resolve_mode(args.wandb)
    ckpt = Path(args.checkpoint)
    predictions: dict | None = {} if args.predictions else None
    experiment, results = evaluate_checkpoint(
        ckpt, references=not args.no_references, device=args.device, which=args.which, overrides=args.overrides,
        episodes=args.episodes, predictions=predictions,
    )
    out = Path(args.out) if args.out else (ckpt if ckpt.is_dir() else ckpt.parent)
    name = f"{experiment.config.name}-evaluate"
    if is_classification(experiment):
        if args.episodes:  # fixed episodes: accuracy and accuracy per class position, no curve to plot
            from metaplastic.evaluation.episodes_file import format_episode_table

            print(format_episode_table(results, args.episodes))
            episodes_file = str(Path(args.episodes).resolve())
            write_json(out / "evaluation.json", {"checkpoint": str(ckpt), "episodes_file": episodes_file,
                                                 "results": results})
            curves = {name: res["continual"]["per_position"] for name, res in results.items()}
            title = f"{experiment.config.name}: fixed episodes, continual order"
            plot_per_position(curves, out / "evaluation_positions.png", title=title)
            written = [out / "evaluation.json", out / "evaluation_positions.png"]
        else:
            print(format_accuracy_table(results))
            write_json(out / "evaluation.json", {"checkpoint": str(ckpt), "results": results})
            title = f"{experiment.config.name}: accuracy vs classes learned"
            plot_accuracy(results, out / "evaluation.png", title=title)
            n = max(next(iter(results.values()))["continual"]["classes"])
            curves = {name: res["continual"]["per_position"][res["continual"]["classes"].index(n)]
                      for name, res in results.items() if "per_position" in res["continual"]}
            plot_per_position(curves, out / "evaluation_positions.png", chance=1.0 / n,
                              title=f"{experiment.config.name}: {n} classes, continual order")
            written = [out / "evaluation.json", out / "evaluation.png", out / "evaluation_positions.png"]
        if predictions is not None:
            write_npz(out / "predictions.npz", predictions)
            written.append(out / "predictions.npz")
        with make_tracker(out, "evaluate", experiment.config.to_dict(), mode, name=name) as tracker:
            if not args.episodes:
                tracker.image("evaluation", out / "evaluation.png")
            tracker.artifact(out / "evaluation.json", name, "evaluation")
        listed = ", ".join(map(str, written[:-1]))
        print(f"wrote {listed} and {written[-1]}" if listed else f"wrote {written[-1]}")
        return
    print(format_table(results))
    if args.episodes:
        print(f"fixed episodes from {args.episodes}")
    extra = {"episodes_file": str(Path(args.episodes).resolve())} if args.episodes else {}
    write_json(out / "evaluation.json", {"checkpoint": str(ckpt), **extra, "results": results})
    plot_curves(results, out / "evaluation.png", title=experiment.config.name)
    with make_tracker(out, "evaluate", experiment.config.to_dict(), mode, name=name) as tracker:
        rows = result_rows(results)
        tracker.table("evaluation", rows)
        tracker.summary({f"{r['method']}/{r['order']}_mse": r["mse"] for r in rows})
        tracker.image("evaluation", out / "evaluation.png")
    print(f"wrote {out / 'evaluation.json'} and {out / 'evaluation.png'}")


def _analyze(args: argparse.Namespace) -> None:
    from metaplastic.analysis.command import run_analyze
    from metaplastic.tracking import resolve_mode

    mode = resolve_mode(args.wandb)
    run_analyze(args.checkpoint, args.out, args.episodes, args.baseline, args.device, mode)


def _suite(args: argparse.Namespace) -> None:
    from metaplastic.suite import run_suite

    overrides = [*args.overrides, *([f"device={args.device}"] if args.device else [])]
    run_suite(args.suite, overrides, progress=not args.no_progress, out_dir=args.out, jobs=args.jobs,
              only=args.only, threads=args.threads, only_seeds=args.seed)


def _sweep(args: argparse.Namespace) -> None:
    from metaplastic.sweep import run_sweep
    from metaplastic.tracking import resolve_mode

    run_sweep(args.sweep, args.overrides, address=args.address, max_concurrent=args.max_concurrent, out=args.out,
              resume=args.resume, wandb_mode=resolve_mode(args.wandb))


def _wandb_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wandb",
        choices=["online", "offline", "disabled"],
        help="wandb mode (default: WANDB_MODE, else online with an API key, offline without); "
        "a local record goes to <run folder>/tracking/<command>/ in every mode",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def _compare(args: argparse.Namespace) -> None:
    from metaplastic.training.compare import compare, load_compare_config

    overrides = [*args.overrides, *([f"out_dir={args.out}"] if args.out else [])]
    cfg = load_compare_config(args.config, overrides)
    table, _ = compare(cfg, progress=not args.no_progress)
    print(table)
    out = cfg.run_dir
    print(f"wrote {out / 'results.json'}, {out / 'table.md'} and {out / 'learning_curves.png'}")


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is a UsageError (one ``error:`` line, exit 2) instead of
    the usage text on stderr and a SystemExit; --help is unchanged."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="metaplastic", description="Meta-learn local plasticity rules.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="meta-train a config")
    p.add_argument("config", help="YAML config (see experiments/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. meta.steps=100 rule.form=hebb")
    p.add_argument("--resume", action="store_true", help="continue the run in the config's out_dir")
    p.add_argument("--out", help="run folder (default runs/<name>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: the config's)")
    p.add_argument("--nproc", type=_positive_int,
                   help="data-parallel processes on this machine, started through torchrun (default 1)")
    _wandb_flag(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint (file or run folder)")
    p.add_argument("checkpoint")
    p.add_argument("overrides", nargs="*",
                   help="eval.* and task.* overrides, e.g. eval.episodes=50 task.shots=1 eval.readout=episode_units")
    p.add_argument("--no-references", action="store_true", help="skip the untrained and online-SGD references")
    p.add_argument("--checkpoint", dest="which", choices=["last", "best"], default="last",
                   help="of a run folder: the last checkpoint or the best by meta-validation (default last)")
    p.add_argument("--out", help="folder for evaluation.json/png (default: the checkpoint's folder)")
    p.add_argument("--device", help="torch device to evaluate on (default: the config's)")
    p.add_argument("--episodes", metavar="FILE",
                   help="evaluate fixed episodes instead of random ones: classification, a YAML/JSON episode list "
                   "(metaplastic/evaluation/episodes_file.py); regression, an .npz of x, y, query_x, query_y "
                   "(metaplastic/evaluation/regression_file.py); README 'Evaluating on your own data'")
    p.add_argument("--predictions", action="store_true",
                   help="classification: also write every query's logits, prediction and label to predictions.npz")
    _wandb_flag(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("analyze", help="compare a checkpoint's inner-loop updates with gradient descent")
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("--baseline", default="sgd", choices=["sgd", "none"],
                   help="also measure SGD at matched update norm (default sgd)")
    p.add_argument("--out", help="folder for analysis.json and figures (default: <checkpoint folder>/analysis)")
    p.add_argument("--episodes", type=_positive_int, default=32, help="held-out episodes (default 32)")
    p.add_argument("--device", help="torch device (default: the config's)")
    _wandb_flag(p)
    p.set_defaults(func=_analyze)

    p = sub.add_parser("suite", help="train and evaluate the runs of a suite file, print a comparison")
    p.add_argument("suite", help="suite YAML (e.g. experiments/quick.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    p.add_argument("--out", help="output folder (default: the suite's out_dir)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--device", help="torch device for every run")
    p.add_argument("--jobs", type=_positive_int, default=1,
                   help="runs trained at once, in separate processes (default 1)")
    p.add_argument("--threads", type=_positive_int, help="torch threads per run (default: cores / jobs with --jobs)")
    p.add_argument("--only", action="append", metavar="LABEL", help="run only this label of the suite (repeatable)")
    p.add_argument("--seed", action="append", type=int, metavar="K",
                   help="run only this seed of the suite's seeds (repeatable): a slice too long for one session "
                        "is run a few seeds at a time")
    p.set_defaults(func=_suite)

    p = sub.add_parser("sweep", help="search config keys and seeds on Ray Tune (grid, random, Optuna TPE; ASHA)")
    p.add_argument("sweep", help="sweep YAML (e.g. experiments/sweeps/quick_flp_coef.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every trial")
    p.add_argument("--address", help="an existing Ray cluster (default: an embedded Ray on this machine)")
    p.add_argument("--max-concurrent", type=_positive_int, help="trials at once (default: as resources allow)")
    p.add_argument("--out", help="sweep folder (default: the sweep's out_dir, else runs/sweeps/<name>)")
    p.add_argument("--resume", action="store_true", help="continue a killed sweep; finished trials are not re-run")
    _wandb_flag(p)
    p.set_defaults(func=_sweep)

    p = sub.add_parser("compare", help="train a set of rules (no meta-learning) on mnist1d and digits, compare errors")
    p.add_argument("config", help="comparison YAML (e.g. experiments/compare.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=5 datasets=[digits]")
    p.add_argument("--out", help="output folder (default runs/<name>)")
    p.add_argument("--no-progress", action="store_true", help="no per-rule progress lines")
    p.set_defaults(func=_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    from metaplastic.runtime import keep_freed_memory

    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # key=value after an option (`train CFG --out D meta.steps=4`) is an override like any other
        if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    keep_freed_memory()
    try:
        args.func(args)
    except MetaplasticError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only or full filesystem, a path that is not a folder: nothing was lost
        if e.filename is None:
            raise
        where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
        print(f"error: cannot write {where}: {e.strerror or e}; checkpoints already written are intact",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is intact; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
