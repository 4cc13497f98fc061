"""Intermediate layer optimisation: the l1-ball projection and the stages after the latent search."""

import pytest
import torch

from pulse.data import GeneratedFaces
from pulse.losses import PulseLoss
from pulse.solvers.ilo import ILOSettings, ILOSolver, project_l1_ball
from pulse.solvers.pulse import PulseSolver, SearchSettings


def projection_by_bisection(v: torch.Tensor, radius: float) -> torch.Tensor:
    """Independent reference: find the soft threshold theta with sum(max(|v| - theta, 0)) = radius."""
    if v.abs().sum() <= radius:
        return v
    low, high = 0.0, v.abs().max().item()
    for _ in range(200):
        theta = (low + high) / 2
        if (v.abs() - theta).clamp(min=0).sum() > radius:
            low = theta
        else:
            high = theta
    return v.sign() * (v.abs() - (low + high) / 2).clamp(min=0)


def test_l1_projection_matches_bisection_and_keeps_inside_points():
    torch.manual_seed(0)
    values = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    radius = torch.tensor([1.0, 5.0, 1000.0, 20.0], dtype=torch.float64)
    projected = project_l1_ball(values, radius)
    for b in range(4):
        expected = projection_by_bisection(values[b].flatten(), radius[b].item()).view_as(values[b])
        torch.testing.assert_close(projected[b], expected, atol=1e-9, rtol=0)
    assert torch.equal(projected[2], values[2])  # already inside: untouched
    norms = projected.flatten(1).abs().sum(1)
    torch.testing.assert_close(norms[[0, 1, 3]], radius[[0, 1, 3]])


@pytest.fixture(scope="module")
def problem(dcgan):
    faces = list(GeneratedFaces(dcgan, num=4, factors=[4], seed=99))
    return torch.stack([p.lr for p in faces])


def test_ilo_never_does_worse_than_its_latent_search(dcgan, problem):
    base = PulseSolver(dcgan, PulseLoss({"l2": 100}), settings=SearchSettings(steps=30))
    first = base.solve(problem)
    ilo = ILOSolver(base, ILOSettings(blocks=[1, 2], steps=15, radius=0.1))
    result = ilo.solve(problem)
    assert ilo.total_steps == 60 and len(result.history) == 60
    assert (result.best_loss <= first.best_loss + 1e-6).all()
    assert (result.best_loss < first.best_loss - 1e-4).any()  # the stages actually improve something
    assert result.success.sum() >= first.success.sum()
    assert result.hr.shape == first.hr.shape and result.status == ["ok"] * 4


def test_ilo_rejects_what_it_cannot_do(dcgan):
    base = PulseSolver(dcgan, settings=SearchSettings(steps=2))
    with pytest.raises(ValueError, match="out of range"):
        ILOSolver(base, ILOSettings(blocks=[7]))
    with pytest.raises(ValueError, match="increase strictly"):
        ILOSolver(base, ILOSettings(blocks=[2, 1]))

    class Flat(torch.nn.Module):
        resolution, num_latents, latent_dim, noise_shapes = 64, 1, 100, []

        def to_style(self, z):
            return z

        def synthesize(self, style, noise):
            return dcgan.synthesize(style, noise)

    with pytest.raises(TypeError, match="cannot be cut between blocks"):
        ILOSolver(PulseSolver(Flat(), settings=SearchSettings(steps=2)))


def test_ilo_on_stylegan_updates_later_latent_rows():
    from pulse.generators.stylegan import StyleGANGenerator

    generator = StyleGANGenerator.synthetic(resolution=16, fmap_base=64, fmap_max=16, fit_samples=2000)
    faces = list(GeneratedFaces(generator, num=2, factors=[4], seed=3))
    lr = torch.stack([p.lr for p in faces])
    base = PulseSolver(generator, settings=SearchSettings(steps=5))
    first = base.solve(lr)
    result = ILOSolver(base, ILOSettings(blocks=[1], steps=5)).solve(lr)
    assert (result.best_loss <= first.best_loss + 1e-6).all()
    assert result.latent.shape == (2, generator.num_latents, 512)


def test_l1_projection_in_bf16_is_computed_in_float32():
    # A bf16 running sum (8 mantissa bits) put the projected norm up to 1.6% off the radius.
    torch.manual_seed(0)
    values = torch.randn(2, 128 * 32 * 32).bfloat16()
    radius = (0.05 * values.float().abs().sum(1)).bfloat16()
    exact = project_l1_ball(values.double(), radius.double())
    projected = project_l1_ball(values, radius)
    assert projected.dtype == torch.bfloat16
    norms = projected.double().abs().sum(1)
    torch.testing.assert_close(norms, radius.double(), rtol=1e-3, atol=0)
    assert ((projected.double() - exact).abs() <= 2**-8 * exact.abs()).all()  # only the result's bf16 rounding


def test_ilo_records_frames_through_every_stage_and_they_become_a_gif(dcgan, problem, tmp_path):
    from pulse.outputs import write_gif

    base = PulseSolver(dcgan, settings=SearchSettings(steps=4))
    result = ILOSolver(base, ILOSettings(blocks=[1], steps=4)).solve(problem[:2], frames_every=2, frame_size=32)
    assert result.frames.shape == (4, 2, 3, 32, 32)  # steps 0, 2 of the latent search and 4, 6 of the stage
    write_gif(result.frames[:, 1], tmp_path / "face.gif")
    assert (tmp_path / "face.gif").stat().st_size > 0


def test_ilo_under_bf16_autocast_keeps_its_feature_deviation_in_float32(dcgan, problem):
    base = PulseSolver(dcgan, settings=SearchSettings(steps=2))
    seen = []
    original = project_l1_ball

    def spy(values, radius):
        seen.append((values.dtype, radius.dtype))
        return original(values, radius)

    import pulse.solvers.ilo

    pulse.solvers.ilo.project_l1_ball = spy
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            result = ILOSolver(base, ILOSettings(blocks=[1], steps=2)).solve(problem[:1])
    finally:
        pulse.solvers.ilo.project_l1_ball = original
    assert seen and all(dtypes == (torch.float32, torch.float32) for dtypes in seen)
    assert torch.isfinite(result.best_loss).all()
