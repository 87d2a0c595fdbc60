"""Continual classification streams, the conv + plastic-FC experiment, its evaluation and CLI."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from test_omniglot import layout, write_zip

from metaplastic.cli.main import main
from metaplastic.config import config_from_dict, load_config
from metaplastic.data.l2l import L2LTaskStream
from metaplastic.errors import ConfigError, DataError
from metaplastic.evaluation.classification import episode_accuracy, evaluate_classification, mean_ci95
from metaplastic.meta.experiment import Experiment, seeded_generator
from metaplastic.meta.objective import meta_loss
from metaplastic.meta.trainer import MetaTrainer, train
from metaplastic.tasks.classification import ClassificationStream

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def omniglot_root(tmp_path: Path) -> Path:
    """8 + 6 characters of two alphabets, 6 distinct random drawings each, in one upstream-style zip."""
    root = tmp_path / "omniglot"
    root.mkdir()
    write_zip(root / "images_background.zip", "images_background", layout({"Aa": 8, "Bb": 6}, 6))
    return root


def stream(root: Path, **kw) -> ClassificationStream:
    base = dict(
        root=str(root), cache_dir=str(root / "cache"), image_size=8, test_alphabets=("Bb",),
        n_classes=3, shots=2, query_per_class=3, n_outputs=10,
    )
    return ClassificationStream(**{**base, **kw})


def class_of(task: ClassificationStream, split: str = "train") -> dict[bytes, int]:
    pool = task.pool(split)
    return {pool.x[i].numpy().tobytes(): c for c, m in enumerate(pool.members) for i in m.tolist()}


def test_query_is_disjoint_from_the_trajectory(omniglot_root: Path) -> None:
    task = stream(omniglot_root)
    ep = task.sample(6, seeded_generator(1))
    assert ep.x.shape == (6, 3 * 2, 1, 64) and ep.query_x.shape == (6, 3, 3, 64)
    for t in range(6):
        traj = {r.numpy().tobytes() for r in ep.x[t, :, 0]}
        query = {r.numpy().tobytes() for r in ep.query_x[t].flatten(0, 1)}
        assert len(traj) == 6 and len(query) == 9  # no sample drawn twice
        assert not traj & query


def test_continual_is_class_by_class_and_iid_shuffles_the_same_samples(omniglot_root: Path) -> None:
    cont, iid = stream(omniglot_root, n_classes=4, shots=3), stream(omniglot_root, n_classes=4, shots=3, order="iid")
    ec, ei = cont.sample(5, seeded_generator(2)), iid.sample(5, seeded_generator(2))
    lookup = class_of(cont)
    assert ec.boundaries == (3, 6, 9, 12)
    for t in range(5):
        classes = [lookup[r.numpy().tobytes()] for r in ec.x[t, :, 0]]
        blocks = [classes[i : i + 3] for i in range(0, 12, 3)]
        assert all(len(set(b)) == 1 for b in blocks)  # all shots of a class in a row
        assert len({b[0] for b in blocks}) == 4  # each class once
        labels = ec.y[t, :, 0].argmax(-1).tolist()
        assert all(len(set(labels[i : i + 3])) == 1 for i in range(0, 12, 3))
        same = sorted(r.numpy().tobytes() for r in ec.x[t, :, 0]) == sorted(r.numpy().tobytes() for r in ei.x[t, :, 0])
        assert same
    iid_classes = [[lookup[r.numpy().tobytes()] for r in ei.x[t, :, 0]] for t in range(5)]
    assert any(any(c[i] != c[i + 1] for i in range(0, 12, 3)) for c in iid_classes)  # really shuffled


def test_labels_are_remapped_per_episode(omniglot_root: Path) -> None:
    task = stream(omniglot_root)
    ep = task.sample(10, seeded_generator(3))
    lookup = class_of(task)
    units_of: dict[int, set[int]] = {}
    for t in range(10):
        mapping = {}
        for x, y in zip(ep.x[t, :, 0], ep.y[t, :, 0]):
            mapping.setdefault(lookup[x.numpy().tobytes()], set()).add(int(y.argmax()))
        for x, y in zip(ep.query_x[t].flatten(0, 1), ep.query_y[t].flatten(0, 1)):
            mapping[lookup[x.numpy().tobytes()]].add(int(y.argmax()))
        assert all(len(v) == 1 for v in mapping.values())  # one output unit per class, queries included
        units = [next(iter(v)) for v in mapping.values()]
        assert len(set(units)) == 3 and all(0 <= u < 10 for u in units)
        assert torch.equal(ep.y[t].sum(-1), torch.ones(6, 1))  # one-hot
        for c, v in mapping.items():
            units_of.setdefault(c, set()).update(v)
    assert max(len(v) for v in units_of.values()) > 1  # the same class lands on different units


def test_sampling_is_seeded(omniglot_root: Path) -> None:
    task = stream(omniglot_root, order="iid", remember_size=4)
    a, b, c = (task.sample(3, seeded_generator(s)) for s in (5, 5, 6))
    assert all(torch.equal(u, v) for u, v in zip(a[:6], b[:6]))
    assert not torch.equal(a.x, c.x)


def test_remember_batch_replays_trajectory_samples(omniglot_root: Path) -> None:
    ep = stream(omniglot_root, remember_size=5).sample(2, seeded_generator(4))
    assert ep.remember_x.shape == (2, 5, 64) and ep.remember_y.shape == (2, 5, 10)
    for t in range(2):
        pairs = {(x.numpy().tobytes(), int(y.argmax())) for x, y in zip(ep.x[t, :, 0], ep.y[t, :, 0])}
        assert all((x.numpy().tobytes(), int(y.argmax())) in pairs for x, y in zip(ep.remember_x[t], ep.remember_y[t]))


def test_splits_by_alphabet_and_by_character(omniglot_root: Path) -> None:
    by_alpha = stream(omniglot_root)
    assert all(n.startswith("Aa/") for n in by_alpha.pool("train").names)
    assert all(n.startswith("Bb/") for n in by_alpha.pool("test").names)
    by_char = stream(omniglot_root, split="character", test_fraction=0.5, split_seed=3)
    train, test = by_char.pool("train").names, by_char.pool("test").names
    assert len(test) == 7 and not set(train) & set(test) and len(set(train) | set(test)) == 14
    assert test == stream(omniglot_root, split="character", test_fraction=0.5, split_seed=3).pool("test").names
    assert {n[:2] for n in test} == {"Aa", "Bb"}  # characters of both alphabets on each side
    with pytest.raises(DataError, match="test alphabet 'Zz' not in the data"):
        stream(omniglot_root, test_alphabets=("Zz",)).pool("train")


def test_bad_requests_are_clear_errors(omniglot_root: Path) -> None:
    with pytest.raises(ConfigError, match="cannot draw 7 classes: the test split has 6 classes"):
        stream(omniglot_root).sample(1, seeded_generator(0), split="test", n_classes=7)
    with pytest.raises(DataError, match="has 6 samples; shots \\+ query_per_class need 8"):
        stream(omniglot_root, shots=5).sample(1, seeded_generator(0))
    with pytest.raises(ConfigError, match="task.order"):
        stream(omniglot_root, order="shuffled")
    with pytest.raises(ConfigError, match="exceeds task.n_outputs"):
        stream(omniglot_root, n_classes=11)


def test_array_sources() -> None:
    task = ClassificationStream(source="digits", n_classes=4, shots=3, query_per_class=2, n_outputs=10)
    ep = task.sample(2, seeded_generator(0))
    assert task.n_inputs == 64 and task.image_side is None
    assert ep.x.shape == (2, 12, 1, 64) and ep.query_y.shape == (2, 4, 2, 10)
    with pytest.raises(ConfigError, match="cannot draw 11 classes"):
        ClassificationStream(source="digits", n_outputs=20).sample(1, seeded_generator(0), n_classes=11)


class StandInTaskset:
    """The learn2learn TaskDataset interface: sample() -> (data, labels) of one N-way task."""

    def __init__(self, n_ways: int = 3, per_class: int = 4) -> None:
        self.g = torch.Generator().manual_seed(0)
        self.n_ways, self.per_class = n_ways, per_class

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        classes = torch.randperm(20, generator=self.g)[: self.n_ways]
        labels = classes.repeat_interleave(self.per_class)
        data = labels.view(-1, 1, 1, 1).float() + 0.01 * torch.rand(len(labels), 1, 2, 2, generator=self.g)
        return data, labels


def test_learn2learn_adapter_with_a_stand_in_taskset() -> None:
    adapter = L2LTaskStream(StandInTaskset(), n_inputs=4, n_outputs=10, shots=2, query_per_class=2)
    ep = adapter.sample(3, seeded_generator(0))
    assert ep.x.shape == (3, 6, 1, 4) and ep.query_x.shape == (3, 3, 2, 4)
    for t in range(3):
        true = ep.x[t, :, 0, 0].round()
        labels = ep.y[t, :, 0].argmax(-1)
        assert all(len(set(true[labels == u].tolist())) == 1 for u in labels.unique())
        assert all(len(set(true[i : i + 2].tolist())) == 1 for i in range(0, 6, 2))  # continual
        traj = {r.numpy().tobytes() for r in ep.x[t, :, 0]}
        assert not traj & {r.numpy().tobytes() for r in ep.query_x[t].flatten(0, 1)}
    with pytest.raises(DataError, match="has 4 samples; need 8"):
        L2LTaskStream(StandInTaskset(), n_inputs=4, n_outputs=10, shots=3).sample(1, seeded_generator(0))
    with pytest.raises(ConfigError, match="TaskDataset"):
        L2LTaskStream(object(), n_inputs=4, n_outputs=10)


def tiny_classification(root: Path, **sections) -> dict:
    data = {
        "name": "tiny_cls",
        "seed": 3,
        "dtype": "float64",
        "task": {
            "name": "classification", "root": str(root), "cache_dir": str(root / "cache"), "image_size": 8,
            "test_alphabets": ["Bb"], "n_classes": 3, "shots": 2, "query_per_class": 2, "n_outputs": 6,
        },
        "network": {"conv": {"channels": [3, 4], "strides": [2, 1]}, "hidden": [5], "plastic": None},
        "rule": {
            "name": "flp", "signal": "target", "output_target": "signal", "beta_init": 1.0,
            "hidden_multiplier": 100.0, "coef_init": 0.01,
        },
        "meta": {"steps": 2, "meta_batch": 2, "lr": {"init": 1e-3, "feedback": 1e-3, "coef": 1e-4, "beta": None}},
        "eval": {"episodes": 3, "batch": 2, "classes": [2, 3]},
    }
    for k, v in sections.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) else v
    return copy.deepcopy(data)


def test_meta_gradient_reaches_the_conv_weights_and_matches_finite_differences(omniglot_root: Path) -> None:
    exp = Experiment.from_config(config_from_dict(tiny_classification(omniglot_root)))
    assert exp.net.in_features == exp.encoder.out_features == 4 * 1 * 1  # 8 -> 3 -> 1 pixels
    meta = exp.init_meta()
    assert {"init.features.0.weight", "init.features.1.bias"} <= set(meta)
    episodes = exp.training_episodes(0)

    def objective(m):
        return meta_loss(exp.net, exp.rule, exp.head_meta(m), exp.encode(m, episodes), exp.loss)

    for key in ("init.features.0.weight", "init.features.1.bias", "coef.0.weight"):
        p = meta[key].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective({**meta, key: p}), p)
        assert grad.abs().max() > 0
        for idx in [(0,) * p.dim(), tuple(s - 1 for s in p.shape)]:
            eps = 1e-6
            plus, minus = p.detach().clone(), p.detach().clone()
            plus[idx] += eps
            minus[idx] -= eps
            fd = (objective({**meta, key: plus}) - objective({**meta, key: minus})) / (2 * eps)
            assert float(grad[idx]) == pytest.approx(float(fd), rel=1e-5, abs=1e-9)


def test_missing_data_stops_train_before_it_writes_anything(tmp_path: Path, capsys) -> None:
    data = tiny_classification(tmp_path / "no_such_omniglot")
    data["out_dir"] = str(tmp_path / "run")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(data))
    assert main(["train", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_tampered_data_cache_is_rebuilt_not_trusted(omniglot_root: Path, tmp_path: Path, capsys) -> None:
    from metaplastic.data.omniglot import load_omniglot

    cache = tmp_path / "tampered_cache"
    clean = load_omniglot(omniglot_root, 8, cache)  # writes the cache
    (cache_file,) = cache.glob("omniglot-*.pt")
    payload = torch.load(cache_file, weights_only=True)
    tampered = {
        "float with NaN": {**payload, "images": payload["images"].to(torch.float32).fill_(float("nan"))},
        "wrong offsets": {**payload, "offsets": payload["offsets"][:-1]},
        "wrong size": {**payload, "images": payload["images"][:, :4, :4]},
    }
    for name, bad in tampered.items():
        torch.save(bad, cache_file)
        capsys.readouterr()
        data = load_omniglot(omniglot_root, 8, cache)
        assert torch.equal(data.images, clean.images) and torch.equal(data.offsets, clean.offsets), name
        assert "cached" in capsys.readouterr().err, name  # the rebuild is announced


def test_conv_needs_an_image_task(tmp_path: Path) -> None:
    data = tiny_classification(tmp_path, task={"name": "classification", "source": "digits", "n_outputs": 10})
    data["task"] = {"name": "classification", "source": "digits", "n_outputs": 10}
    with pytest.raises(ConfigError, match="network.conv needs an image task"):
        Experiment.from_config(config_from_dict(data))


def test_tiny_meta_training_improves_episode_accuracy() -> None:
    """OML on 5-way 3-shot digits streams: accuracy on fixed held-out episodes rises within 40 meta-steps."""
    data = {
        "name": "digits_oml", "seed": 0, "dtype": "float32",
        "task": {"name": "classification", "source": "digits", "n_classes": 5, "shots": 3, "query_per_class": 5,
                 "n_outputs": 10},
        "network": {"hidden": [32], "plastic": None},
        "rule": {"name": "sgd", "lr_init": 0.05},
        "meta": {"steps": 40, "meta_batch": 8, "lr": {"init": 3e-3, "lr": 3e-3}},
    }
    trainer = MetaTrainer(Experiment.from_config(config_from_dict(data)))
    exp = trainer.experiment
    held_out = exp.task.sample(50, seeded_generator(99), split="test")
    before = float(episode_accuracy(exp, trainer.meta, held_out).mean())
    for _ in range(40):
        trainer.meta_step()
    after = float(episode_accuracy(exp, trainer.meta, held_out).mean())
    assert after > before + 0.05, (before, after)


def test_evaluation_reports_accuracy_with_confidence_intervals(omniglot_root: Path) -> None:
    exp = Experiment.from_config(config_from_dict(tiny_classification(omniglot_root)))
    res = evaluate_classification(exp, exp.init_meta())
    assert set(res) == {"continual", "iid"}
    for r in res.values():
        assert r["classes"] == [2, 3] and r["chance"] == [0.5, 1 / 3] and r["runs"] == 3
        assert all(0.0 <= a <= 1.0 for a in r["accuracy"]) and all(h >= 0 for h in r["ci95"])
    mean, half = mean_ci95([0.0, 1.0, 0.5])
    assert mean == 0.5 and half == pytest.approx(4.302652729911275 * 0.5 / 3**0.5)
    for r in res.values():  # every class has the same number of queries: positions average to the accuracy
        for n, acc, per_position in zip(r["classes"], r["accuracy"], r["per_position"]):
            assert len(per_position) == n and sum(per_position) / n == pytest.approx(acc)


def test_learned_position_by_first_appearance() -> None:
    from metaplastic.evaluation.classification import learned_position

    units = [[4, 4, 1, 1, 3, 3], [0, 2, 0, 2, 5, 5]]  # per task: the unit of each stream step (batch 1)
    y = torch.nn.functional.one_hot(torch.tensor(units), 6).to(torch.float64).unsqueeze(2)  # (T, S, B, units)
    queries = torch.tensor([[3, 4, 1], [5, 2, 0]])
    assert learned_position(y, queries).tolist() == [[2, 0, 1], [2, 1, 0]]


def test_cli_evaluate_prints_the_table_and_writes_the_png(omniglot_root: Path, tmp_path: Path, capsys) -> None:
    cfg = config_from_dict(tiny_classification(omniglot_root, out_dir=str(tmp_path / "run")))
    train(cfg, progress=False)
    assert main(["evaluate", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "FLP-Oja meta-trained (2 steps)" in out and "2 classes" in out and "chance" in out
    assert (tmp_path / "run" / "evaluation.png").stat().st_size > 0
    assert (tmp_path / "run" / "evaluation_positions.png").stat().st_size > 0
    bad = tiny_classification(omniglot_root, out_dir=str(tmp_path / "run2"), eval={"classes": [2, 9]})
    train(config_from_dict(bad), progress=False)
    assert main(["evaluate", str(tmp_path / "run2"), "--no-references"]) == 2
    assert "error: cannot draw 9 classes" in capsys.readouterr().err


SHIPPED = ["omniglot_flp_paper", "omniglot_oml_paper", "omniglot_flp_cpu", "omniglot_flp_head_cpu", "omniglot_oml_cpu"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_build_and_take_a_meta_step(name: str, omniglot_root: Path) -> None:
    cfg = load_config(REPO / "experiments" / f"{name}.yaml")
    exp = Experiment.from_config(cfg)  # the full-size network, without loading any data
    if "paper" in name:
        assert cfg.task["image_size"] == 84 and exp.net.in_features == 1152 and cfg.network.conv.channels == (128,) * 6
    tiny = [
        f"task.root={omniglot_root}", f"task.cache_dir={omniglot_root / 'cache'}", "task.test_alphabets=[Bb]",
        "task.n_classes=2", "task.shots=1", "task.query_per_class=1", "network.hidden=[4]", "meta.meta_batch=1",
        f"network.conv.channels={[2] * len(cfg.network.conv.channels)}",
    ]
    trainer = MetaTrainer(Experiment.from_config(load_config(REPO / "experiments" / f"{name}.yaml", tiny)))
    metrics = trainer.meta_step()
    assert trainer.step == 1 and metrics["grad_norm/init"] > 0


def test_conv_encoder_matches_torch_conv_layers_and_normalises() -> None:
    from metaplastic.networks.conv import ConvEncoder

    enc = ConvEncoder(10, (3, 5), (2, 1), kernel=3, padding=1)
    params = enc.init(torch.Generator().manual_seed(0), torch.float64)
    x = torch.rand(2, 4, 100, dtype=torch.float64)
    ref = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(3, 5, 3, padding=1),
        torch.nn.ReLU(),
    ).double()
    with torch.no_grad():
        for i, layer in enumerate((ref[0], ref[2])):
            layer.weight.copy_(params[f"features.{i}.weight"])
            layer.bias.copy_(params[f"features.{i}.bias"])
        expected = ref(x.reshape(8, 1, 10, 10)).reshape(2, 4, -1)
    assert enc.out_features == 5 * 5 * 5
    torch.testing.assert_close(enc.forward(params, x), expected)
    normed = ConvEncoder(10, (3, 5), (2, 1), kernel=3, padding=1, normalize=True).forward(params, x)
    centred = expected - expected.mean(-1, keepdim=True)
    torch.testing.assert_close(normed, centred / (expected.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt())
    with pytest.raises(ConfigError, match="shrink to nothing"):
        ConvEncoder(5, (2, 2, 2), (2, 2, 2))


def test_array_stream_configs_load() -> None:
    for name in ("digits_classification_flp", "mnist1d_classification_flp"):
        cfg = load_config(REPO / "experiments" / f"{name}.yaml")
        assert cfg.task["name"] == "classification" and cfg.network.conv is None
    exp = Experiment.from_config(load_config(REPO / "experiments" / "digits_classification_flp.yaml"))
    assert exp.net.in_features == 64 and exp.net.out_features == 10 and exp.encoder is None
