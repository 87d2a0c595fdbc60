"""Any ``torch.optim`` optimiser as a differentiable inner loop, through ``higher``.

Each step builds ``higher``'s differentiable twin of the optimiser, loads the optimiser state
(moments, step counts) from the ``weights`` dict, takes one step on the summed per-task loss
and writes the new state back under ``optim.*`` keys, so the rule stays a pure function of its
inputs. The plastic weights carry the task dimension (T, out, in): the per-task losses are
separable, so every task's gradient and every element-wise optimiser state stay per task.

The step size ``lr.{layer}`` / ``lr.global`` (group ``lr``) overrides the optimiser's lr and is
meta-learnable; other optimiser settings come from ``options``. Under ``torch.no_grad`` (e.g.
evaluation) the step runs with ``track_higher_grads=False``. Note that higher's Adam adds eps
before the bias correction (the Adam paper's "epsilon hat"), torch.optim.Adam after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from metaplastic.errors import ConfigError
from metaplastic.losses import Loss
from metaplastic.networks import MLP, Trace
from metaplastic.params import prefixed, select
from metaplastic.rules.inner_state import plastic_keys
from metaplastic.rules.step_sizes import check_lr, init_step_sizes
from metaplastic.rules.validation import check_meta_shapes

OPTIMISERS = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax")


@dataclass(frozen=True)
class TorchOptimRule:
    groups: ClassVar[tuple[str, ...]] = ("lr",)  # meta-parameter groups besides init
    name: str = "torch_optim"
    optimizer: str = "SGD"
    lr_init: float = 0.01
    lr_scope: str = "layer"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMISERS:
            raise ConfigError(f"unknown optimizer '{self.optimizer}' (known: {', '.join(OPTIMISERS)})")
        check_lr(self.lr_init, self.lr_scope)
        if "lr" in self.options:
            raise ConfigError("set the step size with rule.lr_init, not rule.options.lr")
        try:
            self._make([torch.zeros(1, requires_grad=True)])
        except (TypeError, ValueError) as e:
            raise ConfigError(f"rule.options for {self.optimizer}: {e}") from None

    def label(self) -> str:
        return f"{self.optimizer} (higher)"

    def _make(self, params: list[Tensor]) -> torch.optim.Optimizer:
        return getattr(torch.optim, self.optimizer)(
            [{"params": [p]} for p in params], lr=self.lr_init, **self.options
        )

    def init(self, net: MLP, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        return init_step_sizes(net, self.lr_init, self.lr_scope, dtype)

    def prepare(self, net: MLP, meta: dict[str, Tensor]) -> dict[str, Tensor]:
        check_meta_shapes(self, net, meta)
        return prefixed(select(meta, "lr"), "lr")

    def step(
        self,
        net: MLP,
        weights: dict[str, Tensor],
        prepared: dict[str, Tensor],
        trace: Trace,
        target: Tensor,
        loss: Loss,
    ) -> dict[str, Tensor]:
        import higher

        keys = plastic_keys(net)
        if not keys:
            return {}
        tracking = torch.is_grad_enabled()
        x = trace.inputs[0]
        n_tasks = x.shape[0]
        lrs = [
            prepared["lr.global"] if self.lr_scope == "global" else prepared[f"lr.{k.split('.')[1]}"] for k in keys
        ]
        with torch.enable_grad():
            params = []
            for k in keys:
                w = weights[k]
                shared = w.dim() == (2 if k.endswith(".weight") else 1)
                w = w.expand(n_tasks, *w.shape) if shared else w
                if not tracking:
                    w = w.detach()
                params.append(w if w.requires_grad else w.detach().requires_grad_(True))
            dummies = [torch.zeros_like(p, requires_grad=True) for p in params]
            diffopt = higher.optim.get_diff_optim(self._make(dummies), dummies, track_higher_grads=tracking)
            for i, k in enumerate(keys):
                diffopt.state[i][0] = {
                    name[len(f"optim.{k}."):]: (int(v) if v.dtype == torch.int64 and v.dim() == 0 else v)
                    for name, v in weights.items()
                    if name.startswith(f"optim.{k}.")
                }
            output = net.forward({**weights, **dict(zip(keys, params))}, x).output
            total = loss.value(output, target).sum()
            new_params = diffopt.step(total, params=params, override={"lr": lrs})
        new = {}
        for i, (k, p) in enumerate(zip(keys, new_params)):
            new[k] = p if tracking else p.detach()
            for name, v in diffopt.state[i][0].items():
                if not isinstance(v, Tensor):
                    v = torch.tensor(int(v), dtype=torch.int64, device=x.device)
                new[f"optim.{k}.{name}"] = v if tracking else v.detach()
        return new
