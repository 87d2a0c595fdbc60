"""Which lifetime path computes the meta-gradient, and which unroll modes each path supports.

Two paths give the same values (up to float rounding) and differ in time and memory:

- ``fused``: the rule's ``fused_lifetime``, one autograd node for the whole lifetime with a
  hand-written reverse pass (FLP's Hebb and Oja forms, and the polynomial rule's term pools);
- ``step``: the rule's ``step`` iterated under autograd (every rule has it).

``meta.unroll.path`` chooses: ``auto`` (the fused path where the rule has one, as before this
field existed), ``fused`` (refused in one line for a rule without one) or ``step``.
``meta.unroll.kernels`` chooses the fused path's weight-sized passes: ``auto`` (the native C
kernels of ``metaplastic.kernels`` where they apply, unless measured clearly slower than torch on
this CPU at the lifetime's shapes: ``kernels.selection``; torch elsewhere), ``native`` (refused
where they cannot run) or ``torch``. ``METAPLASTIC_NATIVE=0`` stays an override: it turns the native
kernels off everywhere (the step path's per-step Hebbian node included), whatever the config.

Either path runs only while a meta-gradient is recorded; a lifetime without one (evaluation,
``torch.no_grad``) runs the step function without a graph, which gives the same values.

``SUPPORT`` is the one table of which ``meta.unroll`` modes (and ``compile``) each path takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from metaplastic.errors import ConfigError

UNROLL_MODES = ("full", "checkpoint", "truncate", "first_order")
PATHS = ("auto", "fused", "step")
KERNELS = ("auto", "native", "torch")


@dataclass(frozen=True)
class PathSupport:
    """The unroll modes a lifetime path implements, and whether ``compile`` applies to it."""

    modes: tuple[str, ...]
    compile: bool


SUPPORT: dict[str, PathSupport] = {
    "fused": PathSupport(UNROLL_MODES, compile=False),  # hand-written: nothing to compile
    "step": PathSupport(UNROLL_MODES, compile=True),
    "memory": PathSupport(("full", "checkpoint", "truncate"), compile=False),  # no inner updates
    "plastic_conv": PathSupport(("full",), compile=False),
}


def check_support(path: str, mode: str, compile: bool, who: str) -> None:
    """A one-line ConfigError when ``path`` does not implement ``mode`` (or ``compile``)."""
    support = SUPPORT[path]
    if mode not in support.modes:
        raise ConfigError(f"meta.unroll.mode '{mode}' is not supported by {who} "
                          f"(supported: {', '.join(support.modes)})")
    if compile and not support.compile:
        raise ConfigError(f"meta.unroll.compile is not supported for {who} (it applies to the step path only)")


def has_fused_path(rule: Any) -> bool:
    return callable(getattr(rule, "fused_lifetime", None))


def has_native_kernels(rule: Any) -> bool:
    """Whether the rule's fused update algebra has native kernels (``PlasticUpdate.native_kernels``):
    the semi-implicit Oja step and the polynomial rule's term pools run on torch ops only."""
    algebra = getattr(rule, "update_algebra", None)
    return callable(algebra) and bool(getattr(algebra(), "native_kernels", False))


def _no_native_kernels(rule_name: str) -> ConfigError:
    return ConfigError(f"meta.unroll.kernels 'native': rule '{rule_name}' has no native kernels for its update "
                       "(only FLP's explicit Hebb / Oja step has them): use kernels auto or torch")


@dataclass(frozen=True)
class LifetimePath:
    """The resolved choice: ``fused`` (else step) and, on the fused path, ``native`` kernels."""

    fused: bool
    native: bool  # the native kernels may run
    note: str = ""  # why, when the choice was not asked for explicitly
    measured: bool = False  # ``auto``: native or torch by measurement at the lifetime's shapes
    choices: tuple[str, ...] = ()  # what the measurement chose, once a lifetime has run

    @property
    def kernel_mode(self) -> str:
        """What the fused lifetime is asked to run: ``auto`` (measure), ``native`` or ``torch``."""
        return "auto" if self.measured else "native" if self.native else "torch"

    def as_dict(self) -> dict[str, str]:
        out = {"path": "fused" if self.fused else "step"}
        if self.fused:
            out["kernels"] = "native or torch by measurement" if self.measured else self.kernel_mode
        if self.note:
            out["note"] = self.note
        if self.choices:
            out["measured"] = "; ".join(self.choices)
        return out

    def describe(self) -> str:
        d = self.as_dict()
        text = f"lifetime path {d['path']}"
        if "kernels" in d:
            text += f", kernels {d['kernels']}"
        text += f" ({self.note})" if self.note else ""
        return text + (f": {d['measured']}" if self.choices else "")


_NO_FUSED = "meta.unroll.path 'fused': rule '{}' has no fused lifetime (use path auto or step)"


def check_path_config(rule: Any, unroll: Any, device: str, rule_name: str) -> None:
    """What the config alone can refuse, in one line: a fused path or kernel choice the rule has
    no use for, native kernels off the CPU, compile on the fused path."""
    fused = has_fused_path(rule)
    if unroll.path == "fused" and not fused:
        raise ConfigError(_NO_FUSED.format(rule_name))
    runs_fused = unroll.path == "fused" or (unroll.path == "auto" and fused)
    if unroll.kernels != "auto" and not runs_fused:
        raise ConfigError(f"meta.unroll.kernels '{unroll.kernels}' chooses the fused lifetime's kernels, but rule "
                          f"'{rule_name}' runs the step path here: leave it auto")
    if unroll.kernels == "native" and torch.device(device).type != "cpu":
        raise ConfigError(f"meta.unroll.kernels 'native': the native kernels run on the CPU only, device is '{device}'")
    if unroll.kernels == "native" and runs_fused and not has_native_kernels(rule):
        raise _no_native_kernels(rule_name)
    if unroll.path == "fused":
        check_support("fused", unroll.mode, unroll.compile, "the fused lifetime")


def choose_path(rule: Any, unroll: Any, device: torch.device, dtype: torch.dtype) -> LifetimePath:
    """The path ``unroll`` asks for with this rule on this machine (see the module docstring)."""
    from metaplastic.kernels import native

    if unroll.path == "fused" and not has_fused_path(rule):
        raise ConfigError(_NO_FUSED.format(getattr(rule, "name", type(rule).__name__)))
    fused = unroll.path == "fused" or (unroll.path == "auto" and has_fused_path(rule))
    if not fused:
        return LifetimePath(False, False, "" if unroll.path == "step" else "the rule has no fused lifetime")
    if unroll.kernels == "torch":
        return LifetimePath(True, False)
    if not has_native_kernels(rule):
        if unroll.kernels == "native":
            raise _no_native_kernels(getattr(rule, "name", type(rule).__name__))
        return LifetimePath(True, False, "the rule's update has no native kernels")
    if native.disabled_by_environment():
        return LifetimePath(True, False, "METAPLASTIC_NATIVE=0")
    runnable = device.type == "cpu" and native.supports(dtype) and native.library() is not None
    if unroll.kernels == "native" and not runnable:
        raise ConfigError(f"meta.unroll.kernels 'native': the native kernels cannot run here (device {device}, "
                          f"{dtype}; they need the CPU, float32/float64 and a C compiler): use kernels auto or torch")
    if not runnable:
        return LifetimePath(True, False, "native kernels unavailable")
    return LifetimePath(True, True, measured=unroll.kernels == "auto")
