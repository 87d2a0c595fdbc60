"""meta.unroll.kernels: auto chooses native or torch by measurement, per CPU and lifetime shapes.

The choice follows the measurement (native unless clearly slower), is stored and read back by
the next process, survives a corrupt choices file, and is what the run log says."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_config
from test_fast_paths import make_experiment, perturbed_meta
from test_lifetime_paths import assert_identical, loss_and_grads

from metaplastic.config import UnrollConfig
from metaplastic.kernels import native, selection
from metaplastic.meta import Experiment, MetaTrainer

pytestmark = pytest.mark.skipif(native.library() is None, reason="native kernels cannot be built here")


@pytest.fixture
def choices(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A fresh choices file and no choices in this process; returns the file."""
    path = tmp_path / "kernel_choices.json"
    monkeypatch.setattr(selection, "choices_file", lambda: path)
    selection.forget()
    yield path
    selection.forget()


def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    used: list[str] = []
    for name in ("forward", "adjoint"):
        kernel = getattr(native.HebbianKernels, name)
        monkeypatch.setattr(native.HebbianKernels, name, lambda *a, _k=kernel, _n=name: used.append(_n) or _k(*a))
    return used


def timed(native_s: float, torch_s: float):
    calls: list[int] = []

    def measure(probe, kernels):
        calls.append(1)
        return native_s, torch_s

    return measure, calls


@pytest.mark.parametrize(("native_s", "torch_s", "runs_native"), [
    (2.0, 1.0, False),  # native clearly slower: torch
    (1.05, 1.0, True),  # within the margin: native, what auto ran before it measured
    (1.0, 2.0, True),
])
def test_auto_runs_what_the_measurement_chose(choices, monkeypatch, native_s, torch_s, runs_native) -> None:
    exp = make_experiment({"form": "oja"}, meta_batch=2)
    meta = perturbed_meta(exp)
    measure, calls = timed(native_s, torch_s)
    monkeypatch.setattr(selection, "measure", measure)
    used = kernel_calls(monkeypatch)
    auto = loss_and_grads(exp, meta, UnrollConfig())
    assert calls == [1] and bool(used) == runs_native
    pinned = loss_and_grads(exp, meta, UnrollConfig(kernels="native" if runs_native else "torch"))
    assert_identical(auto, pinned)
    loss_and_grads(exp, meta, UnrollConfig())
    assert calls == [1]  # measured once per process and signature


def test_the_choice_is_stored_and_read_by_the_next_process(choices, monkeypatch) -> None:
    exp = make_experiment({"form": "hebb"})
    meta = perturbed_meta(exp)
    measure, calls = timed(3e-5, 1e-5)
    monkeypatch.setattr(selection, "measure", measure)
    first = loss_and_grads(exp, meta, UnrollConfig())
    stored = json.loads(choices.read_text())
    (key, entry), = stored.items()
    assert entry == {"native": False, "native_s": 3e-5, "torch_s": 1e-5}
    assert selection.cpu_name() in key and "HebbOja(oja=False)" in key
    selection.forget()  # as a new process: the file decides, nothing is measured
    monkeypatch.setattr(selection, "measure", lambda probe, kernels: pytest.fail("measured again"))
    with selection.recording() as used:
        assert_identical(first, loss_and_grads(exp, meta, UnrollConfig()))
    (choice,) = used.values()
    assert choice.cached and not choice.native
    assert choice.describe() == ("kernels torch by measurement (from the kernel choices file: native 30 us, "
                                 "torch 10 us per inner step)")


def test_a_corrupt_choices_file_is_measured_again_and_rewritten(choices, monkeypatch) -> None:
    choices.write_text("{not json")
    measure, calls = timed(1.0, 1.0)
    monkeypatch.setattr(selection, "measure", measure)
    exp = make_experiment({"form": "oja"})
    loss_and_grads(exp, perturbed_meta(exp), UnrollConfig())
    assert calls == [1] and len(json.loads(choices.read_text())) == 1


def test_the_real_measurement_times_both_paths(choices, monkeypatch) -> None:
    exp = make_experiment({"form": "oja"}, meta_batch=2)
    meta = perturbed_meta(exp)
    seen: list[tuple[float, float]] = []
    real = selection.measure
    monkeypatch.setattr(selection, "measure", lambda probe, kernels: seen.append(real(probe, kernels)) or seen[-1])
    used = kernel_calls(monkeypatch)
    with selection.recording() as chosen:
        loss_and_grads(exp, meta, UnrollConfig())
    (native_s, torch_s), = seen
    assert all(math.isfinite(t) and t > 0 for t in (native_s, torch_s))
    assert {"forward", "adjoint"} <= set(used)  # the probe ran the kernels (and the lifetime maybe)
    (choice,) = chosen.values()
    assert choice.native == (native_s <= torch_s * (1 + selection.MARGIN))


def test_the_run_log_says_what_auto_chose(choices, monkeypatch) -> None:
    monkeypatch.setattr(selection, "measure", timed(2e-5, 1e-5)[0])
    trainer = MetaTrainer(Experiment.from_config(tiny_config(meta={"steps": 2})))
    assert trainer.lifetime.describe() == "lifetime path fused, kernels native or torch by measurement"
    trainer.meta_step()
    assert trainer.lifetime.describe() == (
        "lifetime path fused, kernels native or torch by measurement: kernels torch by measurement "
        "(measured: native 20 us, torch 10 us per inner step)")
    assert "measured" in trainer.lifetime.as_dict()
    for name in ("native", "torch"):  # pinned: nothing measured, nothing to add
        cfg = tiny_config(meta={"steps": 2, "unroll": {"kernels": name}})
        pinned = MetaTrainer(Experiment.from_config(cfg))
        pinned.meta_step()
        assert pinned.lifetime.describe() == f"lifetime path fused, kernels {name}"


def test_signature_names_cpu_dtype_and_threads() -> None:
    kernels = native.bind(torch.float32)
    key = selection.signature(kernels, "shapes")
    assert key.startswith(selection.cpu_name()) and "torch.float32" in key and f"threads {kernels.threads}" in key
