"""Uncertainty among an input's samples: posterior mean and std, calibration (coverage), chain diagnostics.

These apply to any solver that gives several samples per input (``solver=langevin solver.samples=K``, or
PULSE restarts with ``solver.duplicates=K``, which are not posterior draws: their coverage shows it).

Coverage: per pixel and channel, the interval between the ``i``-th smallest and ``i``-th largest of the
``K`` samples, ``i = max(1, round(0.05 (K + 1)))``. For a calibrated sampler (ground truth and samples
exchangeable draws of one distribution) the truth falls inside with probability exactly
``(K + 1 - 2 i) / (K + 1)``: ``coverage_nominal``, 0.9 for ``K = 19, 39, ...`` and 0.78 for ``K = 8``.
``coverage_90`` is the observed share; calibrated means ``coverage_90`` ≈ ``coverage_nominal``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pulse.data import Problem
from pulse.metrics.base import MetricValues, SolvedBatch, ground_truth
from pulse.metrics.fidelity import psnr, ssim
from pulse.metrics.lpips import LPIPSUnavailable, lpips_distance
from pulse.metrics.mcmc import effective_sample_size, split_rhat

FEW_SAMPLES = "needs several samples per input (solver.samples or solver.duplicates >= 2)"


def interval_rank(samples: int, level: float = 0.9) -> int:
    """The order statistic ``i`` (1-based) whose ``[x_(i), x_(K+1-i)]`` is the central ``level`` interval."""
    return max(1, round((1 - level) / 2 * (samples + 1)))


def nominal_coverage(samples: int, level: float = 0.9) -> float:
    """Probability that an exchangeable truth falls in :func:`interval_rank`'s interval of ``samples`` draws."""
    i = interval_rank(samples, level)
    return max(samples + 1 - 2 * i, 0) / (samples + 1)


def coverage(samples: torch.Tensor, truth: torch.Tensor, level: float = 0.9) -> float:
    """Share of ``truth`` ``[C, H, W]`` values inside the samples' (``[K, C, H, W]``, ``K >= 2``) central interval."""
    if len(samples) < 2:
        raise ValueError(f"coverage needs at least 2 samples, got {len(samples)}")
    ordered, _ = samples.double().sort(dim=0)
    i = interval_rank(len(samples), level)
    low, high = ordered[i - 1], ordered[len(samples) - i]
    truth = truth.double()
    return float(((truth >= low) & (truth <= high)).double().mean())


def posterior_mean_std(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and standard deviation (``K - 1`` denominator) of ``[K, C, H, W]`` samples, ``[C, H, W]`` each."""
    return samples.mean(0), samples.std(0, unbiased=True) if len(samples) > 1 else torch.zeros_like(samples[0])


class PosteriorSummary:
    """Per input: the samples' mean image against the ground truth (``mean_psnr_hr``, ``mean_ssim_hr``,
    ``mean_lpips_hr``), ``coverage_90`` and ``coverage_nominal`` (module docstring), and ``pixel_std`` (the
    mean per-pixel standard deviation). Every sample of an input carries its input's value."""

    def __init__(self, lpips_net: str | None = "alex", device: torch.device | str | None = None) -> None:
        self.lpips_net = lpips_net
        self.device = torch.device(device or "cpu")

    def __call__(self, result: SolvedBatch, problems: Sequence[Problem]) -> MetricValues:
        truth_names = ["mean_psnr_hr", "mean_ssim_hr", "coverage_90"] + (["mean_lpips_hr"] if self.lpips_net else [])
        names = [*truth_names, "coverage_nominal", "pixel_std"]
        count = torch.bincount(result.input_index)
        if int(count.max()) < 2:
            return MetricValues(notes=dict.fromkeys(names, FEW_SAMPLES))
        hr, known = ground_truth(result, problems)
        samples = len(result.seeds)
        values = {name: torch.full((samples,), math.nan, dtype=torch.float64) for name in names}
        notes: dict[str, str] = {}
        if not known.any():
            notes.update(
                dict.fromkeys(truth_names, "no ground truth for these inputs (data=folder without data.factor)")
            )
        for index in result.input_index.unique().tolist():
            members = result.input_index == index
            images = result.hr[members].double()
            if len(images) < 2:
                continue
            mean, std = posterior_mean_std(images)
            values["coverage_nominal"][members] = nominal_coverage(len(images))
            values["pixel_std"][members] = float(std.mean())
            first = int(members.nonzero()[0])
            if not known[first]:
                continue
            truth = hr[first].double()
            values["coverage_90"][members] = coverage(images, truth)
            values["mean_psnr_hr"][members] = float(psnr(mean[None], truth[None]))
            values["mean_ssim_hr"][members] = float(ssim(mean[None].float(), truth[None].float()))
            if self.lpips_net and "mean_lpips_hr" not in notes:
                try:
                    with torch.no_grad():
                        distance = lpips_distance(
                            mean[None].float().to(self.device), truth[None].float().to(self.device), self.lpips_net
                        )
                    values["mean_lpips_hr"][members] = float(distance)
                except (LPIPSUnavailable, ValueError) as error:
                    notes["mean_lpips_hr"] = str(error).removeprefix("LPIPS unavailable: ")
        return MetricValues(values={k: v for k, v in values.items() if k not in notes}, notes=notes)


