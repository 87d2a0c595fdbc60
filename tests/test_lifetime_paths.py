"""meta.unroll.path / meta.unroll.kernels: which lifetime path computes the meta-gradient.

``auto`` must be what ran before these fields existed (bitwise); the explicit choices must run
what they name, and a choice the rule or machine cannot honour is a one-line ConfigError."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from conftest import tiny_config_dict
from test_fast_paths import fused_node, grads_of, make_experiment, perturbed_meta

from metaplastic.config import UnrollConfig, config_from_dict
from metaplastic.errors import ConfigError
from metaplastic.kernels import native
from metaplastic.lifetime_paths import SUPPORT, UNROLL_MODES, choose_path
from metaplastic.meta import Experiment
from metaplastic.meta.lifetime import run_lifetime
from metaplastic.meta.objective import meta_loss


def loss_and_grads(exp: Experiment, meta: dict, unroll: UnrollConfig):
    loss = meta_loss(exp.net, exp.rule, meta, exp.training_episodes(0), exp.loss, unroll)
    return loss.detach(), grads_of(loss, meta)


def assert_identical(a, b) -> None:
    assert torch.equal(a[0], b[0])
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        assert torch.equal(a[1][k], b[1][k]), k


@pytest.mark.parametrize("mode", ["full", "checkpoint", "first_order"])
def test_auto_is_the_fused_path_bitwise(mode: str) -> None:
    exp = make_experiment({"form": "oja", "plastic_bias": True}, meta_batch=2)
    meta = perturbed_meta(exp)
    auto = loss_and_grads(exp, meta, UnrollConfig(mode=mode))
    assert_identical(auto, loss_and_grads(exp, meta, UnrollConfig(mode=mode, path="fused", kernels="auto")))
    step = loss_and_grads(exp, meta, UnrollConfig(mode=mode, path="step"))
    assert not torch.equal(auto[0], step[0]) or any(not torch.equal(auto[1][k], step[1][k]) for k in auto[1]), \
        "path step must really run the other path"
    torch.testing.assert_close(auto[0], step[0], rtol=1e-10, atol=0)


def test_auto_is_the_step_path_for_a_rule_without_fused_lifetime() -> None:
    cfg = config_from_dict(tiny_config_dict(rule={"name": "sgd"}, meta={"lr": {"init": 1e-3, "lr": 1e-3}}))
    exp = Experiment.from_config(cfg)
    meta = {k: v.clone().requires_grad_(True) for k, v in exp.init_meta().items()}
    assert_identical(loss_and_grads(exp, meta, UnrollConfig()), loss_and_grads(exp, meta, UnrollConfig(path="step")))
    assert exp.lifetime_path().as_dict() == {"path": "step", "note": "the rule has no fused lifetime"}


def test_path_step_and_fused_dispatch() -> None:
    exp = make_experiment({"form": "hebb"})
    meta = perturbed_meta(exp)
    x, y = exp.training_episodes(0)[:2]
    key = f"layers.{exp.net.plastic_layers[0]}.weight"
    for path, fused in (("auto", True), ("fused", True), ("step", False)):
        out = run_lifetime(exp.net, exp.rule, meta, x, y, exp.loss, UnrollConfig(path=path))
        assert fused_node(out[key]) == fused, path


@pytest.mark.skipif(native.library() is None, reason="native kernels cannot be built here")
def test_kernels_torch_keeps_the_native_kernels_out(monkeypatch: pytest.MonkeyPatch) -> None:
    exp = make_experiment({"form": "oja"}, meta_batch=2)
    meta = perturbed_meta(exp)
    used: list[str] = []
    for name in ("forward", "adjoint"):
        kernel = getattr(native.HebbianKernels, name)
        monkeypatch.setattr(native.HebbianKernels, name, lambda *a, _k=kernel, _n=name: used.append(_n) or _k(*a))
    on = loss_and_grads(exp, meta, UnrollConfig(kernels="native"))
    assert {"forward", "adjoint"} <= set(used)
    assert_identical(on, loss_and_grads(exp, meta, UnrollConfig()))  # auto = native where they apply
    used.clear()
    off = loss_and_grads(exp, meta, UnrollConfig(kernels="torch"))
    assert used == []
    torch.testing.assert_close(on[0], off[0], rtol=1e-11, atol=0)
    for k in on[1]:
        torch.testing.assert_close(on[1][k], off[1][k], rtol=1e-9, atol=1e-14)


def test_environment_override_wins_and_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    exp = make_experiment({"form": "oja"})
    monkeypatch.setenv("METAPLASTIC_NATIVE", "0")
    for kernels in ("auto", "native"):
        path = choose_path(exp.rule, UnrollConfig(kernels=kernels), torch.device("cpu"), torch.float64)
        assert (path.fused, path.native) == (True, False)
        assert path.describe() == "lifetime path fused, kernels torch (METAPLASTIC_NATIVE=0)"


def test_native_refused_where_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    exp = make_experiment({"form": "oja"})
    monkeypatch.setattr(native, "library", lambda: None)  # e.g. no C compiler
    with pytest.raises(ConfigError, match="native kernels cannot run here"):
        choose_path(exp.rule, UnrollConfig(kernels="native"), torch.device("cpu"), torch.float64)
    auto = choose_path(exp.rule, UnrollConfig(), torch.device("cpu"), torch.float64)
    assert (auto.fused, auto.native, auto.note) == (True, False, "native kernels unavailable")


@pytest.mark.parametrize(("sections", "message"), [
    ({"meta": {"unroll": {"path": "fast"}}}, "meta.unroll.path must be one of auto, fused, step, got 'fast'"),
    ({"meta": {"unroll": {"kernels": "c"}}}, "meta.unroll.kernels must be one of auto, native, torch, got 'c'"),
    ({"rule": {"name": "sgd"}, "meta": {"unroll": {"path": "fused"}}},
     "meta.unroll.path 'fused': rule 'sgd' has no fused lifetime (use path auto or step)"),
    ({"rule": {"name": "sgd"}, "meta": {"lr": {"init": 1e-3, "lr": 1e-3}, "unroll": {"kernels": "torch"}}},
     "meta.unroll.kernels 'torch' chooses the fused lifetime's kernels, but rule 'sgd' runs the step path"),
    ({"meta": {"unroll": {"path": "step", "kernels": "native"}}}, "runs the step path here: leave it auto"),
    ({"device": "cuda", "meta": {"unroll": {"kernels": "native"}}}, "native kernels run on the CPU only"),
    ({"meta": {"unroll": {"path": "fused", "compile": True}}}, "compile is not supported for the fused lifetime"),
    ({"rule": {"name": "poly", "terms": {"pre_target": "synapse"}}, "meta": {"unroll": {"kernels": "native"}}},
     "meta.unroll.kernels 'native': rule 'poly' has no native kernels for its update"),
    ({"rule": {"oja_step": "semi_implicit", "coef_max": 0.1}, "meta": {"unroll": {"kernels": "native"}}},
     "meta.unroll.kernels 'native': rule 'flp' has no native kernels for its update"),
    ({"rule": {"name": "lstm", "hidden": 4}, "network": {"hidden": []}, "meta": {"unroll": {"path": "step"}}},
     "meta.unroll.path has no meaning for memory learner 'lstm'"),
])
def test_choices_the_rule_cannot_take_are_one_line_errors(sections: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        config_from_dict(tiny_config_dict(**sections))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("rule", [{"name": "poly", "terms": {"pre_target": "synapse"}},
                                  {"oja_step": "semi_implicit", "coef_max": 0.1}])
def test_the_log_says_torch_kernels_for_an_update_without_native_ones(rule: dict) -> None:
    exp = Experiment.from_config(config_from_dict(tiny_config_dict(rule=rule)))
    path = choose_path(exp.rule, UnrollConfig(), torch.device("cpu"), torch.float64)
    assert path.describe() == "lifetime path fused, kernels torch (the rule's update has no native kernels)"
    flp = Experiment.from_config(config_from_dict(tiny_config_dict()))
    native_ok = native.library() is not None
    assert choose_path(flp.rule, UnrollConfig(), torch.device("cpu"), torch.float64).native == native_ok


def test_one_table_of_supported_modes() -> None:
    assert SUPPORT["fused"].modes == SUPPORT["step"].modes == UNROLL_MODES
    assert "first_order" not in SUPPORT["memory"].modes and SUPPORT["plastic_conv"].modes == ("full",)
    assert SUPPORT["step"].compile and not SUPPORT["fused"].compile


def test_train_prints_the_path_once_with_progress(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from metaplastic.meta import train

    cfg = config_from_dict(tiny_config_dict(meta={"steps": 2, "unroll": {"path": "step"}}, out_dir=str(tmp_path)))
    train(cfg, progress=True)
    assert capsys.readouterr().err.count("metaplastic: tiny: lifetime path step\n") == 1


def test_path_is_part_of_the_saved_config() -> None:
    cfg = config_from_dict(tiny_config_dict(meta={"unroll": {"path": "step"}}))
    assert cfg.to_dict()["meta"]["unroll"]["path"] == "step"
    assert config_from_dict(tiny_config_dict()).to_dict()["meta"]["unroll"] | {"path": "step"} == \
        dataclasses.asdict(cfg.meta.unroll)
