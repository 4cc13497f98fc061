"""Agreement with the input (downscale error) and with the ground truth (PSNR, SSIM)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from pulse.data import Problem
from pulse.metrics.base import MetricValues, SolvedBatch, ground_truth, nan_where
from pulse.metrics.lpips import LPIPSUnavailable, lpips_distance


def downscale_error(sr_lr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """The paper's criterion: per-sample MSE between the downscaled output and the input, ``[B]``."""
    return (sr_lr - lr).pow(2).flatten(1).mean(1)


def psnr(prediction: torch.Tensor, target: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Per-sample PSNR in dB of ``[B, C, H, W]`` images on ``[0, peak]``; ``inf`` for identical images."""
    mse = (prediction.double() - target.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(peak**2 / mse)


def ssim(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample SSIM (Gaussian window 11, sigma 1.5; torchmetrics) of ``[B, 3, H, W]`` images in [0, 1]."""
    return structural_similarity_index_measure(
        prediction.float(), target.float(), data_range=1.0, reduction="none"
    ).reshape(-1)


class GroundTruthFidelity:
    """``psnr_hr``, ``ssim_hr`` and ``lpips_hr`` of each sample against its input's ground truth, when known.

    Args:
        lpips_net: ``alex`` or ``vgg`` for ``lpips_hr``; ``None`` leaves it out. Without the backbone
            weights the column is null and the note says how to fetch them.
    """

    def __init__(self, lpips_net: str | None = "alex", device: torch.device | str | None = None) -> None:
        self.lpips_net = lpips_net
        self.device = torch.device(device or "cpu")  # where LPIPS runs; the runner sets the search's device

    def __call__(self, result: SolvedBatch, problems: Sequence[Problem]) -> MetricValues:
        hr, known = ground_truth(result, problems)
        names = ["psnr_hr", "ssim_hr"] + (["lpips_hr"] if self.lpips_net else [])
        if not known.any():
            reason = "no ground truth for these inputs (data=folder without data.factor)"
            return MetricValues(notes=dict.fromkeys(names, reason))
        out = MetricValues(
            values={
                "psnr_hr": nan_where(psnr(result.hr, hr), known),
                "ssim_hr": nan_where(ssim(result.hr, hr), known),
            }
        )
        if self.lpips_net:
            try:
                with torch.no_grad():
                    distance = lpips_distance(result.hr.to(self.device), hr.to(self.device), self.lpips_net)
                    out.values["lpips_hr"] = nan_where(distance, known)
            except (LPIPSUnavailable, ValueError) as error:
                out.notes["lpips_hr"] = str(error).removeprefix("LPIPS unavailable: ")
        return out
