"""Fused CPU kernels for the Hebbian lifetime, compiled on first use with the system C compiler.

The weight-sized elementwise passes of the Hebbian/Oja lifetime are memory-bound: separate
torch calls read and write every weight-sized tensor 4-6 times per inner step, and one pass
(``hebbian_cpu.c``) does the same work. The shared library is built once per machine into
``$METAPLASTIC_CACHE`` (default ``~/.cache/metaplastic``) with ``cc -O3 -march=native -fopenmp``,
atomically, and loaded with ctypes; no torch headers are needed, so the build takes about a
second. Without a compiler, on other devices, for non-contiguous or broadcast layouts the
kernels don't apply, with ``meta.unroll.kernels: torch`` (``metaplastic.lifetime_paths``), where
``auto`` measured them slower on this CPU (``selection``) or with the override
``METAPLASTIC_NATIVE=0``, callers use their torch code instead: same values up to float rounding.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

_SOURCE = Path(__file__).with_name("hebbian_cpu.c")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared"]
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_state: dict[str, object] = {}


def cache_dir() -> Path:
    """Where the built library (and ``selection``'s kernel choices) live."""
    return Path(os.environ.get("METAPLASTIC_CACHE", Path.home() / ".cache" / "metaplastic"))


def _build() -> ctypes.CDLL | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([compiler, *_FLAGS, platform.machine(), platform.node()]).encode())
    target = cache_dir() / f"hebbian_cpu_{key.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            subprocess.run([compiler, *_FLAGS, str(_SOURCE), "-o", tmp], check=True, capture_output=True, timeout=120)
            os.replace(tmp, target)
        except (OSError, subprocess.SubprocessError):
            Path(tmp).unlink(missing_ok=True)
            return None
    try:
        lib = ctypes.CDLL(str(target))
    except OSError:
        return None
    ptr, long_, int_ = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    for suffix in _SUFFIX.values():
        getattr(lib, f"hebbian_forward_{suffix}").argtypes = [ptr] * 4 + [long_] * 6 + [int_]
        getattr(lib, f"hebbian_adjoint_{suffix}").argtypes = [ptr] * 8 + [long_] * 5 + [int_]
    return lib


def disabled_by_environment() -> bool:
    """``METAPLASTIC_NATIVE=0``: the override that turns the kernels off whatever the config says."""
    return os.environ.get("METAPLASTIC_NATIVE", "1") == "0"


def supports(dtype: torch.dtype) -> bool:
    return dtype in _SUFFIX


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None when they are disabled or cannot be built."""
    if disabled_by_environment():
        return None
    if "lib" not in _state:
        _state["lib"] = _build()
    return _state["lib"]  # type: ignore[return-value]


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _block(t: Tensor, shape: tuple[int, int, int, int]) -> int | None:
    """Task stride (0 = shared) if ``t`` is a contiguous (L, T|1, R, C) block, else None."""
    L, NT, R, C = shape
    ts = t.shape
    if len(ts) != 4 or ts[0] != L or ts[2] != R or ts[3] != C or not t.is_contiguous():
        return None
    if ts[1] == NT:
        return R * C if NT > 1 else 0
    return 0 if ts[1] == 1 else None


def _fits(t: Tensor, dtype: torch.dtype) -> bool:
    """A CPU tensor of the kernels' dtype (what the C code reads and writes raw)."""
    return t.dtype is dtype and t.is_cpu


