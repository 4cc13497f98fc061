"""Projected optimisation on spheres and the PULSE learning-rate schedules."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

SCHEDULES = ("fixed", "linear1cycle", "linear1cycledrop")


def sphere_norm(tensor: torch.Tensor) -> torch.Tensor:
    """Norm of each vector over all dims from 2 on, keeping dims: ``[B, L, ...] -> [B, L, 1, ...]``.

    A latent ``[B, L, D]`` therefore has one sphere per row and a noise map ``[B, 1, r, r]`` one per
    sample. A DCGAN latent must be shaped ``[B, 1, D]``, not ``[B, D, 1, 1]``: the latter would put
    every scalar on its own sphere.
    """
    dims = tuple(range(2, tensor.ndim))
    return (tensor.pow(2).sum(dim=dims, keepdim=True) + 1e-9).sqrt()


class SphericalOptimizer(torch.optim.Optimizer):
    """Any torch optimizer followed by a projection of each parameter back onto its initial spheres.

    After every step each vector (see :func:`sphere_norm`) is rescaled to the norm it had at
    construction. It shares ``param_groups`` and ``state`` with the wrapped optimizer, so learning-rate
    schedulers such as ``torch.optim.lr_scheduler.LambdaLR`` can drive it directly.

    Args:
        optimizer_cls: e.g. ``torch.optim.Adam``.
        params: tensors with ``ndim >= 3`` (``[B, L, D]`` latents, ``[B, 1, r, r]`` noise maps).
        **kwargs: passed to ``optimizer_cls`` (``lr`` and so on).
    """

    def __init__(self, optimizer_cls: Callable[..., torch.optim.Optimizer], params: Iterable[Any], **kwargs):
        params = list(params)
        self.optimizer = optimizer_cls(params, **kwargs)
        super().__init__([p for group in self.optimizer.param_groups for p in group["params"]], self.optimizer.defaults)
        # Share, don't copy: schedulers and zero_grad act on the wrapped optimizer's groups.
        self.param_groups = self.optimizer.param_groups
        self.state = self.optimizer.state
        flat = [p for group in self.param_groups for p in group["params"]]
        too_flat = [tuple(p.shape) for p in flat if p.ndim < 3]
        if too_flat:
            raise ValueError(
                f"spherical optimisation needs parameters shaped [batch, vectors, ...]; got shapes {too_flat}"
            )
        with torch.no_grad():
            self.radii = [sphere_norm(p).detach().clone() for p in flat]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        loss = self.optimizer.step(closure)
        flat = [p for group in self.param_groups for p in group["params"]]
        for param, radius in zip(flat, self.radii, strict=True):
            param.mul_(radius / sphere_norm(param))
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "radii": self.radii}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.radii = [r.clone() for r in state_dict["radii"]]


def schedule(name: str, steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier per step for ``LambdaLR``.

    - ``fixed``: 1.
    - ``linear1cycle``: linear warm-up from 0.1 to 1 at mid-run, then back down to 0.1.
    - ``linear1cycledrop``: the same cycle over the first 90% of steps, then a linear drop from 0.1
      to 0.001 over the last 10% (the PULSE default).
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")

    def cycle(x: float, length: float) -> float:
        return (9.0 * (1.0 - abs(x / length - 0.5) * 2.0) + 1.0) / 10.0

    def fixed(_: int) -> float:
        return 1.0

    def linear1cycle(x: int) -> float:
        return cycle(x, steps)

    def linear1cycledrop(x: int) -> float:
        head = 0.9 * steps
        if x < head:
            return cycle(x, head)
        return 0.1 + (x - head) / (0.1 * steps) * (0.001 - 0.1)

    table = {"fixed": fixed, "linear1cycle": linear1cycle, "linear1cycledrop": linear1cycledrop}
    if name not in table:
        raise ValueError(f"unknown learning-rate schedule {name!r}; valid: {list(SCHEDULES)}")
    return table[name]
