"""Images as the classification streams see them: one preprocessing step, and class folders.

``preprocess_image`` is the exact step Omniglot loading applies to every drawing (grayscale,
Lanczos resize to a square side, strokes made bright by inversion), public so that images
of your own reach a meta-trained network with the same numbers as its training data.
``load_image_folder`` reads ``<root>/<class>/<image>`` (any format Pillow reads) into the
images/offsets/classes layout of Omniglot, sorted by name; it writes no cache.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor

from metaplastic.errors import DataError

if TYPE_CHECKING:
    from PIL import Image as PILImage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def preprocess_image(
    image: str | Path | bytes | PILImage.Image, image_size: int, invert: bool = True, where: str | None = None
) -> np.ndarray:
    """(image_size, image_size) uint8 pixels of a file, its bytes or a PIL image.

    Grayscale (PIL mode "L"), resized with Lanczos only when not already that size (non-square
    images are stretched), then ``255 - x`` when ``invert`` (Omniglot: dark strokes on white
    become bright on black). ``where`` names the image in errors (default: the path)."""
    from PIL import Image

    if image_size < 1:
        raise DataError(f"image_size must be >= 1, got {image_size}")
    if isinstance(image, Image.Image):
        gray = image.convert("L")
    else:
        if isinstance(image, (str, Path)):
            where = where or str(image)
            try:
                data = Path(image).read_bytes()
            except FileNotFoundError:
                raise DataError(f"image not found: {where}") from None
            except OSError as e:
                raise DataError(f"cannot read image {where}: {e.strerror or e}") from None
        else:
            data = image
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                gray = img.convert("L")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"corrupt image {where or '(bytes)'}: {e}") from None
    if gray.size != (image_size, image_size):
        gray = gray.resize((image_size, image_size), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.uint8)
    return 255 - pixels if invert else pixels.copy()


def as_vectors(images: Tensor | np.ndarray) -> Tensor:
    """(N, H*W) float32 in [0, 1] from (N, H, W) uint8: what the streams feed the network."""
    images = torch.as_tensor(images)
    return images.reshape(len(images), -1).to(torch.float32) / 255.0


class ImageFolder(NamedTuple):
    images: Tensor  # (N, H, W) uint8, preprocessed
    offsets: Tensor  # (C + 1,) int64: images of class c are images[offsets[c]:offsets[c + 1]]
    classes: tuple[str, ...]  # class folder names, sorted
    files: tuple[str, ...]  # the source file of every image, in the same order

    def class_members(self) -> list[Tensor]:
        return [torch.arange(int(a), int(b)) for a, b in zip(self.offsets[:-1], self.offsets[1:])]


def image_files(folder: Path) -> list[Path]:
    """The images of one class folder, sorted by name (hidden files skipped)."""
    return sorted(
        f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
    )


def load_image_folder(root: str | Path, image_size: int, invert: bool = True) -> ImageFolder:
    """Every image of ``<root>/<class>/``, preprocessed like Omniglot; a missing root, a root
    without class folders or an empty class folder is a one-line DataError."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"no class folders (<class>/<image>) under {root}")
    images, offsets, files = [], [0], []
    for folder in class_dirs:
        found = image_files(folder)
        if not found:
            raise DataError(f"empty class folder: {folder} (no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images)")
        for f in found:
            images.append(preprocess_image(f, image_size, invert))
            files.append(str(f))
        offsets.append(len(images))
    return ImageFolder(
        torch.from_numpy(np.stack(images)), torch.tensor(offsets), tuple(p.name for p in class_dirs), tuple(files)
    )
