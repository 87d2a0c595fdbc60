"""Memory learners (LSTM, RMC, SAM): hand-computed steps, float64 meta-gradients, sparse access,
task batching, memory modes, integration with the meta-trainer, evaluation and analysis, and
one-line config errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from metaplastic.cli.main import main
from metaplastic.config import UnrollConfig, load_config
from metaplastic.errors import ConfigError
from metaplastic.memory import LSTMLearner, RelationalMemory, SparseAccessMemory
from metaplastic.memory.base import params_of
from metaplastic.memory.sam import sparse_read
from metaplastic.memory.stream import final_state
from metaplastic.meta.experiment import Experiment
from metaplastic.meta.trainer import MetaTrainer
from tests.conftest import tiny_config

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
D = torch.float64
LEARNERS = {
    "lstm": LSTMLearner(hidden=3),
    "rmc": RelationalMemory(slots=2, heads=2, head_size=2),
    "sam": SparseAccessMemory(hidden=3, slots=5, width=2, k=2),
}
SIZES = {"lstm": {"hidden": 4}, "rmc": {"slots": 2, "heads": 2, "head_size": 2},
         "sam": {"hidden": 4, "slots": 6, "width": 3, "k": 2}}


def init(learner, n_in=2, n_out=1, seed=0):
    return learner.init(n_in, n_out, torch.Generator().manual_seed(seed), D)


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


# ---- one step against the formulas, written out by hand ------------------------------


def test_lstm_step_by_hand() -> None:
    learner = LSTMLearner(hidden=2)
    meta = init(learner)
    p = {k: v.tolist() for k, v in params_of(meta, "lstm").items()}
    h0, c0, x, y_prev = [0.3, -0.2], [0.5, 0.1], [0.7, -1.1], [0.4]
    state = {"h": torch.tensor([h0], dtype=D), "c": torch.tensor([c0], dtype=D)}
    new, out = learner.step(meta, state, torch.tensor([x], dtype=D), torch.tensor([y_prev], dtype=D))
    u = x + y_prev
    pre = [sum(u[a] * p["W_x"][a][j] for a in range(3)) + sum(h0[a] * p["W_h"][a][j] for a in range(2)) + p["b"][j]
           for j in range(8)]
    c = [sig(pre[2 + j]) * c0[j] + sig(pre[j]) * math.tanh(pre[4 + j]) for j in range(2)]
    h = [sig(pre[6 + j]) * math.tanh(c[j]) for j in range(2)]
    y = sum(h[j] * p["W_y"][j][0] for j in range(2)) + p["b_y"][0]
    assert new["c"][0].tolist() == pytest.approx(c, abs=1e-12)
    assert new["h"][0].tolist() == pytest.approx(h, abs=1e-12)
    assert float(out[0, 0]) == pytest.approx(y, abs=1e-12)


def _layer_norm(z: torch.Tensor) -> torch.Tensor:
    return (z - z.mean()) / torch.sqrt(z.var(unbiased=False) + 1e-5)


def test_rmc_step_by_hand() -> None:
    learner = RelationalMemory(slots=2, heads=2, head_size=2)
    meta = init(learner)
    p = params_of(meta, "rmc")
    memory = torch.randn(1, 2, 4, dtype=D, generator=torch.Generator().manual_seed(3))
    x, y_prev = torch.tensor([[0.7, -1.1]], dtype=D), torch.tensor([[0.4]], dtype=D)
    new, out = learner.step(meta, {"memory": memory}, x, y_prev)
    M, u = memory[0], torch.cat([x, y_prev], -1)[0]
    xt = u @ p["W_in"] + p["b_in"]
    A = torch.stack([M[0], M[1], xt])
    expected = torch.zeros(2, 4, dtype=D)
    for i in range(2):  # slot
        row = []
        for h in range(2):  # head: its columns of the projections
            cols = slice(2 * h, 2 * h + 2)
            q = M[i] @ p["W_q"][:, cols]
            scores = torch.stack([q @ (A[j] @ p["W_k"][:, cols]) / math.sqrt(2) for j in range(3)])
            w = torch.exp(scores) / torch.exp(scores).sum()
            row.append(sum(w[j] * (A[j] @ p["W_v"][:, cols]) for j in range(3)))
        m = _layer_norm(M[i] + torch.cat(row))
        m = _layer_norm(m + torch.relu(m @ p["W_m1"] + p["b_m1"]) @ p["W_m2"] + p["b_m2"])
        gates = xt @ p["W_gx"] + torch.tanh(M[i]) @ p["W_gm"] + p["b_g"]
        expected[i] = torch.sigmoid(gates[:4]) * torch.tanh(m) + torch.sigmoid(gates[4:] + 1.0) * M[i]
    torch.testing.assert_close(new["memory"][0], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(out[0], expected.flatten() @ p["W_y"] + p["b_y"], rtol=0, atol=1e-12)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b) / (torch.sqrt(a @ a + 1e-8) * torch.sqrt(b @ b + 1e-8))


def test_sam_step_by_hand() -> None:
    """Write to the previous read slots and the LRU slot (erased first), then a top-K read."""
    learner = SparseAccessMemory(hidden=2, slots=4, width=2, k=2, delta=0.005)
    meta = init(learner)
    p = params_of(meta, "sam")
    g = torch.Generator().manual_seed(5)
    memory = torch.randn(1, 4, 2, dtype=D, generator=g)
    state = {"h": torch.randn(1, 2, dtype=D, generator=g), "c": torch.randn(1, 2, dtype=D, generator=g),
             "read": torch.randn(1, 2, dtype=D, generator=g), "memory": memory,
             "norms": torch.linalg.vector_norm(memory, dim=-1),
             "read_index": torch.tensor([[1, 3]]), "read_weights": torch.tensor([[0.7, 0.3]], dtype=D),
             "last_used": torch.tensor([[5.0, 7.0, 2.0, 7.0]], dtype=D), "time": torch.tensor([8.0], dtype=D)}
    x, y_prev = torch.tensor([[0.7, -1.1]], dtype=D), torch.tensor([[0.4]], dtype=D)
    memory = memory.clone()  # the step writes its input state's memory in place
    new, out = learner.step(meta, {**state, "memory": state["memory"].clone()}, x, y_prev)
    # controller
    u = torch.cat([x[0], y_prev[0], state["read"][0]])
    i, f, gg, o = (u @ p["W_x"] + state["h"][0] @ p["W_h"] + p["b"]).chunk(4)
    c = torch.sigmoid(f) * state["c"][0] + torch.sigmoid(i) * torch.tanh(gg)
    h = torch.sigmoid(o) * torch.tanh(c)
    iface = h @ p["W_i"] + p["b_i"]
    q, b, a, alpha, gamma = iface[:2], iface[2], iface[3:5], torch.sigmoid(iface[5]), torch.sigmoid(iface[6])
    # write: slot 2 is least recently used (time 2): erased, then w^W a^T added
    M = memory[0].clone()
    M[2] = 0
    M[1] += alpha * gamma * 0.7 * a
    M[3] += alpha * gamma * 0.3 * a
    M[2] += alpha * (1 - gamma) * a
    torch.testing.assert_close(new["memory"][0], M, rtol=0, atol=1e-12)
    # read: the two most similar slots, softmax of beta * cosine over those two only
    sims = [float(_cos(q, M[j])) for j in range(4)]
    top = sorted(range(4), key=lambda j: -sims[j])[:2]
    beta = 1 + math.log1p(math.exp(float(b)))
    w = torch.softmax(torch.tensor([beta * sims[j] for j in top], dtype=D), 0)
    r = w[0] * M[top[0]] + w[1] * M[top[1]]
    assert new["read_index"][0].tolist() == top
    torch.testing.assert_close(new["read"][0], r, rtol=0, atol=1e-12)
    torch.testing.assert_close(out[0], torch.cat([h, r]) @ p["W_y"] + p["b_y"], rtol=0, atol=1e-12)
    # usage: the slots read or written above delta were used at time 8
    used = set(top) | {j for j, wj in zip([1, 3, 2], [alpha * gamma * 0.7, alpha * gamma * 0.3, alpha * (1 - gamma)])
                       if wj > 0.005}
    assert new["last_used"][0].tolist() == [8.0 if j in used else t for j, t in enumerate([5.0, 7.0, 2.0, 7.0])]
    assert float(new["time"][0]) == 9.0


# ---- sparse access --------------------------------------------------------------------


def test_sam_reads_only_k_slots_and_equals_dense_attention_at_k_equal_n() -> None:
    g = torch.Generator().manual_seed(1)
    leaf = torch.randn(3, 16, 4, dtype=D, generator=g).requires_grad_(True)
    memory = leaf.clone()  # reads pass the memory through in place: not a leaf
    q, beta = torch.randn(3, 4, dtype=D, generator=g), 1 + torch.rand(3, dtype=D, generator=g)
    norms = torch.linalg.vector_norm(memory, dim=-1).detach()
    _, read, index, _ = sparse_read(memory, norms, q, beta, 3)
    (grad,) = torch.autograd.grad(read.sum(), leaf)
    touched = grad.abs().sum(-1) > 0  # (T, N): slots the read depends on
    assert touched.sum(-1).tolist() == [3, 3, 3]
    assert all(set(touched[t].nonzero().flatten().tolist()) == set(index[t].tolist()) for t in range(3))
    dense_w = torch.softmax(beta[:, None] * torch.stack([torch.stack([_cos(q[t], memory[t, j]) for j in range(16)])
                                                         for t in range(3)]), -1)
    dense = (dense_w.unsqueeze(-1) * memory).sum(1)
    torch.testing.assert_close(sparse_read(memory, norms, q, beta, 16)[1], dense, rtol=0, atol=1e-12)
    assert not torch.allclose(read, dense)


def _copying_rows(monkeypatch) -> None:
    """SAM's memory access as plain out-of-place autograd ops (a copy of M per write)."""
    from metaplastic.memory import sam

    def write_and_read(memory, norms, erase, written, delta, key, k):
        keep = torch.ones(memory.shape[:2], dtype=memory.dtype).scatter(1, erase, 0.0)
        flat = sam._flat_index(memory, written)
        kept = (keep.unsqueeze(-1) * memory).reshape(-1, memory.shape[-1])
        memory = kept.index_add(0, flat, delta.reshape(-1, memory.shape[-1])).reshape(memory.shape).clone()
        norms = torch.linalg.vector_norm(memory, dim=-1).detach()
        index = sam.top_k_slots(memory, norms, key, k)
        return memory, norms, torch.stack([memory[t, index[t]] for t in range(memory.shape[0])]), index

    monkeypatch.setattr(sam, "write_and_read", write_and_read)


