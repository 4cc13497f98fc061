"""pulse: photo upsampling via latent space exploration (PULSE, Menon et al. 2020) and its successors.

The common entry points are importable from the package itself, e.g.
``from pulse import PulseSolver, PulseLoss, DCGANGenerator``; they load on first use, so
``import pulse`` stays cheap. Hydra lives in ``run.py`` and ``configs/`` only.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "PulseSolver": "pulse.solvers.pulse",
    "SearchSettings": "pulse.solvers.pulse",
    "SearchResult": "pulse.solvers.pulse",
    "super_resolve": "pulse.solvers.pulse",
    "ILOSolver": "pulse.solvers.ilo",
    "ILOSettings": "pulse.solvers.ilo",
    "LangevinSolver": "pulse.solvers.langevin",
    "LangevinSettings": "pulse.solvers.langevin",
    "PosteriorSamples": "pulse.solvers.langevin",
    "PulseLoss": "pulse.losses",
    "SphericalOptimizer": "pulse.optim",
    "WhiteSpectrumOptimizer": "pulse.optim",
    "BicubicDownscale": "pulse.downscale",
    "AreaDownscale": "pulse.downscale",
    "make_operator": "pulse.degradations",
    "GeneratedFaces": "pulse.data",
    "ImageFolder": "pulse.data",
    "Problem": "pulse.data",
    "load_image": "pulse.data",
    "save_image": "pulse.data",
    "DCGANGenerator": "pulse.generators.dcgan",
    "StyleGANGenerator": "pulse.generators.stylegan",
    "StyleGAN2Generator": "pulse.generators.stylegan2",
    "niqe": "pulse.metrics.niqe",
    "lpips_distance": "pulse.metrics.lpips",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pulse' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
