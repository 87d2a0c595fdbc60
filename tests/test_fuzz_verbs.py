"""A generated fuzz table over every CLI verb and the artefacts they read.

Bad paths (missing, empty folder, random bytes, empty file, /dev/null, a folder where a file
belongs, a FIFO), damaged artefacts in a real run folder (checkpoint: random bytes, truncated,
empty, a pickle that would run code, a torch file of the wrong structure; a suite or sweep file
of random bytes), damaged data (Omniglot archives: random bytes, a corrupt member, a dangling
.png link, a folder named .png; image folders: files that are not images, empty classes), bad
option values (numbers that are not numbers, zero, negative, NaN, huge; unknown choices and
devices) and bad overrides are crossed
with the verbs that take them. Every case must exit with status 2 and print exactly one stderr
line starting with ``error:``, and must not create, remove or change a file. Not in the table:
``train --resume`` on a folder without a checkpoint, which starts a fresh run on purpose (one
command that starts or continues a preemptible job) and says so on stderr.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from metaplastic.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "experiments" / "quick_flp.yaml")
FAST = ["meta.steps=1", "eval.episodes=2", "task.n_functions=2", "task.steps_per_function=2", "network.hidden=[8]"]
SUITE = str(ROOT / "experiments" / "quick.yaml")
SWEEP = str(ROOT / "experiments" / "sweeps" / "quick_flp_coef.yaml")
COMPARE = str(ROOT / "experiments" / "compare.yaml")


class _Evil:
    def __reduce__(self):  # unpickling this would create a file: weights_only loading must refuse it
        return (os.system, ("touch PWNED",))


def _write(name: str, data: bytes) -> Callable[[Path], str]:
    def make(work: Path) -> str:
        path = work / name
        path.write_bytes(data)
        return str(path)

    return make


def _fifo(work: Path) -> str:
    path = work / "fifo"
    os.mkfifo(path)
    return str(path)


def _folder(work: Path) -> str:
    (work / "folder").mkdir()
    return str(work / "folder")


BAD_FILES: dict[str, Callable[[Path], str]] = {
    "missing": lambda work: str(work / "missing.yaml"),
    "empty folder": _folder,
    "random bytes": _write("random.bin", bytes(range(256)) * 4),
    "empty file": _write("empty.yaml", b""),
    "dev null": lambda work: "/dev/null",
    "fifo": _fifo,
    "yaml list": _write("list.yaml", b"[1, 2, 3]\n"),
    "yaml tag": _write("tag.yaml", b"!!python/object/apply:os.system ['touch PWNED']\n"),
}


def _corrupt(name: str, data: bytes | Callable[[Path], bytes]) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        target = run / name
        content = data(target) if callable(data) else data
        if target.is_dir():
            shutil.rmtree(target)
        target.write_bytes(content)

    return apply


def _replace_with_folder(name: str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        (run / name).unlink()
        (run / name).mkdir()

    return apply


def _torch_bytes(obj: object) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


DAMAGED_RUNS: dict[str, Callable[[Path], None]] = {
    "checkpoint random bytes": _corrupt("checkpoint.pt", bytes(range(256)) * 8),
    "checkpoint truncated": _corrupt("checkpoint.pt", lambda p: p.read_bytes()[: p.stat().st_size // 2]),
    "checkpoint empty": _corrupt("checkpoint.pt", b""),
    "checkpoint evil pickle": _corrupt("checkpoint.pt", pickle.dumps(_Evil())),
    "checkpoint torch list": _corrupt("checkpoint.pt", lambda p: _torch_bytes([1, 2, 3])),
    "checkpoint torch dict": _corrupt("checkpoint.pt", lambda p: _torch_bytes({"step": 1})),
    "checkpoint is a folder": _replace_with_folder("checkpoint.pt"),
    "checkpoint missing": lambda run: (run / "checkpoint.pt").unlink(),
}


def run_verbs(run: str) -> dict[str, list[str]]:
    """Every verb that reads a run folder, as argv."""
    return {
        "evaluate": ["evaluate", run, "--no-references", "--wandb", "disabled"],
        "analyze": ["analyze", run, "--episodes", "2", "--baseline", "none", "--wandb", "disabled"],
        "resume": ["train", QUICK, *FAST, "meta.steps=2", "--out", run, "--resume", "--no-progress",
                   "--wandb", "disabled"],
    }


def file_verbs(path: str) -> dict[str, list[str]]:
    """Every verb that reads a YAML file, as argv."""
    return {
        "train": ["train", path, "--no-progress", "--wandb", "disabled"],
        "suite": ["suite", path, "--no-progress"],
        "sweep": ["sweep", path, "--wandb", "disabled"],
        "compare": ["compare", path, "--no-progress"],
        "evaluate --episodes": ["evaluate", "RUN", "--episodes", path, "--no-references", "--wandb", "disabled"],
    }


BAD_OPTIONS: dict[str, list[str]] = {
    **{f"analyze --episodes {v}": ["analyze", "RUN", "--episodes", v, "--wandb", "disabled"]
       for v in ("0", "-1", "abc", ".nan", "1e99")},
    **{f"evaluate --which {v}": ["evaluate", "RUN", "--which", v, "--wandb", "disabled"] for v in ("bogus", "")},
    **{f"{verb} --device {d}": [*argv, "--device", d]
       for d in ("meta", "bogus", "cuda:99")
       for verb, argv in (("evaluate", ["evaluate", "RUN", "--no-references", "--wandb", "disabled"]),
                          ("analyze", ["analyze", "RUN", "--episodes", "2", "--wandb", "disabled"]),
                          ("train", ["train", QUICK, *FAST, "--out", "NEW", "--no-progress", "--wandb", "disabled"]))},
    **{f"evaluate {o}": ["evaluate", "RUN", o, "--no-references", "--wandb", "disabled"]
       for o in ("meta.steps=3", "rule.coef_init=1", "eval.episodes=0", "eval.episodes=.nan", "eval.classes=[]",
                 "task.bogus=1", "noequals", "eval.readout=bogus", "eval.batch=-1", "=1")},
    **{f"suite {o}": ["suite", SUITE, *o.split(), "--no-progress"]
       for o in ("--jobs 0", "--jobs -1", "--threads 0", "--only NOSUCH", "meta.steps=.nan", "bogus.key=1")},
    **{f"sweep {o}": ["sweep", SWEEP, *o.split(), "--wandb", "disabled"]
       for o in ("--max-concurrent 0", "--max-concurrent -2", "meta.lr.coef=.nan")},
    **{f"compare {o}": ["compare", COMPARE, o, "--no-progress"]
       for o in ("epochs=0", "epochs=.nan", "batch_size=-1", "datasets=[nosuch]", "hidden=[0]", "rules=[]")},
    **{f"{verb} --out {target}": [*argv, "--out", target]
       for target in ("/dev/null", "FILE", "FILE/below", "/proc/metaplastic")
       for verb, argv in (("train", ["train", QUICK, *FAST, "--no-progress", "--wandb", "disabled"]),
                          ("evaluate", ["evaluate", "RUN", "--no-references", "--wandb", "disabled"]),
                          ("analyze", ["analyze", "RUN", "--episodes", "2", "--wandb", "disabled"]),
                          ("suite", ["suite", SUITE, "--no-progress"]),
                          ("compare", ["compare", COMPARE, "--no-progress"]))},
}


OMNIGLOT = str(ROOT / "experiments" / "omniglot_flp_cpu.yaml")


def _omniglot_root(kind: str) -> Callable[[Path], str]:
    """Damaged Omniglot data: a zip of random bytes, a zip with a corrupt member, an empty
    folder, an extracted folder with a dangling .png link or a folder named x.png."""
    def make(work: Path) -> str:
        import zipfile

        root = work / "omniglot"
        root.mkdir()
        if kind == "zip of random bytes":
            (root / "images_background.zip").write_bytes(bytes(range(256)) * 16)
        elif kind == "corrupt member":
            path = root / "images_background.zip"
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
                for c in range(3):
                    zf.writestr(f"images_background/Alpha/character0{c}/0{c}_01.png", bytes(range(256)) * 8)
            data = bytearray(path.read_bytes())
            data[60:90] = b"\x00" * 30  # inside the first member's compressed data
            path.write_bytes(bytes(data))
        elif kind in ("dangling link", "folder named png"):
            char = root / "images_background" / "Alpha" / "character01"
            char.mkdir(parents=True)
            if kind == "dangling link":
                (char / "01_01.png").symlink_to(work / "nowhere.png")
            else:
                (char / "01_01.png").mkdir()
        return str(root)

    return make


def _image_folder(kind: str) -> Callable[[Path], str]:
    """A ``task.source: folder`` root: a .png that is not an image, an empty class, no classes."""
    def make(work: Path) -> str:
        root = work / "images"
        for c in range(3):
            (root / f"class{c}").mkdir(parents=True)
        if kind == "not an image":
            for c in range(3):
                for j in range(4):
                    (root / f"class{c}" / f"{j}.png").write_bytes(b"not a png")
        elif kind == "empty class":
            from PIL import Image

            for c in range(2):
                for j in range(4):
                    Image.new("L", (6, 6), color=40 * j).save(root / f"class{c}" / f"{j}.png")
        return str(root)

    return make


ARTEFACTS: dict[str, Callable[[Path], list[str]]] = {
    **{f"train omniglot <- {kind}": (lambda w, k=kind: ["train", OMNIGLOT, "meta.steps=1",
                                                         f"task.root={_omniglot_root(k)(w)}",
                                                         f"task.cache_dir={w / 'cache'}", "--out", str(w / "new"),
                                                         "--no-progress", "--wandb", "disabled"])
       for kind in ("zip of random bytes", "corrupt member", "dangling link", "folder named png")},
    **{f"train image folder <- {kind}": (lambda w, k=kind: ["train", OMNIGLOT, "meta.steps=1", "task.source=folder",
                                                             f"task.root={_image_folder(k)(w)}", "task.image_size=6",
                                                             "network.conv=null", "--out", str(w / "new"),
                                                             "--no-progress", "--wandb", "disabled"])
       for kind in ("not an image", "empty class", "no images")},
}


def table() -> dict[str, tuple[str, Callable[[Path, Path], list[str]]]]:
    """name -> (kind, build(work, run) -> argv); ``run`` is a copy of a trained run in ``work``."""
    cases: dict[str, tuple[str, Callable[[Path, Path], list[str]]]] = {}
    for bad, make in BAD_FILES.items():
        for verb in file_verbs("X"):
            cases[f"{verb} <- {bad}"] = ("file", lambda w, r, v=verb, m=make: _sub(file_verbs(m(w))[v], r))
        for verb in run_verbs("X"):
            if bad in ("yaml list", "yaml tag") or (verb == "resume" and bad in ("missing", "empty folder")):
                continue
            cases[f"{verb} RUN <- {bad}"] = ("file", lambda w, r, v=verb, m=make: run_verbs(m(w))[v])
    for damage, apply in DAMAGED_RUNS.items():
        for verb in run_verbs("X"):
            if verb == "resume" and damage == "checkpoint missing":
                continue
            cases[f"{verb} <- {damage}"] = ("run", lambda w, r, v=verb, a=apply: (a(r), run_verbs(str(r))[v])[1])
    for name, argv in BAD_OPTIONS.items():
        cases[name] = ("option", lambda w, r, a=argv: _sub(a, r, w))
    for name, build in ARTEFACTS.items():
        cases[name] = ("artefact", lambda w, r, b=build: b(w))
    return cases


def _sub(argv: list[str], run: Path, work: Path | None = None) -> list[str]:
    """Fill the placeholders: RUN (the trained run), FILE (an existing file), NEW (a new folder)."""
    out = []
    for a in argv:
        if a == "RUN":
            a = str(run)
        elif work is not None and a.startswith("FILE"):
            (work / "FILE").write_text("a file\n")
            a = str(work / a)
        elif work is not None and a == "NEW":
            a = str(work / "new_run")
        out.append(a)
    return out


CASES = table()


def _state(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` -> a digest of its content (folders and FIFOs: their kind)."""
    state = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            state[rel] = f"link to {os.readlink(p)}"
        elif p.is_fifo():
            state[rel] = "fifo"
        elif p.is_dir():
            state[rel] = "dir"
        else:
            state[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return state


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", QUICK, *FAST, "--out", str(out), "--no-progress", "--wandb", "disabled"]) == 0
    return out


def test_the_table_covers_every_verb() -> None:
    verbs = {name.split()[0] for name in CASES}
    assert {"train", "evaluate", "analyze", "resume", "suite", "sweep", "compare"} <= verbs
    assert len(CASES) > 120


@pytest.mark.parametrize("name", list(CASES))
def test_every_verb_refuses_bad_input_in_one_line(name: str, trained: Path, tmp_path: Path, capsys,
                                                 monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    run = work / "run"
    shutil.copytree(trained, run)
    _, build = CASES[name]
    argv = build(work, run)
    before = _state(tmp_path)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, f"{name}: exit {code}, stderr {err[-300:]!r}"
    assert err.startswith("error: ") and "\n" not in err, err
    assert not (tmp_path / "PWNED").exists() and not (work / "PWNED").exists()
    assert _state(tmp_path) == before, f"{name} changed {sorted(set(_state(tmp_path).items()) ^ set(before.items()))}"


def test_resume_without_a_checkpoint_starts_fresh_and_says_so(tmp_path: Path, capsys) -> None:
    out = tmp_path / "new"
    assert main(["train", QUICK, *FAST, "--out", str(out), "--resume", "--no-progress", "--wandb", "disabled"]) == 0
    assert f"no checkpoint in {out}: starting a fresh run" in capsys.readouterr().err
    assert (out / "checkpoint.pt").is_file()