@pytest.mark.parametrize("unroll", [UnrollConfig(), UnrollConfig(mode="checkpoint", segment=3),
                                    UnrollConfig(mode="truncate", last_steps=5)])
def test_sam_in_place_memory_equals_copying_autograd(unroll, monkeypatch) -> None:
    """The in-place memory and its hand-written gradient buffer give the same value and
    meta-gradient as out-of-place autograd ops, over a stream long enough to reuse slots."""
    learner = SparseAccessMemory(hidden=3, slots=4, width=2, k=2, delta=0.0)
    meta = init(learner)
    keys = list(meta)
    x, y, qx = _stream(T=2, S=4, B=3, seed=3)

    def value_and_grads():
        values = [meta[k].clone().requires_grad_(True) for k in keys]
        value = _objective(learner, keys, x, y, qx, unroll)(*values)
        return value, torch.autograd.grad(value, values)

    value, grads = value_and_grads()
    _copying_rows(monkeypatch)
    ref_value, ref = value_and_grads()
    torch.testing.assert_close(value, ref_value, rtol=1e-13, atol=1e-14)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


def test_sam_boundary_states_leave_the_stream_unchanged() -> None:
    """A flushed boundary state is a branch: the stream continues from the unflushed state, so the
    last boundary equals the final state although SAM writes its memory in place."""
    from metaplastic.memory.stream import boundary_states

    learner = SparseAccessMemory(hidden=3, slots=5, width=2, k=2)
    meta = init(learner)
    x, y, qx = _stream(S=3)
    with torch.no_grad():
        last = list(boundary_states(learner, meta, x, y))[-1][1]
        final = final_state(learner, meta, x, y, UnrollConfig())
    for key in final:
        assert torch.equal(last[key], final[key]), key
    # the kept slot norms are the memory's
    torch.testing.assert_close(final["norms"], torch.linalg.vector_norm(final["memory"], dim=-1), rtol=1e-12, atol=0)