class SamplerDiagnostics:
    """Per input, from a sampler's chains: ``acceptance`` (MALA's accepted share of post-burn-in proposals),
    ``rhat`` (largest split R-hat over the traced quantities) and ``ess`` (smallest effective sample size).

    Reads the optional ``trace`` ``[T, chains, K]``, ``chain_index`` ``[S]`` and ``acceptance`` ``[S]`` a sampler
    puts on its result (:class:`pulse.solvers.langevin.PosteriorSamples`); other solvers get null and a note.
    """

    def __call__(self, result: SolvedBatch, problems: Sequence[Problem]) -> MetricValues:
        names = ("acceptance", "rhat", "ess")
        trace = getattr(result, "trace", None)
        chain_index = getattr(result, "chain_index", None)
        if trace is None or chain_index is None:
            return MetricValues(notes=dict.fromkeys(names, "only samplers record chains (solver=langevin)"))
        samples = len(result.seeds)
        values: dict[str, torch.Tensor] = {}
        notes: dict[str, str] = {}
        acceptance = getattr(result, "acceptance", None)
        if acceptance is None or torch.isnan(acceptance).all():
            notes["acceptance"] = "unadjusted Langevin accepts every move; solver.mala=true has an acceptance rate"
        else:
            values["acceptance"] = torch.zeros(samples, dtype=torch.float64)
        rhat = torch.full((samples,), math.nan, dtype=torch.float64)
        ess = torch.full((samples,), math.nan, dtype=torch.float64)
        for index in result.input_index.unique().tolist():
            members = result.input_index == index
            chains = chain_index[members].unique()
            if "acceptance" in values:
                # every draw of a chain carries the chain's rate; average over chains, not draws
                values["acceptance"][members] = float(acceptance[members].double().mean())
            if len(chains) < 2 or trace.shape[0] < 4:
                notes.setdefault("rhat", "needs 2+ chains per input and 4+ post-burn-in steps")
                notes.setdefault("ess", "needs 2+ chains per input and 4+ post-burn-in steps")
                continue
            per_quantity = trace[:, chains].double()  # [T, C, K]
            rhats = [split_rhat(per_quantity[..., k]) for k in range(per_quantity.shape[-1])]
            esses = [effective_sample_size(per_quantity[..., k]) for k in range(per_quantity.shape[-1])]
            finite_rhat = [r for r in rhats if math.isfinite(r)]
            finite_ess = [e for e in esses if math.isfinite(e)]
            rhat[members] = max(finite_rhat) if finite_rhat else math.nan
            ess[members] = min(finite_ess) if finite_ess else math.nan
        if not torch.isnan(rhat).all():
            values["rhat"], values["ess"] = rhat, ess
            notes.pop("rhat", None), notes.pop("ess", None)
        return MetricValues(values=values, notes=notes)
