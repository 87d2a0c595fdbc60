from metaplastic.evaluation.references import evaluate_online_sgd, online_sgd
from metaplastic.evaluation.regression import boundary_errors, evaluate_rule, summarize
from metaplastic.evaluation.report import format_table, plot_curves, write_json

__all__ = [
    "boundary_errors",
    "evaluate_online_sgd",
    "evaluate_rule",
    "format_table",
    "online_sgd",
    "plot_curves",
    "summarize",
    "write_json",
]
