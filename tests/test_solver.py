import math
from functools import partial

import pytest
import torch

from pulse.data import GeneratedFaces
from pulse.downscale import BicubicDownscale
from pulse.losses import PulseLoss
from pulse.optim import SphericalOptimizer
from pulse.solvers.pulse import PulseSolver, SearchSettings


def test_default_problem_is_solved_within_eps(dcgan):
    """The realisable x8 problem (8 -> 64 px): the paper's search brings most faces within eps."""
    problems = [p for p in GeneratedFaces(dcgan, num=8, factors=[8]) if p.hr is not None]
    lr = torch.stack([p.lr for p in problems])
    hr = torch.stack([p.hr for p in problems])
    result = PulseSolver(dcgan, PulseLoss({"l2": 100}), settings=SearchSettings(steps=100)).solve(lr)
    assert result.hr.shape == (8, 3, 64, 64) and result.lr.shape == (8, 3, 8, 8)
    assert result.success.sum() >= 4, result.downscale_error
    # Reported error belongs to the returned image.
    recomputed = (BicubicDownscale(8)(result.hr) - lr).pow(2).mean((1, 2, 3))
    torch.testing.assert_close(result.downscale_error, recomputed)
    assert torch.equal(result.success, recomputed <= 2e-3)
    # Successful samples reached eps at some step no later than their best step (L2 is flat after eps).
    ok = result.success
    assert (result.first_step_at_eps[ok] >= 0).all()
    # The search finds a plausible explanation, not noise: PSNR to the true face is far above chance.
    psnr = -10 * torch.log10((result.hr - hr).pow(2).mean((1, 2, 3)))
    assert psnr.mean() > 15


def test_samples_are_independent_of_batch_composition(dcgan):
    faces = list(GeneratedFaces(dcgan, num=3, factors=[4]))
    lr = torch.stack([p.lr for p in faces])
    settings = SearchSettings(steps=8, duplicates=2)
    solver = PulseSolver(dcgan, settings=settings)
    together = solver.solve(lr)
    alone = solver.solve(lr[1:2], seeds=together.seeds[2:4])
    torch.testing.assert_close(alone.hr, together.hr[2:4], atol=1e-4, rtol=0)
    assert together.input_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert together.duplicate_index.tolist() == [0, 1, 0, 1, 0, 1]
    assert len(set(together.seeds)) == 6


def test_seed_determinism(dcgan):
    lr = torch.stack([p.lr for p in GeneratedFaces(dcgan, num=2, factors=[8])])
    a = PulseSolver(dcgan, settings=SearchSettings(steps=5, seed=3)).solve(lr)
    b = PulseSolver(dcgan, settings=SearchSettings(steps=5, seed=3)).solve(lr)
    c = PulseSolver(dcgan, settings=SearchSettings(steps=5, seed=4)).solve(lr)
    assert torch.equal(a.hr, b.hr)
    assert not torch.equal(a.hr, c.hr)


class NaNAfter(torch.nn.Module):
    """Wraps a generator; sample ``bad`` produces NaN from step ``at`` on."""

    def __init__(self, inner, bad: int, at: int):
        super().__init__()
        self.inner, self.bad, self.at, self.calls = inner, bad, at, 0
        for name in ("resolution", "num_latents", "latent_dim", "noise_shapes"):
            setattr(self, name, getattr(inner, name))

    def to_style(self, latent):
        return self.inner.to_style(latent)

    def synthesize(self, style, noise):
        out = self.inner.synthesize(style, noise)
        self.calls += 1
        if self.calls > self.at:
            mask = torch.zeros_like(out)
            mask[self.bad] = math.nan
            out = out + mask
        return out


def test_nan_stops_only_that_sample(dcgan):
    lr = torch.stack([p.lr for p in GeneratedFaces(dcgan, num=3, factors=[8])])
    settings = SearchSettings(steps=12)
    clean = PulseSolver(dcgan, settings=settings).solve(lr)
    result = PulseSolver(NaNAfter(dcgan, bad=1, at=5), settings=settings).solve(lr)
    assert result.status[1] == "stopped: non-finite loss at step 5"
    assert result.status[0] == result.status[2] == "ok"
    assert result.best_step[1] <= 4 and torch.isfinite(result.hr[1]).all()
    torch.testing.assert_close(result.hr[[0, 2]], clean.hr[[0, 2]], atol=1e-5, rtol=0)


