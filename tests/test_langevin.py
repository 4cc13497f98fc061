"""The Langevin sampler against an exact Gaussian posterior, and on the embedded DCGAN.

With a linear generator ``G(z) = A z + b``, a Gaussian latent and a linear downscale (area pooling), the
posterior of ``z`` given ``y`` is Gaussian with covariance ``(I + Mᵀ M / σ²)⁻¹`` and mean
``Σ Mᵀ (y - c) / σ²``, where ``M z + c = D((G(z) + 1) / 2)``. The sampler's draws must match both within
Monte-Carlo error; broken samplers (wrong noise scale, prior left out, σ not squared) must not.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pulse.downscale import AreaDownscale
from pulse.solvers.langevin import LangevinSettings, LangevinSolver, PosteriorSamples

LATENT_DIM, RESOLUTION, FACTOR, SIGMA = 3, 4, 2, 0.25


class LinearGenerator(nn.Module):
    """``z [B, 1, d] -> A z + b`` as a ``[B, 3, 4, 4]`` image in about [-1, 1] (a pulse Generator)."""

    resolution, num_latents, latent_dim = RESOLUTION, 1, LATENT_DIM
    noise_shapes: list = []

    def __init__(self) -> None:
        super().__init__()
        rng = torch.Generator().manual_seed(3)
        pixels = 3 * RESOLUTION * RESOLUTION
        self.register_buffer("weight", torch.randn(pixels, LATENT_DIM, generator=rng) * 0.5)
        self.register_buffer("bias", torch.randn(pixels, generator=rng) * 0.1)

    def to_style(self, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def synthesize(self, style: torch.Tensor, noise: list | None = None) -> torch.Tensor:
        flat = style.reshape(style.shape[0], LATENT_DIM) @ self.weight.T + self.bias
        return flat.reshape(-1, 3, RESOLUTION, RESOLUTION)


def exact_posterior(generator: LinearGenerator, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form posterior mean ``[d]`` and covariance ``[d, d]`` of z given ``lr`` ``[3, h, w]`` (float64)."""
    down = AreaDownscale(FACTOR)

    def forward(z: torch.Tensor) -> torch.Tensor:
        image = (generator.synthesize(z.reshape(1, 1, -1)) + 1) / 2
        return down(image).flatten()

    zero = torch.zeros(LATENT_DIM)
    offset = forward(zero).double()
    matrix = torch.autograd.functional.jacobian(forward, zero).double()  # linear: the Jacobian is M
    precision = torch.eye(LATENT_DIM, dtype=torch.float64) + matrix.T @ matrix / SIGMA**2
    cov = torch.linalg.inv(precision)
    mean = cov @ matrix.T @ (lr.flatten().double() - offset) / SIGMA**2
    return mean, cov


