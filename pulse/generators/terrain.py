"""``generator=terrain``: a one-step consistency UNet for 128x128 terrain heightmaps, as a pulse generator.

The network is the ONNX model of the MIT-licensed PyPI package ``adaptive-terrain-diffusion==0.4.2``
(fetched as data by ``pulse-fetch terrain``, :mod:`pulse.io.terrain`), run by :class:`OnnxGraph`; the
package's code is never imported. It denoises in one step: ``denoised = f(noisy, sigma, difficulty)``
with ``noisy = noise * sigma``, ``sigma = 80`` (the package's ``sigma_max``) and ``difficulty`` 1..100
(how rugged the terrain is, a class label of its training data).

As a PULSE generator:

- the latent is the noise map itself, ``[B, 1, 128 * 128]`` (one row, so the spherical search keeps its
  norm at ``sqrt(16384) = 128``, where Gaussian noise of that size lives);
- the output is one channel, ``output_range (-1, 1)``, mapped to [0, 1] as ``(x + 1) / 2`` (the network
  clips it to [-1, 1] itself); that unit value is *asinh-compressed height*:
  ``metres = 0.1 * sinh(unit * asinh(HEIGHT_RANGE / 0.1))`` with ``HEIGHT_RANGE = 22.17`` m
  (:func:`unit_to_metres`, :func:`metres_to_unit`), so unit 0.5 is about 1.05 m and 1 is 22.17 m;
- ``domain = "terrain"``: face metrics are null;
- two blocks for ILO: block 0 makes ``noisy`` from the latent, block 1 is the UNet, so ``solver=ilo``
  with ``ilo.blocks=[1]`` optimises the noisy input map off the sphere, inside an l1 ball.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from pulse.generators.base import freeze
from pulse.generators.onnx_graph import OnnxGraph, load_onnx_model

__all__ = ["HEIGHT_RANGE", "TerrainGenerator", "metres_to_unit", "unit_to_metres"]

HEIGHT_RANGE = 22.16864013671875  # metres, the package's height_range
ASINH_SCALE = 0.1  # metres, the package's asinh_scale
SIGMA_MAX = 80.0
SIDE = 128
_NORMALISER = math.asinh(HEIGHT_RANGE / ASINH_SCALE)


def unit_to_metres(unit: torch.Tensor) -> torch.Tensor:
    """Unit images in [0, 1] (pulse's image scale) -> height in metres on ``[0, HEIGHT_RANGE]``."""
    return ASINH_SCALE * torch.sinh(unit.clamp(0, 1) * _NORMALISER)


def metres_to_unit(metres: torch.Tensor) -> torch.Tensor:
    """Height in metres (clipped to ``[0, HEIGHT_RANGE]``) -> the model's asinh-compressed unit scale [0, 1]."""
    return torch.asinh(metres.clamp(0, HEIGHT_RANGE) / ASINH_SCALE) / _NORMALISER


class TerrainGenerator(nn.Module):
    """The terrain consistency UNet, searched through its input noise map.

    Args:
        path: the ONNX file; default the one ``pulse-fetch terrain`` put in ``$PULSE_CACHE/terrain``.
        difficulty: the terrain class label, 1 (gentle) .. 100 (rugged), the same for every sample.
        sigma: noise level fed to the one-step model (the package samples at ``sigma_max = 80``).

    Raises:
        pulse.io.terrain.TerrainUnavailable: no fetched weights (one line naming ``pulse-fetch terrain``).
    """

    num_latents = 1
    latent_dim = SIDE * SIDE
    noise_shapes: list[tuple[int, ...]] = []
    resolution = SIDE
    channels = 1
    output_range = (-1.0, 1.0)
    domain = "terrain"
    num_blocks = 2

    def __init__(self, path: str | os.PathLike[str] | None = None, difficulty: float = 100.0, sigma: float = 80.0):
        super().__init__()
        from pulse.io.terrain import terrain_weights_path

        if not 1 <= difficulty <= 100:
            raise ValueError(f"terrain difficulty must be in 1..100, got {difficulty}")
        if not 0 < sigma <= SIGMA_MAX:
            raise ValueError(f"terrain sigma must be in (0, {SIGMA_MAX:g}], got {sigma}")
        self.network = freeze(OnnxGraph(load_onnx_model(terrain_weights_path(path))))
        if self.network.input_names != ["noisy", "sigma", "difficulty"]:
            raise ValueError(f"unexpected terrain model inputs {self.network.input_names}")
        self.difficulty = float(difficulty)
        self.sigma = float(sigma)

    def to_style(self, latent: torch.Tensor) -> torch.Tensor:
        """Identity: the search variable ``[B, 1, 16384]`` is the noise map."""
        return latent

    def block_rows(self, block: int) -> slice:
        return slice(0, 1)

    def forward_blocks(
        self, features: torch.Tensor | None, style: torch.Tensor, noise: list[torch.Tensor], start: int, stop: int
    ) -> torch.Tensor:
        """Block 0: latent ``[B, 1, 16384]`` -> noisy map ``[B, 1, 128, 128]`` (times sigma); block 1: the UNet."""
        x = features
        for block in range(start, stop):
            if block == 0:
                x = style.reshape(-1, 1, SIDE, SIDE) * self.sigma
            else:
                assert x is not None
                batch = x.shape[0]
                sigma = torch.full((batch,), self.sigma, dtype=x.dtype, device=x.device)
                difficulty = torch.full((batch,), self.difficulty, dtype=x.dtype, device=x.device)
                (x,) = self.network(x, sigma, difficulty)
        assert x is not None
        return x

    def features_to_image(self, features: torch.Tensor) -> torch.Tensor:
        """Identity: the UNet's output ``[B, 1, 128, 128]`` is the image, in [-1, 1]."""
        return features

    def synthesize(self, style: torch.Tensor, noise: list[torch.Tensor]) -> torch.Tensor:
        """``[B, 1, 16384] -> [B, 1, 128, 128]`` asinh-compressed height in [-1, 1]."""
        return self.forward_blocks(None, style, noise, 0, self.num_blocks)

    def extra_repr(self) -> str:
        return f"difficulty={self.difficulty:g}, sigma={self.sigma:g}"
