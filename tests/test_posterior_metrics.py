"""Coverage, posterior mean/std and chain diagnostics against exact answers."""

from __future__ import annotations

import math

import pytest
import torch

from pulse.data import Problem
from pulse.metrics.mcmc import effective_sample_size, split_rhat
from pulse.metrics.posterior import (
    PosteriorSummary,
    SamplerDiagnostics,
    coverage,
    interval_rank,
    nominal_coverage,
)
from tests.helpers import fake_result


def test_nominal_coverage_is_the_order_statistics_probability():
    assert interval_rank(19) == 1 and nominal_coverage(19) == pytest.approx(0.9)
    assert nominal_coverage(39) == pytest.approx(0.9)
    assert nominal_coverage(8) == pytest.approx(7 / 9)  # [min, max] of 8 draws
    assert interval_rank(99) == 5 and nominal_coverage(99) == pytest.approx(0.9)


@pytest.mark.parametrize("samples", [8, 19])
def test_calibrated_samples_cover_the_truth_at_the_nominal_rate(samples):
    """Truth and samples drawn from one distribution: the observed coverage is the nominal one."""
    rng = torch.Generator().manual_seed(0)
    draws = torch.randn(samples, 3, 64, 64, generator=rng)
    truth = torch.randn(3, 64, 64, generator=rng)
    assert coverage(draws, truth) == pytest.approx(nominal_coverage(samples), abs=0.015)  # 12288 pixels
    assert coverage(draws * 0.3, truth) < nominal_coverage(samples) - 0.3  # overconfident: too narrow


def test_coverage_refuses_a_single_sample():
    with pytest.raises(ValueError, match="at least 2 samples"):
        coverage(torch.zeros(1, 3, 4, 4), torch.zeros(3, 4, 4))


def test_split_rhat_and_ess_on_known_chains():
    rng = torch.Generator().manual_seed(1)
    iid = torch.randn(1000, 4, generator=rng, dtype=torch.float64)
    assert split_rhat(iid) == pytest.approx(1.0, abs=0.01)
    assert effective_sample_size(iid) == pytest.approx(4000, rel=0.15)
    shifted = iid + torch.tensor([0.0, 0.0, 3.0, 3.0], dtype=torch.float64)  # two chains stuck elsewhere
    assert split_rhat(shifted) > 1.5 and effective_sample_size(shifted) < 100
    rho = 0.8  # AR(1): ESS = n (1 - rho) / (1 + rho)
    ar = torch.zeros(4000, 4, dtype=torch.float64)
    noise = torch.randn(4000, 4, generator=rng, dtype=torch.float64)
    ar[0] = noise[0] / math.sqrt(1 - rho**2)
    for t in range(1, 4000):
        ar[t] = rho * ar[t - 1] + noise[t]
    assert effective_sample_size(ar) == pytest.approx(16000 * (1 - rho) / (1 + rho), rel=0.2)
    with pytest.raises(ValueError, match="draws, chains"):
        split_rhat(torch.zeros(10))


def _problem(name: str, hr: torch.Tensor | None) -> Problem:
    return Problem(name=name, lr=torch.zeros(3, 4, 4), hr=hr)


def test_posterior_summary_values_and_notes():
    rng = torch.Generator().manual_seed(2)
    samples = torch.rand(4, 3, 16, 16, generator=rng)
    truth = samples.mean(0)
    result = fake_result(samples, [0, 0, 0, 0], [0, 1, 2, 3])
    values = PosteriorSummary(lpips_net=None)(result, [_problem("a", truth)])
    assert (values.values["mean_psnr_hr"] > 100).all()  # the truth is the mean (up to float32 rounding)
    other = PosteriorSummary(lpips_net=None)(result, [_problem("a", torch.zeros(3, 16, 16))])
    expected = -10 * math.log10(float(samples.mean(0).double().pow(2).mean()))
    assert other.values["mean_psnr_hr"][0] == pytest.approx(expected, rel=1e-5)
    assert values.values["coverage_90"][0] == 1.0  # the mean lies between min and max everywhere
    assert values.values["coverage_nominal"][0] == pytest.approx(3 / 5)
    assert values.values["pixel_std"][0] == pytest.approx(float(samples.std(0).mean()), rel=1e-6)
    single = PosteriorSummary(lpips_net=None)(fake_result(samples[:1], [0], [0]), [_problem("a", truth)])
    assert not single.values and "several samples" in single.notes["coverage_90"]
    no_truth = PosteriorSummary(lpips_net=None)(result, [_problem("a", None)])
    assert "coverage_90" not in no_truth.values and "ground truth" in no_truth.notes["coverage_90"]
    assert "pixel_std" in no_truth.values


def test_sampler_diagnostics_need_chains():
    result = fake_result(torch.rand(2, 3, 8, 8), [0, 0], [0, 1])
    notes = SamplerDiagnostics()(result, [_problem("a", None)]).notes
    assert set(notes) == {"acceptance", "rhat", "ess"} and "solver=langevin" in notes["rhat"]
