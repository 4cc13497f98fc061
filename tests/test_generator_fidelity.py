"""Generator details found by checking against NVIDIA's own code (issue 22): the instance-norm epsilon,
StyleGAN (v1) files of other layouts, and StyleGAN2 architectures we do not implement."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pulse.generators import stylegan2
from pulse.generators.fast import FastStyleGANGenerator, accelerate
from pulse.generators.stylegan import (
    INSTANCE_NORM_EPS,
    NVIDIA_INSTANCE_NORM_EPS,
    LayerEpilogue,
    Mapping,
    StyleGANGenerator,
    Synthesis,
    gaussian_fit,
    mapping_layout,
    synthesis_layout,
)
from pulse.generators.stylegan2 import StyleGAN2Generator

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
SMALL = dict(resolution=32, fmap_base=256, fmap_max=32)


def _inputs(generator, batch: int = 2, seed: int = 1, dtype=torch.float32):
    rng = torch.Generator().manual_seed(seed)
    latent = torch.randn(batch, generator.num_latents, generator.latent_dim, generator=rng, dtype=torch.float64)
    latent = latent / latent.norm(dim=-1, keepdim=True) * math.sqrt(generator.latent_dim)
    noise = [
        torch.randn(batch, *shape, generator=rng, dtype=torch.float64).to(dtype) for shape in generator.noise_shapes
    ]
    return latent.to(dtype), noise


def _image(generator, dtype=torch.float32) -> torch.Tensor:
    latent, noise = _inputs(generator, dtype=dtype)
    with torch.no_grad():
        return generator.synthesize(generator.to_style(latent), noise)


@pytest.fixture(scope="module")
def generators() -> dict[float, StyleGANGenerator]:
    """The same seeded weights with the official PULSE, NVIDIA's and an exaggerated epsilon, in float64."""
    return {
        eps: StyleGANGenerator.synthetic(**SMALL, fit_samples=500, instance_norm_eps=eps).double()
        for eps in (INSTANCE_NORM_EPS, NVIDIA_INSTANCE_NORM_EPS, 0.5)
    }


# ---------------------------------------------------------------- 1. instance-norm epsilon


def test_default_epsilon_is_official_pulse_and_nvidia_is_1e_8():
    assert INSTANCE_NORM_EPS == 1e-5 and NVIDIA_INSTANCE_NORM_EPS == 1e-8
    generator = StyleGANGenerator.synthetic(**SMALL, fit_samples=100)
    assert generator.instance_norm_eps == 1e-5
    assert {m.instance_norm_eps for m in generator.modules() if isinstance(m, LayerEpilogue)} == {1e-5}
    # A setting, not a weight: the official files' keys are unchanged.
    assert not any("eps" in key for key in generator.synthesis.state_dict())


def test_epilogue_normalises_with_its_epsilon():
    torch.manual_seed(0)
    for eps in (1e-5, 1e-8, 0.3):
        epilogue = LayerEpilogue(4, 8, instance_norm_eps=eps).double()
        x, noise, dlatent = (
            torch.randn(2, 4, 5, 5).double(),
            torch.randn(2, 1, 5, 5).double(),
            torch.randn(2, 8).double(),
        )
        with torch.no_grad():
            epilogue.noise.weight.copy_(torch.rand(4))
            got = epilogue(x, dlatent, noise)
            y = F.leaky_relu(x + epilogue.noise.weight.view(1, -1, 1, 1) * noise, 0.2)
            mean, var = y.mean(dim=(2, 3), keepdim=True), y.var(dim=(2, 3), unbiased=False, keepdim=True)
            style = epilogue.style_mod.lin(dlatent).view(2, 2, 4, 1, 1)
            expected = (y - mean) / torch.sqrt(var + eps) * (style[:, 0] + 1) + style[:, 1]
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_epsilon_changes_the_image_and_the_fast_path_follows_it(generators):
    images = {eps: _image(g, torch.float64) for eps, g in generators.items()}
    # The epsilons give different images (far above float64 rounding) ...
    assert (images[1e-5] - images[1e-8]).abs().max() > 1e-9
    assert (images[1e-5] - images[0.5]).abs().max() > 1e-2
    # ... and the fast path computes the same function as the faithful port for each of them.
    for eps, generator in generators.items():
        fast = accelerate(generator)
        assert fast.instance_norm_eps == eps
        assert all(layer.spec.instance_norm_eps == eps for layer in fast.layers)
        torch.testing.assert_close(_image(fast, torch.float64), images[eps], rtol=0, atol=1e-10)


