"""Plastic convolutions (``network.conv.plastic``): conv fast weights learned by inner-loop SGD."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from test_classification import tiny_classification
from test_omniglot import layout, write_zip

from metaplastic.cli.main import main
from metaplastic.config import config_from_dict, load_config
from metaplastic.errors import ConfigError
from metaplastic.evaluation.classification import episode_accuracy
from metaplastic.meta.checkpoint import load_checkpoint
from metaplastic.meta.experiment import Experiment, seeded_generator
from metaplastic.meta.lifetime import run_lifetime
from metaplastic.meta.objective import meta_loss
from metaplastic.meta.plastic_conv import plastic_conv_lifetime, plastic_conv_outputs
from metaplastic.meta.trainer import MetaTrainer
from metaplastic.networks import bias_key, weight_key
from metaplastic.params import select

SGD_HEAD = {"name": "sgd", "lr_init": 0.2}


@pytest.fixture
def omniglot_root(tmp_path: Path) -> Path:
    root = tmp_path / "omniglot"
    root.mkdir()
    write_zip(root / "images_background.zip", "images_background", layout({"Aa": 8, "Bb": 6}, 6))
    return root


def plastic_experiment(root: Path, rule: dict | None = None, lr_init: float = 0.3, **sections) -> Experiment:
    conv = {"channels": [3, 4], "strides": [2, 1], "plastic": True, "lr_init": lr_init}
    data = tiny_classification(root, network={"conv": conv}, **sections)
    if rule is not None:
        data["rule"] = rule
        data["meta"]["lr"] = {"init": 1e-3, "lr": 1e-3}
    return Experiment.from_config(config_from_dict(data))


def distinct_lrs(meta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Different conv step sizes per layer, so a mixed-up layer index shows."""
    return {**meta, "lr.features.0": torch.tensor(0.4, dtype=torch.float64),
            "lr.features.1": torch.tensor(0.7, dtype=torch.float64)}


def test_inner_updates_equal_plain_sgd_on_a_copy_per_task(omniglot_root: Path) -> None:
    """With an SGD head the whole network does plain SGD: replay it per task with torch.autograd."""
    exp = plastic_experiment(omniglot_root, SGD_HEAD)
    meta = distinct_lrs(exp.init_meta())
    assert {"lr.features.0", "lr.features.1"} <= set(meta) and "lr.features.0" not in exp.head_meta(meta)
    episodes = exp.training_episodes(0)
    x, y = episodes.x[:, :3], episodes.y[:, :3]
    assert x.shape[0] == 2 and x.dtype == torch.float64
    conv, weights = plastic_conv_lifetime(exp.encoder, exp.net, exp.rule, meta, x, y, exp.loss)
    moved = []
    for t in range(2):
        params = {k: v.clone().requires_grad_(True) for k, v in select(meta, "init").items()}
        for step in range(3):
            feats = exp.encoder.forward({k: v for k, v in params.items() if k.startswith("features.")}, x[t, step])
            out = exp.net.forward(params, feats.unsqueeze(0)).output
            grads = torch.autograd.grad(exp.loss.value(out, y[t, step].unsqueeze(0)).sum(), list(params.values()))
            with torch.no_grad():
                for (k, v), g in zip(params.items(), grads):
                    layer = k.split(".")[1]
                    v -= (meta[f"lr.features.{layer}"] if k.startswith("features.") else meta[f"lr.{layer}"]) * g
        for k in ("features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias"):
            torch.testing.assert_close(conv[k][t], params[k].detach(), rtol=1e-12, atol=1e-13)
            moved.append(float((conv[k][t] - meta[f"init.{k}"]).abs().max().detach()))
        for layer in range(2):
            for k in (weight_key(layer), bias_key(layer)):
                torch.testing.assert_close(weights[k][t], params[k].detach(), rtol=1e-12, atol=1e-13)
    assert min(moved) > 1e-6  # every conv tensor of both tasks learned
    assert not torch.allclose(conv["features.0.weight"][0], conv["features.0.weight"][1])  # one copy per task


def meta_keys_and_objective(exp: Experiment):
    meta = exp.init_meta()
    episodes = exp.training_episodes(0)
    unroll = exp.config.meta.unroll

    def objective(m: dict[str, torch.Tensor]) -> torch.Tensor:
        return exp.meta_loss(m, episodes, unroll)

    return meta, objective


@pytest.mark.parametrize("head", ["sgd", "flp"])
def test_meta_gradients_of_every_group_match_finite_differences(head: str, omniglot_root: Path) -> None:
    exp = plastic_experiment(omniglot_root, SGD_HEAD if head == "sgd" else None)
    meta, objective = meta_keys_and_objective(exp)
    groups = {k.split(".")[0] for k in meta}
    assert groups == {"init", "lr"} if head == "sgd" else {"init", "lr", "coef"} <= groups
    leaves = {k: v.clone().requires_grad_(True) for k, v in meta.items()}
    grads = dict(zip(leaves, torch.autograd.grad(objective(leaves), list(leaves.values()), allow_unused=True)))
    for key in ("init.features.0.weight", "init.features.1.bias", "lr.features.0", "lr.features.1"):
        assert grads[key] is not None and grads[key].abs().max() > 0, key
    eps = 1e-6
    for key, p in meta.items():
        grad = grads[key] if grads[key] is not None else torch.zeros_like(p)
        for idx in {(0,) * p.dim(), tuple(s - 1 for s in p.shape)}:
            plus, minus = p.clone(), p.clone()
            plus[idx] += eps
            minus[idx] -= eps
            fd = (objective({**meta, key: plus}) - objective({**meta, key: minus})) / (2 * eps)
            assert float(grad[idx]) == pytest.approx(float(fd), rel=1e-5, abs=1e-9), (key, idx)