# ---- float64 meta-gradients, memory modes, task batching ------------------------------


def _stream(T=2, S=2, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, S, B, 2, dtype=D, generator=g), torch.randn(T, S, B, 1, dtype=D, generator=g), \
        torch.randn(T, 3, 2, dtype=D, generator=g)


FULL = UnrollConfig()


def _objective(learner, keys, x, y, qx, unroll=FULL):
    def f(*values):
        meta = dict(zip(keys, values))
        return learner.read(meta, final_state(learner, meta, x, y, unroll), qx).pow(2).mean()
    return f


@pytest.mark.parametrize("name", list(LEARNERS))
def test_meta_gradient_matches_finite_differences(name: str) -> None:
    learner = LEARNERS[name]
    meta = init(learner)
    keys = list(meta)
    values = [meta[k].clone().requires_grad_(True) for k in keys]
    assert torch.autograd.gradcheck(_objective(learner, keys, *_stream()), values, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(LEARNERS))
def test_checkpoint_equals_full_and_truncate_cuts_the_graph(name: str) -> None:
    learner = LEARNERS[name]
    meta = init(learner)
    keys = list(meta)
    x, y, qx = _stream(S=3)

    def grads(unroll):
        values = [meta[k].clone().requires_grad_(True) for k in keys]
        value = _objective(learner, keys, x, y, qx, unroll)(*values)
        return value, torch.autograd.grad(value, values)

    full_value, full = grads(UnrollConfig())
    ck_value, ck = grads(UnrollConfig(mode="checkpoint", segment=2))
    assert torch.equal(full_value, ck_value)
    for a, b in zip(full, ck):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    tr_value, tr = grads(UnrollConfig(mode="truncate", last_steps=2))
    assert torch.equal(full_value, tr_value)
    assert any(not torch.allclose(a, b) for a, b in zip(full, tr))
    _, long = grads(UnrollConfig(mode="truncate", last_steps=100))
    assert all(torch.equal(a, b) for a, b in zip(full, long))


