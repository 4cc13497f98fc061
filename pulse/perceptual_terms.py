"""Loss terms built on perceptual measures: LPIPS between the LR images, NIQE of the outputs.

They sit above both :mod:`pulse.losses` and the measures in :mod:`pulse.metrics`, so the primitive loss
module depends on no metric and never imports this one. Registration is explicit: importing this module
calls :func:`register_perceptual_terms` (:func:`pulse.losses.register_loss_term` for each term), and
:func:`perceptual_loss` builds a :class:`pulse.losses.PulseLoss` that may use them (the ``_target_`` of
``configs/loss/l2+geocross+lpips.yaml`` and ``l2+geocross+niqe.yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from pulse.losses import PulseLoss, register_loss_term
from pulse.metrics.lpips import load_lpips, lpips_distance
from pulse.metrics.niqe import niqe_loss


def lpips_lr(lr_gen: torch.Tensor, lr_ref: torch.Tensor, net: str = "alex", size: int = 64) -> torch.Tensor:
    """LPIPS between the downscaled output and the input, ``[B]``.

    Both are nearest-upsampled to ``size`` px first (the same operator on both, so a perfect match
    still gives 0): LPIPS backbones need at least ~32 px and LR inputs are often 8-16 px.
    """
    if lr_gen.shape[-1] < size:
        lr_gen = F.interpolate(lr_gen, size=(size, size), mode="nearest")
        lr_ref = F.interpolate(lr_ref, size=(size, size), mode="nearest")
    return lpips_distance(lr_gen, lr_ref, net)


def niqe_hr(hr_gen: torch.Tensor) -> torch.Tensor:
    """Differentiable NIQE (gray, no 8-bit rounding) of the generated images ``[B, 3, H, W]`` -> ``[B]``.

    Needs outputs of at least 192 px (two 96-px blocks per side); see :func:`pulse.metrics.niqe.niqe_loss`.
    """
    return niqe_loss(hr_gen)


def register_perceptual_terms() -> None:
    """Make ``lpips_lr`` and ``niqe`` selectable in :class:`~pulse.losses.PulseLoss` (idempotent)."""
    # The LPIPS weights are checked when a loss with lpips_lr is built, so a run fails before it starts.
    register_loss_term("lpips_lr", lambda x: lpips_lr(x.lr_gen, x.lr_ref), prerequisite=lambda: load_lpips("alex"))
    register_loss_term("niqe", lambda x: niqe_hr(x.hr_gen))


def perceptual_loss(terms: Mapping[str, float | Mapping[str, Any]], eps: float = 2e-3) -> PulseLoss:
    """:class:`~pulse.losses.PulseLoss` with the perceptual terms registered (same arguments)."""
    register_perceptual_terms()
    return PulseLoss(terms, eps)


register_perceptual_terms()
