"""Exponential moving average of the trainable parameters (TRM only; official models/ema.py, `EMAHelper`).

shadow <- mu * shadow + (1 - mu) * param, after every loader batch. The shadow starts at the weights the model has when
EMA is built, and covers `requires_grad` parameters only: buffers (the puzzle table, H_init / L_init) are not averaged.
"""

from contextlib import contextmanager

import torch
from torch import Tensor, nn


class EMA:
    """EMA shadow of `model`'s trainable parameters; build it after the model is on its final device."""

    def __init__(self, model: nn.Module, mu: float = 0.999):
        if not 0.0 <= mu <= 1.0:
            raise ValueError(f"EMA: mu must be in [0, 1], got {mu}")
        self.mu = mu
        self.shadow: dict[str, Tensor] = {
            name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad
        }
        if not self.shadow:
            raise ValueError(f"EMA: {type(model).__name__} has no requires_grad parameters to average")

    def _params(self, model: nn.Module) -> list[Tensor]:
        """The model's trainable parameters in shadow order; a different set of names is an error."""
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        if params.keys() != self.shadow.keys():
            missing, extra = sorted(self.shadow.keys() - params.keys()), sorted(params.keys() - self.shadow.keys())
            raise ValueError(f"EMA: model's trainable parameters differ from the shadow's: missing {missing}, "
                             f"unexpected {extra}")
        return [params[name] for name in self.shadow]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = self._params(model)
        shadows = list(self.shadow.values())
        torch._foreach_mul_(shadows, self.mu)
        torch._foreach_add_(shadows, params, alpha=1.0 - self.mu)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's trainable parameters with the EMA weights."""
        torch._foreach_copy_(self._params(model), list(self.shadow.values()))

    @contextmanager
    def apply_to(self, model: nn.Module):
        """Swap the EMA weights into `model` for the `with` block, then restore the training weights.

        Tensors taken from `model.state_dict()` inside the block alias the parameters: clone them to keep EMA values.
        """
        params = self._params(model)
        with torch.no_grad():
            backup = torch._foreach_clone(params)
            torch._foreach_copy_(params, list(self.shadow.values()))
        try:
            yield model
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, backup)

    def state_dict(self) -> dict:
        return {"mu": self.mu, "shadow": dict(self.shadow)}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"mu", "shadow"}:
            raise ValueError(f"EMA.load_state_dict: expected keys ['mu', 'shadow'], got {sorted(state)}")
        shadow = state["shadow"]
        if shadow.keys() != self.shadow.keys():
            raise ValueError(f"EMA.load_state_dict: shadow names differ: missing {sorted(self.shadow.keys() - shadow.keys())}"
                             f", unexpected {sorted(shadow.keys() - self.shadow.keys())}")
        for name, tensor in shadow.items():
            if tensor.shape != self.shadow[name].shape:
                raise ValueError(f"EMA.load_state_dict: shadow[{name!r}] has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(self.shadow[name].shape)}")
            self.shadow[name].copy_(tensor)
        self.mu = state["mu"]