def test_bad_inputs_are_refused_clearly(dcgan):
    solver = PulseSolver(dcgan, settings=SearchSettings(steps=1))
    with pytest.raises(ValueError, match="non-square input 16x8"):
        solver.solve(torch.rand(1, 3, 16, 8))
    with pytest.raises(ValueError, match="input size 24 px does not divide the generator's 64 px"):
        solver.solve(torch.rand(1, 3, 24, 24))
    with pytest.raises(ValueError, match=r"\[N, 3, h, w\]"):
        solver.solve(torch.rand(1, 1, 16, 16))
    bad = torch.rand(1, 3, 16, 16)
    bad[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        solver.solve(bad)
    with pytest.raises(ValueError, match="unknown noise_type 'random'"):
        SearchSettings(noise_type="random")


def test_spherical_search_keeps_the_latent_norm_plain_adam_does_not(dcgan):
    lr = torch.stack([p.lr for p in GeneratedFaces(dcgan, num=1, factors=[8])])
    final = {}

    def recording(factory):
        def build(params):
            final["latent"] = params[0]
            return factory(params=params)

        return build

    spherical = partial(SphericalOptimizer, torch.optim.Adam, lr=0.4)
    plain = partial(torch.optim.Adam, lr=0.4)
    norms = {}
    for name, factory in (("spherical", spherical), ("plain", plain)):
        result = PulseSolver(dcgan, optimizer=recording(factory), settings=SearchSettings(steps=10)).solve(lr)
        start = torch.randn(1, 100, generator=torch.Generator().manual_seed(result.seeds[0]))
        norms[name] = (final["latent"].detach().norm().item(), start.norm().item())
    assert norms["spherical"][0] == pytest.approx(norms["spherical"][1], rel=1e-5)
    assert abs(norms["plain"][0] - norms["plain"][1]) > 0.1


def test_mixed_precision_keeps_the_downscale_and_loss_in_float32(dcgan):
    """Under bf16 autocast (trainer.precision=bf16-mixed) the generator runs in bf16, the measurement never does."""
    seen: list[tuple[torch.dtype, bool]] = []

    class RecordingBicubic(BicubicDownscale):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            seen.append((images.dtype, torch.is_autocast_enabled("cpu")))
            return super().forward(images)

    lr = torch.stack([p.lr for p in GeneratedFaces(dcgan, num=4, factors=[8])])
    solver = PulseSolver(dcgan, downscale=RecordingBicubic, settings=SearchSettings(steps=30))
    full = solver.solve(lr)
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = solver.solve(lr)
    assert seen and all(dtype == torch.float32 and not autocast for dtype, autocast in seen)
    assert mixed.hr.dtype == torch.float32 and torch.isfinite(mixed.downscale_error).all()
    # The bf16 generator explains the inputs about as well (same seeds; bf16 rounding changes the path).
    assert mixed.downscale_error.mean() < 1.5 * full.downscale_error.mean()


def test_bad_noise_layers_auto_follows_the_generator():
    from pulse.generators.fast import accelerate
    from pulse.generators.stylegan import StyleGANGenerator

    full_size = StyleGANGenerator.synthetic(resolution=1024, fmap_base=8192, fmap_max=8, fit_samples=200)
    assert PulseSolver(full_size).settings.bad_noise_layers == (17,)  # the official code's choice at 1024 px
    assert PulseSolver(accelerate(full_size)).settings.bad_noise_layers == (17,)
    small = StyleGANGenerator.synthetic(resolution=32, fit_samples=200)
    assert PulseSolver(small).settings.bad_noise_layers == ()
    assert PulseSolver(small, settings=SearchSettings(bad_noise_layers=[3])).settings.bad_noise_layers == (3,)
    with pytest.raises(ValueError, match="list of layer indices or 'auto'"):
        SearchSettings(bad_noise_layers="all")


def test_each_step_is_timed_on_the_cpu_and_the_results_row_takes_the_median_after_the_first(dcgan, tmp_path):
    from pulse.outputs import ResultStore, median_step_seconds

    problems = list(GeneratedFaces(dcgan, num=2, factors=[8]))
    lr = torch.stack([p.lr for p in problems])
    result = PulseSolver(dcgan, settings=SearchSettings(steps=6)).solve(lr)
    assert result.step_seconds is not None and len(result.step_seconds) == 6
    assert min(result.step_seconds) > 0
    assert sum(result.step_seconds) <= result.seconds  # the stamps lie inside the search's own timer
    rows = ResultStore(tmp_path).write_batch(problems, result)
    expected = sorted(result.step_seconds[1:])[2]  # the median of the five steps after the first
    assert {row["step_seconds"] for row in rows} == {f"{expected:.6g}"}  # the batch's step, on every sample
    assert median_step_seconds([9.0, 1.0, 3.0]) == 2.0  # the first step (heap growth) is left out
    assert median_step_seconds([1.0]) is None and median_step_seconds(None) is None
