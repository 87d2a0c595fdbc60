"""Ordinary (non-meta) training of any rule from a fixed init, and the rule comparison."""

from metaplastic.training.fit import FitResult, classification_error, fit_rule

__all__ = ["FitResult", "classification_error", "fit_rule"]
