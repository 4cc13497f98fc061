import pytest
import torch

from pulse.optim import (
    SphericalOptimizer,
    WhiteSpectrumOptimizer,
    project_white_bands,
    radial_bands,
    schedule,
    sphere_norm,
)


def test_spherical_step_preserves_each_vector_norm():
    torch.manual_seed(0)
    latent = (torch.randn(3, 18, 32) * torch.rand(3, 18, 1) * 5).requires_grad_(True)
    noise = torch.randn(3, 1, 8, 8).requires_grad_(True)
    radii = [sphere_norm(latent).detach().clone(), sphere_norm(noise).detach().clone()]
    assert radii[0].shape == (3, 18, 1) and radii[1].shape == (3, 1, 1, 1)
    opt = SphericalOptimizer(torch.optim.Adam, [latent, noise], lr=0.4)
    start = latent.detach().clone()
    for _ in range(5):
        opt.zero_grad()
        (latent.sin().sum() + (noise * 3).cos().sum()).backward()
        opt.step()
    torch.testing.assert_close(sphere_norm(latent).detach(), radii[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sphere_norm(noise).detach(), radii[1], rtol=1e-5, atol=1e-5)
    assert (latent.detach() - start).abs().max() > 0.1  # it did move


def test_projection_after_plain_step_equals_rescaled_adam_step():
    torch.manual_seed(1)
    a = torch.randn(2, 4, 8, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    spherical = SphericalOptimizer(torch.optim.SGD, [a], lr=0.1)
    plain = torch.optim.SGD([b], lr=0.1)
    for p, opt in ((a, spherical), (b, plain)):
        opt.zero_grad()
        (p**3).sum().backward()
        opt.step()
    expected = (
        b.detach() / b.detach().norm(dim=-1, keepdim=True) * torch.linalg.vector_norm(a.detach(), dim=-1, keepdim=True)
    )
    torch.testing.assert_close(a.detach(), expected)


def test_works_with_lambdalr_and_rejects_flat_params():
    p = torch.randn(1, 1, 4, requires_grad=True)
    opt = SphericalOptimizer(torch.optim.Adam, [p], lr=0.4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule("linear1cycledrop", 100))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.04)
    for _ in range(45):
        opt.zero_grad()
        p.sum().backward()
        opt.step()
        sched.step()
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="spherical optimisation needs"):
        SphericalOptimizer(torch.optim.Adam, [torch.zeros(3, requires_grad=True)])


def test_schedules_match_their_definitions():
    steps = 100
    fixed, cycle, drop = (schedule(n, steps) for n in ("fixed", "linear1cycle", "linear1cycledrop"))
    assert fixed(37) == 1
    assert cycle(0) == pytest.approx(0.1) and cycle(50) == pytest.approx(1.0) and cycle(100) == pytest.approx(0.1)
    assert drop(0) == pytest.approx(0.1) and drop(45) == pytest.approx(1.0)
    assert drop(90) == pytest.approx(0.1) and drop(99) == pytest.approx(0.1 + 0.9 * (0.001 - 0.1))
    with pytest.raises(ValueError, match="valid: \\['fixed', 'linear1cycle', 'linear1cycledrop'\\]"):
        schedule("cosine", steps)


def _lag1(maps: torch.Tensor) -> torch.Tensor:
    maps = maps - maps.mean(dim=(-2, -1), keepdim=True)
    maps = maps / maps.std(dim=(-2, -1), keepdim=True)
    return 0.5 * (
        (maps[..., 1:, :] * maps[..., :-1, :]).mean((-2, -1)) + (maps[..., 1:] * maps[..., :-1]).mean((-2, -1))
    )