def test_fast_path_gradients_follow_the_epsilon(generators):
    """The hand-written backward of the fast path matches autograd of the faithful port, for each epsilon."""
    grads = {}
    for eps in (1e-8, 0.5):
        for name, generator in (("eager", generators[eps]), ("fast", accelerate(generators[eps]))):
            latent, noise = _inputs(generator, dtype=torch.float64)
            latent.requires_grad_(True)
            image = generator.synthesize(generator.to_style(latent), noise)
            (image * torch.linspace(-1, 1, image.numel(), dtype=image.dtype).view_as(image)).sum().backward()
            grads[name, eps] = latent.grad
        torch.testing.assert_close(grads["fast", eps], grads["eager", eps], rtol=1e-9, atol=1e-12)
    assert (grads["eager", 1e-8] - grads["eager", 0.5]).abs().max() > 1e-3


def test_float32_fast_path_matches_the_eager_port_with_nvidia_epsilon():
    eager = StyleGANGenerator.synthetic(**SMALL, fit_samples=500, instance_norm_eps=1e-8)
    torch.testing.assert_close(_image(FastStyleGANGenerator(eager)), _image(eager), rtol=0, atol=1e-4)


@pytest.mark.parametrize("eps", [0, -1e-8, float("nan"), float("inf")])
def test_bad_epsilon_is_named(eps):
    with pytest.raises(ValueError, match="instance_norm_eps must be a finite number > 0"):
        StyleGANGenerator.synthetic(**SMALL, fit_samples=100, instance_norm_eps=eps)


@pytest.mark.parametrize("config", ["stylegan_synthetic", "stylegan_synthetic_fast"])
def test_epsilon_is_a_generator_config_option(config):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import open_dict

    key = "generator.instance_norm_eps" if config == "stylegan_synthetic" else "generator.generator.instance_norm_eps"
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        default = compose(config_name="config", overrides=[f"generator={config}"])
        nvidia = compose(config_name="config", overrides=[f"generator={config}", f"{key}=1e-8"])
        ffhq = compose(config_name="config", overrides=[f"generator={config.replace('synthetic', 'ffhq')}"])
    nested = (lambda c: c.generator) if config == "stylegan_synthetic" else (lambda c: c.generator.generator)
    assert nested(default).instance_norm_eps == 1e-5 and nested(ffhq).instance_norm_eps == 1e-5
    with open_dict(nvidia):
        nested(nvidia).fit_samples = 100
    assert instantiate(nvidia.generator).instance_norm_eps == 1e-8


def test_pretrained_takes_the_epsilon(tmp_path):
    synthetic = StyleGANGenerator.synthetic(**SMALL, fit_samples=100)
    torch.save(synthetic.synthesis.state_dict(), tmp_path / "synthesis.pt")
    torch.save({"mean": synthetic.mean, "std": synthetic.std}, tmp_path / "gaussian_fit.pt")
    loaded = StyleGANGenerator.pretrained(tmp_path, instance_norm_eps=1e-8)
    assert loaded.instance_norm_eps == 1e-8
    reference = StyleGANGenerator.synthetic(**SMALL, fit_samples=100, instance_norm_eps=1e-8)
    torch.testing.assert_close(_image(loaded), _image(reference), rtol=0, atol=0)


# ---------------------------------------------------------------- 2. StyleGAN (v1) files of other layouts


