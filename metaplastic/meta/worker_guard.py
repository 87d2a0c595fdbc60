"""Worker processes that end with the process that started them.

``metaplastic suite --jobs N`` trains runs in a process pool. Killed from outside (SIGTERM,
SIGKILL, a closed terminal), the suite cannot shut its pool down, and the workers would go on
training, unseen, into folders the user believes idle, holding their run locks and half the
CPU. ``die_with_parent`` (a pool initializer) ends a worker as soon as its parent is gone: on
Linux by the kernel's parent-death signal, elsewhere by a daemon thread polling the parent id.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def _parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int, interval: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def die_with_parent(parent: int, interval: float = 1.0) -> None:
    """End this process when ``parent`` (the pid that started it) exits."""
    if not _parent_death_signal():
        threading.Thread(target=_watch, args=(parent, interval), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
