"""The native CPU kernels (metaplastic.kernels) against the formulas they fuse and against the
pure-torch path of the fused lifetime (METAPLASTIC_NATIVE=0)."""

from __future__ import annotations

import shutil

import pytest
import torch
from test_fast_paths import GROUPS, grads_of, make_experiment, perturbed_meta

from metaplastic.kernels import native
from metaplastic.meta.objective import meta_loss

L, NT, R, C = 2, 3, 5, 7
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}

needs_library = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler on this machine"
)


def rand(*shape, dtype, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@needs_library
def test_library_builds_and_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    assert native.library() is not None
    monkeypatch.setenv("METAPLASTIC_NATIVE", "0")
    assert native.library() is None
    m = rand(L, NT, R, C, dtype=torch.float64, seed=0)
    assert not native.hebbian_forward(m, m, m[:, :1], None)  # disabled: nothing done


@needs_library
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shared_w", [True, False], ids=["shared_w", "per_task_w"])
@pytest.mark.parametrize("oja", [True, False], ids=["oja", "hebb"])
def test_forward_kernel_matches_formula(dtype, shared_w, oja) -> None:
    m = rand(L, NT, R, C, dtype=dtype, seed=1)
    w = rand(L, 1 if shared_w else NT, R, C, dtype=dtype, seed=2)
    p = 0.1 * rand(L, 1, R, C, dtype=dtype, seed=3)
    s = rand(L, NT, R, 1, dtype=dtype, seed=4).abs() if oja else None
    want = w + p * (m - s * w) if oja else w + p * m
    assert native.hebbian_forward(m, w, p, s)
    torch.testing.assert_close(m, want, rtol=TOL[dtype], atol=TOL[dtype])


@needs_library
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("with_grad_p", [True, False], ids=["grad_p", "no_grad_p"])
@pytest.mark.parametrize("shared_w", [True, False], ids=["shared_w", "per_task_w"])
@pytest.mark.parametrize("oja", [True, False], ids=["oja", "hebb"])
def test_adjoint_kernel_matches_formula(dtype, with_grad_p, shared_w, oja) -> None:
    g = rand(L, NT, R, C, dtype=dtype, seed=5)
    w = rand(L, 1 if shared_w else NT, R, C, dtype=dtype, seed=6)
    p = 0.1 * rand(L, 1, R, C, dtype=dtype, seed=7)
    m = rand(L, NT, R, C, dtype=dtype, seed=8)
    s = rand(L, NT, R, 1, dtype=dtype, seed=9).abs() if oja else None
    gp0 = rand(L, 1, R, C, dtype=dtype, seed=10)
    d = torch.empty_like(g)
    ds = g.new_empty(L, NT, R, 1) if oja else None
    gp = gp0.clone() if with_grad_p else None
    g_in = g.clone()

    assert native.hebbian_adjoint(g, d, ds, gp, p, w, m if with_grad_p else None, s)

    want_d = g_in * p
    torch.testing.assert_close(d, want_d, rtol=TOL[dtype], atol=TOL[dtype])
    if oja:
        torch.testing.assert_close(ds, (want_d * w).sum(-1, keepdim=True), rtol=TOL[dtype], atol=TOL[dtype])
        torch.testing.assert_close(g, g_in - s * want_d, rtol=TOL[dtype], atol=TOL[dtype])
    else:
        assert torch.equal(g, g_in)  # Hebb: the update path leaves dL/dW unchanged
    if with_grad_p:
        bracket = m - s * w if oja else m
        want_gp = gp0 + (g_in * bracket).sum(1, keepdim=True)
        torch.testing.assert_close(gp, want_gp, rtol=TOL[dtype], atol=TOL[dtype])


def test_layouts_the_kernel_does_not_cover_are_refused() -> None:
    m = rand(L, NT, R, C, dtype=torch.float64, seed=11)
    p_neuron = rand(L, 1, R, 1, dtype=torch.float64, seed=12)  # broadcast coefficients
    assert not native.hebbian_forward(m, m, p_neuron, None)
    assert not native.hebbian_forward(m.transpose(-1, -2), m.transpose(-1, -2), m[:, :1].transpose(-1, -2), None)
    assert not native.hebbian_forward(m.to(torch.float16), m.to(torch.float16), m[:, :1].to(torch.float16), None)


@needs_library
def test_bound_kernels_refuse_tensors_of_another_dtype() -> None:
    """Kernels bound once per lifetime read raw memory: a tensor of another dtype is refused, not read."""
    f32 = native.bind(torch.float32)
    assert f32 is not None and native.bind(torch.float16) is None and native.bind(torch.float32, "meta") is None
    m = rand(L, NT, R, C, dtype=torch.float32, seed=13)
    w64 = rand(L, NT, R, C, dtype=torch.float64, seed=14)
    p = rand(L, 1, R, C, dtype=torch.float32, seed=15)
    before = m.clone()
    assert not f32.forward(m, w64, p, None)
    assert not f32.adjoint(m, torch.empty_like(m), None, None, p, w64, None, None)
    assert torch.equal(m, before)
    assert f32.forward(m, w64.float(), p, None)


@needs_library
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("scope", ["synapse", "neuron"])
@pytest.mark.parametrize("form", ["oja", "hebb"])
@pytest.mark.parametrize("tasks", [1, 3])
def test_fused_lifetime_same_with_and_without_kernels(monkeypatch, dtype, scope, form, tasks) -> None:
    """The meta-loss and every meta-gradient of the fused lifetime, kernels on and off."""
    exp = make_experiment({"form": form, "scope": scope, "plastic_bias": True}, meta_batch=tasks, dtype=dtype)
    meta = perturbed_meta(exp)

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = meta_loss(exp.net, exp.rule, meta, exp.training_episodes(0), exp.loss)
        return loss.detach(), grads_of(loss, meta)

    used: list[str] = []

    def spying(name: str):
        kernel = getattr(native.HebbianKernels, name)

        def spy(self, *args):
            done = kernel(self, *args)
            if done:
                used.append(name)
            return done

        return spy

    for name in ("forward", "adjoint"):
        monkeypatch.setattr(native.HebbianKernels, name, spying(name))
    loss_on, grads_on = run()
    if scope == "synapse":  # the kernels really ran, forward and backward
        assert {"forward", "adjoint"} <= set(used)
    monkeypatch.setenv("METAPLASTIC_NATIVE", "0")
    loss_off, grads_off = run()
    tol = 1e-5 if dtype == "float32" else 1e-11
    torch.testing.assert_close(loss_on, loss_off, rtol=tol, atol=0)
    assert set(grads_on) == set(grads_off) and {k.split(".")[0] for k in grads_on} == set(GROUPS)
    for k in grads_on:
        scale = float(grads_off[k].abs().max().clamp_min(1e-12))
        assert float((grads_on[k] - grads_off[k]).abs().max()) <= tol * 10 * scale, k
