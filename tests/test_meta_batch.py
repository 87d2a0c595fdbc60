"""A meta-batch of tasks in one pass equals running the tasks one at a time."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from metaplastic.meta import Experiment, meta_loss, run_lifetime
from metaplastic.tasks import Episodes

N_TASKS = 3
RULES = {
    "flp_oja": ({"name": "flp", "form": "oja", "coef_init": 0.05, "plastic_bias": True}, None),
    "flp_hebb_frozen": ({"name": "flp", "form": "hebb", "coef_init": 0.05, "scope": "neuron"}, [0, 2]),
    "sgd": ({"name": "sgd", "lr_init": 0.05}, [1, 2]),
    "sgd_all": ({"name": "sgd", "lr_init": 0.05, "lr_scope": "global"}, None),
}


def task_slice(ep: Episodes, k: int) -> Episodes:
    return Episodes(*(t[k : k + 1] for t in ep[:6]), boundaries=ep.boundaries)


def per_task_value(w: torch.Tensor, key: str, k: int) -> torch.Tensor:
    shared_dim = 2 if key.endswith("weight") else 1
    return w[k] if w.dim() == shared_dim + 1 else w


@pytest.mark.parametrize("order", ["continual", "iid"])
@pytest.mark.parametrize("rule_key", sorted(RULES))
def test_meta_batch_equals_tasks_one_by_one(rule_key, order):
    rule, plastic = RULES[rule_key]
    cfg = tiny_config(rule=rule, network={"plastic": plastic}, task={"order": order, "remember_size": 2},
                      meta={"meta_batch": N_TASKS})
    exp = Experiment.from_config(cfg)
    net, loss = exp.net, exp.loss
    meta = exp.init_meta()
    ep = exp.training_episodes(0)
    assert ep.x.shape[0] == N_TASKS

    # final weights and per-task query losses
    final = run_lifetime(net, exp.rule, meta, ep.x, ep.y, loss)
    qx, qy = ep.query_x.flatten(1, 2), ep.query_y.flatten(1, 2)
    batch_losses = loss.value(net.forward(final, qx).output, qy)
    assert batch_losses.shape == (N_TASKS,)
    for k in range(N_TASKS):
        one = task_slice(ep, k)
        single = run_lifetime(net, exp.rule, meta, one.x, one.y, loss)
        for key, w in final.items():
            torch.testing.assert_close(per_task_value(w, key, k), per_task_value(single[key], key, 0),
                                       rtol=1e-12, atol=1e-13, msg=f"task {k} {key}")
        single_loss = loss.value(net.forward(single, one.query_x.flatten(1, 2)).output, one.query_y.flatten(1, 2))
        torch.testing.assert_close(batch_losses[k], single_loss[0], rtol=1e-12, atol=0.0)
    # the tasks differ, so the check above compared distinct numbers
    assert float(batch_losses.max() - batch_losses.min()) > 1e-6

    # meta-gradient of the batch = mean of the per-task meta-gradients
    leaves = {k: v.clone().requires_grad_(True) for k, v in meta.items()}
    batch_grads = torch.autograd.grad(meta_loss(net, exp.rule, leaves, ep, loss), list(leaves.values()))
    mean_grads = [torch.zeros_like(v) for v in meta.values()]
    for k in range(N_TASKS):
        leaves = {n: v.clone().requires_grad_(True) for n, v in meta.items()}
        grads = torch.autograd.grad(meta_loss(net, exp.rule, leaves, task_slice(ep, k), loss), list(leaves.values()))
        for acc, g in zip(mean_grads, grads, strict=True):
            acc += g / N_TASKS
    for name, a, b in zip(meta, batch_grads, mean_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13, msg=name)
    assert any(float(g.abs().max()) > 0 for g in batch_grads)
