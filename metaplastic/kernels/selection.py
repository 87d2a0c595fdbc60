"""Native or torch kernels for a lifetime, chosen by measurement on this CPU at its shapes.

Whether the native kernels beat torch's elementwise ops depends on the CPU and the shapes
(benchmarks/README.md: level at 4 x 64 on the EPYC of 2026-12-03, native 1.2x faster for Oja at
300, slower than torch before the kernels were bound once per lifetime). So ``meta.unroll.kernels:
auto`` times one inner step's weight-sized passes both ways, once per (CPU, torch, dtype, threads,
update, shapes), and keeps native unless it is clearly slower (by more than ``MARGIN``): near
ties keep what ``auto`` always ran. The answer is stored in ``$METAPLASTIC_CACHE/kernel_choices.json``
under a file lock, so every later run on this machine, and every rank of a torchrun job, takes
the same choice and computes the same numbers (the two differ by float rounding). ``native`` and
``torch`` pin the choice; ``METAPLASTIC_NATIVE=0`` still turns the kernels off.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from metaplastic.kernels import native

MARGIN = 0.10  # native is kept unless torch is faster by more than this fraction
_PAIRS, _BUDGET_S = 25, 1.0  # timed native/torch pairs at most, and the time they may take

Probe = Callable[[native.HebbianKernels | None], None]  # one inner step's passes, kernels or torch


@dataclass(frozen=True)
class KernelChoice:
    """What ``auto`` chose for one lifetime signature, and the times it chose by."""

    native: bool
    native_s: float  # median seconds of one inner step's weight-sized passes, native kernels
    torch_s: float  # the same with torch ops
    cached: bool = False  # read from the choices file rather than measured in this process

    def describe(self) -> str:
        how = "from the kernel choices file" if self.cached else "measured"
        return (f"kernels {'native' if self.native else 'torch'} by measurement ({how}: native "
                f"{self.native_s * 1e6:.0f} us, torch {self.torch_s * 1e6:.0f} us per inner step)")


_chosen: dict[str, KernelChoice] = {}  # this process's choices, by signature
_recorders: list[dict[str, KernelChoice]] = []  # open ``recording`` blocks


def choices_file() -> Path:
    return native.cache_dir() / "kernel_choices.json"


def cpu_name() -> str:
    """The CPU model as ``lscpu`` names it (model name, family, model), else the platform's."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            name = name.strip()
            if name in ("model name", "cpu family", "model") and name not in fields:
                fields[name] = value.strip()
            if len(fields) == 3:
                break
    if fields:
        return " ".join(f"{k} {v}" for k, v in fields.items())
    return f"{platform.machine()} {platform.processor()}".strip()


def signature(kernels: native.HebbianKernels, what: str) -> str:
    """The key of a choice: this machine, torch, the kernels' dtype and threads, and ``what``
    (the update algebra and the lifetime's shapes)."""
    return f"{cpu_name()} | torch {torch.__version__} | {kernels.dtype} | threads {kernels.threads} | {what}"


def measure(probe: Probe, kernels: native.HebbianKernels) -> tuple[float, float]:
    """Median seconds of ``probe`` with the native kernels and with torch ops, in alternating
    pairs (so that a change of machine load hits both)."""
    for _ in range(2):  # warm-up: first-touch allocation, the library's first call
        probe(kernels)
        probe(None)
    times: dict[bool, list[float]] = {True: [], False: []}
    start = time.perf_counter()
    for _ in range(_PAIRS):
        for use in (True, False):
            t0 = time.perf_counter()
            probe(kernels if use else None)
            times[use].append(time.perf_counter() - t0)
        if time.perf_counter() - start > _BUDGET_S:
            break
    return statistics.median(times[True]), statistics.median(times[False])


def choose(kernels: native.HebbianKernels, what: str, make_probe: Callable[[], Probe]) -> KernelChoice:
    """The kernels ``auto`` runs for this signature: this process's earlier answer, else the
    choices file's, else a measurement of ``make_probe()`` (stored in the file)."""
    key = signature(kernels, what)
    if key not in _chosen:
        _chosen[key] = _stored_or_measured(key, kernels, make_probe)
    for used in _recorders:
        used[key] = _chosen[key]
    return _chosen[key]


def _stored_or_measured(key: str, kernels: native.HebbianKernels, make_probe: Callable[[], Probe]) -> KernelChoice:
    with _locked(choices_file()) as stored:
        if key in stored:
            entry = stored[key]
            choice = KernelChoice(bool(entry["native"]), float(entry["native_s"]), float(entry["torch_s"]), True)
        else:
            native_s, torch_s = measure(make_probe(), kernels)
            choice = KernelChoice(native_s <= torch_s * (1 + MARGIN), native_s, torch_s)
            stored[key] = {k: v for k, v in asdict(choice).items() if k != "cached"}
    return choice


@contextlib.contextmanager
def recording() -> Iterator[dict[str, KernelChoice]]:
    """The choices the lifetimes run inside the block used, by signature (what a run logs)."""
    used: dict[str, KernelChoice] = {}
    _recorders.append(used)
    try:
        yield used
    finally:
        _recorders.remove(used)


def forget() -> None:
    """Drop this process's choices (the next lifetime reads the file again, as a new process would)."""
    _chosen.clear()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[dict]:
    """The choices file's entries, under an exclusive lock; what the block adds is written back
    atomically. An unreadable file counts as empty (it is rewritten); an unwritable folder
    keeps the choices in this process only."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 (held for the whole block)
    except OSError:
        yield {}
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            stored = json.loads(path.read_text())
            if not isinstance(stored, dict):
                stored = {}
        except (OSError, ValueError):
            stored = {}
        before = dict(stored)
        yield stored
        if stored != before:
            _write_atomic(path, stored)


def _write_atomic(path: Path, entries: dict) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(entries, out, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
