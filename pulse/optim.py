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
        flat = self._flat_params()
        too_flat = [tuple(p.shape) for p in flat if p.ndim < 3]
        if too_flat:
            raise ValueError(
                f"spherical optimisation needs parameters shaped [batch, vectors, ...]; got shapes {too_flat}"
            )
        with torch.no_grad():
            self.radii = [sphere_norm(p).detach().clone() for p in flat]

    def _flat_params(self) -> list[torch.Tensor]:
        """Every parameter of every group, in order (the order of ``self.radii``)."""
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        loss = self.optimizer.step(closure)
        for param, radius in zip(self._flat_params(), self.radii, strict=True):
            param.mul_(radius / sphere_norm(param))
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "radii": self.radii}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.radii = [r.clone() for r in state_dict["radii"]]


def radial_bands(side: int, bands: int, device: torch.device | None = None) -> torch.Tensor:
    """Band index ``[side, side // 2 + 1]`` of each ``rfft2`` coefficient of a ``side x side`` map.

    Bands are equal-width rings of the radial frequency ``|k|`` (cycles per map) from 0 to the corner's
    ``side / sqrt(2)``; the zero frequency (the map's mean) is band 0 with its ring.
    """
    ky = torch.fft.fftfreq(side, device=device).abs() * side
    kx = torch.fft.rfftfreq(side, device=device) * side
    radius = (ky[:, None].square() + kx[None, :].square()).sqrt()
    edge = side / 2**0.5
    return (radius / edge * bands).long().clamp_(max=bands - 1)


def project_white_bands(maps: torch.Tensor, bands: int = 16) -> torch.Tensor:
    """Rescale each radial frequency band of ``[..., r, r]`` maps to the power white N(0, 1) noise has there.

    With an orthonormal FFT, white unit-variance noise has ``E |F_k|^2 = 1`` at every frequency. Each band's
    coefficients are scaled by one real factor so that their mean power is exactly 1: phases (where things
    are) stay, the power spectrum is flattened band by band. The sphere PULSE searches on fixes the total
    power (one band); this fixes it per band, which is what keeps a searched noise map from becoming
    spatially correlated. Returns a new tensor of ``maps``' shape and dtype.
    """
    side = maps.shape[-1]
    if maps.shape[-2] != side:
        raise ValueError(f"white-band projection needs square maps, got trailing shape {tuple(maps.shape[-2:])}")
    spectrum = torch.fft.rfft2(maps.double(), norm="ortho")
    band = radial_bands(side, bands, maps.device).flatten()
    # rfft2 stores one of each conjugate pair; the columns kx = 0 and (even side) kx = side/2 are their own
    # pairs. Weighting by multiplicity makes the band means those of the full spectrum.
    weight = torch.full((side, side // 2 + 1), 2.0, dtype=torch.float64, device=maps.device)
    weight[:, 0] = 1.0
    if side % 2 == 0:
        weight[:, -1] = 1.0
    weight = weight.flatten()
    power = spectrum.abs().square().flatten(-2) * weight
    total = torch.zeros(*power.shape[:-1], bands, dtype=torch.float64, device=maps.device)
    total.index_add_(-1, band, power)
    count = torch.zeros(bands, dtype=torch.float64, device=maps.device).index_add_(0, band, weight)
    factor = (count / total.clamp_min(1e-30)).sqrt()[..., band].view(*spectrum.shape)
    return torch.fft.irfft2(spectrum * factor, s=(side, side), norm="ortho").to(maps.dtype)


class WhiteSpectrumOptimizer(SphericalOptimizer):
    """:class:`SphericalOptimizer` whose noise-map parameters are also kept white, band by band.

    After the wrapped optimizer's step and the sphere projection, every map parameter is passed through
    :func:`project_white_bands` (then put back on its sphere): its power in each radial frequency band is
    that of white noise, so the search can move where structure is but not make the map correlated, the
    way an unconstrained search on a one-step noise-to-image model does (``experiments/beyond_faces``).

    Map parameters: ``[B, C, r, r]`` with ``r >= 8``, and ``[B, 1, side * side]`` when ``flat_side`` is given
    (a latent that the generator reshapes to a ``side x side`` map, like ``generator=terrain``'s). Other
    parameters (StyleGAN's ``[B, L, 512]`` rows) get the sphere projection only.

    Args:
        optimizer_cls: e.g. ``torch.optim.Adam``.
        params: as for :class:`SphericalOptimizer`.
        bands: radial bands whose power is fixed (1 would be the sphere alone).
        flat_side: side of the map a flat ``[B, 1, side * side]`` latent stands for.
        **kwargs: passed to ``optimizer_cls``.
    """

    def __init__(
        self,
        optimizer_cls: Callable[..., torch.optim.Optimizer],
        params: Iterable[Any],
        bands: int = 16,
        flat_side: int | None = None,
        **kwargs: Any,
    ) -> None:
        if bands < 1:
            raise ValueError(f"bands must be at least 1, got {bands}")
        super().__init__(optimizer_cls, params, **kwargs)
        self.bands = bands
        self.flat_side = flat_side

    def _map_shape(self, param: torch.Tensor) -> tuple[int, ...] | None:
        if param.ndim == 4 and param.shape[-1] == param.shape[-2] >= 8:
            return tuple(param.shape)
        if self.flat_side is not None and param.ndim == 3 and param.shape[-1] == self.flat_side**2:
            return (*param.shape[:-1], self.flat_side, self.flat_side)
        return None

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        loss = super().step(closure)
        for param, radius in zip(self._flat_params(), self.radii, strict=True):
            shape = self._map_shape(param)
            if shape is None:
                continue
            whitened = project_white_bands(param.reshape(shape), self.bands).reshape(param.shape)
            param.copy_(whitened * (radius / sphere_norm(whitened)))
        return loss


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
