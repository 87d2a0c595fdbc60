"""SineRegression episodes: shapes, encodings, ranges, orders, query/remember points, seeding."""

from __future__ import annotations

import math

import pytest
import torch

from metaplastic.errors import ConfigError
from metaplastic.tasks import SineRegression, build_task

F, S, B, Q, R, T = 3, 4, 5, 6, 7, 2


def task(**kw) -> SineRegression:
    args = dict(n_functions=F, steps_per_function=S, batch_size=B, query_per_function=Q, remember_size=R)
    return SineRegression(**{**args, **kw})


def sample(order="continual", seed=0, n_tasks=T, **kw):
    return task(order=order, **kw).sample(n_tasks, torch.Generator().manual_seed(seed))


def slots(x: torch.Tensor) -> torch.Tensor:
    return x[..., :F].argmax(-1)


def fit_sine(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Least-squares y = a sin x + b cos x  ->  amplitude sqrt(a^2 + b^2), phase atan2(b, a)."""
    design = torch.stack([torch.sin(x), torch.cos(x)], dim=-1)
    coef = torch.linalg.lstsq(design, y.unsqueeze(-1)).solution.squeeze(-1)
    a, b = float(coef[0]), float(coef[1])
    return math.hypot(a, b), math.atan2(b, a)


@pytest.mark.parametrize("order", ["continual", "iid"])
def test_shapes_and_encoding(order):
    ep = sample(order)
    assert ep.x.shape == (T, F * S, B, F + 1) and ep.y.shape == (T, F * S, B, 1)
    assert ep.query_x.shape == (T, F, Q, F + 1) and ep.query_y.shape == (T, F, Q, 1)
    assert ep.remember_x.shape == (T, R, F + 1) and ep.remember_y.shape == (T, R, 1)
    assert ep.boundaries == tuple(S * (k + 1) for k in range(F))
    assert all(t.dtype == torch.float64 for t in ep[:6])
    t = task()
    assert (t.n_inputs, t.n_outputs, t.n_steps) == (F + 1, 1, F * S)
    for inputs in (ep.x, ep.query_x, ep.remember_x):
        onehot = inputs[..., :F]
        assert bool(((onehot == 0) | (onehot == 1)).all())
        assert bool((onehot.sum(-1) == 1).all())
    # query slots: function f's held-out points carry slot f
    assert torch.equal(slots(ep.query_x), torch.arange(F).view(1, F, 1).expand(T, F, Q))


@pytest.mark.parametrize("order", ["continual", "iid"])
def test_ranges(order):
    amplitude, x_range = (0.5, 2.0), (-1.0, 3.0)
    ep = sample(order, amplitude=amplitude, x_range=x_range, seed=3)
    for inputs, targets in ((ep.x, ep.y), (ep.query_x, ep.query_y), (ep.remember_x, ep.remember_y)):
        x = inputs[..., F]
        assert float(x.min()) >= x_range[0] and float(x.max()) <= x_range[1]
        assert float(targets.abs().max()) <= amplitude[1]
    # x fills the range (not a constant or a sub-interval)
    assert float(ep.x[..., F].max() - ep.x[..., F].min()) > 0.8 * (x_range[1] - x_range[0])


@pytest.mark.parametrize("order", ["continual", "iid"])
def test_every_function_is_a_sine_with_drawn_amplitude_and_phase(order):
    """Training, query and remember points of slot f all lie on one A sin(x + phase) curve."""
    t = task(amplitude=(0.5, 2.0), phase=(0.0, math.pi))
    ep = t.sample(T, torch.Generator().manual_seed(4))
    for k in range(T):
        xs, ys, sl = ep.x[k, ..., F].flatten(), ep.y[k].flatten(), slots(ep.x[k]).flatten()
        for f in range(F):
            amp, phase = fit_sine(xs[sl == f], ys[sl == f])
            assert 0.5 <= amp < 2.0 and 0.0 <= phase < math.pi
            # query points of f follow the same curve
            qx, qy = ep.query_x[k, f, :, F], ep.query_y[k, f, :, 0]
            torch.testing.assert_close(qy, amp * torch.sin(qx + phase), rtol=1e-9, atol=1e-9)


def test_continual_order_is_function_by_function():
    ep = sample("continual", n_tasks=3)
    sl = slots(ep.x)  # (T, F*S, B)
    for k in range(3):
        for f in range(F):
            block = sl[k, f * S : (f + 1) * S]
            assert bool((block == f).all()), f"steps {f * S}..{(f + 1) * S - 1} are not all function {f}"
        per_step = sl[k, :, 0]
        assert bool((per_step[1:] >= per_step[:-1]).all())


def test_iid_order_mixes_functions():
    ep = sample("iid", n_tasks=3, seed=5)
    sl = slots(ep.x)
    for k in range(3):
        counts = torch.bincount(sl[k].flatten(), minlength=F)
        assert counts.tolist() == [S * B] * F  # every function covered equally
        mixed = sum(int(sl[k, s].unique().numel() > 1) for s in range(F * S))
        assert mixed >= F * S // 2  # most minibatches hold several functions
        # and not in function-by-function order
        assert not bool((sl[k, :, 0][1:] >= sl[k, :, 0][:-1]).all())


@pytest.mark.parametrize("order", ["continual", "iid"])
def test_query_points_are_fresh(order):
    ep = sample(order, seed=6)
    for k in range(T):
        train_x = set(ep.x[k, ..., F].flatten().tolist())
        query_x = ep.query_x[k, ..., F].flatten().tolist()
        assert not train_x.intersection(query_x)
        assert len(set(query_x)) == len(query_x)


@pytest.mark.parametrize("order", ["continual", "iid"])
def test_remember_points_come_from_the_trajectory(order):
    ep = sample(order, seed=7)
    for k in range(T):
        rows = {tuple(r) for r in torch.cat([ep.x[k], ep.y[k]], -1).reshape(-1, F + 2).tolist()}
        for r in range(R):
            row = tuple(torch.cat([ep.remember_x[k, r], ep.remember_y[k, r]]).tolist())
            assert row in rows


def test_no_remember_points():
    ep = sample(remember_size=0)
    assert ep.remember_x.shape == (T, 0, F + 1) and ep.remember_y.shape == (T, 0, 1)


@pytest.mark.parametrize("order", ["continual", "iid"])
def test_seeding(order):
    a, b, c = sample(order, seed=11), sample(order, seed=11), sample(order, seed=12)
    assert a.boundaries == b.boundaries
    for u, v in zip(a[:6], b[:6], strict=True):
        assert torch.equal(u, v)
    assert not torch.equal(a.y, c.y)


def test_query_size_override():
    ep = task().sample(1, torch.Generator().manual_seed(0), query_per_function=9)
    assert ep.query_x.shape == (1, F, 9, F + 1)


def test_with_order():
    t = task(order="continual").with_order("iid")
    assert t.order == "iid" and t.n_functions == F and t.remember_size == R


@pytest.mark.parametrize(
    "kwargs",
    [
        {"order": "shuffled"},
        {"n_functions": 0},
        {"steps_per_function": 0},
        {"batch_size": 0},
        {"query_per_function": -1},
        {"remember_size": -1},
        {"amplitude": (2.0, 1.0)},
        {"x_range": (1.0, -1.0)},
    ],
)
def test_validation(kwargs):
    with pytest.raises(ConfigError):
        task(**kwargs)


def test_build_task_errors():
    with pytest.raises(ConfigError, match=r"unknown task .omniglot. \(known: .*sine"):
        build_task({"name": "omniglot"})
    with pytest.raises(ConfigError, match="task.n_funcs"):
        build_task({"name": "sine", "n_funcs": 3})
