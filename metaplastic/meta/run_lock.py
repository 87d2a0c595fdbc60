"""One process per run folder: an advisory lock held while a run trains into it.

Two runs started into one folder (``seed=0`` and ``seed=1`` with the same ``--out``, or a
``--resume`` while the run still trains) would otherwise interleave their checkpoints and lose
one. The lock is ``flock`` on ``<run>/.lock``: the kernel drops it when its process dies, so a
killed run never leaves a stale lock behind. Whoever holds it also removes the temporary files
of writes that a kill interrupted (``.<name>.*.tmp``, see ``checkpoint.atomic_write_bytes``).
"""

from __future__ import annotations

import os
from pathlib import Path

from metaplastic.errors import ConfigError

LOCK_FILE = ".lock"


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise ConfigError(f"cannot write to run folder {self.path.parent}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"run folder {self.path.parent} is in use by another process (pid {holder}): "
                "wait for it to finish or choose another out_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        for tmp in self.path.parent.glob(".*.tmp"):  # left by a write that a kill interrupted
            tmp.unlink(missing_ok=True)
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
