"""Omniglot loader on small archives generated in the upstream layout."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metaplastic.data import omniglot
from metaplastic.data.omniglot import load_omniglot
from metaplastic.errors import DataError

SIDE = 12


def png_bytes(seed: int) -> bytes:
    """A random binary drawing (white background, black strokes), unique per seed."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((SIDE, SIDE)) > 0.3).astype(np.uint8) * 255).convert("1")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def layout(alphabets: dict[str, int], drawings: int, seed: int = 0) -> dict[str, bytes]:
    """{"Alphabet/characterNN/NNNN_MM.png": png} with a distinct image per file."""
    files, k = {}, seed * 10_000
    for alphabet, n_chars in alphabets.items():
        for c in range(1, n_chars + 1):
            for d in range(1, drawings + 1):
                files[f"{alphabet}/character{c:02d}/{c:04d}_{d:02d}.png"] = png_bytes(k)
                k += 1
    return files


def write_zip(
    path: Path, root: str, files: dict[str, bytes], reverse: bool = False, empty: tuple[str, ...] = ()
) -> Path:
    """A zip in the upstream layout <root>/<Alphabet>/<character>/<drawing>.png, with folder entries."""
    names = sorted(files, reverse=reverse)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{root}/", b"")
        chars = sorted({"/".join(n.split("/")[:2]) for n in names} | set(empty), reverse=reverse)
        for a in sorted({c.split("/")[0] for c in chars}, reverse=reverse):
            zf.writestr(f"{root}/{a}/", b"")
        for c in chars:
            zf.writestr(f"{root}/{c}/", b"")
        for n in names:
            zf.writestr(f"{root}/{n}", files[n])
    return path


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def archives(tmp_path: Path) -> Path:
    """Two background archives sharing the alphabet 'Greek' (identical drawings), like the small ones."""
    data = tmp_path / "omniglot"
    data.mkdir()
    greek = layout({"Greek": 2}, 4, seed=9)
    write_zip(data / "images_background_small1.zip", "images_background_small1", {**layout({"Bali": 2}, 4, 1), **greek})
    write_zip(data / "images_background_small2.zip", "images_background_small2", {**layout({"Aram": 3}, 4, 2), **greek})
    return data


def test_loads_sorted_deduplicated_classes(archives: Path, tmp_path: Path) -> None:
    data = load_omniglot(archives, image_size=8, cache_dir=tmp_path / "cache")
    assert data.classes == (
        "Aram/character01", "Aram/character02", "Aram/character03",
        "Bali/character01", "Bali/character02", "Greek/character01", "Greek/character02",
    )
    assert data.images.shape == (7 * 4, 8, 8) and data.images.dtype == torch.uint8
    assert data.offsets.tolist() == [0, 4, 8, 12, 16, 20, 24, 28]
    assert data.alphabets == ("Aram", "Bali", "Greek")
    # strokes are bright: the drawings are ~30% black pixels on white
    assert 0.2 < float(data.images.float().mean() / 255) < 0.4


def test_zip_and_extracted_folder_agree_and_order_is_deterministic(tmp_path: Path) -> None:
    files = layout({"Zeta": 2, "Alpha": 3}, 3)
    z1 = write_zip(tmp_path / "a.zip", "images_background", files)
    z2 = write_zip(tmp_path / "b.zip", "images_background", files, reverse=True)  # other member order
    folder = write_folder(tmp_path / "images_background", files)
    loads = [load_omniglot(p, image_size=SIDE, cache_dir=tmp_path / f"c{i}") for i, p in enumerate((z1, z2, folder))]
    for d in loads[1:]:
        assert d.classes == loads[0].classes
        assert torch.equal(d.images, loads[0].images)
    assert loads[0].classes[0] == "Alpha/character01"
    # at the native size the pixels are the drawing itself, inverted
    first = np.asarray(Image.open(io.BytesIO(files["Alpha/character01/0001_01.png"])).convert("L"))
    assert torch.equal(loads[0].images[0], torch.from_numpy(255 - first))


def test_second_load_comes_from_the_cache(archives: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = load_omniglot(archives, image_size=8, cache_dir=cache)
    assert len(list(cache.glob("omniglot-8px-*.pt"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite a current cache")

    monkeypatch.setattr(omniglot, "_decode_all", no_decoding)
    second = load_omniglot(archives, image_size=8, cache_dir=cache)
    assert torch.equal(first.images, second.images) and first.classes == second.classes
    with pytest.raises(AssertionError):  # another size is another cache entry
        load_omniglot(archives, image_size=10, cache_dir=cache)


def test_corrupt_image_is_a_one_line_data_error(tmp_path: Path) -> None:
    files = layout({"Alpha": 2}, 3)
    files["Alpha/character02/0002_02.png"] = b"\x89PNG\r\n\x1a\nnot really a png"
    z = write_zip(tmp_path / "images_background.zip", "images_background", files)
    with pytest.raises(DataError, match=r"corrupt image .*character02/0002_02\.png") as e:
        load_omniglot(z, image_size=8, cache_dir=tmp_path / "cache")
    assert "\n" not in str(e.value)
    folder = write_folder(tmp_path / "extracted", files)
    with pytest.raises(DataError, match="corrupt image .*0002_02.png"):
        load_omniglot(folder, image_size=8, cache_dir=tmp_path / "cache")


def test_empty_class_folder_is_a_data_error(tmp_path: Path) -> None:
    files = layout({"Alpha": 2}, 3)
    z = write_zip(tmp_path / "images_background.zip", "images_background", files, empty=("Alpha/character03",))
    with pytest.raises(DataError, match="empty class folder: Alpha/character03"):
        load_omniglot(z, image_size=8, cache_dir=tmp_path / "cache")
    folder = write_folder(tmp_path / "extracted", files)
    (folder / "Alpha" / "character07").mkdir()
    with pytest.raises(DataError, match="empty class folder: Alpha/character07"):
        load_omniglot(folder, image_size=8, cache_dir=tmp_path / "cache")


def test_missing_or_non_archive_paths(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_omniglot(tmp_path / "nowhere", cache_dir=tmp_path)
    (tmp_path / "x.zip").write_text("hello")
    with pytest.raises(DataError, match="not a zip archive"):
        load_omniglot(tmp_path / "x.zip", cache_dir=tmp_path)
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DataError, match="no Omniglot classes"):
        load_omniglot(tmp_path / "emptydir", cache_dir=tmp_path)


def test_corrupt_member_and_odd_files_are_clear(tmp_path: Path) -> None:
    import os

    from metaplastic.errors import DataError

    files = layout({"Aa": 2}, 3)
    archive = write_zip(tmp_path / "images_background.zip", "images_background", files)
    raw = bytearray(archive.read_bytes())
    first = files[sorted(files)[0]]
    at = raw.find(first)
    raw[at + len(first) // 2] ^= 0xFF  # one flipped byte inside a stored member: its CRC fails
    archive.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="cannot read Omniglot drawing"):
        load_omniglot(archive, image_size=8, cache_dir=tmp_path / "cache")

    folder = tmp_path / "extracted"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    char = folder / "Aa" / "character01"
    (char / "x.png").mkdir()  # a folder named like a drawing
    os.symlink(tmp_path / "missing.png", char / "dangling.png")
    data = load_omniglot(folder, image_size=8, cache_dir=tmp_path / "cache2")
    assert data.images.shape[0] == len(files)
