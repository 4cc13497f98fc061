"""Shared test builders (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import torch

from pulse.solvers.pulse import SearchResult


def fake_result(hr: torch.Tensor, inputs: list[int], duplicates: list[int], factor: int = 4) -> SearchResult:
    """A finished search whose samples are ``hr`` ``[S, 3, R, R]``: all at eps, LR by plain decimation."""
    samples = len(hr)
    return SearchResult(
        hr=hr,
        lr=hr[:, :, ::factor, ::factor],
        downscale_error=torch.zeros(samples),
        success=torch.ones(samples, dtype=torch.bool),
        best_step=torch.zeros(samples, dtype=torch.long),
        first_step_at_eps=torch.zeros(samples, dtype=torch.long),
        best_loss=torch.zeros(samples),
        terms={},
        status=["ok"] * samples,
        input_index=torch.tensor(inputs),
        duplicate_index=torch.tensor(duplicates),
        seeds=list(range(samples)),
        seconds=1.0,
    )