def test_plastic_false_keeps_todays_numbers(omniglot_root: Path) -> None:
    exp = Experiment.from_config(config_from_dict(tiny_classification(omniglot_root)))
    assert not exp.plastic_conv and not any(k.startswith("lr.") for k in exp.init_meta())
    meta = exp.init_meta()
    episodes = exp.training_episodes(0)
    unroll = exp.config.meta.unroll
    today = meta_loss(exp.net, exp.rule, exp.head_meta(meta), exp.encode(meta, episodes), exp.loss, unroll)
    assert torch.equal(exp.meta_loss(meta, episodes, unroll), today)
    # a plastic conv stage with zero step sizes is the frozen one (up to grouped-conv rounding)
    frozen = plastic_experiment(omniglot_root, lr_init=0.0)
    assert frozen.plastic_conv and set(frozen.init_meta()) == set(meta) | {"lr.features.0", "lr.features.1"}
    torch.testing.assert_close(frozen.meta_loss(frozen.init_meta(), episodes, unroll), today, rtol=1e-12, atol=0)
    plastic = plastic_experiment(omniglot_root)
    assert abs(float(plastic.meta_loss(plastic.init_meta(), episodes, unroll) - today)) > 1e-6


def test_cli_trains_and_evaluates_with_plastic_convs(omniglot_root: Path, tmp_path: Path, capsys) -> None:
    exp = plastic_experiment(omniglot_root, SGD_HEAD)
    data = exp.config.to_dict()
    data["out_dir"] = str(tmp_path / "run")
    path = tmp_path / "plastic.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["train", str(path), "--no-progress"]) == 0
    trainer = MetaTrainer.from_state_dict(load_checkpoint(tmp_path / "run" / "checkpoint.pt"))
    assert trainer.step == 2
    assert any(not torch.equal(trainer.meta[k], trainer.initial_meta[k]) for k in ("lr.features.0", "lr.features.1"))
    assert main(["evaluate", str(tmp_path / "run"), "--no-references"]) == 0
    assert "2 classes" in capsys.readouterr().out
    # evaluation classifies with the adapted convs, not with the frozen meta-learned ones
    exp = trainer.experiment
    meta = {**trainer.meta, "lr.features.0": torch.tensor(3.0, dtype=torch.float64)}
    held_out = exp.task.sample(8, seeded_generator(7), split="test", n_classes=3).to(exp.device, torch.float64)
    conv, weights = plastic_conv_lifetime(exp.encoder, exp.net, exp.rule, meta, held_out.x, held_out.y, exp.loss)
    qx, qy = held_out.query_x.flatten(1, 2), held_out.query_y.flatten(1, 2)
    right = plastic_conv_outputs(exp.encoder, exp.net, conv, weights, qx).argmax(-1) == qy.argmax(-1)
    encoded = exp.encode(meta, held_out)
    head = run_lifetime(exp.net, exp.rule, exp.head_meta(meta), encoded.x, encoded.y, exp.loss)
    frozen_right = exp.net.forward(head, encoded.query_x.flatten(1, 2)).output.argmax(-1) == qy.argmax(-1)
    accuracy = episode_accuracy(exp, meta, held_out)
    assert torch.equal(accuracy, right.double().mean(-1))
    assert not torch.equal(accuracy, frozen_right.double().mean(-1))


@pytest.mark.parametrize("mode", ["checkpoint", "truncate", "first_order"])
def test_unsupported_unroll_modes_are_one_line_config_errors(mode: str, omniglot_root: Path) -> None:
    unroll = {"mode": mode, "last_steps": 2}
    meta = {"steps": 2, "meta_batch": 2, "lr": {"init": 1e-3}, "unroll": unroll}
    with pytest.raises(ConfigError, match=f"network.conv.plastic supports only .* got mode '{mode}'") as info:
        plastic_experiment(omniglot_root, SGD_HEAD, meta=meta)
    assert "\n" not in str(info.value)


def test_shipped_config_builds_and_takes_a_meta_step(omniglot_root: Path) -> None:
    path = Path(__file__).resolve().parents[1] / "experiments" / "omniglot_oml_plastic_conv_cpu.yaml"
    cfg = load_config(path)
    assert cfg.network.conv.plastic and cfg.rule["name"] == "sgd" and cfg.meta.lr["lr"] is not None
    tiny = [
        f"task.root={omniglot_root}", f"task.cache_dir={omniglot_root / 'cache'}", "task.test_alphabets=[Bb]",
        "task.n_classes=2", "task.shots=1", "task.query_per_class=1", "network.hidden=[4]",
        "meta.meta_batch=2", "network.conv.channels=[2, 2, 2, 2]",
    ]
    trainer = MetaTrainer(Experiment.from_config(load_config(path, tiny)))
    metrics = trainer.meta_step()
    assert metrics["grad_norm/init"] > 0 and metrics["grad_norm/lr"] > 0
