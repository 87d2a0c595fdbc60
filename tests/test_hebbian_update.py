"""The fused Hebb/Oja autograd Function: forward value and gradcheck of its hand-written backward."""

from __future__ import annotations

import pytest
import torch

from metaplastic.rules.hebbian_update import hebbian_update

N_TASKS, BATCH, OUT, IN = 2, 3, 4, 5
P_SHAPES = {"synapse": (OUT, IN), "neuron": (OUT, 1), "scalar": ()}


def inputs(p_shape, per_task_w: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(shape, generator=g, dtype=torch.float64)

    w = r(N_TASKS, OUT, IN) if per_task_w else r(OUT, IN)
    p = 0.3 * r(*p_shape)
    t = r(N_TASKS, BATCH, OUT)
    h = r(N_TASKS, BATCH, IN)
    return w, p, t, h


def plain(w, p, t, h, oja):
    """The formula with plain autograd-tracked ops."""
    m = torch.einsum("kbo,kbi->koi", t, h)
    if oja:
        m = m - (t * t).sum(1).unsqueeze(-1) * w
    return w + p * m


@pytest.mark.parametrize("per_task_w", [False, True], ids=["shared_w", "per_task_w"])
@pytest.mark.parametrize("p_shape", sorted(P_SHAPES))
@pytest.mark.parametrize("oja", [False, True], ids=["hebb", "oja"])
def test_forward_matches_formula(oja, p_shape, per_task_w):
    w, p, t, h = inputs(P_SHAPES[p_shape], per_task_w)
    out = hebbian_update(w, p, t, h, oja)
    assert out.shape == (N_TASKS, OUT, IN)
    # explicit loops over tasks, synapses and batch
    for k in range(N_TASKS):
        wk = w[k] if per_task_w else w
        for o in range(OUT):
            for i in range(IN):
                pk = p if p.dim() == 0 else p[o, min(i, p.shape[1] - 1)]
                hebb = sum(t[k, b, o] * h[k, b, i] for b in range(BATCH))
                if oja:
                    hebb = hebb - sum(t[k, b, o] ** 2 for b in range(BATCH)) * wk[o, i]
                assert float(out[k, o, i]) == pytest.approx(float(wk[o, i] + pk * hebb), rel=1e-12, abs=1e-12)
    # inputs are left untouched (the forward pass updates a fresh buffer in place)
    w2, p2, t2, h2 = inputs(P_SHAPES[p_shape], per_task_w)
    assert torch.equal(w, w2) and torch.equal(p, p2) and torch.equal(t, t2) and torch.equal(h, h2)


@pytest.mark.parametrize("per_task_w", [False, True], ids=["shared_w", "per_task_w"])
@pytest.mark.parametrize("p_shape", sorted(P_SHAPES))
@pytest.mark.parametrize("oja", [False, True], ids=["hebb", "oja"])
def test_gradcheck(oja, p_shape, per_task_w):
    w, p, t, h = (x.requires_grad_(True) for x in inputs(P_SHAPES[p_shape], per_task_w, seed=1))
    assert torch.autograd.gradcheck(lambda *a: hebbian_update(*a, oja), (w, p, t, h), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("needs", ["w", "p", "t", "h", "wt", "ph"])
@pytest.mark.parametrize("oja", [False, True], ids=["hebb", "oja"])
def test_gradcheck_partial_inputs(oja, needs):
    """Only some inputs need a gradient (frozen coefficients, fixed activities...)."""
    tensors = dict(zip("wpth", inputs(P_SHAPES["neuron"], per_task_w=False, seed=2), strict=True))
    for name in needs:
        tensors[name].requires_grad_(True)
    args = [tensors[n] for n in "wpth"]
    assert torch.autograd.gradcheck(lambda *a: hebbian_update(*a, oja), args, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("per_task_w", [False, True], ids=["shared_w", "per_task_w"])
@pytest.mark.parametrize("p_shape", sorted(P_SHAPES))
@pytest.mark.parametrize("oja", [False, True], ids=["hebb", "oja"])
def test_gradients_match_plain_autograd(oja, p_shape, per_task_w):
    """The fused backward equals autograd through the plain formula (a second, exact check)."""
    args = [x.requires_grad_(True) for x in inputs(P_SHAPES[p_shape], per_task_w, seed=3)]
    cot = torch.randn(N_TASKS, OUT, IN, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    fused = torch.autograd.grad((hebbian_update(*args, oja) * cot).sum(), args)
    ref = torch.autograd.grad((plain(*args, oja) * cot).sum(), args)
    for a, b, x in zip(fused, ref, args, strict=True):
        assert a.shape == x.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
