"""Omniglot (Lake et al. 2015) from the upstream archives, decoded with Pillow, cached as tensors.

``load_omniglot(path, image_size)`` accepts a zip file (``images_background.zip``,
``images_background_small1.zip``, ``images_evaluation.zip``, ...), an extracted archive folder
(``<archive>/<Alphabet>/<character>/<drawing>.png``) or a folder holding any mix of both. A class
is ``Alphabet/character``; the same class found in several archives (Greek and Latin are in both
"small" background archives, with identical drawings) is kept once, from the first archive in
sorted order. Classes and drawings are sorted by name, so the class order never depends on a
directory listing. Images go through ``metaplastic.data.images.preprocess_image`` (grayscale, Lanczos resize,
inverted: strokes = 1); the result is cached in one tensor file keyed by the source files
(path, size, mtime) and the image size, written atomically and read back with
``weights_only=True``. The cache lives in ``cache_dir`` (``task.cache_dir``; default
``$XDG_CACHE_HOME/metaplastic``, else ``~/.cache/metaplastic``), outside the data folder, so
every write of it is announced by one line on stderr.
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from metaplastic.data.images import preprocess_image
from metaplastic.errors import DataError
from metaplastic.meta.checkpoint import atomic_write_bytes

CACHE_VERSION = 1
UPSTREAM_URL = "https://github.com/brendenlake/omniglot/raw/master/python/{name}.zip"


class Omniglot(NamedTuple):
    images: Tensor  # (N, H, W) uint8, strokes bright
    offsets: Tensor  # (C + 1,) int64: drawings of class c are images[offsets[c]:offsets[c + 1]]
    classes: tuple[str, ...]  # "Alphabet/character", sorted

    @property
    def alphabets(self) -> tuple[str, ...]:
        return tuple(sorted({c.split("/")[0] for c in self.classes}))

    def class_members(self) -> list[Tensor]:
        return [torch.arange(int(a), int(b)) for a, b in zip(self.offsets[:-1], self.offsets[1:])]


def _archives(path: Path) -> list[Path]:
    """The archives (zip files or extracted folders) that ``path`` names or contains."""
    if not path.exists():
        raise DataError(f"Omniglot data not found: {path}")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DataError(f"not a zip archive: {path}")
        return [path]
    found = sorted(p for p in path.iterdir() if p.name.startswith("images_") and (p.is_dir() or p.suffix == ".zip"))
    # An archive extracted beside its zip would be read twice: prefer the folder.
    found = [p for p in found if not (p.suffix == ".zip" and p.with_suffix("") in found)]
    if found:
        return found
    return [path]  # an extracted archive folder itself: <path>/<Alphabet>/<character>/*.png


def _zip_classes(archive: Path) -> dict[str, list[tuple[str, Path, str]]]:
    try:
        zf = zipfile.ZipFile(archive)
        names = zf.namelist()
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read archive {archive}: {e}") from None
    classes: dict[str, list[tuple[str, Path, str]]] = {}
    for name in names:
        parts = [p for p in name.split("/") if p]
        if len(parts) < 2 or parts[-1].startswith("."):
            continue
        if name.endswith("/"):
            if len(parts) == 3:  # <archive root>/<Alphabet>/<character>/
                classes.setdefault(f"{parts[1]}/{parts[2]}", [])
        elif name.lower().endswith(".png") and len(parts) >= 3:
            classes.setdefault(f"{parts[-3]}/{parts[-2]}", []).append((parts[-1], archive, name))
    return classes


def _folder_classes(root: Path) -> dict[str, list[tuple[str, Path, str]]]:
    classes: dict[str, list[tuple[str, Path, str]]] = {}
    for alphabet in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for char in sorted(p for p in alphabet.iterdir() if p.is_dir() and not p.name.startswith(".")):
            # regular files only: a folder named x.png or a dangling link is not a drawing
            files = [f for f in char.iterdir() if f.suffix.lower() == ".png" and not f.name.startswith(".")
                     and f.is_file()]
            classes[f"{alphabet.name}/{char.name}"] = [(f.name, f, "") for f in files]
    return classes


def _source_key(archives: list[Path], image_size: int) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{image_size}".encode())
    for a in archives:
        files = [a] if a.is_file() else sorted(p for p in a.rglob("*") if p.is_file())
        for f in files:
            st = f.stat()
            h.update(f"|{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _decode(data: bytes, where: str, image_size: int) -> np.ndarray:
    return preprocess_image(data, image_size, invert=True, where=where)


def _decode_all(archives: list[Path], image_size: int) -> Omniglot:
    classes: dict[str, list[tuple[str, Path, str]]] = {}
    for a in archives:
        found = _zip_classes(a) if a.is_file() else _folder_classes(a)
        for key, files in found.items():
            classes.setdefault(key, files)  # a class already read from an earlier archive wins
    if not classes:
        raise DataError(f"no Omniglot classes (<Alphabet>/<character>/*.png) under {', '.join(map(str, archives))}")
    zips: dict[Path, zipfile.ZipFile] = {}
    images, offsets = [], [0]
    try:
        for key in sorted(classes):
            files = sorted(classes[key])
            if not files:
                raise DataError(f"empty class folder: {key} (no .png drawings)")
            for _, source, member in files:
                try:
                    if member:
                        zf = zips.setdefault(source, zipfile.ZipFile(source))
                        data, where = zf.read(member), f"{source}:{member}"
                    else:
                        data, where = source.read_bytes(), str(source)
                except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # bad CRC, corrupt deflate data
                    place = f"{source}:{member}" if member else str(source)
                    raise DataError(f"cannot read Omniglot drawing {place}: {e}") from None
                images.append(_decode(data, where, image_size))
            offsets.append(len(images))
    finally:
        for zf in zips.values():
            zf.close()
    return Omniglot(torch.from_numpy(np.stack(images)), torch.tensor(offsets), tuple(sorted(classes)))


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "metaplastic"


def load_omniglot(path: str | Path, image_size: int = 28, cache_dir: str | Path | None = None) -> Omniglot:
    """Omniglot at ``image_size`` x ``image_size``, from the tensor cache when it is current.

    ``cache_dir``: where the cache file goes (default ``default_cache_dir()``); writing it prints
    one line to stderr naming the file, since it lands outside ``path``."""
    if image_size < 1:
        raise DataError(f"image_size must be >= 1, got {image_size}")
    archives = _archives(Path(path))
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cache / f"omniglot-{image_size}px-{_source_key(archives, image_size)}.pt"
    if cache_file.exists():
        try:
            payload = torch.load(cache_file, map_location="cpu", weights_only=True)
            images, offsets, classes = payload["images"], payload["offsets"], tuple(payload["classes"])
            consistent = (
                images.dtype == torch.uint8 and images.dim() == 3 and images.shape[1:] == (image_size, image_size)
                and offsets.dim() == 1 and len(offsets) == len(classes) + 1 and int(offsets[-1]) == len(images)
            )
            if consistent:
                return Omniglot(images, offsets, classes)
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass
    data = _decode_all(archives, image_size)
    payload = {"images": data.images, "offsets": data.offsets, "classes": list(data.classes)}
    try:
        atomic_write_bytes(cache_file, lambda f: torch.save(payload, f))
        print(f"metaplastic: cached {len(data.images)} Omniglot images ({image_size}px) of {path} in {cache_file}"
              " (set task.cache_dir to move it)", file=sys.stderr)
    except OSError:
        pass  # a read-only cache location only costs speed
    return data


def download_omniglot(dest: str | Path, names: tuple[str, ...] = ("images_background", "images_evaluation")) -> None:
    """Fetch the upstream archives into ``dest`` (needs network access; untested offline)."""
    import urllib.request

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = dest / f"{name}.zip"
        if not target.exists():
            with urllib.request.urlopen(UPSTREAM_URL.format(name=name)) as r:
                data = r.read()
            atomic_write_bytes(target, lambda f, d=data: f.write(d))
