"""Shared helpers: tiny experiment configs that keep the whole suite fast on a small CPU."""

from __future__ import annotations

import copy
import os
import tempfile
from typing import Any

import pytest
import torch

from metaplastic.config import config_from_dict, deep_merge
from metaplastic.kernels import selection

# CLI tests track to the run folder only; a test that exercises wandb asks for it explicitly.
os.environ.setdefault("WANDB_MODE", "disabled")

# Inner-loop tensors in this suite are tiny; more threads only add overhead.
torch.set_num_threads(1)


# The native kernels' build and the kernel choices of ``meta.unroll.kernels: auto`` go to a
# private cache folder, shared by this process and the subprocesses its tests start.
_CACHE = tempfile.TemporaryDirectory(prefix="metaplastic-test-cache-")  # removed when the session ends
os.environ["METAPLASTIC_CACHE"] = _CACHE.name


@pytest.fixture(scope="session", autouse=True)
def kernel_choices_pinned():
    """``auto`` measures native against torch per CPU and shapes; at this suite's tiny shapes that
    is a coin toss, so in this process every measurement is a tie (auto runs native, as before the
    measurement existed). A subprocess measures for real, but reads the shared choices file
    first, so it takes the choice this process stored for the same signature, and vice versa.
    tests/test_kernel_selection.py measures for real."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(selection, "measure", lambda probe, kernels: (1.0, 1.0))
        yield


def tiny_config_dict(**sections: Any) -> dict[str, Any]:
    """A tiny float64 experiment (sine, 2 functions x 2 steps x batch 3, hidden [5, 4]).

    Keyword arguments are merged section by section into the defaults, e.g.
    ``tiny_config_dict(rule={"form": "hebb"}, meta={"steps": 3})``.
    """
    base: dict[str, Any] = {
        "name": "tiny",
        "seed": 7,
        "dtype": "float64",
        "task": {
            "name": "sine",
            "n_functions": 2,
            "steps_per_function": 2,
            "batch_size": 3,
            "query_per_function": 4,
        },
        "network": {"hidden": [5, 4], "activation": "tanh"},
        "rule": {"name": "flp", "form": "oja", "coef_init": 0.05},
        "meta": {
            "steps": 4,
            "meta_batch": 2,
            "lr": {"init": 1e-3, "feedback": 1e-3, "coef": 1e-3, "beta": 1e-3, "lr": 1e-3},
            "checkpoint_every": 1,
            "log_every": 1,
        },
    }
    return deep_merge(copy.deepcopy(base), copy.deepcopy(sections))


def tiny_config(**sections: Any):
    return config_from_dict(tiny_config_dict(**sections))


@pytest.fixture
def make_config():
    """Factory fixture: ``make_config(rule={...}, out_dir=...)`` -> ExperimentConfig."""
    return tiny_config
