"""Sweeps over config keys and seeds on Ray Tune (the optional ``[sweep]`` extra)."""

from metaplastic.sweep.runner import is_available, run_sweep
from metaplastic.sweep.spec import Sweep, load_sweep

__all__ = ["Sweep", "is_available", "load_sweep", "run_sweep"]
