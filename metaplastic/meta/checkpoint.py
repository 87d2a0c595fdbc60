"""Checkpoints: atomic writes, ``weights_only=True`` loads, one-line errors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from metaplastic.errors import CheckpointError, ConfigError

FORMAT = "metaplastic-checkpoint/1"
CHECKPOINT_FILES = {"last": "checkpoint.pt", "best": "best.pt"}  # in a run folder; best: by meta-validation


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() would follow the umask
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_output_folder(path: str | Path) -> None:
    """Refuse, before any work and without creating anything, an output folder that cannot be
    made or written: its nearest existing ancestor must be a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output folder {path} exists and is not a folder")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"cannot create output folder {path}: {ancestor} is not a folder")
    try:  # a real probe: permission bits say nothing for root, /proc or a read-only mount
        os.rmdir(tempfile.mkdtemp(prefix=".metaplastic-probe-", dir=ancestor))
    except OSError as e:
        raise ConfigError(f"cannot create output folder {path}: {e.strerror or e} in {ancestor}") from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    payload = {"format": FORMAT, **payload}
    atomic_write_bytes(Path(path), lambda f: torch.save(payload, f))


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", which: str = "last"
) -> dict[str, Any]:
    """A checkpoint file, or a run folder's ``which`` checkpoint (last, or best by validation)."""
    path = Path(path)
    if which not in CHECKPOINT_FILES:
        raise CheckpointError(f"--checkpoint must be one of {', '.join(CHECKPOINT_FILES)}, got '{which}'")
    if path.is_dir():
        path = path / CHECKPOINT_FILES[which]
        if which == "best" and not path.is_file():
            raise CheckpointError(
                f"no best checkpoint in {path.parent}: the run was not meta-validated (meta.validate_every)"
            )
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first[:200]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a metaplastic checkpoint (expected format {FORMAT})")
    for key in ("config", "step", "meta", "initial_meta", "optimizers"):
        if key not in payload:
            raise CheckpointError(f"checkpoint {path} is incomplete: missing '{key}'")
    return payload
