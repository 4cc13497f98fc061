"""Metrics of a PULSE run: agreement with the input, with the ground truth, realism, diversity, identity, skin tone.

Each run metric (see :mod:`pulse.metrics.base`) adds per-sample columns to ``results.csv``; a metric
that cannot be computed records ``null`` and says why in one line.
"""

from __future__ import annotations

from pulse.metrics.base import MetricValues, RunMetric
from pulse.metrics.diversity import Diversity, mean_pairwise, pixel_mse
from pulse.metrics.face_metrics import FaceMetrics
from pulse.metrics.faces import (
    FaceLandmarks,
    FacesUnavailable,
    count_identities,
    face_descriptors,
    face_landmarks,
    faces_available,
    identity_distance,
)
from pulse.metrics.fidelity import GroundTruthFidelity, downscale_error, psnr, ssim
from pulse.metrics.lpips import LPIPSMetric, LPIPSUnavailable, load_lpips, lpips_available, lpips_distance
from pulse.metrics.mcmc import effective_sample_size, split_rhat
from pulse.metrics.niqe import NIQE, NIQEMetric, NIQEScore, niqe, niqe_scores
from pulse.metrics.posterior import PosteriorSummary, SamplerDiagnostics, coverage, nominal_coverage
from pulse.metrics.skin import ITA_GROUPS, ita, ita_group, skin_mask, srgb_to_lab

__all__ = [
    "Diversity",
    "FaceLandmarks",
    "FaceMetrics",
    "FacesUnavailable",
    "ITA_GROUPS",
    "GroundTruthFidelity",
    "LPIPSMetric",
    "LPIPSUnavailable",
    "MetricValues",
    "NIQE",
    "NIQEMetric",
    "NIQEScore",
    "PosteriorSummary",
    "SamplerDiagnostics",
    "RunMetric",
    "count_identities",
    "coverage",
    "default_metrics",
    "face_descriptors",
    "face_landmarks",
    "faces_available",
    "identity_distance",
    "ita",
    "ita_group",
    "load_lpips",
    "lpips_available",
    "lpips_distance",
    "downscale_error",
    "effective_sample_size",
    "mean_pairwise",
    "niqe",
    "niqe_scores",
    "nominal_coverage",
    "pixel_mse",
    "psnr",
    "skin_mask",
    "split_rhat",
    "srgb_to_lab",
    "ssim",
]


def default_metrics(lpips_net: str | None = "alex", domain: str = "faces") -> list[RunMetric]:
    """The metrics a run reports unless configured otherwise; face metrics are null unless ``domain`` is faces."""
    return [
        GroundTruthFidelity(lpips_net),
        Diversity(lpips_net),
        NIQEMetric(),
        FaceMetrics(domain=domain),
        PosteriorSummary(lpips_net),
        SamplerDiagnostics(),
    ]
