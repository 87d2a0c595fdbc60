"""Per-synapse / per-neuron / per-layer / global coefficient tensors.

A coefficient with a given scope is stored at the smallest shape that broadcasts against the
weight (out, in): synapse (out, in), neuron (out, 1), layer and global (). The bias of a layer
is treated as a synapse from a constant input of 1, so it gets a (out,) tensor for synapse
scope and reuses the neuron's / layer's / global value otherwise.
"""

from __future__ import annotations

from torch import Tensor

from metaplastic.errors import ConfigError

SCOPES = ("synapse", "neuron", "layer", "global")


def check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ConfigError(f"unknown coefficient scope '{scope}' (known: {', '.join(SCOPES)})")


def coefficient_shapes(scope: str, layer: int, out_f: int, in_f: int, with_bias: bool) -> dict[str, tuple[int, ...]]:
    """Keys (without group prefix) and shapes of the coefficients of one layer."""
    check_scope(scope)
    if scope == "synapse":
        shapes = {f"{layer}.weight": (out_f, in_f)}
        if with_bias:
            shapes[f"{layer}.bias"] = (out_f,)
        return shapes
    if scope == "neuron":
        return {f"{layer}": (out_f, 1)}
    if scope == "layer":
        return {f"{layer}": ()}
    return {"global": ()}


def layer_coefficients(coef: dict[str, Tensor], scope: str, layer: int) -> tuple[Tensor, Tensor]:
    """(weight coefficient, bias coefficient) of one layer, broadcastable to (out, in) / (out,)."""
    if scope == "synapse":
        w = coef[f"{layer}.weight"]
        return w, coef.get(f"{layer}.bias", w.new_zeros(w.shape[0]))
    if scope == "neuron":
        p = coef[f"{layer}"]
        return p, p[:, 0]
    if scope == "layer":
        p = coef[f"{layer}"]
        return p, p
    p = coef["global"]
    return p, p
