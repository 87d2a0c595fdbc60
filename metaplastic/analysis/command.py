"""``metaplastic analyze``: analyse a checkpoint, write analysis.json and figures, track, print a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metaplastic.analysis.figures import write_figures
from metaplastic.analysis.runner import analyze_checkpoint, format_summary, summary


def run_analyze(
    checkpoint: str | Path,
    out: str | Path | None = None,
    episodes: int = 32,
    baseline: str = "sgd",
    device: str | None = None,
    wandb: str | None = "disabled",
    log: Any = print,
) -> dict[str, Any]:
    """Returns the results; files go to ``out`` (default ``<checkpoint folder>/analysis``)."""
    from metaplastic.evaluation.report import write_json
    from metaplastic.tracking import make_tracker

    ckpt = Path(checkpoint)
    trainer, results = analyze_checkpoint(ckpt, episodes, baseline, device)
    out = Path(out) if out else (ckpt if ckpt.is_dir() else ckpt.parent) / "analysis"
    write_json(out / "analysis.json", results)
    figures = write_figures(results, out, f"{results['rule']} ({results['config']}, meta-step {results['meta_step']})")
    log(format_summary(results))
    config = {**trainer.config.to_dict(), "analysis": {"checkpoint": str(ckpt), "episodes": episodes,
                                                       "baseline": baseline}}
    with make_tracker(out, "analyze", config, wandb, name=f"{trainer.config.name}-analyze") as tracker:
        scalars = {f"analysis/{k}": v for k, v in summary(results).items() if v is not None}
        tracker.summary(scalars)
        tracker.log(scalars)
        tracker.table("analysis_summary", [{"measure": k, "value": v} for k, v in summary(results).items()])
        for name, path in figures.items():
            tracker.image(name, path)
        tracker.artifact(out / "analysis.json", f"{trainer.config.name}-analysis", "analysis")
    log(f"wrote {out / 'analysis.json'} and {', '.join(p.name for p in figures.values())} in {out}")
    return results