def agreement(draws: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[float, float]:
    """For ``n`` independent draws ``[n, d]``: the mean's squared Mahalanobis error times n (~ chi²_d) and
    the largest entry of ``|L⁻¹ Σ̂ L⁻ᵀ - I|`` (``Σ = L Lᵀ``) in standard errors (``sqrt(2/n)`` diagonal,
    ``sqrt(1/n)`` off it)."""
    n = len(draws)
    draws = draws.double()
    diff = draws.mean(0) - mean
    mean_stat = float(n * diff @ torch.linalg.solve(cov, diff))
    chol = torch.linalg.cholesky(cov)
    whitened = torch.linalg.solve_triangular(chol, (draws - draws.mean(0)).T, upper=False).T
    sample_cov = whitened.T @ whitened / (n - 1)
    d = len(mean)
    stderr = torch.full((d, d), math.sqrt(1 / n), dtype=torch.float64)
    stderr.diagonal().fill_(math.sqrt(2 / n))
    cov_stat = float(((sample_cov - torch.eye(d, dtype=torch.float64)).abs() / stderr).max())
    return mean_stat, cov_stat


CHI2_3_0999 = 16.27  # 99.9% quantile of chi² with 3 degrees of freedom
COV_LIMIT = 4.5  # standard errors; max over 6 distinct entries


@pytest.fixture(scope="module")
def linear_problem() -> tuple[LinearGenerator, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = LinearGenerator()
    truth = torch.tensor([[[0.8, -1.2, 0.4]]])
    lr = AreaDownscale(FACTOR)((generator.synthesize(truth) + 1) / 2)
    lr = lr + 0.05 * torch.randn(lr.shape, generator=torch.Generator().manual_seed(5))
    mean, cov = exact_posterior(generator, lr[0])
    return generator, lr, mean, cov


def draw(solver: LangevinSolver, lr: torch.Tensor) -> torch.Tensor:
    result = solver.solve(lr)
    assert isinstance(result, PosteriorSamples) and result.latent is not None
    return result.latent.reshape(len(result.latent), -1)


CHAINS = 2000  # independent chains, one draw each: Monte-Carlo error ~ 1/sqrt(2000)
# ULA's stationary covariance is off by a factor 1 / (1 - h λ / 2) (λ <= 5.3 here): 5% at h = 0.02, within
# the limit; MALA is exact for any h once adaptation stops.
ULA = dict(mala=False, step_size=0.02, step_schedule="constant", burn_in=250, thin=1)
MALA = dict(mala=True, step_size=0.3, step_schedule="adapt", burn_in=100, thin=5)


def sampler(generator: nn.Module, cls: type[LangevinSolver] = LangevinSolver, **options) -> LangevinSolver:
    settings = LangevinSettings(samples=CHAINS, sigma=SIGMA, noise_type="zero", seed=1, **options)
    return cls(generator, downscale=AreaDownscale, settings=settings)


def test_the_posterior_is_not_the_prior(linear_problem):
    """The check has power: the likelihood moves the mean and shrinks the covariance well beyond MC error."""
    _, _, mean, cov = linear_problem
    eigenvalues = torch.linalg.eigvalsh(cov)
    assert eigenvalues.max() < 0.7 and eigenvalues.min() > 0.1
    assert mean.norm() > 0.5


@pytest.mark.parametrize("options", [ULA, MALA], ids=["ula", "mala"])
def test_sampler_matches_the_exact_gaussian_posterior(linear_problem, options):
    generator, lr, mean, cov = linear_problem
    mean_stat, cov_stat = agreement(draw(sampler(generator, **options), lr), mean, cov)
    assert mean_stat < CHI2_3_0999, f"posterior mean off: n·Mahalanobis² = {mean_stat:.1f}"
    assert cov_stat < COV_LIMIT, f"posterior covariance off by {cov_stat:.1f} standard errors"


class HalfNoise(LangevinSolver):
    def noise_scale(self, step: torch.Tensor) -> torch.Tensor:
        return step.sqrt()  # sqrt(h), not sqrt(2h)


class NoPrior(LangevinSolver):
    def prior_energy(self, variables):
        return torch.zeros(len(variables[0]), device=variables[0].device)


class SigmaNotSquared(LangevinSolver):
    def likelihood_energy(self, lr_generated, reference):
        return (lr_generated - reference).pow(2).flatten(1).sum(1) / (2 * self.settings.sigma)


@pytest.mark.parametrize(
    "broken, options",
    [(HalfNoise, ULA), (NoPrior, ULA), (SigmaNotSquared, ULA), (NoPrior, MALA), (SigmaNotSquared, MALA)],
    ids=["ula-noise-scale", "ula-no-prior", "ula-sigma", "mala-no-prior", "mala-sigma"],
)
def test_the_same_check_fails_for_a_broken_sampler(linear_problem, broken, options):
    generator, lr, mean, cov = linear_problem
    mean_stat, cov_stat = agreement(draw(sampler(generator, broken, **options), lr), mean, cov)
    assert mean_stat > CHI2_3_0999 or cov_stat > COV_LIMIT


def test_wrong_step_size_scale_is_caught():
    """A step far too large for ULA (no Metropolis correction) leaves the stationary law visibly wrong."""
    generator = LinearGenerator()
    lr = AreaDownscale(FACTOR)((generator.synthesize(torch.zeros(1, 1, LATENT_DIM)) + 1) / 2)
    mean, cov = exact_posterior(generator, lr[0])
    options = {**ULA, "step_size": 0.3}
    _, cov_stat = agreement(draw(sampler(generator, **options), lr), mean, cov)
    assert cov_stat > COV_LIMIT


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="sigma"):
        LangevinSettings(sigma=0)
    with pytest.raises(ValueError, match="multiple of chains"):
        LangevinSettings(samples=8, chains=3)
    with pytest.raises(ValueError, match="step_schedule"):
        LangevinSettings(step_schedule="cosine")


def test_run_writes_draws_mean_std_and_diagnostics(tmp_path, dcgan):
    """Through the runner: one row per draw, the mean and std maps, the grid, coverage and chain diagnostics."""
    from pulse.data import GeneratedFaces, load_image
    from pulse.outputs import read_rows
    from pulse.runner import run_search

    problems = list(GeneratedFaces(dcgan, num=1, factors=[8]))
    settings = LangevinSettings(samples=4, chains=2, mala=True, burn_in=3, thin=3, seed=0)
    solver = LangevinSolver(dcgan, settings=settings)
    summary = run_search(solver, problems, tmp_path, progress=False)
    rows = read_rows(tmp_path / "results.csv")
    assert [r["duplicate"] for r in rows] == ["0", "1", "2", "3"]
    assert [r["best_step"] for r in rows] == ["5", "5", "8", "8"]  # draws after 3 + 3 and 3 + 6 steps
    for column in ("coverage_90", "coverage_nominal", "mean_psnr_hr", "acceptance", "rhat", "ess", "loss_likelihood"):
        assert rows[0][column] != "", column
    assert 0 <= float(rows[0]["acceptance"]) <= 1 and summary.metrics["coverage_nominal"] == pytest.approx(0.6)
    name = problems[0].name
    mean, std = load_image(tmp_path / "sr" / f"{name}_mean.png"), load_image(tmp_path / "sr" / f"{name}_std.png")
    draws = torch.stack([load_image(tmp_path / r["image"]) for r in rows])
    assert (mean - draws.mean(0)).abs().max() < 2 / 255  # 8-bit rounding
    assert std.amax() > 0 and torch.equal(std[0], std[1])  # gray
    grid = load_image(tmp_path / "grid.png")
    assert grid.shape[-1] == 64 * (1 + 4 + 2 + 1)  # LR | 4 draws | mean | std | HR


def test_ula_records_no_acceptance_and_says_why(tmp_path, dcgan):
    from pulse.data import GeneratedFaces
    from pulse.runner import run_search

    problems = list(GeneratedFaces(dcgan, num=1, factors=[8]))
    solver = LangevinSolver(dcgan, settings=LangevinSettings(samples=2, burn_in=2, thin=4))
    summary = run_search(solver, problems, tmp_path, progress=False)
    assert summary.metrics.get("acceptance") is None and "unadjusted" in summary.notes["acceptance"]
    assert summary.metrics["rhat"] is not None


@pytest.mark.parametrize("kind", ["stylegan", "stylegan2", "linear"])
def test_every_generator_kind_is_sampled_with_its_noise_maps(kind, tmp_path, monkeypatch):
    """StyleGAN (18-row style latent, trainable noise maps), StyleGAN2 and a bring-your-own generator."""
    monkeypatch.setenv("PULSE_CACHE", str(tmp_path))
    if kind == "stylegan":
        from pulse.generators.stylegan import StyleGANGenerator

        generator = StyleGANGenerator.synthetic(resolution=16, fmap_base=64, fmap_max=8, fit_samples=200)
    elif kind == "stylegan2":
        from pulse.generators.stylegan2 import StyleGAN2Generator

        generator = StyleGAN2Generator.synthetic(
            resolution=16, channel_base=64, channel_max=8, style_dim=32, n_mlp=2, fit_samples=500
        )
    else:
        generator = LinearGenerator()
    side = generator.resolution // 2
    lr = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    settings = LangevinSettings(samples=2, burn_in=3, thin=2, num_trainable_noise_layers=2, mala=True)
    result = LangevinSolver(generator, downscale=AreaDownscale, settings=settings).solve(lr)
    assert result.hr.shape == (4, 3, generator.resolution, generator.resolution)
    assert torch.isfinite(result.hr).all() and result.status == ["ok"] * 4
    assert result.latent.shape == (4, generator.num_latents, generator.latent_dim)
    if generator.noise_shapes:  # the trainable maps were sampled, the others kept
        start = LangevinSolver(generator, downscale=AreaDownscale, settings=settings).search
        _, noise, _ = start._initial_variables(result.seeds[:1], torch.device("cpu"))
        assert not torch.equal(result.noise[0][0], noise[0][0]) and torch.equal(result.noise[2][0], noise[2][0])
    assert torch.isfinite(result.terms["prior"]).all() and (result.acceptance >= 0).all()


def test_warm_start_begins_where_the_pulse_search_ended(dcgan):
    from pulse.data import GeneratedFaces

    problems = list(GeneratedFaces(dcgan, num=1, factors=[8]))
    lr = problems[0].lr[None]
    cold = LangevinSolver.from_config(dcgan, samples=2, burn_in=0, thin=1, step_size=1e-8, step_schedule="constant")
    warm = LangevinSolver.from_config(
        dcgan,
        samples=2,
        burn_in=0,
        thin=1,
        step_size=1e-8,
        step_schedule="constant",
        warm_start=True,
        pulse={"steps": 30},
    )
    assert warm.total_steps == 31 and cold.total_steps == 1
    found = warm.search.solve(lr)
    # with a negligible step the draw is the chain's start: the search's result, not a prior draw
    torch.testing.assert_close(warm.solve(lr).latent, found.latent, atol=1e-3, rtol=0)
    assert cold.solve(lr).downscale_error.mean() > found.downscale_error.mean()
