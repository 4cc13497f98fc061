"""Metrics of a PULSE run: agreement with the input, with the ground truth, realism and diversity.

Each run metric (see :mod:`pulse.metrics.base`) adds per-sample columns to ``results.csv``; a metric
that cannot be computed records ``null`` and says why in one line.
"""

from __future__ import annotations

from pulse.metrics.base import MetricValues, RunMetric
from pulse.metrics.diversity import Diversity, mean_pairwise, pixel_mse
from pulse.metrics.fidelity import GroundTruthFidelity, downscale_error, psnr, ssim
from pulse.metrics.lpips import LPIPSMetric, LPIPSUnavailable, load_lpips, lpips_available, lpips_distance
from pulse.metrics.niqe import NIQE, NIQEMetric, NIQEScore, niqe, niqe_scores

__all__ = [
    "Diversity",
    "GroundTruthFidelity",
    "LPIPSMetric",
    "LPIPSUnavailable",
    "MetricValues",
    "NIQE",
    "NIQEMetric",
    "NIQEScore",
    "RunMetric",
    "default_metrics",
    "load_lpips",
    "lpips_available",
    "lpips_distance",
    "downscale_error",
    "mean_pairwise",
    "niqe",
    "niqe_scores",
    "pixel_mse",
    "psnr",
    "ssim",
]


def default_metrics(lpips_net: str | None = "alex") -> list[RunMetric]:
    """The metrics a run reports unless configured otherwise."""
    return [GroundTruthFidelity(lpips_net), Diversity(lpips_net), NIQEMetric()]