@pytest.mark.parametrize(
    "layout",
    [
        dict(resolution=1024),  # official FFHQ (fmap_base 8192, fmap_max 512)
        dict(resolution=256, fmap_base=4096, fmap_max=256),
        dict(resolution=32, fmap_base=256, fmap_max=32, dlatent_size=64, num_channels=1),
        dict(resolution=16, fmap_base=16, fmap_max=64),  # every stage below the cap
        dict(resolution=8, fmap_base=1 << 20, fmap_max=16),  # every stage capped
    ],
)
def test_synthesis_layout_is_read_off_the_shapes(layout):
    with torch.device("meta"):
        state = Synthesis(**layout).state_dict()
    inferred = synthesis_layout(state)
    with torch.device("meta"):
        rebuilt = Synthesis(**inferred).state_dict()
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in state.items()}
    assert inferred["resolution"] == layout["resolution"]


def test_mapping_layout_is_read_off_the_shapes():
    for layout in (dict(), dict(latent_size=128, dlatent_size=256, mapping_layers=4, mapping_fmaps=64)):
        with torch.device("meta"):
            state = Mapping(**layout).state_dict()
        expected = {"latent_size": 512, "dlatent_size": 512, "mapping_layers": 8, "mapping_fmaps": 512, **layout}
        assert mapping_layout(state) == expected


def test_pretrained_builds_another_mapping_width_and_resolution_from_the_files(tmp_path):
    """A converted non-FFHQ network: 64 px, another feature-map rule, a 4-layer mapping of width 128."""
    torch.manual_seed(0)
    synthesis = Synthesis(resolution=64, fmap_base=512, fmap_max=64)
    mapping = Mapping(mapping_layers=4, mapping_fmaps=128)
    torch.save(synthesis.state_dict(), tmp_path / "synthesis.pt")
    torch.save(mapping.state_dict(), tmp_path / "mapping.pt")
    loaded = StyleGANGenerator.pretrained(tmp_path, fit_samples=300, progress=False)
    assert loaded.resolution == 64 and loaded.num_latents == 10
    fit = gaussian_fit(mapping, num_samples=300, seed=0, progress=False)
    torch.testing.assert_close(loaded.mean, fit["mean"])
    torch.testing.assert_close(loaded.std, fit["std"])
    expected = StyleGANGenerator(synthesis, fit)
    torch.testing.assert_close(_image(loaded), _image(expected), rtol=0, atol=0)


def _one_line_error(tmp_path, match: str) -> str:
    with pytest.raises(RuntimeError, match=match) as info:
        StyleGANGenerator.pretrained(tmp_path, fit_samples=100, progress=False)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_a_mapping_that_fits_no_layout_is_refused_in_one_line(tmp_path):
    torch.save(Synthesis(**SMALL).state_dict(), tmp_path / "synthesis.pt")
    state = Mapping(mapping_layers=3, mapping_fmaps=64).state_dict()
    state["dense1.weight"] = torch.zeros(64, 32)  # does not chain with dense0's 64 outputs
    torch.save(state, tmp_path / "mapping.pt")
    message = _one_line_error(tmp_path, r"mapping\.pt does not match the Mapping layout")
    assert "dense1.weight is [64, 32], expected [64, 64]" in message

    torch.save({"fc0.weight": torch.zeros(4, 4)}, tmp_path / "mapping.pt")
    _one_line_error(tmp_path, r"mapping\.pt: not a StyleGAN \(v1\) mapping state dict")


def test_a_mapping_for_other_styles_is_refused_in_one_line(tmp_path):
    torch.save(Synthesis(**SMALL).state_dict(), tmp_path / "synthesis.pt")
    torch.save(Mapping(dlatent_size=256).state_dict(), tmp_path / "mapping.pt")
    _one_line_error(tmp_path, r"mapping\.pt gives 256 style values, but synthesis\.pt takes 512")


