"""Run tracking: a local run folder always, wandb (online or offline) when wanted."""

from metaplastic.tracking.base import MultiTracker, Tracker
from metaplastic.tracking.factory import (
    MODES,
    TrainingTracking,
    has_api_key,
    make_tracker,
    resolve_mode,
    training_callback,
)
from metaplastic.tracking.local import LocalTracker
from metaplastic.tracking.stats import rule_statistics

__all__ = [
    "MODES",
    "LocalTracker",
    "MultiTracker",
    "Tracker",
    "TrainingTracking",
    "has_api_key",
    "make_tracker",
    "resolve_mode",
    "rule_statistics",
    "training_callback",
]