@pytest.mark.parametrize("name", list(LEARNERS))
def test_a_batch_of_tasks_equals_the_tasks_one_by_one(name: str) -> None:
    learner = LEARNERS[name]
    meta = init(learner)
    x, y, qx = _stream(T=3)
    batched = learner.read(meta, final_state(learner, meta, x, y, UnrollConfig()), qx)
    for t in range(3):
        alone = learner.read(meta, final_state(learner, meta, x[t:t + 1], y[t:t + 1], UnrollConfig()), qx[t:t + 1])
        torch.testing.assert_close(batched[t:t + 1], alone, rtol=1e-12, atol=1e-13)


# ---- integration: experiment, meta-trainer, evaluation, analysis ----------------------


def memory_config(name: str, **meta):
    return tiny_config(network={"hidden": []}, rule={"name": name, **SIZES[name]},
                       meta={"lr": {"init": 1e-2}, **meta})


@pytest.mark.parametrize("name", list(LEARNERS))
def test_experiment_meta_loss_and_modes(name: str) -> None:
    exp = Experiment.from_config(memory_config(name))
    assert exp.net is None and set(k.split(".")[1] for k in exp.init_meta()) == {name}
    meta = {k: v.requires_grad_(True) for k, v in exp.init_meta().items()}
    episodes = exp.training_episodes(0)
    full = exp.meta_loss(meta, episodes, UnrollConfig())
    ck = exp.meta_loss(meta, episodes, UnrollConfig(mode="checkpoint"))
    assert torch.equal(full, ck) and torch.isfinite(full)