def _band_power(maps: torch.Tensor, bands: int) -> torch.Tensor:
    """Mean |F_k|^2 per radial band over the full (two-sided) orthonormal spectrum: 1 for white noise."""
    side = maps.shape[-1]
    full = torch.fft.fft2(maps.double(), norm="ortho").abs().square().flatten(-2)
    ky = torch.fft.fftfreq(side).abs() * side
    radius = (ky[:, None].square() + ky[None, :].square()).sqrt().flatten()
    band = (radius / (side / 2**0.5) * bands).long().clamp(max=bands - 1)
    return torch.stack([full[..., band == b].mean(-1) for b in range(bands)], dim=-1)


def test_white_band_projection_flattens_a_correlated_map_and_keeps_white_noise():
    torch.manual_seed(0)
    white = torch.randn(4, 1, 64, 64)
    # White noise plus a smooth (isotropic, low-frequency) field: lag-1 about 0.3. Radial bands cannot undo
    # an anisotropic correlation (a box blur's, say), only one that depends on |k|.
    smooth = torch.randn(4, 1, 64, 64) + torch.nn.functional.interpolate(
        torch.randn(4, 1, 16, 16), size=64, mode="bilinear"
    )
    assert (_lag1(smooth) > 0.2).all()
    projected = project_white_bands(smooth, bands=16)
    # Checked on the full two-sided spectrum, which the projection never forms: catches a wrong
    # conjugate-pair weighting of rfft2's columns or a wrong band map.
    assert torch.allclose(_band_power(projected, 16), torch.ones(4, 1, 16, dtype=torch.float64), atol=1e-9)
    assert _lag1(projected).abs().max() < 0.03  # white within two standard errors (1/64 each)
    assert torch.allclose(project_white_bands(projected, 16), projected, atol=1e-5)  # a projection
    # White noise is already nearly on the set: the projection moves it little (a few % of its norm).
    moved = (project_white_bands(white, 16) - white).norm() / white.norm()
    assert moved < 0.1


def test_radial_bands_cover_every_band():
    band = radial_bands(32, 8)
    assert band.shape == (32, 17) and band[0, 0] == 0 and set(band.flatten().tolist()) == set(range(8))


def test_white_spectrum_optimizer_keeps_flat_map_latents_white_and_rows_on_the_sphere():
    torch.manual_seed(1)
    flat_map = torch.randn(2, 1, 32 * 32, requires_grad=True)
    rows = torch.randn(2, 3, 16, requires_grad=True)
    opt = WhiteSpectrumOptimizer(torch.optim.Adam, [flat_map, rows], lr=0.5, bands=8, flat_side=32)
    radius_map, radius_rows = sphere_norm(flat_map).detach().clone(), sphere_norm(rows).detach().clone()
    smooth_target = torch.nn.functional.avg_pool2d(torch.randn(2, 1, 36, 36), 5, stride=1).reshape(2, 1, -1)
    for _ in range(20):  # pull the map towards a smooth (correlated) target
        opt.zero_grad()
        ((flat_map - 3 * smooth_target).square().sum() + rows.square().sum()).backward()
        opt.step()
    maps = flat_map.detach().reshape(2, 1, 32, 32)
    assert torch.allclose(
        _band_power(maps / maps.square().mean().sqrt(), 8), torch.ones(2, 1, 8, dtype=torch.float64), rtol=0.05
    )
    assert torch.allclose(sphere_norm(flat_map), radius_map, rtol=1e-5)
    assert torch.allclose(sphere_norm(rows), radius_rows, rtol=1e-5)
    # The same search with the sphere alone does make the map correlated: the test would see a missing projection.
    free = torch.randn(2, 1, 32 * 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    sphere = SphericalOptimizer(torch.optim.Adam, [free], lr=0.5)
    for _ in range(20):
        sphere.zero_grad()
        (free - 3 * smooth_target).square().sum().backward()
        sphere.step()
    assert _lag1(free.detach().reshape(2, 1, 32, 32)).min() > 0.3
    with pytest.raises(ValueError, match="bands"):
        WhiteSpectrumOptimizer(torch.optim.Adam, [torch.zeros(1, 1, 4, requires_grad=True)], bands=0)
