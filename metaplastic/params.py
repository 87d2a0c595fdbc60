"""Meta-parameters as one flat dict of tensors whose key prefix names the group.

Groups: ``init`` (initial weights and biases of every layer, frozen ones included),
``feedback`` (feedback pathways), ``coef`` (plasticity coefficients), ``beta`` (feedback
strengths), ``lr`` (inner step sizes), ``inverse`` (initial inverse networks of target
propagation), ``tp`` (target propagation's alpha and noise sigma). The meta-trainer gives each
group its own optimiser.
"""

from __future__ import annotations

from torch import Tensor

GROUPS = ("init", "feedback", "coef", "beta", "lr", "inverse", "tp")


def group_of(key: str) -> str:
    return key.split(".", 1)[0]


def select(params: dict[str, Tensor], group: str) -> dict[str, Tensor]:
    """The entries of one group with the group prefix stripped."""
    prefix = group + "."
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def prefixed(params: dict[str, Tensor], group: str) -> dict[str, Tensor]:
    return {f"{group}.{k}": v for k, v in params.items()}
