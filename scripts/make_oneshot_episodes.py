"""Build fixed one-shot episodes from Omniglot alphabets, in Lake et al.'s one-shot layout.

Each run is W characters of one alphabet, one training drawing per character by one drawer and
one test drawing per character by another drawer (both picked at random per run), as in the
20-way one-shot task of Lake, Salakhutdinov & Tenenbaum (2015)::

    OUT/run01/training/class01.png ... class20.png
    OUT/run01/test/item01.png ... item20.png        (test items in random order)
    OUT/run01/class_labels.txt                      ("run01/test/item01.png run01/training/class07.png")
    OUT/episodes.yaml                               (the same runs as a metaplastic episode file)

Score a checkpoint on them with ``metaplastic evaluate RUN --episodes OUT/episodes.yaml``.
Alphabets with fewer than W characters are left out (said on stdout). Deterministic in --seed.

    python scripts/make_oneshot_episodes.py --root ../shared/data/omniglot --out runs/oneshot \\
        --alphabets "Japanese_(katakana)" Sanskrit Tagalog
"""

from __future__ import annotations

import argparse
import random
import sys
import zipfile
from pathlib import Path

import yaml


def characters(root: Path) -> dict[str, dict[str, dict[str, tuple[Path, str]]]]:
    """alphabet -> character -> drawer -> (zip, member) over every archive under ``root``."""
    zips = sorted(root.glob("images_*.zip")) if root.is_dir() else [root]
    if not zips:
        raise SystemExit(f"error: no images_*.zip archive in {root}")
    found: dict[str, dict[str, dict[str, tuple[Path, str]]]] = {}
    for archive in zips:
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                parts = [p for p in name.split("/") if p]
                if len(parts) != 4 or not parts[3].lower().endswith(".png"):
                    continue
                drawer = parts[3].rsplit(".", 1)[0].rsplit("_", 1)[-1]
                found.setdefault(parts[1], {}).setdefault(parts[2], {}).setdefault(drawer, (archive, name))
    return found


def build(root: Path, out: Path, alphabets: list[str], runs: int, ways: int, seed: int) -> Path:
    data = characters(root)
    missing = [a for a in alphabets if a not in data]
    if missing:
        raise SystemExit(f"error: alphabet '{missing[0]}' not in {root} (has: {', '.join(sorted(data))})")
    usable = [a for a in alphabets if len(data[a]) >= ways]
    for a in alphabets:
        if a not in usable:
            print(f"left out {a}: {len(data[a])} characters, fewer than {ways}")
    if not usable:
        raise SystemExit(f"error: no alphabet has {ways} characters")
    rng = random.Random(seed)
    episodes = []
    out.mkdir(parents=True, exist_ok=True)
    for k in range(runs):
        alphabet = usable[k % len(usable)]
        chars = sorted(rng.sample(sorted(data[alphabet]), ways))
        common = sorted(set.intersection(*(set(data[alphabet][c]) for c in chars)))
        train_drawer, test_drawer = rng.sample(common, 2)
        run = f"run{k + 1:02d}"
        order = list(range(ways))
        rng.shuffle(order)  # test items in random order, as in the original runs
        trajectory, query, labels = {}, [], []
        for j, c in enumerate(chars):
            trajectory[f"{alphabet}/{c}"] = [_extract(data[alphabet][c][train_drawer], out / run / "training" /
                                                      f"class{j + 1:02d}.png", out)]
        for i, j in enumerate(order):
            c = chars[j]
            item = _extract(data[alphabet][c][test_drawer], out / run / "test" / f"item{i + 1:02d}.png", out)
            query.append({"image": item, "label": f"{alphabet}/{c}"})
            labels.append(f"{run}/test/item{i + 1:02d}.png {run}/training/class{j + 1:02d}.png")
        (out / run / "class_labels.txt").write_text("\n".join(labels) + "\n")
        episodes.append({"name": f"{run} ({alphabet}, drawers {train_drawer}/{test_drawer})",
                         "trajectory": trajectory, "query": query})
    path = out / "episodes.yaml"
    header = (f"# {runs} fixed {ways}-way 1-shot runs from {', '.join(usable)} (seed {seed}); "
              f"made by scripts/make_oneshot_episodes.py\n")
    path.write_text(header + yaml.safe_dump({"episodes": episodes}, sort_keys=False))
    return path


def _extract(source: tuple[Path, str], dest: Path, out: Path) -> str:
    archive, member = source
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        dest.write_bytes(zf.read(member))
    return str(dest.relative_to(out))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, required=True, help="folder with the images_*.zip archives (or one zip)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--alphabets", nargs="+", required=True)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--ways", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.runs < 1 or args.ways < 2:
        raise SystemExit("error: --runs must be >= 1 and --ways >= 2")
    path = build(args.root, args.out, args.alphabets, args.runs, args.ways, args.seed)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
