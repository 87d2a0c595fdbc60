"""Fused CPU kernels for the Hebbian lifetime, compiled on first use with the system C compiler.

The weight-sized elementwise passes of the Hebbian/Oja lifetime are memory-bound: separate
torch calls read and write every weight-sized tensor 4-6 times per inner step, and one pass
(``hebbian_cpu.c``) does the same work. The shared library is built once per machine into
``$METAPLASTIC_CACHE`` (default ``~/.cache/metaplastic``) with ``cc -O3 -march=native -fopenmp``,
atomically, and loaded with ctypes; no torch headers are needed, so the build takes about a
second. Without a compiler, on other devices, for non-contiguous or broadcast layouts the
kernels don't apply, with ``meta.unroll.kernels: torch`` (``metaplastic.lifetime_paths``) or with
the override ``METAPLASTIC_NATIVE=0``, callers use their torch code instead: same values up to
float rounding.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

_SOURCE = Path(__file__).with_name("hebbian_cpu.c")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared"]
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_state: dict[str, object] = {}


def _cache_dir() -> Path:
    return Path(os.environ.get("METAPLASTIC_CACHE", Path.home() / ".cache" / "metaplastic"))


def _build() -> ctypes.CDLL | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([compiler, *_FLAGS, platform.machine(), platform.node()]).encode())
    target = _cache_dir() / f"hebbian_cpu_{key.hexdigest()[:16]}.so"
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
    if t.dim() != 4 or t.shape[0] != L or t.shape[2:] != (R, C) or not t.is_contiguous():
        return None
    if t.shape[1] == NT:
        return R * C if NT > 1 else 0
    return 0 if t.shape[1] == 1 else None


def usable(*tensors: Tensor) -> bool:
    t0 = tensors[0]
    return (
        t0.device.type == "cpu"
        and t0.dtype in _SUFFIX
        and all(t.device == t0.device and t.dtype == t0.dtype for t in tensors)
        and library() is not None
    )


def hebbian_forward(m: Tensor, w: Tensor, p: Tensor, s: Tensor | None) -> bool:
    """In place: m <- w + p * (m - s w) (or w + p * m without s). m (L, T, R, C) contiguous, w
    (L, T|1, R, C), p (L, 1, R, C), s (L, T, R, 1). Returns False (nothing done) when the
    layout does not fit the kernel."""
    shape = tuple(m.shape)
    if len(shape) != 4 or not m.is_contiguous() or not usable(m, w, p):
        return False
    ws, ps = _block(w, shape), _block(p, shape)
    if ws is None or ps is None or (p.shape[1] != 1 and shape[1] > 1):
        return False
    if s is not None:
        s = s.contiguous()
        if s.numel() != shape[0] * shape[1] * shape[2]:
            return False
    fn = getattr(library(), f"hebbian_forward_{_SUFFIX[m.dtype]}")
    fn(_ptr(m), _ptr(w), _ptr(p), _ptr(s), *shape, ws, ps, torch.get_num_threads())
    return True


def hebbian_adjoint(
    g: Tensor, d: Tensor, ds: Tensor | None, gp: Tensor | None, p: Tensor, w: Tensor, m: Tensor | None,
    s: Tensor | None,
) -> bool:
    """One reverse step, in place (see ``hebbian_cpu.c``): d = g p; ds = rowsum(d w) (Oja);
    gp += sum over tasks of g (m - s w) (when gp is given); g -= s d (Oja). g, d, m (L, T, R, C)
    contiguous; w (L, T|1, R, C); p, gp (L, 1, R, C); s, ds (L, T, R, 1) or None (Hebb)."""
    shape = tuple(g.shape)
    if len(shape) != 4 or not (g.is_contiguous() and d.is_contiguous() and d.shape == g.shape):
        return False
    tensors = [t for t in (g, d, ds, gp, p, w, m, s) if t is not None]
    if not usable(*tensors):
        return False
    ws = _block(w, shape)
    if ws is None or _block(p, shape) != 0 or p.shape[1] != 1:
        return False
    if gp is not None and (gp.shape != p.shape or not gp.is_contiguous()):
        return False
    if m is not None and (m.shape != g.shape or not m.is_contiguous()):
        return False
    if (s is None) != (ds is None):
        return False
    if s is not None:
        s = s.contiguous()
        if not ds.is_contiguous() or s.numel() != ds.numel() or ds.numel() != shape[0] * shape[1] * shape[2]:
            return False
    fn = getattr(library(), f"hebbian_adjoint_{_SUFFIX[g.dtype]}")
    fn(_ptr(g), _ptr(d), _ptr(ds), _ptr(gp), _ptr(p), _ptr(w), _ptr(m), _ptr(s), *shape, ws, torch.get_num_threads())
    return True
