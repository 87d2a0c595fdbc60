"""How learned inner-loop updates relate to gradient descent: alignment, interference,
overlap and forgetting along a lifetime, for any rule (see docs/analysis.md)."""

from metaplastic.analysis.alignment import alignment, step_alignment
from metaplastic.analysis.forgetting import forgetting
from metaplastic.analysis.interference import block_interference, loss_change, matched_sgd_update
from metaplastic.analysis.overlap import unit_jaccard, update_cosines
from metaplastic.analysis.runner import analyze_checkpoint, analyze_rule, format_summary, summary
from metaplastic.analysis.trajectory import record

__all__ = [
    "alignment",
    "analyze_checkpoint",
    "analyze_rule",
    "block_interference",
    "forgetting",
    "format_summary",
    "loss_change",
    "matched_sgd_update",
    "record",
    "step_alignment",
    "summary",
    "unit_jaccard",
    "update_cosines",
]
