"""The fast StyleGAN path computes the faithful port's function; the solver's optional early stop."""

import copy
import logging
import math
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.utils._python_dispatch

from pulse.generators import fast, stylegan
from pulse.generators.base import LayeredGenerator
from pulse.generators.fast import FastStyleGANGenerator, accelerate
from pulse.generators.stylegan import StyleGANGenerator
from pulse.losses import PulseLoss
from pulse.optim import SphericalOptimizer
from pulse.solvers.ilo import ILOSettings, ILOSolver
from pulse.solvers.pulse import PulseSolver, SearchSettings


@pytest.fixture(scope="module")
def small() -> StyleGANGenerator:
    return StyleGANGenerator.synthetic(resolution=32, fmap_base=256, fmap_max=32, fit_samples=2000)


@pytest.fixture(scope="module")
def narrow() -> StyleGANGenerator:
    return StyleGANGenerator.synthetic(resolution=32, fmap_base=128, fmap_max=16, fit_samples=2000)


@pytest.fixture(params=[(16, 32), (32, 8)], ids=["fused16-polyphase32", "fused32-polyphase8"])
def layer_kinds(request, monkeypatch):
    """Move both ports' switch to the fused transposed conv (128 px in the real network) and the fast
    path's switch to polyphase upsampling so that a cheap 32 px network has every layer kind: with
    (16, 32) nearest and fused layers computed as the reference does plus a fused polyphase layer;
    with (32, 8) nearest polyphase layers and a fused one. Both modules read the constants at use."""
    fused, polyphase = request.param
    monkeypatch.setattr(stylegan, "FUSED_UPSAMPLE_MIN_SIDE", fused)
    monkeypatch.setattr(fast, "FUSED_UPSAMPLE_MIN_SIDE", fused)
    monkeypatch.setattr(fast, "POLYPHASE_MIN_SIDE", polyphase)


def _inputs(generator, batch: int = 2, seed: int = 1):
    rng = torch.Generator().manual_seed(seed)
    latent = torch.randn(batch, generator.num_latents, generator.latent_dim, generator=rng)
    latent = latent / latent.norm(dim=-1, keepdim=True) * math.sqrt(generator.latent_dim)
    noise = [torch.randn(batch, *shape, generator=rng) for shape in generator.noise_shapes]
    return latent, noise