def test_tiny_meta_training_improves_the_meta_loss() -> None:
    """100 meta-steps of the MetaTrainer lower the meta-loss on 32 held-out lifetimes by over 20%."""
    cfg = tiny_config(network={"hidden": []}, rule={"name": "lstm", "hidden": 16},
                      meta={"lr": {"init": 3e-2}, "steps": 100, "meta_batch": 4, "grad_clip": 1.0})
    trainer = MetaTrainer(Experiment.from_config(cfg))
    exp = trainer.experiment
    held_out = exp.task.sample(32, torch.Generator().manual_seed(99)).to("cpu", D)

    def loss() -> float:
        with torch.no_grad():
            return float(exp.meta_loss(trainer.meta, held_out, UnrollConfig()))

    before = loss()
    for _ in range(100):
        trainer.meta_step()
    assert loss() < 0.8 * before


def test_train_evaluate_analyze_a_memory_run_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    args = ["task.n_functions=3", "task.steps_per_function=2", "task.batch_size=2", "rule.slots=8", "meta.steps=2",
            "meta.meta_batch=1", "eval.episodes=2", "eval.points_per_function=3", "meta.validate_every=1",
            "meta.validate_episodes=2", "--out", str(run), "--no-progress", "--wandb", "disabled"]
    assert main(["train", str(EXPERIMENTS / "quick_sam.yaml"), *args]) == 0
    assert main(["evaluate", str(run), "--wandb", "disabled"]) == 0
    printed = capsys.readouterr().out
    assert "SAM meta-trained (2 steps)" in printed and "SAM untrained init" in printed
    assert "online SGD" not in printed  # no network to train by SGD
    out = tmp_path / "analysis"
    assert main(["analyze", str(run), "--episodes", "2", "--out", str(out), "--wandb", "disabled"]) == 0
    printed = capsys.readouterr().out
    assert "forgetting" in printed and "alignment: does not apply" in printed
    results = json.loads((out / "analysis.json").read_text())
    assert results["analyses"]["forgetting"] == "applies"
    assert results["analyses"]["interference"].startswith("does not apply")
    assert len(results["forgetting"]["matrix"]) == 3 and "interference" not in results
    assert [p.name for p in sorted(out.glob("*.png"))] == ["forgetting.png"]


def test_classification_stream_accuracy() -> None:
    """Digits (no download): the query logits come from the memory learner's final state."""
    from metaplastic.evaluation.classification import evaluate_classification

    cfg = load_config(EXPERIMENTS / "digits_classification_flp.yaml",
                      ["network.hidden=[]", "rule={name: rmc, slots: 2, heads: 1, head_size: 4}", "eval.episodes=2",
                       "eval.classes=[3]"])
    exp = Experiment.from_config(cfg)
    res = evaluate_classification(exp, exp.init_meta())
    assert 0 <= res["continual"]["accuracy"][0] <= 1 and res["iid"]["classes"] == [3]


# ---- one-line config errors -----------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    (["network.hidden=[8]"], "set network.hidden: []"),
    (["network.plastic=[0]"], "network.plastic must be null"),
    (["meta.unroll.mode=first_order"], "'first_order' has no meaning"),
    (["meta.unroll.compile=true"], "compile is not supported"),
    (["rule.k=300"], "rule.k (300) must be at most rule.slots (256)"),
    (["rule.slots=0"], "must be >= 1"),
    (["rule.name=lsmt"], "unknown rule 'lsmt' (known: bp, brsf, dfa, dtp, fa, flp, frsf, lstm, poly, rmc, sam"),
    (["rule.heads=2"], "unknown key 'rule.heads'"),
])
def test_bad_memory_configs_fail_in_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(EXPERIMENTS / "quick_sam.yaml", overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_every_memory_config_loads() -> None:
    for name in ("quick_lstm", "quick_rmc", "quick_sam", "omniglot_lstm_cpu", "omniglot_rmc_cpu", "omniglot_sam_cpu"):
        cfg = load_config(EXPERIMENTS / f"{name}.yaml")
        assert cfg.rule["name"] in LEARNERS and cfg.network.hidden == ()
