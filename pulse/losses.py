"""PULSE loss terms as per-sample functions, and their weighted composition.

Every term returns one value per sample, ``[batch]``; summing over the batch gives the official
PULSE value, so a batch of independent searches is one optimisation with no cross-talk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def l2(lr_gen: torch.Tensor, lr_ref: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Mean squared error per sample, clamped below at ``eps``: ``[B, C, h, w] x2 -> [B]``.

    The clamp makes the term flat once a sample downscales to within ``eps`` of its input, leaving the
    regulariser to act alone from then on.
    """
    return (lr_gen - lr_ref).pow(2).mean(dim=(1, 2, 3)).clamp(min=eps)


def l1(lr_gen: torch.Tensor, lr_ref: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Mean absolute error per sample, clamped below at ``eps`` then scaled by 10 (the official factor): ``[B]``."""
    return 10.0 * (lr_gen - lr_ref).abs().mean(dim=(1, 2, 3)).clamp(min=eps)


def geocross(latent: torch.Tensor) -> torch.Tensor:
    """GEOCROSS: mean squared pairwise geodesic angle between the style vectors of each sample.

    Args:
        latent: ``[B, L, D]`` style vectors (one per synthesis layer).

    Returns:
        ``[B]``: ``D / 8 * mean_{i,j} angle(latent_i, latent_j)^2``, with the angle computed stably as
        ``2 * atan2(|x - y|, |x + y|)``; zero when there is a single vector (``L == 1``).
    """
    batch, layers, dim = latent.shape
    if layers == 1:
        return latent.new_zeros(batch)
    x = latent.unsqueeze(1)  # [B, 1, L, D]
    y = latent.unsqueeze(2)  # [B, L, 1, D]
    # The 1e-9 keeps the square root differentiable on the diagonal, where x == y.
    chord_minus = ((x - y).pow(2).sum(-1) + 1e-9).sqrt()
    chord_plus = ((x + y).pow(2).sum(-1) + 1e-9).sqrt()
    angle = 2.0 * torch.atan2(chord_minus, chord_plus)  # [B, L, L]
    return (angle.pow(2) * dim).mean(dim=(1, 2)) / 8.0


@dataclass
class LossInputs:
    """Everything a loss term may look at for one optimisation step.

    Attributes:
        lr_gen: ``[B, 3, h, w]`` downscaled generated images in [0, 1].
        lr_ref: ``[B, 3, h, w]`` the low-resolution inputs in [0, 1].
        style: ``[B, L, D]`` style vectors fed to the generator.
        hr_gen: ``[B, 3, H, W]`` generated images in [0, 1].
        eps: the downscale-error target.
        groups: ``[B]`` which input each sample searches for (duplicates share a value); ``None``
            when every sample has its own input.
    """

    lr_gen: torch.Tensor
    lr_ref: torch.Tensor
    style: torch.Tensor
    hr_gen: torch.Tensor
    eps: float
    groups: torch.Tensor | None = None


def duplicate_diversity(hr_gen: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    """Minus the mean squared distance of each sample to the other samples of its input, ``[B]``.

    Minimising it pushes the duplicates of one input apart (an identity-agnostic diversity term);
    samples alone in their group get 0.
    """
    if groups is None:
        return hr_gen.new_zeros(hr_gen.shape[0])
    flat = hr_gen.flatten(1)
    distances = torch.cdist(flat, flat).pow(2) / flat.shape[1]  # [B, B] mean squared pixel distance
    same = (groups[:, None] == groups[None, :]) & ~torch.eye(len(groups), dtype=torch.bool, device=groups.device)
    count = same.sum(1).clamp(min=1)
    return -(distances * same).sum(1) / count


LossTerm = Callable[[LossInputs], torch.Tensor]


LOSS_TERMS: dict[str, LossTerm] = {
    "l2": lambda x: l2(x.lr_gen, x.lr_ref, x.eps),
    "l1": lambda x: l1(x.lr_gen, x.lr_ref, x.eps),
    "geocross": lambda x: geocross(x.style),
    "diversity": lambda x: duplicate_diversity(x.hr_gen, x.groups),
}

# Terms built on perceptual measures (the LPIPS network, NIQE's model) live in a module above this one, so that
# losses depend on no metric. That module registers them when it is imported, explicitly: configs build such a
# loss with ``pulse.perceptual_terms.perceptual_loss``. Only their names are known here, for error messages.
PERCEPTUAL_TERMS = ("lpips_lr", "niqe")
PERCEPTUAL_MODULE = "pulse.perceptual_terms"

# Checks run when a loss with the term is built (weights on disk, ...), so a run fails before it starts.
_PREREQUISITES: dict[str, Callable[[], None]] = {}


def register_loss_term(name: str, term: LossTerm, prerequisite: Callable[[], None] | None = None) -> None:
    """Make ``term`` selectable by ``name`` in :class:`PulseLoss` (and in ``loss.terms`` of a config).

    ``prerequisite`` is called when a loss using the term is built; it raises if the term cannot work.
    """
    LOSS_TERMS[name.lower()] = term
    if prerequisite is not None:
        _PREREQUISITES[name.lower()] = prerequisite


def _unknown_terms_message(unknown: list[str]) -> str:
    """One line: the unknown names, the valid ones, and where the unregistered perceptual terms come from."""
    elsewhere = [name for name in PERCEPTUAL_TERMS if name not in LOSS_TERMS]
    message = f"unknown loss term(s) {unknown}; valid terms: {sorted(LOSS_TERMS)}"
    if elsewhere:
        message += (
            f" and, once {PERCEPTUAL_MODULE} is imported, {elsewhere} (build such a loss with "
            f"{PERCEPTUAL_MODULE}.perceptual_loss, as configs/loss/l2+geocross+lpips.yaml does)"
        )
    return message


def _term_weight(name: str, spec: float | Mapping[str, Any]) -> float:
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"weight"}
        if unknown:
            raise ValueError(f"loss term {name!r}: unknown option(s) {sorted(unknown)}; valid: ['weight']")
        spec = spec.get("weight", 1.0)
    return float(spec)


class PulseLoss(nn.Module):
    """A weighted sum of named loss terms, evaluated per sample.

    Args:
        terms: ``{name: weight}`` or ``{name: {"weight": w}}``. A weight of 0 means the term is
            computed and reported but not optimised.
        eps: the downscale-error target; L2/L1 are clamped below at it.
    """

    def __init__(self, terms: Mapping[str, float | Mapping[str, Any]], eps: float = 2e-3) -> None:
        super().__init__()
        if not terms:
            raise ValueError(f"the loss has no terms; choose from {sorted(LOSS_TERMS)}")
        unknown = [name for name in terms if name.lower() not in LOSS_TERMS]
        if unknown:
            raise ValueError(_unknown_terms_message(unknown))
        self.weights = {name.lower(): _term_weight(name, spec) for name, spec in terms.items()}
        self.eps = float(eps)
        for name in self.weights:
            if name in _PREREQUISITES:
                _PREREQUISITES[name]()

    @classmethod
    def from_string(cls, spec: str, eps: float = 2e-3) -> PulseLoss:
        """Parse the official PULSE loss string, e.g. ``"100*L2+0.05*GEOCROSS"``."""
        terms: dict[str, float] = {}
        for part in spec.replace(" ", "").split("+"):
            weight, sep, name = part.partition("*")
            if not sep:
                weight, name = "1", part
            terms[name.lower()] = float(weight)
        return cls(terms, eps)

    def forward(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns the per-sample total ``[B]`` and each term's per-sample values ``{name: [B]}``."""
        values = {name: LOSS_TERMS[name](inputs) for name in self.weights}
        total = sum(weight * values[name] for name, weight in self.weights.items() if weight != 0)
        if not torch.is_tensor(total):  # every weight was zero
            total = inputs.lr_gen.new_zeros(inputs.lr_gen.shape[0])
        return total, values

    def extra_repr(self) -> str:
        return " + ".join(f"{w:g}*{n}" for n, w in self.weights.items()) + f", eps={self.eps:g}"