@dataclass(frozen=True)
class HebbianKernels:
    """The kernels for one dtype, resolved once (library, ``METAPLASTIC_NATIVE``, thread count)
    so that a call checks only the layout of its tensors: a lifetime binds them once instead of
    looking them up at every step (at small widths the lookups cost more than the pass)."""

    dtype: torch.dtype
    forward_fn: Callable[..., None]
    adjoint_fn: Callable[..., None]
    threads: int

    def forward(self, m: Tensor, w: Tensor, p: Tensor, s: Tensor | None) -> bool:
        """In place: m <- w + p * (m - s w) (or w + p * m without s). m (L, T, R, C) contiguous,
        w (L, T|1, R, C), p (L, 1, R, C), s (L, T, R, 1). Returns False (nothing done) when the
        layout does not fit the kernel."""
        dt = self.dtype
        shape = tuple(m.shape)
        if len(shape) != 4 or not m.is_contiguous() or not (_fits(m, dt) and _fits(w, dt) and _fits(p, dt)):
            return False
        ws, ps = _block(w, shape), _block(p, shape)
        if ws is None or ps is None or (p.shape[1] != 1 and shape[1] > 1):
            return False
        if s is not None:
            s = s.contiguous()
            if not _fits(s, dt) or s.numel() != shape[0] * shape[1] * shape[2]:
                return False
        self.forward_fn(m.data_ptr(), w.data_ptr(), p.data_ptr(), _ptr(s), *shape, ws, ps, self.threads)
        return True

    def adjoint(
        self, g: Tensor, d: Tensor, ds: Tensor | None, gp: Tensor | None, p: Tensor, w: Tensor, m: Tensor | None,
        s: Tensor | None,
    ) -> bool:
        """One reverse step, in place (see ``hebbian_cpu.c``): d = g p; ds = rowsum(d w) (Oja);
        gp += sum over tasks of g (m - s w) (when gp is given); g -= s d (Oja). g, d, m (L, T, R, C)
        contiguous; w (L, T|1, R, C); p, gp (L, 1, R, C); s, ds (L, T, R, 1) or None (Hebb)."""
        dt = self.dtype
        shape = tuple(g.shape)
        if len(shape) != 4 or not (g.is_contiguous() and d.is_contiguous() and tuple(d.shape) == shape):
            return False
        if (s is None) != (ds is None) or not all(_fits(t, dt) for t in (g, d, p, w, ds, gp, m, s) if t is not None):
            return False
        ws = _block(w, shape)
        if ws is None or _block(p, shape) != 0 or p.shape[1] != 1:
            return False
        if gp is not None and (gp.shape != p.shape or not gp.is_contiguous()):
            return False
        if m is not None and (tuple(m.shape) != shape or not m.is_contiguous()):
            return False
        if s is not None:
            s = s.contiguous()
            rows = shape[0] * shape[1] * shape[2]
            if not ds.is_contiguous() or s.numel() != rows or ds.numel() != rows:
                return False
        self.adjoint_fn(g.data_ptr(), d.data_ptr(), _ptr(ds), _ptr(gp), p.data_ptr(), w.data_ptr(), _ptr(m),
                        _ptr(s), *shape, ws, self.threads)
        return True


def bind(dtype: torch.dtype, device: torch.device | str = "cpu") -> HebbianKernels | None:
    """The kernels for ``dtype`` on ``device``, or None where they cannot run (not the CPU, a
    dtype they lack, no compiler, ``METAPLASTIC_NATIVE=0``)."""
    if torch.device(device).type != "cpu" or dtype not in _SUFFIX:
        return None
    lib = library()
    if lib is None:
        return None
    suffix = _SUFFIX[dtype]
    return HebbianKernels(dtype, getattr(lib, f"hebbian_forward_{suffix}"), getattr(lib, f"hebbian_adjoint_{suffix}"),
                          torch.get_num_threads())


def hebbian_forward(m: Tensor, w: Tensor, p: Tensor, s: Tensor | None) -> bool:
    """``HebbianKernels.forward`` for one call (binds the kernels first: a lifetime binds once)."""
    kernels = bind(m.dtype, m.device)
    return kernels is not None and kernels.forward(m, w, p, s)


def hebbian_adjoint(
    g: Tensor, d: Tensor, ds: Tensor | None, gp: Tensor | None, p: Tensor, w: Tensor, m: Tensor | None,
    s: Tensor | None,
) -> bool:
    """``HebbianKernels.adjoint`` for one call (binds the kernels first: a lifetime binds once)."""
    kernels = bind(g.dtype, g.device)
    return kernels is not None and kernels.adjoint(g, d, ds, gp, p, w, m, s)
