"""Diversity among the duplicates (independent searches) of one input."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch

from pulse.data import Problem
from pulse.metrics.base import MetricValues, SolvedBatch
from pulse.metrics.lpips import lpips_available, lpips_distance

PairDistance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mean_pairwise(images: torch.Tensor, distance: PairDistance) -> float:
    """Mean of ``distance(a, b)`` over unordered pairs of ``[K, 3, H, W]`` images (``K >= 2``)."""
    first, second = torch.triu_indices(len(images), len(images), offset=1)
    return distance(images[first], images[second]).double().mean().item()


def pixel_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pair MSE of ``[P, 3, H, W]`` image pairs, ``[P]``."""
    return (a - b).pow(2).flatten(1).mean(1)


class Diversity:
    """``diversity_l2`` and ``diversity_lpips`` among each input's duplicates (mean over pairs).

    Every sample of an input carries its input's value. With one duplicate there is nothing to
    compare, and the note says how to get the metric.

    Args:
        lpips_net: ``alex`` or ``vgg`` for ``diversity_lpips``; ``None`` leaves it out. Without the
            backbone weights the column is null and the note says how to fetch them.
    """

    def __init__(self, lpips_net: str | None = "alex", device: torch.device | str | None = None) -> None:
        self.lpips_net = lpips_net
        self.device = torch.device(device or "cpu")  # where the distances run; the runner sets the search's device

    def __call__(self, result: SolvedBatch, problems: Sequence[Problem]) -> MetricValues:
        columns: dict[str, PairDistance] = {"diversity_l2": pixel_mse}
        notes: dict[str, str] = {}
        if self.lpips_net is not None:
            if lpips_available(self.lpips_net):
                columns["diversity_lpips"] = partial(lpips_distance, net=self.lpips_net)
            else:
                notes["diversity_lpips"] = (
                    f"{self.lpips_net} backbone weights missing; run `python scripts/fetch_weights.py lpips`"
                )
        if int(result.duplicate_index.max()) < 1:
            reason = "needs several searches per input (solver.duplicates >= 2)"
            return MetricValues(notes={**{name: reason for name in columns}, **notes})
        values = {name: torch.empty(len(result.seeds), dtype=torch.float64) for name in columns}
        for index in result.input_index.unique().tolist():
            members = result.input_index == index
            for name, distance in columns.items():
                with torch.no_grad():
                    values[name][members] = mean_pairwise(result.hr[members].to(self.device), distance)
        return MetricValues(values=values, notes=notes)
