"""Evaluation as a library: image preprocessing, class folders, fixed episode files, predictions."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_omniglot import layout, write_zip

from metaplastic.cli.main import main
from metaplastic.config import config_from_dict
from metaplastic.data import omniglot
from metaplastic.data.images import load_image_folder, preprocess_image
from metaplastic.data.omniglot import load_omniglot
from metaplastic.errors import ConfigError, DataError
from metaplastic.evaluation.classification import episode_accuracy
from metaplastic.evaluation.episodes_file import (
    build_episodes,
    episode_file_references,
    evaluate_episode_file,
    load_episode_file,
)
from metaplastic.evaluation.nearest import _accuracies
from metaplastic.meta.experiment import Experiment, seeded_generator
from metaplastic.meta.trainer import train
from metaplastic.tasks.classification import ClassificationStream

SIDE = 6


def old_decode(data: bytes, image_size: int) -> np.ndarray:
    """Omniglot's decoding before the refactor (commit 6da16f3), kept verbatim as the reference."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        gray = img.convert("L")
    if gray.size != (image_size, image_size):
        gray = gray.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return 255 - np.asarray(gray, dtype=np.uint8)


def encoded(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(path)
    return path


def test_preprocess_image_is_omniglot_decoding(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray = (rng.random((12, 12)) * 255).astype(np.uint8)
    images = {
        "binary": Image.fromarray((gray > 80).astype(np.uint8) * 255).convert("1"),
        "gray": Image.fromarray(gray),
        "rgb": Image.fromarray((rng.random((12, 12, 3)) * 255).astype(np.uint8)),
        "rgba": Image.fromarray((rng.random((12, 12, 4)) * 255).astype(np.uint8)),
        "wide": Image.fromarray((rng.random((10, 17)) * 255).astype(np.uint8)),
    }
    for name, img in images.items():
        data = encoded(img)
        path = tmp_path / f"{name}.png"
        path.write_bytes(data)
        for size in (8, 12, 20):
            want = old_decode(data, size)
            assert np.array_equal(omniglot._decode(data, name, size), want), (name, size)
            assert np.array_equal(preprocess_image(path, size), want), (name, size)
            assert np.array_equal(preprocess_image(data, size), want), (name, size)
            with Image.open(path) as opened:
                assert np.array_equal(preprocess_image(opened, size), want), (name, size)
            assert np.array_equal(preprocess_image(path, size, invert=False), 255 - want)
    with pytest.raises(DataError, match="image not found: .*nowhere.png"):
        preprocess_image(tmp_path / "nowhere.png", 8)


def test_omniglot_loader_unchanged_and_cache_announced(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    files = layout({"Beta": 2, "Alpha": 2}, 3, seed=4)
    z = write_zip(tmp_path / "images_background.zip", "images_background", files)
    capsys.readouterr()
    data = load_omniglot(z, image_size=8, cache_dir=tmp_path / "cache")
    want = np.stack([old_decode(files[n], 8) for n in sorted(files)])  # classes, then drawings, sorted by name
    assert np.array_equal(data.images.numpy(), want)
    err = capsys.readouterr().err.strip().splitlines()
    (cache_file,) = (tmp_path / "cache").glob("omniglot-8px-*.pt")
    assert len(err) == 1 and str(cache_file) in err[0] and "task.cache_dir" in err[0], err
    again = load_omniglot(z, image_size=8, cache_dir=tmp_path / "cache")  # from the cache: silent
    assert torch.equal(again.images, data.images) and capsys.readouterr().err == ""


def test_image_folder_and_folder_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    rng = np.random.default_rng(1)
    root = tmp_path / "mine"
    for name in ("zebra", "apple", "kiwi", "fig"):
        for j in range(4):
            write_png(root / name / f"{j}.png", (rng.random((9, 9)) * 255).astype(np.uint8))
        Image.fromarray((rng.random((9, 9, 3)) * 255).astype(np.uint8)).save(root / name / "x.jpg")
    (root / "apple" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    data = load_image_folder(root, SIDE)
    assert data.classes == ("apple", "fig", "kiwi", "zebra")
    assert data.offsets.tolist() == [0, 5, 10, 15, 20] and data.images.shape == (20, SIDE, SIDE)
    assert data.files[0].endswith("apple/0.png") and data.files[4].endswith("apple/x.jpg")
    assert np.array_equal(data.images[4].numpy(), preprocess_image(root / "apple" / "x.jpg", SIDE))

    task = ClassificationStream(source="folder", root=str(root), image_size=SIDE, n_classes=2, shots=2,
                                query_per_class=2, n_outputs=4)
    assert task.image_side == SIDE and task.n_inputs == SIDE * SIDE
    train_pool, test_pool = task.pool("train"), task.pool("test")
    assert sorted(train_pool.names + test_pool.names) == list(data.classes) and test_pool.n_classes == 2
    ep = task.sample(3, seeded_generator(0), split="test")
    assert ep.x.shape == (3, 4, 1, SIDE * SIDE)
    assert torch.equal(task.image_vectors([root / "apple" / "x.jpg"])[0], train_pool.x[4])  # x: every image
    assert not (tmp_path / "xdg").exists() and sorted(p.name for p in root.iterdir()) == [
        ".hidden", "apple", "fig", "kiwi", "zebra"]  # no cache, nothing written beside the data

    (root / "empty").mkdir()
    for where, message in [(root, "empty class folder: .*empty"), (tmp_path / "none", "image folder not found"),
                           (tmp_path / "xdg", "image folder not found")]:
        with pytest.raises(DataError, match=message) as e:
            load_image_folder(where, SIDE)
        assert "\n" not in str(e.value)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_image_folder(tmp_path / "flat", SIDE)
    with pytest.raises(ConfigError, match="images need an image task"):
        ClassificationStream(source="digits", n_outputs=10).image_vectors([root / "apple" / "0.png"])


# ---- a tiny image experiment on a folder of generated PNGs --------------------------------------


def make_folder(root: Path, n_classes: int = 6, per_class: int = 6, seed: int = 0, noise: float = 0.15) -> Path:
    """Classes with a distinct prototype each, drawings = noisy copies (so learning is possible)."""
    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        proto = rng.random((SIDE, SIDE)) > 0.5
        for j in range(per_class):
            flip = rng.random((SIDE, SIDE)) < noise
            write_png(root / f"class{c}" / f"{j:02d}.png", np.where(proto ^ flip, 0, 255))
    return root


def folder_config(root: Path, **eval_kw: Any) -> dict[str, Any]:
    return {
        "name": "folder_oml", "seed": 0, "dtype": "float64",
        "task": {"name": "classification", "source": "folder", "root": str(root), "image_size": SIDE,
                 "n_classes": 3, "shots": 2, "query_per_class": 2, "n_outputs": 5},
        "network": {"hidden": [12], "plastic": None},
        "rule": {"name": "sgd", "lr_init": 0.03},
        "meta": {"steps": 2, "meta_batch": 2, "lr": {"init": 3e-3, "lr": 3e-3}, "checkpoint_every": 1},
        "eval": {"episodes": 3, "classes": [2, 3], "batch": 4, **eval_kw},
    }


def write_episode_file(path: Path, episodes: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"episodes": episodes}, sort_keys=False))
    return path


def save_sampled(exp: Experiment, episodes: Any, folder: Path, split: str = "test") -> Path:
    """The sampled episodes as an episode file: every image saved as a new PNG (pixels back from
    the network's inputs), classes named by the pool, listed in the order they were presented."""
    pool = exp.task.pool(split)
    name_of = {pool.x[i].numpy().tobytes(): pool.names[c] for c, m in enumerate(pool.members) for i in m.tolist()}
    k = exp.task.shots
    n_files = 0

    def save(x: torch.Tensor) -> tuple[str, str]:
        nonlocal n_files
        vec = x.to(torch.float32)
        pixels = 255 - np.rint(vec.numpy() * 255).reshape(SIDE, SIDE)  # undo the inversion
        rel = f"img/{n_files:04d}.png"
        n_files += 1
        write_png(folder / rel, pixels)
        return rel, name_of[vec.numpy().tobytes()]

    listed = []
    for t in range(episodes.x.shape[0]):
        trajectory: dict[str, list[str]] = {}
        for s in range(0, episodes.x.shape[1], k):
            shots = [save(episodes.x[t, s + j, 0]) for j in range(k)]
            trajectory[shots[0][1]] = [rel for rel, _ in shots]
        query = [dict(zip(("image", "label"), save(q))) for q in episodes.query_x[t].flatten(0, 1)]
        listed.append({"name": f"sampled {t}", "trajectory": trajectory, "query": query})
    return write_episode_file(folder / "episodes.yaml", listed)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "images")


@pytest.mark.parametrize("readout", ["all_units", "episode_units"])
def test_fixed_episodes_reproduce_the_sampled_ones(images: Path, tmp_path: Path, readout: str) -> None:
    exp = Experiment.from_config(config_from_dict(folder_config(images, label_map="ordered", readout=readout)))
    meta = exp.init_meta()
    sampled = exp.task.sample(7, seeded_generator(3), split="test", label_map="ordered")
    direct = episode_accuracy(exp, meta, sampled.to(exp.device, torch.float64), readout).tolist()
    file = load_episode_file(save_sampled(exp, sampled, tmp_path / "fixed"))
    res = evaluate_episode_file(exp, meta, file, orders=("continual",))["continual"]
    assert res["per_episode"] == direct and len(set(direct)) > 1  # the same numbers, and not a constant
    assert res["accuracy"] == pytest.approx(sum(direct) / len(direct))
    assert res["episodes"] == 7 and res["classes"] == [3] * 7 and res["shots"] == [2] * 7
    assert len(res["per_position"]) == 3 and res["per_position_queries"] == [14, 14, 14]


def test_references_on_fixed_episodes_match_the_sampled_ones(tmp_path: Path) -> None:
    noisy = make_folder(tmp_path / "noisy", noise=0.4)  # hard enough that 1-NN makes mistakes
    exp = Experiment.from_config(config_from_dict(folder_config(noisy, label_map="ordered")))
    sampled = exp.task.sample(6, seeded_generator(4), split="test", label_map="ordered").to(exp.device, torch.float64)
    flat = (sampled.x.flatten(1, 2), sampled.y.flatten(1, 2), sampled.query_x.flatten(1, 2),
            sampled.query_y.flatten(1, 2))
    nn, proto = (a.tolist() for a in _accuracies(*flat))
    file = load_episode_file(save_sampled(exp, sampled, tmp_path / "fixed"))
    refs = episode_file_references(exp, exp.init_meta(), file)
    assert sorted(refs) == ["1-NN on pixels", "prototypes on pixels"]  # no feature extractor here
    for key, direct in (("1-NN on pixels", nn), ("prototypes on pixels", proto)):
        assert refs[key]["continual"]["per_episode"] == pytest.approx(direct) and len(set(direct)) > 1
        assert refs[key]["iid"] == refs[key]["continual"]
    # by hand: each query takes the class of the trajectory image at the smallest Euclidean distance
    xs, ys, qs, qy = (t.numpy() for t in flat)
    hand = [float(np.mean([ys[t][((xs[t] - q) ** 2).sum(-1).argmin()].argmax() == qy[t][i].argmax()
                           for i, q in enumerate(qs[t])])) for t in range(len(xs))]
    assert refs["1-NN on pixels"]["continual"]["per_episode"] == pytest.approx(hand)


def test_label_maps_of_fixed_episodes(images: Path, tmp_path: Path) -> None:
    exp = Experiment.from_config(config_from_dict(folder_config(images)))
    file = load_episode_file(save_sampled(exp, exp.task.sample(4, seeded_generator(5), split="test"), tmp_path / "f"))
    cont, again = build_episodes(exp, file), build_episodes(exp, file)
    iid = build_episodes(exp, file, "iid")
    for (a, pos), (b, _), (c, _) in zip(cont, again, iid):
        units = a.y[0, ::2, 0].argmax(-1)  # one unit per class (2 shots each), distinct, from the seed
        assert len(set(units.tolist())) == 3 and torch.equal(a.y, b.y)
        assert torch.equal(a.query_y[0, 0].argmax(-1), units[pos])  # queries carry their class's unit
        pairs = lambda e: sorted(zip(e.x[0, :, 0].tolist(), e.y[0, :, 0].argmax(-1).tolist()))  # noqa: E731
        assert pairs(c) == pairs(a)  # iid: the same images with the same units, shuffled
        assert torch.equal(c.query_y, a.query_y)
    assert any(not torch.equal(a.x, c.x) for (a, _), (c, _) in zip(cont, iid))
    assert any(a.y[0, ::2, 0].argmax(-1).tolist() != [0, 1, 2] for a, _ in cont)
    ordered = Experiment.from_config(config_from_dict(folder_config(images, label_map="ordered")))
    assert all(a.y[0, ::2, 0].argmax(-1).tolist() == [0, 1, 2] for a, _ in build_episodes(ordered, file))


def test_episode_file_errors_are_one_line(images: Path, tmp_path: Path) -> None:
    base = {"name": "pets", "trajectory": {"class0": ["../images/class0/00.png", "../images/class0/01.png"],
                                           "class1": ["../images/class1/00.png", "../images/class1/01.png"]},
            "query": [{"image": "../images/class0/02.png", "label": "class0"},
                      {"image": "../images/class1/02.png", "label": "class1"}]}
    ok = write_episode_file(tmp_path / "ep" / "ok.yaml", [base, base])
    assert len(load_episode_file(ok).episodes) == 2

    def variant(change: Any) -> dict[str, Any]:
        ep = copy.deepcopy(base)
        change(ep)
        return ep

    cases = [
        (lambda e: e["trajectory"]["class0"].__setitem__(1, "../images/class0/99.png"), DataError,
         "image not found: ../images/class0/99.png"),
        (lambda e: e["query"][1].__setitem__("label", "class7"), DataError, "query label 'class7' is not a class"),
        (lambda e: e["trajectory"].__setitem__("class1", []), DataError, "class 'class1' has no trajectory images"),
        (lambda e: e["trajectory"]["class1"].pop(), DataError, r"different numbers of trajectory images \(class0 2, "
         "class1 1\\)"),
        (lambda e: e.__setitem__("query", []), DataError, "no query images"),
        (lambda e: e.__setitem__("shots", 3), ConfigError, "unknown key 'shots'"),
        (lambda e: e["query"].__setitem__(0, "../images/class0/02.png"), ConfigError, "query entry 0 must be"),
        (lambda e: e.__setitem__("trajectory", ["a.png"]), ConfigError, "'trajectory' must map class names"),
    ]
    for change, kind, message in cases:
        path = write_episode_file(tmp_path / "ep" / "bad.yaml", [base, variant(change)])
        with pytest.raises(kind, match=message) as e:
            load_episode_file(path)
        text = str(e.value)
        assert "\n" not in text and text.startswith(f"{path}, episode 1 ('pets')"), text
    bad = tmp_path / "ep" / "bad.yaml"
    for text, message in [("episodes: [", "not valid YAML or JSON"), ("[]", "non-empty list 'episodes'"),
                          ("episodes: []", "non-empty list 'episodes'"), ("{episodes: [1], x: 2}", "unknown key 'x'")]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message) as e:
            load_episode_file(bad)
        assert "\n" not in str(e.value) and str(bad) in str(e.value)
    with pytest.raises(DataError, match="episode file not found"):
        load_episode_file(tmp_path / "nothing.yaml")
    bad.write_text(json.dumps({"episodes": [base]}))  # JSON is fine too
    assert load_episode_file(bad).episodes[0].classes == ("class0", "class1")

    exp = Experiment.from_config(config_from_dict(folder_config(images)))
    corrupt = tmp_path / "ep" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    broken = write_episode_file(tmp_path / "ep" / "broken.yaml", [base, variant(
        lambda e: e["query"].__setitem__(0, {"image": "corrupt.png", "label": "class0"}))])
    with pytest.raises(DataError, match=r"broken.yaml, episode 1 \('pets'\): corrupt image .*corrupt.png"):
        evaluate_episode_file(exp, exp.init_meta(), load_episode_file(broken))
    wide = variant(lambda e: e["trajectory"].update(
        {f"class{c}": [f"../images/class{c}/00.png", f"../images/class{c}/01.png"] for c in range(2, 6)}))
    too_many = write_episode_file(tmp_path / "ep" / "wide.yaml", [wide])
    with pytest.raises(ConfigError, match="6 classes, but the network has 5 output units"):
        evaluate_episode_file(exp, exp.init_meta(), load_episode_file(too_many))


