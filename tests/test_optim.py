import pytest
import torch

from pulse.optim import SphericalOptimizer, schedule, sphere_norm


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
