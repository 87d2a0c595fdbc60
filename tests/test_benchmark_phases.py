"""benchmarks/meta_step.py --phases: the breakdown covers the profiled step and finds each phase."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "meta_step.py"


def _module():
    spec = importlib.util.spec_from_file_location("meta_step_bench", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("rule", ["flp-oja", "oml"])
def test_phase_breakdown_adds_up_to_the_step(rule: str) -> None:
    bench = _module()
    opts = bench.default_opts(rule=rule, steps_per_function=2, functions=2, batch=4, hidden=[8, 8], threads=1,
                              repeats=1, keep_freed_memory=False)
    worker = bench.Worker(opts)
    worker.step(timed=False)
    phases = bench.phase_breakdown(worker)
    table = phases["table"]
    operators = sum(sum(row.values()) for row in table.values())
    assert abs(operators + phases["overhead"] - phases["wall"]) < 1e-6 or operators > phases["wall"]
    assert table["forward"]["GEMM"] > 0 and table["reverse"]["GEMM"] > 0  # the lifetime and its reverse pass
    assert sum(table["optimizer"].values()) > 0  # Adam's update
    if rule == "flp-oja" and worker.trainer.lifetime.native:
        assert table["forward"]["native"] > 0 and table["reverse"]["native"] > 0