def _forward_backward(generator, latent, noise, dtype=torch.float32):
    """Image and the gradients of a fixed random projection of it w.r.t. latent and noise (float64 out)."""
    latent = latent.to(dtype, copy=True).requires_grad_(True)
    noise = [n.to(dtype, copy=True).requires_grad_(True) for n in noise]
    image = generator.synthesize(generator.to_style(latent), noise)
    probe = torch.randn(image.shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    (image * probe).sum().backward()
    return image.detach().double(), latent.grad.double(), [n.grad.double() for n in noise]


def _rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# ---------------------------------------------------------------- same function


def test_float64_fast_path_is_exact(narrow, layer_kinds):
    """In float64 the polyphase kernels, exact borders and hand-written backward match to rounding."""
    reference = copy.deepcopy(narrow).double()
    latent, noise = _inputs(narrow, batch=1)
    for channels_last in (False, True):
        image, grad_latent, grad_noise = _forward_backward(
            accelerate(reference, channels_last=channels_last), latent, noise, torch.float64
        )
        ref_image, ref_latent, ref_noise = _forward_backward(reference, latent, noise, torch.float64)
        assert (image - ref_image).abs().max() < 1e-10
        assert _rel_error(grad_latent, ref_latent) < 1e-10
        assert max(_rel_error(a, b) for a, b in zip(grad_noise, ref_noise, strict=True)) < 1e-10


@pytest.mark.parametrize("chunk_elements", [1500, 40])
def test_float64_fast_path_is_exact_in_row_chunks(narrow, monkeypatch, chunk_elements):
    """Layers processed a few rows at a time (uneven last chunk; one row per chunk) give the same function:
    the chunked noise, activation, merged statistics and backward passes cover every row exactly once."""
    monkeypatch.setattr(fast, "_CHUNK_ELEMENTS", chunk_elements)
    reference = copy.deepcopy(narrow).double()
    latent, noise = _inputs(narrow, batch=2)
    ref_image, ref_latent, ref_noise = _forward_backward(reference, latent, noise, torch.float64)
    for channels_last in (False, True):
        generator = accelerate(reference, channels_last=channels_last)
        assert len(fast._row_chunks(torch.empty(2, 16, 32, 32))) > 3
        image, grad_latent, grad_noise = _forward_backward(generator, latent, noise, torch.float64)
        assert (image - ref_image).abs().max() < 1e-10
        assert _rel_error(grad_latent, ref_latent) < 1e-10
        assert max(_rel_error(a, b) for a, b in zip(grad_noise, ref_noise, strict=True)) < 1e-10


@pytest.mark.parametrize("channels_last", [False, True])
def test_float32_fast_path_matches_faithful(narrow, layer_kinds, channels_last):
    _check_float32(narrow, channels_last)


def test_float32_fast_path_matches_faithful_at_128px():
    """The real switches (fused layer from 128 px, default polyphase setting), narrow feature maps."""
    _check_float32(StyleGANGenerator.synthetic(resolution=128, fmap_base=64, fmap_max=4, fit_samples=500), True)


def _check_float32(faithful: StyleGANGenerator, channels_last: bool) -> None:
    """fp32: within 1e-4 of the faithful port, and no less accurate than it against a float64 run."""
    latent, noise = _inputs(faithful, batch=2)
    truth = _forward_backward(copy.deepcopy(faithful).double(), latent, noise, torch.float64)
    eager = _forward_backward(faithful, latent, noise)
    quick = _forward_backward(accelerate(faithful, channels_last=channels_last), latent, noise)

    scale = max(1.0, truth[0].abs().max().item())  # narrow random nets make images of a few units
    assert (quick[0] - eager[0]).abs().max().item() <= 1e-4 * scale
    # Against the float64 truth the fast path may not lose digits the faithful one keeps (e.g. by
    # cancellation when an instance norm's mean dwarfs its std).
    assert (quick[0] - truth[0]).abs().max() <= 2 * (eager[0] - truth[0]).abs().max() + 1e-6 * scale
    assert _rel_error(quick[1], truth[1]) < 1e-4
    for grad, ref in zip(quick[2], truth[2], strict=True):
        assert _rel_error(grad, ref) < 1e-4


def test_fast_generator_is_frozen_contiguous_and_leaves_the_original_alone(small):
    before = {k: v.clone() for k, v in small.state_dict().items()}
    quick = accelerate(small, channels_last=True)
    assert isinstance(quick, FastStyleGANGenerator)
    assert list(quick.parameters()) == []  # no autograd bookkeeping for weights
    assert (quick.resolution, quick.num_latents, quick.latent_dim) == (32, 8, 512)
    assert quick.noise_shapes == small.noise_shapes
    latent, noise = _inputs(small)
    image = quick.synthesize(quick.to_style(latent), noise)
    assert image.shape == (2, 3, 32, 32) and image.is_contiguous()
    assert all(torch.equal(v, before[k]) for k, v in small.state_dict().items())
    assert accelerate(quick) is quick


def test_accelerate_rejects_other_generators(dcgan):
    with pytest.raises(TypeError, match="StyleGANGenerator"):
        accelerate(dcgan)


def test_bad_shapes_are_named(small):
    quick = accelerate(small)
    latent, noise = _inputs(small)
    with pytest.raises(ValueError, match=r"style must be \[batch, 8, 512\]"):
        quick.synthesize(latent[:, :3], noise)
    with pytest.raises(ValueError, match="expected 8 noise maps"):
        quick.synthesize(latent, noise[:2])


def test_compile_failure_falls_back_to_eager(small, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    latent, noise = _inputs(small)
    plain = accelerate(small).synthesize(small.to_style(latent), noise)
    compiled = accelerate(small, compile=True)
    with caplog.at_level(logging.WARNING, logger=fast.__name__):
        first = compiled.synthesize(small.to_style(latent), noise)
        second = compiled.synthesize(small.to_style(latent), noise)
    assert torch.equal(first, plain) and torch.equal(second, plain)
    warnings = [r for r in caplog.records if "torch.compile unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "no compiler here" in warnings[0].getMessage()  # logged once


class _FailsInBackward(torch.autograd.Function):
    """Stands in for a compiled graph whose lazily compiled backward fails (as Inductor's can)."""

    @staticmethod
    def forward(ctx, image):
        return image.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("InductorError: backward kernel failed to compile")


def _gradients(generator, latent, noise):
    latent = latent.clone().requires_grad_(True)
    noise = [n.clone().requires_grad_(True) for n in noise]
    image = generator.synthesize(generator.to_style(latent), noise)
    image.square().sum().backward()
    return image.detach(), latent.grad, [n.grad for n in noise]


def test_compile_failure_in_the_backward_falls_back_to_eager_gradients(small, monkeypatch, caplog):
    def compile_with_bad_backward(function, **kwargs):
        return lambda style, maps: _FailsInBackward.apply(function(style, maps))

    monkeypatch.setattr(torch, "compile", compile_with_bad_backward)
    latent, noise = _inputs(small)
    image, latent_grad, noise_grads = _gradients(accelerate(small), latent, noise)
    compiled = accelerate(small, compile=True)
    with caplog.at_level(logging.WARNING, logger=fast.__name__):
        for _ in range(2):  # the second step runs eager from the start
            got_image, got_latent_grad, got_noise_grads = _gradients(compiled, latent, noise)
            assert torch.equal(got_image, image) and torch.equal(got_latent_grad, latent_grad)
            assert all(torch.equal(a, b) for a, b in zip(got_noise_grads, noise_grads, strict=True))
    assert compiled._compile_failed
    warnings = [r for r in caplog.records if "torch.compile unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "InductorError" in warnings[0].getMessage()


def test_out_of_memory_in_the_compiled_path_propagates_and_keeps_compile_on(small, monkeypatch):
    def compile_that_runs_out_of_memory(function, **kwargs):
        def run(style, maps):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

        return run

    monkeypatch.setattr(torch, "compile", compile_that_runs_out_of_memory)
    latent, noise = _inputs(small)
    compiled = accelerate(small, compile=True)
    with pytest.raises(torch.cuda.OutOfMemoryError):  # batch_size=auto must see it to stop doubling
        _gradients(compiled, latent, noise)
    assert not compiled._compile_failed  # a smaller batch still runs compiled


def test_solver_gives_the_same_results_with_the_fast_generator(small):
    """A few search steps end at the same images. Spherical SGD, not Adam: Adam's first steps are
    about ``lr * sign(grad)``, so rounding-level gradient differences on near-zero components would
    flip whole steps (for two summation orders of the faithful port as much as for the fast path)."""
    latent, noise = _inputs(small, batch=2, seed=3)
    with torch.no_grad():
        lr = torch.nn.functional.avg_pool2d((small.synthesize(small.to_style(latent), noise) + 1) / 2, 4).clamp(0, 1)
    settings = SearchSettings(steps=3, bad_noise_layers=[7])
    sgd = partial(SphericalOptimizer, torch.optim.SGD, lr=0.05)
    eager = PulseSolver(small, optimizer=sgd, settings=settings).solve(lr)
    quick = PulseSolver(accelerate(small), optimizer=sgd, settings=settings).solve(lr)
    assert (eager.hr[0] - eager.hr[1]).abs().max() > 0.01  # the samples differ, so matching means something
    torch.testing.assert_close(quick.hr, eager.hr, atol=1e-4, rtol=0)
    torch.testing.assert_close(quick.best_loss, eager.best_loss, atol=1e-5, rtol=1e-4)
    assert torch.equal(quick.best_step, eager.best_step)


# ---------------------------------------------------------------- layered interface (ILO)


def test_layered_interface_matches_the_faithful_port(small):
    quick = accelerate(small)
    assert isinstance(quick, LayeredGenerator) and quick.num_blocks == small.num_blocks
    assert [quick.block_rows(b) for b in range(quick.num_blocks)] == [
        small.block_rows(b) for b in range(small.num_blocks)
    ]
    latent, noise = _inputs(small)
    style = small.to_style(latent)
    with torch.no_grad():
        whole = quick.synthesize(style, noise)
        for cut in range(1, small.num_blocks):
            expected = small.forward_blocks(None, style, noise, 0, cut)
            features = quick.forward_blocks(None, style, noise, 0, cut)
            torch.testing.assert_close(features, expected, atol=1e-4, rtol=0)
            end = small.num_blocks
            expected_image = small.features_to_image(small.forward_blocks(expected, style, noise, cut, end))
            image = quick.features_to_image(quick.forward_blocks(features, style, noise, cut, end))
            torch.testing.assert_close(image, expected_image, atol=1e-4, rtol=0)
            torch.testing.assert_close(image, whole, atol=1e-5, rtol=0)  # folded toRGB == separate toRGB


def test_ilo_runs_on_the_fast_generator_like_on_the_faithful_one(small):
    latent, noise = _inputs(small, batch=2, seed=3)
    with torch.no_grad():
        lr = torch.nn.functional.avg_pool2d((small.synthesize(small.to_style(latent), noise) + 1) / 2, 4).clamp(0, 1)
    settings, stages = SearchSettings(steps=4, bad_noise_layers=[7]), ILOSettings(blocks=[1, 2], steps=3)
    eager = ILOSolver(PulseSolver(small, settings=settings), stages).solve(lr)
    quick = ILOSolver(PulseSolver(accelerate(small), settings=settings), stages).solve(lr)
    assert torch.isfinite(quick.downscale_error).all()
    # Adam amplifies rounding differences step by step (see the solver test above), so: close, not equal.
    torch.testing.assert_close(quick.downscale_error, eager.downscale_error, atol=2e-3, rtol=0.2)


# ---------------------------------------------------------------- mixed precision


class _ConvolutionDtypes(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the input dtype of every convolution (forward and backward) dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.convolution_backward):
            self.dtypes.append(args[0].dtype)
        return func(*args, **(kwargs or {}))


def test_autocast_runs_the_convolutions_in_its_dtype_and_the_rest_in_float32(small):
    """Lightning's bf16-mixed wraps the search in autocast; the hand-written layers used to crash there."""
    latent, noise = _inputs(small, batch=2)
    quick = accelerate(small)
    image32, latent_grad32, _ = _forward_backward(quick, latent, noise)
    with torch.autocast("cpu", dtype=torch.bfloat16), _ConvolutionDtypes() as seen:
        image16, latent_grad16, noise_grads16 = _forward_backward(quick, latent, noise)
    assert seen.dtypes and set(seen.dtypes) == {torch.bfloat16}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, faithful_grad16, _ = _forward_backward(small, latent, noise)
    # bfloat16 keeps about 3 significant digits: near the float32 result, not equal to it. Through 8
    # layers the latent gradient is 10-25% off (max-normalised) for the faithful port's bf16 run too.
    assert 1e-4 < _rel_error(image16, image32) < 0.05
    assert _rel_error(latent_grad16, latent_grad32) < min(0.5, 3 * _rel_error(faithful_grad16, latent_grad32))
    assert all(torch.isfinite(g).all() for g in noise_grads16)


def test_backward_under_autocast_is_the_backward_of_what_the_forward_computed(small, monkeypatch):
    # Lightning's bf16-mixed runs the whole predict step, .backward() included, inside autocast, which
    # recast autograd's float32 formulas (the style GEMMs) and the hand-written backward to bf16.
    from pulse.solvers.pulse import BestTracker

    latent, noise = _inputs(small, batch=2)
    quick = accelerate(small)
    states = []
    original = fast._StyledConv._backward

    def spy(ctx, grad):
        states.append((torch.is_autocast_enabled("cpu"), grad.dtype))  # float32: the forward's output dtype
        return original(ctx, grad)

    monkeypatch.setattr(fast._StyledConv, "_backward", staticmethod(spy))
    grads = []
    for backward_in_autocast in (True, False):
        variable = latent.clone().requires_grad_(True)
        tracker = BestTracker(2, small.resolution, variable, noise, 1e-3, torch.device("cpu"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            image = quick.synthesize(quick.to_style(variable), noise)
            total = image.float().square().mean(dim=(1, 2, 3))
            if backward_in_autocast:
                tracker.backward(total, [variable])
        if not backward_in_autocast:
            tracker.backward(total, [variable])
        grads.append(variable.grad)
    assert states and set(states) == {(False, torch.float32)}
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_solver_under_autocast_with_the_fast_generator(small):
    latent, noise = _inputs(small, batch=2, seed=3)
    with torch.no_grad():
        lr = torch.nn.functional.avg_pool2d((small.synthesize(small.to_style(latent), noise) + 1) / 2, 4).clamp(0, 1)
    settings = SearchSettings(steps=5, bad_noise_layers=[7])
    full = PulseSolver(accelerate(small), settings=settings).solve(lr)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = PulseSolver(accelerate(small), settings=settings).solve(lr)
    assert mixed.hr.dtype == torch.float32 and torch.isfinite(mixed.downscale_error).all()
    torch.testing.assert_close(mixed.downscale_error, full.downscale_error, atol=5e-3, rtol=0.2)


# ---------------------------------------------------------------- early stop (pulse.solvers.pulse)


def _search(generator, **settings):
    lr = torch.full((1, 3, 8, 8), 0.5)
    return PulseSolver(generator, PulseLoss({"l2": 100}), settings=SearchSettings(**settings)).solve(lr)


def test_early_stop_off_or_never_triggered_changes_nothing(dcgan):
    default = _search(dcgan, steps=4)
    never = _search(dcgan, steps=4, early_stop_patience=100)  # the code path runs, nobody freezes
    assert torch.equal(default.hr, never.hr)
    assert torch.equal(default.latent, never.latent)
    assert [h["loss"] for h in default.history] == [h["loss"] for h in never.history]


def test_early_stop_freezes_samples_at_eps_that_plateau(dcgan):
    # eps=1: every sample is at eps from step 0; rtol=1: no step counts as progress after the first.
    free = _search(dcgan, steps=10, eps=1.0, schedule="fixed")
    stopped = _search(dcgan, steps=40, eps=1.0, schedule="fixed", early_stop_patience=2, early_stop_rtol=1.0)
    losses = [h["loss"] for h in stopped.history]
    free_losses = [h["loss"] for h in free.history]
    assert len(losses) == 10  # all frozen: the batch ends at the next periodic check (step 9)
    assert losses[:3] == free_losses[:3]  # steps 0-2 evaluated the same trajectory
    assert all(loss == losses[2] for loss in losses[2:])  # frozen after step 2: the variables no longer move
    assert len(set(free_losses[2:10])) > 1  # ... whereas the unconstrained search keeps moving
    assert (stopped.best_step <= 2).all()


def test_early_stop_waits_for_eps(dcgan):
    # Unreachable eps: nobody freezes however flat the loss, so the search runs all its steps.
    stopped = _search(dcgan, steps=11, eps=0.0, early_stop_patience=1, early_stop_rtol=1.0)
    free = _search(dcgan, steps=11, eps=0.0)
    assert len(stopped.history) == 11
    assert torch.equal(stopped.hr, free.hr)


def test_early_stop_settings_are_checked():
    with pytest.raises(ValueError, match="early_stop_patience"):
        SearchSettings(early_stop_patience=-1)


# ---------------------------------------------------------------- config


def test_fast_generator_configs_compose_and_build(small):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import open_dict

    configs = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["generator=stylegan_synthetic_fast"])
        ffhq = compose(config_name="config", overrides=["generator=stylegan_ffhq_fast"])
    assert ffhq.generator._target_ == "pulse.generators.fast.accelerate"
    assert ffhq.generator.generator._target_.endswith("StyleGANGenerator.pretrained")
    with open_dict(cfg):
        cfg.generator.generator.fit_samples = 2000  # what the `small` fixture used
    generator = instantiate(cfg.generator)
    assert isinstance(generator, FastStyleGANGenerator) and generator.resolution == 32
    latent, noise = _inputs(small)
    expected = small.synthesize(small.to_style(latent), noise)
    torch.testing.assert_close(generator.synthesize(generator.to_style(latent), noise), expected, atol=1e-4, rtol=0)
