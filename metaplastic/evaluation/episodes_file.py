"""Fixed episodes from a file: evaluate a meta-trained classifier on exactly the images you choose.

Random evaluation (``evaluate_classification``) draws new classes and images from the task's
test split; to score a model on data of your own, or to replay one particular stream, list the
episodes in a YAML (or JSON, a subset of YAML) file::

    episodes:
      - name: pets                 # optional; messages and outputs use it
        trajectory:                # class -> images, classes in the order they are learned,
          cat: [cat/1.png, cat/2.png]   # the images of a class in the order they are presented
          dog: [dog/1.png, dog/2.png]
        query:                     # held-out images and their class (one of the trajectory's)
          - {image: cat/3.png, label: cat}
          - {image: dog/3.png, label: dog}

Paths are relative to the file's folder (absolute ones are kept). Every class of an episode
needs the same number of trajectory images (the stream presents k shots per class); episodes
may differ in classes, shots and queries. Images are preprocessed exactly like the run's
training data (``ClassificationStream.image_vectors``: resize to ``task.image_size``, invert).
``query`` may also map class -> images. Output units follow ``eval.label_map`` (``random``:
distinct units per episode from a generator seeded by ``eval.seed``; ``ordered``: the k-th
class -> unit k) and the prediction ``eval.readout``. ``continual`` presents the file's order;
``iid`` shuffles the same trajectory (seeded by ``eval.seed``). Every problem with the file is a
one-line ConfigError (its structure) or DataError (its content) naming the file and episode.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from metaplastic.errors import ConfigError, DataError
from metaplastic.evaluation.classification import mean_ci95, predict, query_outputs
from metaplastic.evaluation.nearest import nearest_predictions
from metaplastic.meta.experiment import Experiment, seeded_generator
from metaplastic.tasks import Episodes
from metaplastic.tasks.classification import ORDERS, assemble_episodes

TOP_KEYS = ("episodes", "description")
EPISODE_KEYS = ("name", "trajectory", "query")


@dataclass(frozen=True)
class FixedEpisode:
    """One listed episode: classes in learning order, their trajectory images, labelled queries."""

    name: str
    classes: tuple[str, ...]
    trajectory: tuple[tuple[Path, ...], ...]  # per class, in presentation order
    query: tuple[tuple[Path, int], ...]  # (image, position of its class in ``classes``)

    @property
    def shots(self) -> int:
        return len(self.trajectory[0])


@dataclass(frozen=True)
class EpisodeFile:
    path: Path
    episodes: tuple[FixedEpisode, ...]

    def images(self) -> dict[Path, str]:
        """Every distinct image the file names, in first-use order -> where it is first used."""
        seen: dict[Path, str] = {}
        for i, ep in enumerate(self.episodes):
            for p in [*(p for paths in ep.trajectory for p in paths), *(p for p, _ in ep.query)]:
                seen.setdefault(p, self.where(i))
        return seen

    def where(self, index: int) -> str:
        """How messages name an episode: the file, its index (from 0) and its name if given."""
        name = self.episodes[index].name
        return f"{self.path}, episode {index}" + ("" if name == f"episode {index}" else f" ('{name}')")


def _image_list(value: Any, where: str, what: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: {what} must be a list of image paths, got {value!r}")
    return value


def _resolve(base: Path, rel: str, where: str) -> Path:
    path = Path(rel).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise DataError(f"{where}: image not found: {rel} (looked for {path})")
    return path


def _parse_episode(raw: Any, index: int, file: Path) -> FixedEpisode:
    where = f"{file}, episode {index}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: an episode must be a mapping with 'trajectory' and 'query', got {raw!r}")
    if "name" in raw:
        where += f" ('{raw['name']}')"
    unknown = [str(k) for k in raw if k not in EPISODE_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (keys: {', '.join(EPISODE_KEYS)})")
    base = file.parent
    traj = raw.get("trajectory")
    if not isinstance(traj, dict) or not traj:
        raise ConfigError(f"{where}: 'trajectory' must map class names to lists of images")
    classes = tuple(str(c) for c in traj)
    if len(set(classes)) != len(classes):
        raise DataError(f"{where}: a class appears twice in the trajectory ({', '.join(classes)})")
    images = []
    for name, value in zip(classes, traj.values()):
        if value is None or value == []:
            raise DataError(f"{where}: class '{name}' has no trajectory images")
        images.append(tuple(_resolve(base, p, where) for p in _image_list(value, where, f"class '{name}'")))
    shots = {c: len(p) for c, p in zip(classes, images)}
    if len(set(shots.values())) > 1:
        counts = ", ".join(f"{c} {n}" for c, n in shots.items())
        raise DataError(f"{where}: classes have different numbers of trajectory images ({counts}); "
                        "every class needs the same number (k shots)")
    query_raw = raw.get("query")
    if isinstance(query_raw, dict):  # class -> images
        query_raw = [{"image": p, "label": c} for c, v in query_raw.items() for p in _image_list(v, where, "query")]
    if not isinstance(query_raw, list) or not query_raw:
        raise DataError(f"{where}: no query images ('query' must list {{image: PATH, label: CLASS}} entries)")
    position = {c: i for i, c in enumerate(classes)}
    query = []
    for j, item in enumerate(query_raw):
        if not isinstance(item, dict) or set(item) != {"image", "label"} or not isinstance(item["image"], str):
            raise ConfigError(f"{where}: query entry {j} must be {{image: PATH, label: CLASS}}, got {item!r}")
        label = str(item["label"])
        if label not in position:
            raise DataError(f"{where}: query label '{label}' is not a class of the trajectory "
                            f"(classes: {', '.join(classes)})")
        query.append((_resolve(base, item["image"], where), position[label]))
    name = str(raw.get("name", f"episode {index}"))
    return FixedEpisode(name, classes, tuple(images), tuple(query))


def load_episode_file(path: str | Path) -> EpisodeFile:
    """Read and check an episode file; every listed image must exist (decoding comes later)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"episode file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read episode file {path}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: not valid YAML or JSON: {first}") from None
    if not isinstance(data, dict) or not isinstance(data.get("episodes"), list) or not data["episodes"]:
        raise ConfigError(f"{path}: expected a mapping with a non-empty list 'episodes'")
    unknown = [str(k) for k in data if k not in TOP_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (keys: {', '.join(TOP_KEYS)})")
    return EpisodeFile(path, tuple(_parse_episode(raw, i, path) for i, raw in enumerate(data["episodes"])))


def image_vectors(experiment: Experiment, file: EpisodeFile) -> dict[Path, Tensor]:
    """Every image of the file, preprocessed once like the run's training data."""
    out = {}
    for p, where in file.images().items():
        try:
            out[p] = experiment.task.image_vectors([p])[0]
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
    return out


def check_task(experiment: Experiment, file: EpisodeFile) -> None:
    """Refuse, before decoding anything, a run that cannot take the file's episodes."""
    task = experiment.task
    if getattr(task, "name", None) != "classification":
        raise ConfigError(f"fixed episodes need a classification run; this run's task is '{task.name}'")
    for i, ep in enumerate(file.episodes):
        if len(ep.classes) > task.n_outputs:
            raise ConfigError(f"{file.where(i)}: {len(ep.classes)} classes, but the network has "
                              f"{task.n_outputs} output units")


def build_episodes(
    experiment: Experiment, file: EpisodeFile, order: str = "continual", vectors: dict[Path, Tensor] | None = None
) -> list[tuple[Episodes, Tensor]]:
    """One single-episode batch per listed episode, with the query classes' positions (Q,).

    Trajectory and output units go through ``assemble_episodes`` (so ``eval.label_map`` and the
    task's ``n_outputs`` apply as in random episodes); the queries keep the file's order, as one
    group (query_x (1, 1, Q, D)), since classes may have different numbers of queries.
    ``vectors``: the file's images already preprocessed (decoded here otherwise)."""
    exp, ev = experiment, experiment.config.eval
    task = exp.task
    if order not in ORDERS:
        raise ConfigError(f"order must be one of {', '.join(ORDERS)}, got '{order}'")
    check_task(exp, file)
    vectors = image_vectors(exp, file) if vectors is None else vectors
    labels_g, shuffle_g = seeded_generator(ev.seed, 1), seeded_generator(ev.seed, 2)  # same units in both orders
    built = []
    for ep in file.episodes:
        n = len(ep.classes)
        units = torch.randperm(task.n_outputs, generator=labels_g)[:n]
        labels = units if ev.label_map == "random" else torch.arange(n)
        traj = torch.stack([torch.stack([vectors[p] for p in paths]) for paths in ep.trajectory]).unsqueeze(0)
        empty = traj.new_zeros(1, n, 0, traj.shape[-1])
        episodes = assemble_episodes(traj, empty, labels.unsqueeze(0), task.n_outputs, order, 0, shuffle_g)
        position = torch.tensor([c for _, c in ep.query])
        qx = torch.stack([vectors[p] for p, _ in ep.query]).view(1, 1, len(ep.query), -1)
        qy = F.one_hot(labels[position], task.n_outputs).to(qx.dtype).view(1, 1, len(ep.query), -1)
        built.append((episodes._replace(query_x=qx, query_y=qy), position))
    return built


def _batches(built: list[tuple[Episodes, Tensor]], batch: int) -> Iterator[list[int]]:
    """Indices of episodes that share every shape (classes, shots, queries), ``batch`` at a time."""
    groups: dict[tuple[tuple[int, ...], int], list[int]] = {}
    for i, (ep, _) in enumerate(built):
        groups.setdefault((ep.boundaries, ep.query_x.shape[2]), []).append(i)
    for ids in groups.values():
        for start in range(0, len(ids), batch):
            yield ids[start : start + batch]


@torch.no_grad()
def evaluate_episode_file(
    experiment: Experiment,
    meta: dict[str, Tensor],
    file: EpisodeFile,
    orders: tuple[str, ...] = ORDERS,
    predictions: dict[str, np.ndarray] | None = None,
    vectors: dict[Path, Tensor] | None = None,
) -> dict[str, Any]:
    """{order: {"accuracy", "ci95", "per_episode", "per_position", ...}} on the file's episodes
    (``vectors``: its images already preprocessed by ``image_vectors``, decoded here otherwise).

    ``accuracy`` is the mean over episodes of each episode's query accuracy (with its 95%
    t-interval); ``per_position[j]`` the accuracy on the queries of the j-th class listed (the
    j-th learned in continual order) after the whole stream, pooled over the episodes that have
    one. A ``predictions`` dict receives per order ``{order}_logits`` (all queries, units),
    ``_prediction``, ``_label`` (units), ``_episode``, ``_position``, ``_image`` and ``_class``."""
    exp, ev = experiment, experiment.config.eval
    dtype = exp.config.torch_dtype
    results: dict[str, Any] = {}
    check_task(exp, file)
    vectors = image_vectors(exp, file) if vectors is None else vectors  # decoded once for every order
    for order in orders:
        built = build_episodes(exp, file, order, vectors)
        logits: list[Tensor | None] = [None] * len(built)
        preds: list[Tensor | None] = [None] * len(built)
        for ids in _batches(built, ev.batch):
            parts = [built[i][0] for i in ids]
            batch = Episodes(*(torch.cat(ts) for ts in zip(*(p[:6] for p in parts))), boundaries=parts[0].boundaries)
            output, qy = query_outputs(exp, meta, batch.to(exp.device, dtype))
            pred = predict(output, qy, ev.readout).cpu()
            for row, i in enumerate(ids):
                logits[i], preds[i] = output[row].cpu(), pred[row]
        label = [ep.query_y[0, 0].argmax(-1) for ep, _ in built]
        results[order] = _summary(exp, file, built, [(p == y).to(torch.float64) for p, y in zip(preds, label)])
        if predictions is not None:
            predictions[f"{order}_logits"] = torch.cat(logits).numpy()
            predictions[f"{order}_prediction"] = torch.cat(preds).numpy()
            predictions[f"{order}_label"] = torch.cat(label).numpy()
            predictions[f"{order}_episode"] = np.concatenate([np.full(len(ep.query), i) for i, ep in
                                                              enumerate(file.episodes)])
            predictions[f"{order}_position"] = torch.cat([p for _, p in built]).numpy()
            predictions[f"{order}_image"] = np.array([str(p) for ep in file.episodes for p, _ in ep.query])
            predictions[f"{order}_class"] = np.array([ep.classes[c] for ep in file.episodes for _, c in ep.query])
    return results


def _summary(
    experiment: Experiment, file: EpisodeFile, built: list[tuple[Episodes, Tensor]], correct: list[Tensor]
) -> dict[str, Any]:
    """Accuracy (mean over episodes, 95% t-interval), per episode and per class position, from
    each episode's per-query correctness."""
    ev = experiment.config.eval
    per_episode = [float(c.mean()) for c in correct]
    n_pos = max(len(ep.classes) for ep in file.episodes)
    hits, counts = torch.zeros(n_pos, dtype=torch.float64), torch.zeros(n_pos, dtype=torch.float64)
    for c, (_, position) in zip(correct, built):
        hits.index_add_(0, position, c)
        counts.index_add_(0, position, torch.ones_like(c))
    mean, ci = mean_ci95(per_episode)
    return {
        "episodes": len(built),
        "accuracy": mean,
        "ci95": ci,
        "chance": sum(1.0 / len(ep.classes) for ep in file.episodes) / len(built),
        "per_episode": per_episode,
        "per_position": [float(h / n) if n else None for h, n in zip(hits, counts)],
        "per_position_queries": [int(n) for n in counts],
        "names": [ep.name for ep in file.episodes],
        "classes": [len(ep.classes) for ep in file.episodes],
        "shots": [ep.shots for ep in file.episodes],
        "readout": ev.readout,
        "label_map": ev.label_map,
    }


@torch.no_grad()
def episode_file_references(
    experiment: Experiment, meta: dict[str, Tensor], file: EpisodeFile, vectors: dict[Path, Tensor] | None = None
) -> dict[str, dict[str, Any]]:
    """1-NN and class prototypes (``evaluation.nearest``) on the file's episodes, on pixels and,
    for a run with a feature extractor, on its meta-trained frozen features: how much the
    features offer at these shots. Order does not matter to them; both orders get the same row."""
    exp = experiment
    dtype = exp.config.torch_dtype
    built = build_episodes(exp, file, "continual", vectors)
    spaces = ["pixels"] + (["meta-trained features"] if exp.encoder is not None else [])
    correct: dict[str, list[Tensor]] = {f"{rule} on {space}": [] for space in spaces for rule in ("1-NN", "prototypes")}
    for episodes, _ in built:
        raw = episodes.to(exp.device, dtype)
        truth = raw.query_y[0, 0].argmax(-1).cpu()
        for space in spaces:
            ep = raw if space == "pixels" else exp.encode(meta, raw)
            nn_unit, proto_unit = nearest_predictions(ep.x.flatten(1, 2), ep.y.flatten(1, 2), ep.query_x.flatten(1, 2))
            correct[f"1-NN on {space}"].append((nn_unit[0].cpu() == truth).to(torch.float64))
            correct[f"prototypes on {space}"].append((proto_unit[0].cpu() == truth).to(torch.float64))
    out = {}
    for key, rows in correct.items():
        row = _summary(exp, file, built, rows)
        out[key] = {order: row for order in ORDERS}
    return out


def format_episode_table(results: dict[str, dict[str, Any]], file: str | Path = "") -> str:
    """One row per method and order: accuracy ± 95% CI, then the accuracy per class position."""
    name_w = max(len("method"), *(len(n) for n in results))
    head = f"{'method':<{name_w}}  {'order':<9}  {'accuracy':>15}  per position (1st, 2nd, ... class learned)"
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        for order, r in res.items():
            pos = " ".join("  -  " if a is None else f"{a:.3f}" for a in r["per_position"])
            acc = f"{r['accuracy']:.3f} ± {r['ci95']:.3f}"
            lines.append(f"{name:<{name_w}}  {order:<9}  {acc:>15}  {pos}")
    r = next(iter(next(iter(results.values())).values()))
    source = f" from {file}" if file else ""
    lines.append(f"{r['episodes']} fixed episodes{source}; chance {r['chance']:.3f}; readout: {r['readout']}; "
                 f"label map: {r['label_map']}")
    return "\n".join(lines)
