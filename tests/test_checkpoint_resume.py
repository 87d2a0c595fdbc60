"""Checkpoints (atomic, weights_only, one-line errors), resuming and the divergence guard."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import tiny_config

from metaplastic.errors import CheckpointError, ConfigError, DivergenceError
from metaplastic.meta import MetaTrainer, load_checkpoint, save_checkpoint, train
from metaplastic.meta import checkpoint as checkpoint_module
from metaplastic.meta.checkpoint import atomic_write_bytes

N_STEPS = 4


def run_config(tmp_path, name="run", steps=N_STEPS, **sections):
    meta = {"steps": steps, **sections.pop("meta", {})}
    return tiny_config(out_dir=str(tmp_path / name), meta=meta, **sections)


def assert_same_state(a: MetaTrainer, b: MetaTrainer):
    """Bitwise-equal meta-parameters and optimiser state."""
    assert a.step == b.step
    assert set(a.meta) == set(b.meta)
    for k in a.meta:
        assert torch.equal(a.meta[k], b.meta[k]), k
    sa, sb = a.state_dict()["optimizers"], b.state_dict()["optimizers"]
    assert set(sa) == set(sb)
    for group in sa:
        assert sa[group]["param_groups"] == sb[group]["param_groups"]
        assert sa[group]["state"].keys() == sb[group]["state"].keys()
        for idx, state in sa[group]["state"].items():
            for name, value in state.items():
                other = sb[group]["state"][idx][name]
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), (group, idx, name)


def metric_steps(run_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---- checkpoint files ---------------------------------------------------------------------------
def test_round_trip(tmp_path):
    cfg = run_config(tmp_path)
    trainer = train(cfg, progress=False)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, trainer.state_dict())
    payload = load_checkpoint(path)
    assert payload["step"] == N_STEPS and payload["config"] == cfg.to_dict()
    restored = MetaTrainer.from_state_dict(payload)
    assert_same_state(trainer, restored)
    # the meta-parameters really moved away from the initial ones
    assert any(not torch.equal(trainer.meta[k], trainer.initial_meta[k]) for k in trainer.meta)
    for k, v in payload["initial_meta"].items():
        assert torch.equal(v, trainer.initial_meta[k])
    # a run directory is accepted in place of the file
    assert load_checkpoint(cfg.run_dir)["step"] == N_STEPS


def test_save_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "ckpt.pt"
    for step in range(2):
        save_checkpoint(path, {"config": {}, "step": step, "meta": {}, "initial_meta": {}, "optimizers": {}})
    assert os.listdir(tmp_path / "sub") == ["ckpt.pt"]
    assert load_checkpoint(path)["step"] == 1


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_failing_write_keeps_old_file(tmp_path, monkeypatch, exc):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"config": {}, "step": 1, "meta": {"a": torch.ones(3)}, "initial_meta": {}, "optimizers": {}})
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise exc

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(type(exc)):
        save_checkpoint(path, {"config": {}, "step": 2, "meta": {}, "initial_meta": {}, "optimizers": {}})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert load_checkpoint(path)["step"] == 1


def test_atomic_write_bytes_cleans_up(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")

    def write(f):
        f.write(b"new")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write_bytes(target, write)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["file.bin"]


def assert_one_line_checkpoint_error(path, match=None):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message and "\n" not in message
    assert str(path) in message
    if match:
        assert match in message
    return message


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.0])
def test_truncated_checkpoint(tmp_path, keep):
    cfg = run_config(tmp_path, steps=1)
    train(cfg, progress=False)
    data = (cfg.run_dir / "checkpoint.pt").read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: int(len(data) * keep)])
    assert_one_line_checkpoint_error(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00\x01not a checkpoint at all\n" * 10)
    assert_one_line_checkpoint_error(path)


def test_foreign_torch_file(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    assert_one_line_checkpoint_error(path, "not a metaplastic checkpoint")


def test_incomplete_checkpoint(tmp_path):
    path = tmp_path / "incomplete.pt"
    save_checkpoint(path, {"config": {}, "step": 0, "meta": {}})
    assert_one_line_checkpoint_error(path, "initial_meta")


class NotAllowed:
    """Pickling this needs arbitrary code on load, which weights_only refuses."""

    def __init__(self):
        self.x = 1


def test_weights_only_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "pickle.pt"
    payload = {"config": {}, "step": 0, "meta": {}, "initial_meta": {}, "optimizers": {}, "obj": NotAllowed()}
    save_checkpoint(path, payload)
    assert_one_line_checkpoint_error(path)


def test_missing_checkpoint(tmp_path):
    assert_one_line_checkpoint_error(tmp_path / "nothing.pt", "not found")
    assert_one_line_checkpoint_error(tmp_path, "not found")  # an empty run directory


# ---- resuming ------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", [{"name": "flp", "form": "oja"}, {"name": "sgd", "lr_init": 0.05}])
def test_resume_equals_uninterrupted(tmp_path, rule):
    # float32 (the default training dtype) to make bitwise equality meaningful for real runs
    full = train(run_config(tmp_path, "full", rule=rule, dtype="float32", meta={"checkpoint_every": 10}),
                 progress=False)
    part_cfg = run_config(tmp_path, "part", steps=2, rule=rule, dtype="float32", meta={"checkpoint_every": 10})
    first = train(part_cfg, progress=False)
    assert first.step == 2
    resumed = train(run_config(tmp_path, "part", rule=rule, dtype="float32", meta={"checkpoint_every": 10}),
                    resume=True, progress=False)
    assert resumed.step == N_STEPS
    assert_same_state(full, resumed)
    assert_same_state(full, MetaTrainer.from_state_dict(load_checkpoint(tmp_path / "part")))
    assert metric_steps(tmp_path / "part") == list(range(1, N_STEPS + 1))
    losses = {
        run: [json.loads(line)["meta_loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        for run in ("part", "full")
    }
    assert losses["part"] == losses["full"]


def test_resume_after_exception_in_callback(tmp_path):
    full = train(run_config(tmp_path, "full", steps=5), progress=False)

    def crash(trainer, metrics):
        if trainer.step == 3:
            raise RuntimeError("killed")

    cfg = run_config(tmp_path, "crash", steps=5, meta={"checkpoint_every": 2})
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, progress=False, on_step=crash)
    assert load_checkpoint(cfg.run_dir)["step"] == 2  # the last checkpoint before the crash
    assert metric_steps(cfg.run_dir) == [1, 2, 3]
    resumed = train(cfg, resume=True, progress=False)
    assert_same_state(full, resumed)
    assert metric_steps(cfg.run_dir) == [1, 2, 3, 4, 5]  # step 3 logged once, not twice


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    a = train(run_config(tmp_path, "a", steps=2), progress=False)
    b = train(run_config(tmp_path, "b", steps=2), resume=True, progress=False)
    assert_same_state(a, b)


def test_existing_run_needs_resume(tmp_path):
    cfg = run_config(tmp_path, steps=1)
    train(cfg, progress=False)
    with pytest.raises(ConfigError, match="resume"):
        train(cfg, progress=False)


@pytest.mark.parametrize(
    "change, key",
    [
        ({"network": {"hidden": [5, 3]}}, "network.hidden"),
        ({"rule": {"coef_init": 0.1}}, "rule.coef_init"),
        ({"meta": {"lr": {"coef": 0.5}}}, "meta.lr.coef"),
        ({"seed": 8}, "seed"),
    ],
)
def test_resume_with_incompatible_config(tmp_path, change, key):
    train(run_config(tmp_path, steps=1), progress=False)
    with pytest.raises(ConfigError) as info:
        train(run_config(tmp_path, steps=2, **change), resume=True, progress=False)
    assert key in str(info.value) and "\n" not in str(info.value)


def test_resume_allows_more_steps_and_new_intervals(tmp_path):
    train(run_config(tmp_path, steps=1), progress=False)
    trainer = train(run_config(tmp_path, steps=2, meta={"checkpoint_every": 5, "log_every": 2}), resume=True,
                    progress=False)
    assert trainer.step == 2


def test_resume_a_checkpoint_from_before_an_option_existed(tmp_path):
    """A checkpoint whose config lacks an option added later (here meta.unroll) resumes when the
    new config leaves that option at its default, and is refused when it does not."""
    cfg = run_config(tmp_path, steps=1)
    train(cfg, progress=False)
    path = cfg.run_dir / "checkpoint.pt"
    payload = load_checkpoint(path)
    del payload["config"]["meta"]["unroll"]
    save_checkpoint(path, {k: v for k, v in payload.items() if k != "format"})
    assert train(run_config(tmp_path, steps=2), resume=True, progress=False).step == 2
    with pytest.raises(ConfigError, match="meta.unroll"):
        train(run_config(tmp_path, steps=3, meta={"unroll": {"mode": "truncate", "last_steps": 1}}), resume=True,
              progress=False)


def test_resume_may_switch_between_full_and_checkpointed_meta_gradients(tmp_path):
    """Checkpointing changes memory, not numbers: a run resumed with it ends where the
    uninterrupted full-mode run ends."""
    reference = train(run_config(tmp_path, "reference", steps=3), progress=False)
    train(run_config(tmp_path, steps=1), progress=False)
    unroll = {"unroll": {"mode": "checkpoint", "segment": 1}}
    resumed = train(run_config(tmp_path, steps=3, meta=unroll), resume=True, progress=False)
    assert_same_state(reference, resumed)


def test_resume_with_equivalent_spelling(tmp_path):
    """A value given as the string '5e-2' (how YAML 1.1 reads a CLI override) and as 0.05 is the
    same config: the run resumes."""
    train(run_config(tmp_path, steps=1, rule={"coef_init": "5e-2"}), progress=False)
    trainer = train(run_config(tmp_path, steps=2, rule={"coef_init": 0.05}), resume=True, progress=False)
    assert trainer.step == 2


# ---- divergence ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sections, diverges_at",
    [
        ({"rule": {"form": "hebb", "coef_init": 1e6}}, 0),  # in the very first lifetime
        ({"rule": {"form": "hebb"}, "meta": {"lr": {"coef": 1e7}}, "network": {"activation": "relu"}}, 1),
        ({"rule": {"form": "oja"}, "meta": {"lr": {"coef": 1e3}}, "network": {"activation": "relu"}}, 1),
    ],
)
def test_divergence_guard(tmp_path, sections, diverges_at):
    cfg = run_config(tmp_path, steps=N_STEPS, dtype="float32", **sections)
    with pytest.raises(DivergenceError) as info:
        train(cfg, progress=False)
    message = str(info.value)
    assert "\n" not in message and f"meta-step {diverges_at}" in message
    if diverges_at == 0:  # nothing to keep: a corrected command must find the folder free
        assert "nothing was kept" in message and not cfg.run_dir.exists()
        return
    payload = load_checkpoint(cfg.run_dir)  # the last checkpoint is intact and loadable
    assert payload["step"] == diverges_at
    assert all(bool(torch.isfinite(v).all()) for v in payload["meta"].values())
    trainer = MetaTrainer.from_state_dict(payload)
    assert trainer.step == diverges_at
    assert metric_steps(cfg.run_dir) == list(range(1, diverges_at + 1))
