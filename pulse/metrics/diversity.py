"""Diversity among the duplicates (independent searches) of one input."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pulse.data import Problem
from pulse.metrics.base import MetricValues
from pulse.solver import SearchResult

PairDistance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mean_pairwise(images: torch.Tensor, distance: PairDistance) -> float:
    """Mean of ``distance(a, b)`` over unordered pairs of ``[K, 3, H, W]`` images (``K >= 2``)."""
    first, second = torch.triu_indices(len(images), len(images), offset=1)
    return distance(images[first], images[second]).double().mean().item()


def pixel_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pair MSE of ``[P, 3, H, W]`` image pairs, ``[P]``."""
    return (a - b).pow(2).flatten(1).mean(1)


class Diversity:
    """``diversity_l2`` (and ``diversity_lpips`` when given an LPIPS distance) among each input's duplicates.

    Every sample of an input carries its input's value. With one duplicate there is nothing to
    compare, and the note says how to get the metric.

    Args:
        lpips: optional ``(a, b) -> [P]`` perceptual distance; None leaves ``diversity_lpips`` out.
        lpips_note: the reason written when ``lpips`` is None but was wanted.
    """

    def __init__(self, lpips: PairDistance | None = None, lpips_note: str | None = None) -> None:
        self.lpips = lpips
        self.lpips_note = lpips_note

    def __call__(self, result: SearchResult, problems: Sequence[Problem]) -> MetricValues:
        columns = {"diversity_l2": pixel_mse}
        if self.lpips is not None:
            columns["diversity_lpips"] = self.lpips
        notes = {"diversity_lpips": self.lpips_note} if self.lpips is None and self.lpips_note else {}
        if int(result.duplicate_index.max()) < 1:
            reason = "needs several searches per input (solver.duplicates >= 2)"
            return MetricValues(notes={**{name: reason for name in columns}, **notes})
        values = {name: torch.empty(len(result.seeds), dtype=torch.float64) for name in columns}
        for index in result.input_index.unique().tolist():
            members = result.input_index == index
            for name, distance in columns.items():
                values[name][members] = mean_pairwise(result.hr[members], distance)
        return MetricValues(values=values, notes=notes)