def test_a_synthesis_that_fits_no_layout_is_refused_in_one_line(tmp_path):
    torch.save({"mean": torch.zeros(512), "std": torch.ones(512)}, tmp_path / "gaussian_fit.pt")
    state = Synthesis(**SMALL).state_dict()
    del state["blocks.16x16.conv1.weight"]
    torch.save(state, tmp_path / "synthesis.pt")
    _one_line_error(tmp_path, r"synthesis\.pt: not a StyleGAN \(v1\) synthesis state dict: no blocks\.16x16\.conv1")
    state = Synthesis(**SMALL).state_dict()
    state["blocks.8x8.conv1.weight"] = torch.zeros(7, 32, 3, 3)
    torch.save(state, tmp_path / "synthesis.pt")
    _one_line_error(tmp_path, r"synthesis\.pt: synthesis feature maps \(.*8px: 7.*\) follow no")
    # Explicit sizes are checked against the file, also in one line.
    torch.save(Synthesis(**SMALL).state_dict(), tmp_path / "synthesis.pt")
    with pytest.raises(RuntimeError, match=r"layout asked for \(resolution=64.*missing blocks\.64x64") as info:
        StyleGANGenerator.pretrained(tmp_path, resolution=64, fmap_base=256, fmap_max=32)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- 3. StyleGAN2 'orig' architecture


def _nvidia_names(network) -> dict[str, torch.Tensor]:
    """Flat stylegan2-ada-pytorch tensor names of a 'skip' generator (see tests/test_stylegan2.py)."""
    from tests.test_stylegan2 import nvidia_tensors

    return {
        f"{path}.{key}" if path else key: value
        for path, group in nvidia_tensors(network).items()
        for key, value in group.items()
    }


@pytest.fixture(scope="module")
def tiny2() -> StyleGAN2Generator:
    return StyleGAN2Generator.synthetic(resolution=16, channel_max=8, style_dim=32, n_mlp=2, fit_samples=200)


def test_orig_architecture_is_refused_naming_the_tensors(tiny2, tmp_path, monkeypatch):
    tensors = _nvidia_names(tiny2.network)
    # architecture='orig': toRGB at the last block only (no skip connections between the blocks' images).
    orig = {k: v for k, v in tensors.items() if ".torgb." not in k or k.startswith("synthesis.b16.")}
    assert len(orig) < len(tensors)
    monkeypatch.setattr(stylegan2, "read_nvidia_pkl", lambda path: (orig, None))
    path = tmp_path / "orig.pkl"
    path.write_bytes(b"not read: read_nvidia_pkl is replaced")
    with pytest.raises(RuntimeError, match=r"'orig' architecture") as info:
        StyleGAN2Generator.pretrained(path, fit_samples=100, progress=False)
    message = str(info.value)
    assert "synthesis.b4.torgb" in message and "synthesis.b8.torgb" in message and "\n" not in message
    assert "skip" in message  # what is supported
    # The complete 'skip' generator still loads through the same path.
    monkeypatch.setattr(stylegan2, "read_nvidia_pkl", lambda path: (tensors, None))
    loaded = StyleGAN2Generator.pretrained(path, fit_samples=100, progress=False)
    latent, noise = _inputs(tiny2)
    style = tiny2.to_style(latent)
    with torch.no_grad():
        torch.testing.assert_close(loaded.synthesize(style, noise), tiny2.synthesize(style, noise), rtol=0, atol=0)


def test_rosinality_state_dict_without_every_to_rgb_is_refused_naming_it(tiny2, tmp_path):
    state = copy.deepcopy(tiny2.network.state_dict())
    for key in [k for k in state if k.startswith("to_rgbs.0.")]:
        del state[key]
    torch.save({"g_ema": state}, tmp_path / "partial.pt")
    with pytest.raises(RuntimeError, match=r"to_rgbs\.0") as info:
        StyleGAN2Generator.pretrained(tmp_path / "partial.pt", fit_samples=100, progress=False)
    assert "\n" not in str(info.value)
