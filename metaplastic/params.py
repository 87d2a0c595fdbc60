"""Meta-parameters as one flat dict of tensors whose key prefix names the group.

Which groups exist is declared where the parameters are made, not listed here: every learner
has ``init`` (initial weights and biases of every layer, frozen ones included); a plasticity
rule adds its own in its ``groups`` attribute (e.g. FLP: ``feedback``, ``coef``, ``beta``); the
meta-trainer gives each declared group its own optimiser and ``meta.lr.<group>`` its learning
rate. ``group_of`` is the one place that reads a group out of a key.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor

INIT = "init"  # the group every learner has: the network's initial weights


def group_of(key: str) -> str:
    return key.split(".", 1)[0]


def select(params: dict[str, Tensor], group: str) -> dict[str, Tensor]:
    """The entries of one group with the group prefix stripped."""
    prefix = group + "."
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def prefixed(params: dict[str, Tensor], group: str) -> dict[str, Tensor]:
    return {f"{group}.{k}": v for k, v in params.items()}


def by_group(params: Iterable[str], groups: tuple[str, ...], owner: str) -> dict[str, list[str]]:
    """The keys of every declared group, in the order of ``groups``; a key of an undeclared group
    is a rule that forgot to declare it, which would otherwise never be meta-trained."""
    out: dict[str, list[str]] = {g: [] for g in groups}
    for key in params:
        group = group_of(key)
        if group not in out:
            raise ValueError(f"{owner} made meta-parameter '{key}' of group '{group}', which it does not declare "
                             f"(declared: {', '.join(groups)}): add it to the rule's groups")
        out[group].append(key)
    return out
