"""Metrics of a PULSE run: agreement with the input, with the ground truth, realism and diversity.

Each run metric (see :mod:`pulse.metrics.base`) adds per-sample columns to ``results.csv``; a metric
that cannot be computed records ``null`` and says why in one line.
"""

from __future__ import annotations

from pulse.metrics.base import MetricValues, RunMetric
from pulse.metrics.diversity import Diversity, mean_pairwise, pixel_mse
from pulse.metrics.fidelity import GroundTruthFidelity, downscale_error, psnr, ssim

__all__ = [
    "Diversity",
    "GroundTruthFidelity",
    "MetricValues",
    "RunMetric",
    "default_metrics",
    "downscale_error",
    "mean_pairwise",
    "pixel_mse",
    "psnr",
    "ssim",
]


def default_metrics() -> list[RunMetric]:
    """The metrics a run reports unless configured otherwise."""
    return [GroundTruthFidelity(), Diversity()]
