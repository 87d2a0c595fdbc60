"""Loading YAML configs: errors, overrides with type coercion, ``base:`` inheritance."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest
import yaml
from conftest import tiny_config_dict

from metaplastic.config import ExperimentConfig, load_config
from metaplastic.errors import ConfigError
from metaplastic.meta import Experiment
from metaplastic.rules import FLPRule, SGDRule


def write(path, text: str):
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def write_tiny(path, **sections):
    path.write_text(yaml.safe_dump(tiny_config_dict(**sections), sort_keys=False))
    return path


def config_error(path, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_file_round_trip(tmp_path):
    path = write_tiny(tmp_path / "exp.yaml")
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.network.hidden == (5, 4) and cfg.meta.lr["coef"] == 1e-3 and cfg.dtype == "float64"
    # the saved form loads back to the same config
    again = write(tmp_path / "again.yaml", yaml.safe_dump(cfg.to_dict()))
    assert load_config(again) == cfg
    exp = Experiment.from_config(cfg)
    assert isinstance(exp.rule, FLPRule) and exp.rule.coef_init == 0.05


def test_name_defaults_to_file_stem(tmp_path):
    data = tiny_config_dict()
    del data["name"]
    path = tmp_path / "my_experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_config(path).name == "my_experiment"


@pytest.mark.parametrize(
    "text, line",
    [
        ("seed: 1\nnetwork:\n  hidden: [5, 4\nmeta:\n  steps: 3\n", None),
        ("seed: 1\ntask:\n  name: sine\n   order: iid\n", 4),
        ("seed: 1\nname: 'unclosed\n", None),
        ("seed: 1\n\tdtype: float64\n", 2),
    ],
)
def test_malformed_yaml_names_the_line(tmp_path, text, line):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    message = config_error(path)
    assert "malformed YAML" in message and str(path) in message
    assert "line " in message
    if line is not None:
        assert f"line {line}" in message


def test_non_mapping_and_missing_file(tmp_path):
    assert "mapping" in config_error(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    assert "not found" in config_error(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    "sections, key",
    [
        ({"sead": 1}, "sead"),
        ({"network": {"hiden": [3]}}, "network.hiden"),
        ({"meta": {"stpes": 3}}, "meta.stpes"),
        ({"meta": {"lr": {"weights": 0.1}}}, "meta.lr.weights"),
        ({"eval": {"episodez": 3}}, "eval.episodez"),
        ({"rule": {"coef_int": 0.1}}, "rule.coef_int"),
        ({"rule": {"name": "sgd", "form": "oja"}}, "rule.form"),
        ({"task": {"n_function": 3}}, "task.n_function"),
    ],
)
def test_unknown_key_names_the_dotted_key(tmp_path, sections, key):
    message = config_error(write_tiny(tmp_path / "exp.yaml", **sections))
    assert "unknown key" in message and key in message


def test_unknown_rule_lists_known_rules(tmp_path):
    message = config_error(write_tiny(tmp_path / "exp.yaml", rule={"name": "bcm"}))
    assert "bcm" in message and "flp" in message and "sgd" in message


@pytest.mark.parametrize(
    "sections, fragment",
    [
        ({"seed": "abc"}, "seed"),
        ({"network": {"hidden": 5}}, "network.hidden"),
        ({"meta": {"steps": 2.5}}, "meta.steps"),
        ({"rule": {"plastic_bias": "maybe"}}, "rule.plastic_bias"),
        ({"dtype": "float16"}, "dtype"),
        ({"meta": {"lr": {"coef": -1.0}}}, "meta.lr.coef"),
        ({"rule": {"form": "anti"}}, "rule.form"),
        ({"task": {"order": "random"}}, "task.order"),
    ],
)
def test_bad_values(tmp_path, sections, fragment):
    assert fragment in config_error(write_tiny(tmp_path / "exp.yaml", **sections))


def test_overrides_with_type_coercion(tmp_path):
    path = write_tiny(tmp_path / "exp.yaml")
    cfg = load_config(
        path,
        [
            "meta.lr.coef=1e-4",  # YAML 1.1 reads this as a string: coerced to float
            "meta.lr.beta=null",
            "meta.grad_clip=2",
            "network.hidden=[7, 6, 5]",
            "network.plastic=[-1]",
            "rule.coef_init=1e-2",
            "rule.feedback_hidden=[3]",
            "rule.beta_sigmoid=true",
            "task.amplitude=[0.5, 1.5]",
            "task.order=iid",
            "seed=42",
            "name=override",
        ],
    )
    assert cfg.meta.lr["coef"] == 1e-4 and isinstance(cfg.meta.lr["coef"], float)
    assert cfg.meta.lr["beta"] is None
    assert cfg.meta.grad_clip == 2.0 and isinstance(cfg.meta.grad_clip, float)
    assert cfg.network.hidden == (7, 6, 5) and cfg.network.plastic == (-1,)
    assert cfg.seed == 42 and cfg.name == "override"
    exp = Experiment.from_config(cfg)
    assert exp.rule.coef_init == 1e-2 and isinstance(exp.rule.coef_init, float)
    assert exp.rule.feedback_hidden == (3,) and exp.rule.beta_sigmoid is True
    assert exp.task.amplitude == (0.5, 1.5) and exp.task.order == "iid"
    assert exp.net.plastic_layers == [3]
    # untouched keys keep the file's values
    assert cfg.meta.lr["init"] == 1e-3 and cfg.task["n_functions"] == 2


def test_override_null_and_new_section(tmp_path):
    path = write_tiny(tmp_path / "exp.yaml", network={"plastic": [1, 2]})
    cfg = load_config(path, ["network.plastic=null", "out_dir=somewhere"])
    assert cfg.network.plastic is None and cfg.out_dir == "somewhere"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("meta.stpes=3", "meta.stpes"),
        ("rule.coef_int=0.1", "rule.coef_int"),
        ("seed", "key=value"),
        ("seed.x=1", "seed"),
        ("meta..steps=1", "malformed"),
        ("meta.steps=many", "meta.steps"),
    ],
)
def test_bad_overrides(tmp_path, override, fragment):
    assert fragment in config_error(write_tiny(tmp_path / "exp.yaml"), [override])


def test_base_inheritance(tmp_path):
    write_tiny(tmp_path / "base.yaml", rule={"form": "hebb", "scope": "neuron"})
    (tmp_path / "sub").mkdir()
    child = write(
        tmp_path / "sub" / "child.yaml",
        """
        base: ../base.yaml
        name: child
        network:
          hidden: [6]
        rule:
          coef_init: 0.2
        meta:
          lr:
            coef: 0.01
        """,
    )
    cfg = load_config(child)
    assert cfg.name == "child"
    assert cfg.network.hidden == (6,) and cfg.network.activation == "tanh"  # nested merge
    given = {"name": "flp", "form": "hebb", "scope": "neuron", "coef_init": 0.2}
    assert {k: cfg.rule[k] for k in given} == given
    assert cfg.rule["plastic_bias"] is False  # defaults are spelled out in the stored config
    assert cfg.meta.lr["coef"] == 0.01 and cfg.meta.lr["init"] == 1e-3
    assert cfg.task["n_functions"] == 2 and cfg.seed == 7
    # overrides apply on top of the merged result
    assert load_config(child, ["rule.form=oja"]).rule["form"] == "oja"


def test_base_chain_and_rule_switch(tmp_path):
    write_tiny(tmp_path / "a.yaml", rule={"form": "hebb", "scope": "neuron"})
    write(tmp_path / "b.yaml", "base: a.yaml\nseed: 3\n")
    c = write(tmp_path / "c.yaml", "base: b.yaml\nrule:\n  name: sgd\n  lr_init: 0.1\n")
    cfg = load_config(c)
    assert cfg.seed == 3
    # a rule section that changes its name does not inherit the other rule's keys
    assert cfg.rule["name"] == "sgd" and cfg.rule["lr_init"] == 0.1
    assert "form" not in cfg.rule  # switching rule name drops the old rule's keys
    assert isinstance(Experiment.from_config(cfg).rule, SGDRule)


def test_errors_in_base_file_are_reported(tmp_path):
    write(tmp_path / "base.yaml", "seed: [1\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\n")
    assert "base.yaml" in config_error(child)
    assert "not found" in config_error(write(tmp_path / "orphan.yaml", "base: nowhere.yaml\n"))


def test_base_cycle_is_a_config_error(tmp_path):
    own = write(tmp_path / "own.yaml", "base: own.yaml\nseed: 1\n")
    assert "inherits from itself" in config_error(own)
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    b = write(tmp_path / "b.yaml", "base: a.yaml\n")
    assert "inherits from itself" in config_error(b)


def test_unreadable_file_is_a_config_error(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"seed: \xff\xfe\x00\x01\n")
    assert "cannot read config" in config_error(path)


def test_rule_and_task_values_are_stored_coerced(tmp_path):
    """The same value written two ways gives the same config (and so a resumable run)."""
    path = write_tiny(tmp_path / "exp.yaml")
    a = load_config(path, ["rule.coef_init=1e-4", "rule.feedback_hidden=[3]", "task.amplitude=[1, 2]"])
    b = load_config(path, ["rule.coef_init=0.0001", "rule.feedback_hidden=[3.0]", "task.amplitude=[1.0, 2.0]"])
    assert a.rule["coef_init"] == 1e-4 and isinstance(a.rule["coef_init"], float)
    assert a.rule["feedback_hidden"] == [3] and isinstance(a.rule["feedback_hidden"][0], int)
    assert a == b and a.to_dict() == b.to_dict()
    # every rule field is stored, so leaving a default implicit or spelling it out is the same config
    assert set(a.rule) == {f.name for f in dataclasses.fields(FLPRule)}
    assert load_config(path, ["rule.coef_init=1e-4", "rule.feedback_hidden=[3]", "task.amplitude=[1, 2]",
                              "rule.scope=synapse"]) == a
    # the saved form reads back to the same config
    assert load_config(write(tmp_path / "saved.yaml", yaml.safe_dump(a.to_dict()))) == a
