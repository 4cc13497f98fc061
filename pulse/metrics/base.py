"""How metrics plug into a run: batched, per sample, with a reason for every value they cannot give.

A run metric looks at one solved batch and returns one value per sample for each of its columns;
``NaN`` means "does not apply" (e.g. no ground truth, image too small for NIQE) and is written as an
empty cell and ``null``, never as a number. The reason goes into :attr:`MetricValues.notes`, which
the run prints once and stores in ``summary.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from pulse.data import Problem


class SolvedBatch(Protocol):
    """What a run metric reads of a solved batch; :class:`pulse.solvers.pulse.SearchResult` is one.

    A protocol rather than the solver's class, so metrics compute numbers from tensors alone and do not
    depend on the solver (a test's stand-in or another solver's result works the same).

    Attributes:
        hr: ``[S, 3, R, R]`` each sample's output in [0, 1].
        input_index: ``[S]`` the problem each sample solves.
        seeds: one per sample (its length is the number of samples).
    """

    hr: torch.Tensor
    input_index: torch.Tensor
    seeds: list[int]


@dataclass
class MetricValues:
    """Per-sample columns ``{name: [S]}`` (NaN where not applicable) and ``{name: reason}`` notes."""

    values: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class RunMetric(Protocol):
    """Computes metric columns for the samples of one solved batch."""

    def __call__(self, result: SolvedBatch, problems: Sequence[Problem]) -> MetricValues: ...


def ground_truth(result: SolvedBatch, problems: Sequence[Problem]) -> tuple[torch.Tensor, torch.Tensor]:
    """``([S, 3, H, W], [S] bool)``: each sample's ground truth (zeros where unknown) and whether it is known."""
    hr = torch.zeros_like(result.hr)
    known = torch.zeros(len(result.seeds), dtype=torch.bool)
    for s, index in enumerate(result.input_index.tolist()):
        truth = problems[index].hr
        if truth is not None and truth.shape == result.hr.shape[1:]:
            hr[s] = truth
            known[s] = True
    return hr, known


def nan_where(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``values`` with NaN wherever ``keep`` is False (float64, on the CPU)."""
    values = values.detach().double().cpu()
    return torch.where(keep, values, torch.full_like(values, math.nan))