def recomputed(npz: Any, prefix: str) -> float:
    """Mean over episodes of each episode's query accuracy, from the saved predictions alone."""
    hit = npz[f"{prefix}_prediction"] == npz[f"{prefix}_label"]
    episode = npz[f"{prefix}_episode"]
    return float(np.mean([hit[episode == e].mean() for e in np.unique(episode)]))


def test_cli_episodes_and_predictions(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = config_from_dict({**folder_config(images), "out_dir": str(tmp_path / "run")})
    train(cfg, progress=False)
    run = str(tmp_path / "run")
    exp = Experiment.from_config(cfg)
    file = save_sampled(exp, exp.task.sample(5, seeded_generator(9), split="test"), tmp_path / "fixed")
    # mixed episode shapes: one 2-way episode with 3 queries beside the 3-way ones
    listed = yaml.safe_load(file.read_text())["episodes"]
    two = listed[0]
    two["trajectory"] = dict(list(two["trajectory"].items())[:2])
    two["query"] = [q for q in two["query"] if q["label"] in two["trajectory"]][:3]
    file = write_episode_file(file, listed)
    capsys.readouterr()

    ev = tmp_path / "ev"
    assert main(["evaluate", run, "eval.readout=episode_units", "--episodes", str(file), "--predictions",
                 "--out", str(ev)]) == 0
    out = capsys.readouterr().out
    assert "per position" in out and "5 fixed episodes" in out and "readout: episode_units" in out
    report = json.loads((ev / "evaluation.json").read_text())
    assert report["episodes_file"] == str(file.resolve())
    methods = list(report["results"])
    assert "meta-trained" in methods[0] and "untrained" in methods[1]
    assert methods[2:] == ["1-NN on pixels", "prototypes on pixels"] and "1-NN on pixels" in out
    npz = np.load(ev / "predictions.npz", allow_pickle=False)
    for order in ("continual", "iid"):
        r = report["results"][methods[0]][order]
        assert r["classes"] == [2, 3, 3, 3, 3] and len(r["per_position"]) == 3
        assert recomputed(npz, order) == pytest.approx(r["accuracy"], abs=1e-12)
        assert npz[f"{order}_logits"].shape == (3 + 4 * 6, 5)
        pos = npz[f"{order}_position"]
        hit = npz[f"{order}_prediction"] == npz[f"{order}_label"]
        assert [float(hit[pos == j].mean()) for j in range(3)] == pytest.approx(r["per_position"])
        assert npz[f"{order}_image"][0].endswith(".png") and npz[f"{order}_class"][0].startswith("class")
    assert not (ev / "evaluation.png").exists()

    # random episodes write their predictions too
    ev2 = tmp_path / "ev2"
    assert main(["evaluate", run, "--predictions", "--no-references", "--out", str(ev2)]) == 0
    report = json.loads((ev2 / "evaluation.json").read_text())["results"]
    r = next(iter(report.values()))["continual"]
    npz = np.load(ev2 / "predictions.npz", allow_pickle=False)
    for i, n in enumerate(r["classes"]):
        hit = npz[f"continual_{n}_prediction"] == npz[f"continual_{n}_label"]
        assert hit.shape == (3, n * 2) and float(hit.mean(1).mean()) == pytest.approx(r["accuracy"][i], abs=1e-12)
    capsys.readouterr()

    first_class = next(iter(listed[1]["trajectory"]))
    bad = write_episode_file(tmp_path / "fixed" / "bad.yaml",
                             [{**listed[1], "query": [{"image": "img/none.png", "label": first_class}]}])
    digits = {"name": "digits", "task": {"name": "classification", "source": "digits", "n_outputs": 10},
              "network": {"hidden": [4], "plastic": None}, "rule": {"name": "sgd"},
              "meta": {"steps": 1, "meta_batch": 1, "checkpoint_every": 1}, "out_dir": str(tmp_path / "digits")}
    sine = {"name": "sine", "task": {"name": "sine", "n_functions": 2, "steps_per_function": 2},
            "network": {"hidden": [4]}, "rule": {"name": "sgd"},
            "meta": {"steps": 1, "meta_batch": 1, "checkpoint_every": 1}, "out_dir": str(tmp_path / "sine")}
    for raw in (digits, sine):
        train(config_from_dict(raw), progress=False)
    for argv, message in [
        ([run, "--episodes", str(bad)], "episode 0 ('sampled 1'): image not found: img/none.png"),
        ([run, "--episodes", str(tmp_path / "missing.yaml")], "episode file not found"),
        ([str(tmp_path / "digits"), "--episodes", str(file)], "images need an image task"),
        ([str(tmp_path / "sine"), "--episodes", str(file)], "a regression run takes fixed episodes as an .npz"),
        ([str(tmp_path / "sine"), "--predictions"], "--predictions needs a classification run"),
    ]:
        assert main(["evaluate", *argv, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not (tmp_path / "bad").exists()
