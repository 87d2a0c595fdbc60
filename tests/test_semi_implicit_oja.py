"""The semi-implicit Oja step (rule.oja_step: semi_implicit) against its definition.

Its fused lifetime is checked against the from-scratch reference in test_fast_paths.py, its
meta-gradient against finite differences in test_meta_gradients.py and its unroll modes in
test_unroll.py; here: the step itself, its stability, and its configuration errors.
"""

from __future__ import annotations

import pytest
import torch

from metaplastic.errors import ConfigError
from metaplastic.rules.flp import FLPRule
from metaplastic.rules.hebbian_update import hebbian_update
from metaplastic.rules.semi_implicit_oja import semi_implicit_oja_update


def _activities(seed: int, batch: int = 5, n_in: int = 4, n_out: int = 3):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
    t = torch.randn(batch, n_out, generator=g, dtype=torch.float64)
    h = torch.randn(batch, n_in, generator=g, dtype=torch.float64)
    return w, t, h, g


@pytest.mark.parametrize("p_shape", [(3, 4), (3, 1), (1, 1)])
def test_update_is_the_hand_written_formula_and_solves_the_implicit_equation(p_shape):
    w, t, h, g = _activities(0)
    p = torch.rand(p_shape, generator=g, dtype=torch.float64) * 0.5
    new = semi_implicit_oja_update(w, p, t, h)
    pe = p.expand(3, 4)
    want = torch.empty_like(w)
    for i in range(3):
        s_i = sum(float(t[b, i]) ** 2 for b in range(5))
        for j in range(4):
            hebb = sum(float(t[b, i] * h[b, j]) for b in range(5))
            want[i, j] = (w[i, j] + pe[i, j] * hebb) / (1 + pe[i, j] * s_i)
    torch.testing.assert_close(new, want, rtol=1e-13, atol=1e-13)
    # W' = W + P (T^T H - diag(s) W'): the decay taken at the new weights
    s = (t * t).sum(0).unsqueeze(-1)
    torch.testing.assert_close(new, w + p * (t.T @ h - s * new), rtol=1e-13, atol=1e-13)


def test_agrees_with_the_explicit_step_to_first_order_in_p():
    w, t, h, _ = _activities(1)
    gaps = []
    for p in (1e-3, 5e-4):
        p = torch.tensor(p, dtype=torch.float64)
        gaps.append(float((semi_implicit_oja_update(w, p, t, h) - hebbian_update(w, p, t, h, True)).abs().max()))
    assert gaps[0] > 0
    assert gaps[1] / gaps[0] == pytest.approx(0.25, rel=0.05)  # the difference is O(P^2)


def test_stable_where_the_explicit_step_overflows():
    """P s > 2: the explicit step multiplies W by 1 - P s < -1 each step; the semi-implicit one
    keeps W between its start and the fixed point T^T H / s."""
    w, t, h, _ = _activities(2)
    t = 3.0 * t  # large targets: s_i = sum_b t^2 ~ 45
    p = torch.tensor(0.2, dtype=torch.float64)
    assert float((p * (t * t).sum(0)).min()) > 2
    explicit, implicit = w, w
    for _ in range(40):
        explicit = hebbian_update(explicit, p, t, h, True)
        implicit = semi_implicit_oja_update(implicit, p, t, h)
    fixed = (t.T @ h) / (t * t).sum(0).unsqueeze(-1)
    assert float(explicit.abs().max()) > 1e10
    assert float(implicit.abs().max()) <= max(float(w.abs().max()), float(fixed.abs().max())) + 1e-12
    torch.testing.assert_close(implicit, fixed, rtol=1e-6, atol=1e-6)  # converged to Oja's fixed point


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"oja_step": "implicit"}, "rule.oja_step must be 'explicit' or 'semi_implicit'"),
        ({"oja_step": "semi_implicit", "form": "hebb", "coef_max": 0.1, "coef_init": 0.01}, "form 'oja' only"),
        ({"oja_step": "semi_implicit"}, "needs P >= 0"),
    ],
)
def test_bad_options_are_refused_in_one_line(options, message):
    with pytest.raises(ConfigError, match=message) as info:
        FLPRule(**options)
    assert "\n" not in str(info.value)
