"""StyleGAN (v1) port: official state-dict layout, layer arithmetic, Gaussian fit, loading."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pulse.generators import stylegan
from pulse.generators.base import Generator, check_generator
from pulse.generators.stylegan import (
    EqualizedConv2d,
    EqualizedLinear,
    Mapping,
    StyleGANGenerator,
    Synthesis,
    UpsampleConv2d,
    cached_gaussian_fit,
    fused_upsample_conv,
    gaussian_fit,
    noise_shapes,
)

SMALL = dict(resolution=32, fmap_base=256, fmap_max=32)
SQRT2 = math.sqrt(2)

# Official FFHQ 1024 synthesis.pt layout, written out from the reference module tree
# (G_synthesis: torgb, then blocks; InputBlock: const, bias, epi1, conv, epi2; GSynthesisBlock:
# conv0_up (+ blur buffer "intermediate.kernel"), epi1, conv1, epi2; LayerEpilogue: noise, style_mod.lin).
# Feature maps min(8192 / 2**stage, 512): block -> (in_channels, out_channels).
OFFICIAL_1024_CHANNELS = {
    "8x8": (512, 512),
    "16x16": (512, 512),
    "32x32": (512, 512),
    "64x64": (512, 256),
    "128x128": (256, 128),
    "256x256": (128, 64),
    "512x512": (64, 32),
    "1024x1024": (32, 16),
}


def _epilogue_keys(prefix: str, channels: int) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (f"{prefix}.noise.weight", (channels,)),
        (f"{prefix}.style_mod.lin.weight", (2 * channels, 512)),
        (f"{prefix}.style_mod.lin.bias", (2 * channels,)),
    ]


def official_1024_synthesis_layout() -> list[tuple[str, tuple[int, ...]]]:
    keys = [("torgb.weight", (3, 16, 1, 1)), ("torgb.bias", (3,))]
    keys += [("blocks.4x4.const", (1, 512, 4, 4)), ("blocks.4x4.bias", (512,))]
    keys += _epilogue_keys("blocks.4x4.epi1", 512)
    keys += [("blocks.4x4.conv.weight", (512, 512, 3, 3)), ("blocks.4x4.conv.bias", (512,))]
    keys += _epilogue_keys("blocks.4x4.epi2", 512)
    for name, (c_in, c_out) in OFFICIAL_1024_CHANNELS.items():
        block = f"blocks.{name}"
        keys += [
            (f"{block}.conv0_up.weight", (c_out, c_in, 3, 3)),
            (f"{block}.conv0_up.bias", (c_out,)),
            (f"{block}.conv0_up.intermediate.kernel", (1, 1, 3, 3)),
        ]
        keys += _epilogue_keys(f"{block}.epi1", c_out)
        keys += [(f"{block}.conv1.weight", (c_out, c_out, 3, 3)), (f"{block}.conv1.bias", (c_out,))]
        keys += _epilogue_keys(f"{block}.epi2", c_out)
    return keys


@pytest.fixture(scope="module")
def synthetic() -> StyleGANGenerator:
    return StyleGANGenerator.synthetic()


def _inputs(generator, batch: int, seed: int = 1):
    rng = torch.Generator().manual_seed(seed)
    latent = torch.randn(batch, generator.num_latents, generator.latent_dim, generator=rng)
    latent = latent / latent.norm(dim=-1, keepdim=True) * math.sqrt(generator.latent_dim)
    noise = [torch.randn(batch, *shape, generator=rng) for shape in generator.noise_shapes]
    return latent, noise


def _small_mapping(seed: int = 0) -> Mapping:
    torch.manual_seed(seed)
    return Mapping(latent_size=16, dlatent_size=16, mapping_layers=3, mapping_fmaps=16)


# ---------------------------------------------------------------- official layout


def test_synthesis_1024_state_dict_matches_official_layout():
    with torch.device("meta"):  # layout only: no memory, no init cost
        synthesis = Synthesis()
    actual = [(key, tuple(value.shape)) for key, value in synthesis.state_dict().items()]
    expected = official_1024_synthesis_layout()
    assert len(expected) == 100
    assert actual == expected  # same keys, shapes and order
    assert synthesis.num_layers == 18 and synthesis.resolution == 1024
    shapes = dict(actual)
    assert shapes["blocks.4x4.const"] == (1, 512, 4, 4)
    assert shapes["blocks.128x128.conv0_up.weight"] == (128, 256, 3, 3)  # first fused-upsample layer
    assert shapes["torgb.weight"] == (3, 16, 1, 1)


def test_mapping_state_dict_matches_official_layout():
    with torch.device("meta"):
        mapping = Mapping()
    expected = []
    for i in range(8):
        expected += [(f"dense{i}.weight", (512, 512)), (f"dense{i}.bias", (512,))]
    assert [(k, tuple(v.shape)) for k, v in mapping.state_dict().items()] == expected


def test_noise_shapes():
    shapes = noise_shapes(18)
    assert len(shapes) == 18
    assert shapes[:4] == [(1, 4, 4), (1, 4, 4), (1, 8, 8), (1, 8, 8)]
    assert shapes[-1] == (1, 1024, 1024)
    assert noise_shapes(Synthesis(**SMALL).num_layers) == [(1, r, r) for r in (4, 4, 8, 8, 16, 16, 32, 32)]


def test_bad_resolution_rejected():
    with pytest.raises(ValueError, match="power of two"):
        Synthesis(resolution=48)


# ---------------------------------------------------------------- layer arithmetic


def test_equalized_linear_scaling():
    layer = EqualizedLinear(20, 6, gain=math.sqrt(2), lr_multiplier=0.01)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(4, 20)
    expected = x @ (layer.weight * math.sqrt(2) / math.sqrt(20) * 0.01).T + layer.bias * 0.01
    torch.testing.assert_close(layer(x), expected)
    # The reference init stores N(0, 1/lr_mul^2) weights, so the effective weight is He-scaled.
    assert 50 < layer.weight.std().item() < 200


def test_equalized_conv_scaling():
    conv = EqualizedConv2d(5, 7, 3, gain=math.sqrt(2))
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 5, 6, 6)
    expected = F.conv2d(x, conv.weight * math.sqrt(2) / math.sqrt(5 * 9), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected)


def test_fused_upsample_is_nearest_upsample_then_flipped_conv():
    """The reference's 4x4 summed-kernel transposed conv == nearest x2 + 3x3 conv with the flipped kernel."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, generator=gen, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    fused = fused_upsample_conv(x, weight)
    up = F.interpolate(x, scale_factor=2, mode="nearest")
    assert fused.shape == (2, 4, 10, 12)
    torch.testing.assert_close(fused, F.conv2d(up, weight.flip(-1, -2), padding=1), rtol=1e-12, atol=1e-12)
    # ...and the flip matters: it is not the same as the unflipped conv (why the switch must be kept).
    assert (fused - F.conv2d(up, weight, padding=1)).abs().max() > 1e-2


@pytest.mark.parametrize("side, fused", [(32, False), (64, True)])
def test_upsample_conv_switches_to_fused_at_128(side, fused):
    layer = UpsampleConv2d(3, 4, gain=math.sqrt(2)).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(1, 3, side, side, dtype=torch.float64)
    weight = layer.weight * math.sqrt(2) / math.sqrt(3 * 9)
    kernel = weight.flip(-1, -2) if fused else weight
    conv = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), kernel, padding=1)
    blur = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    blur = (blur[:, None] * blur[None, :] / 16).expand(4, 1, 3, 3)
    expected = F.conv2d(conv, blur, padding=1, groups=4) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


def _manual_synthesis_8px(state: dict, dlatents: torch.Tensor, noise: list) -> torch.Tensor:
    """Independent plain-torch forward of an 8 px synthesis from its state dict."""

    def lin(x, prefix):  # style linear: gain 1, He scaling over 512 inputs
        return x @ (state[f"{prefix}.weight"] / math.sqrt(x.shape[1])).T + state[f"{prefix}.bias"]

    def conv(x, prefix, gain=SQRT2):
        w = state[f"{prefix}.weight"]
        return F.conv2d(x, w * gain / math.sqrt(w[0].numel()), padding=w.shape[-1] // 2)

    def epilogue(x, prefix, w, n):
        x = x + state[f"{prefix}.noise.weight"].view(1, -1, 1, 1) * n
        x = torch.where(x >= 0, x, 0.2 * x)
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
        x = (x - mean) / torch.sqrt(var + 1e-5)
        scale, shift = lin(w, f"{prefix}.style_mod.lin").chunk(2, dim=1)
        return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]

    b4, b8 = "blocks.4x4", "blocks.8x8"
    x = state[f"{b4}.const"].expand(dlatents.shape[0], -1, -1, -1) + state[f"{b4}.bias"].view(1, -1, 1, 1)
    x = epilogue(x, f"{b4}.epi1", dlatents[:, 0], noise[0])
    x = conv(x, f"{b4}.conv") + state[f"{b4}.conv.bias"].view(1, -1, 1, 1)
    x = epilogue(x, f"{b4}.epi2", dlatents[:, 1], noise[1])
    x = conv(x.repeat_interleave(2, 2).repeat_interleave(2, 3), f"{b8}.conv0_up")
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    x = F.conv2d(x, k.expand(x.shape[1], 1, 3, 3), padding=1, groups=x.shape[1])
    x = x + state[f"{b8}.conv0_up.bias"].view(1, -1, 1, 1)
    x = epilogue(x, f"{b8}.epi1", dlatents[:, 2], noise[2])
    x = conv(x, f"{b8}.conv1") + state[f"{b8}.conv1.bias"].view(1, -1, 1, 1)
    x = epilogue(x, f"{b8}.epi2", dlatents[:, 3], noise[3])
    return conv(x, "torgb", gain=1.0) + state["torgb.bias"].view(1, -1, 1, 1)


def test_synthesis_matches_independent_forward():
    torch.manual_seed(0)
    synthesis = Synthesis(resolution=8, fmap_base=64, fmap_max=16)
    with torch.no_grad():  # non-trivial biases and noise strengths so every term is exercised
        for name, param in synthesis.named_parameters():
            if param.dim() == 1 or name.endswith("const"):
                param.add_(0.3 * torch.randn_like(param))
    dlatents = torch.randn(2, 4, 512)
    noise = [torch.randn(2, *shape) for shape in noise_shapes(4)]
    expected = _manual_synthesis_8px(synthesis.state_dict(), dlatents, noise)
    torch.testing.assert_close(synthesis(dlatents, noise), expected, rtol=1e-4, atol=1e-4)


def test_mapping_matches_independent_forward():
    mapping = _small_mapping()
    z = torch.randn(5, 16)
    x = z / torch.sqrt((z**2).mean(dim=1, keepdim=True) + 1e-8)
    for i in range(3):
        w, b = getattr(mapping, f"dense{i}").weight, getattr(mapping, f"dense{i}").bias
        x = F.leaky_relu(x @ (w * math.sqrt(2) / 4 * 0.01).T + 0.01 * b, 0.2)
    torch.testing.assert_close(mapping(z), x)


# ---------------------------------------------------------------- generator wrapper


def test_synthetic_follows_generator_protocol(synthetic):
    assert isinstance(check_generator(synthetic), Generator)
    assert (synthetic.resolution, synthetic.num_latents, synthetic.latent_dim) == (32, 8, 512)
    assert synthetic.noise_shapes == noise_shapes(8)
    assert not any(p.requires_grad for p in synthetic.parameters())
    assert synthetic.mean.shape == synthetic.std.shape == (512,)
    assert (synthetic.std > 0).all()


def test_to_style_is_shifted_scaled_leaky_relu(synthetic):
    latent = torch.randn(2, 8, 512)
    expected = latent * synthetic.std + synthetic.mean
    expected = torch.where(expected >= 0, expected, 0.2 * expected)
    torch.testing.assert_close(synthetic.to_style(latent), expected)


def test_small_forward_shape_range_and_gradients(synthetic):
    latent, noise = _inputs(synthetic, batch=2)
    latent.requires_grad_(True)
    for n in noise:
        n.requires_grad_(True)
    images = synthetic.synthesize(synthetic.to_style(latent), noise)
    assert images.shape == (2, 3, 32, 32)
    assert torch.isfinite(images).all()
    assert 0.05 < images.std().item() < 1.5  # not degenerate, roughly in [-1, 1]
    assert images.abs().quantile(0.95).item() < 2.0
    assert (images[0] - images[1]).abs().mean() > 1e-3  # different latents, different images
    images.square().mean().backward()
    assert latent.grad is not None and torch.isfinite(latent.grad).all() and latent.grad.abs().sum() > 0
    for n in noise:
        assert n.grad is not None and torch.isfinite(n.grad).all() and n.grad.abs().sum() > 0


def test_synthetic_is_seeded():
    a = StyleGANGenerator.synthetic(seed=3, fit_samples=256)
    b = StyleGANGenerator.synthetic(seed=3, fit_samples=256)
    c = StyleGANGenerator.synthetic(seed=4, fit_samples=256)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.synthesis.torgb.weight, c.synthesis.torgb.weight)
    assert not torch.equal(a.mean, c.mean)


def test_wrong_latent_shape_is_explained(synthetic):
    with pytest.raises(ValueError, match=r"\[batch, 8, 512\]"):
        synthetic.synthesize(torch.zeros(1, 18, 512), None)


# ---------------------------------------------------------------- gaussian fit


def test_gaussian_fit_matches_direct_computation():
    mapping = _small_mapping()
    fit = gaussian_fit(mapping, num_samples=3000, seed=5, batch_size=700, progress=False)
    z = torch.randn(3000, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = F.leaky_relu(mapping(z), negative_slope=5).double()
    torch.testing.assert_close(fit["mean"], y.mean(0).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fit["std"], y.std(0).float(), rtol=1e-5, atol=1e-6)  # unbiased (n-1)
    assert fit["mean"].dtype == torch.float32 and fit["mean"].shape == (16,)


def test_gaussian_fit_batch_size_invariant_and_seeded():
    mapping = _small_mapping()
    a = gaussian_fit(mapping, num_samples=1000, seed=0, batch_size=7, progress=False)
    b = gaussian_fit(mapping, num_samples=1000, seed=0, batch_size=4096, progress=False)
    c = gaussian_fit(mapping, num_samples=1000, seed=1, batch_size=4096, progress=False)
    for key in ("mean", "std"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-6)
        assert not torch.allclose(a[key], c[key])
    with pytest.raises(ValueError):
        gaussian_fit(mapping, num_samples=1, progress=False)


def test_cached_gaussian_fit_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("PULSE_CACHE", str(tmp_path))
    mapping = _small_mapping()
    first = cached_gaussian_fit(mapping, num_samples=500, seed=0)
    files = list((tmp_path / "gaussian_fit").glob("*.pt"))
    assert len(files) == 1 and len(files[0].stem) == 64

    def no_recompute(*args, **kwargs):
        raise AssertionError("cache was not used")

    monkeypatch.setattr(stylegan, "gaussian_fit", no_recompute)
    second = cached_gaussian_fit(mapping, num_samples=500, seed=0)
    for key in ("mean", "std"):
        assert torch.equal(first[key], second[key])
    monkeypatch.undo()

    # Different weights, samples or seed -> a different entry; explicit cache_root is honoured.
    monkeypatch.setenv("PULSE_CACHE", str(tmp_path))
    cached_gaussian_fit(mapping, num_samples=400, seed=0)
    cached_gaussian_fit(mapping, num_samples=500, seed=1)
    cached_gaussian_fit(_small_mapping(seed=1), num_samples=500, seed=0)
    assert len(list((tmp_path / "gaussian_fit").glob("*.pt"))) == 4
    cached_gaussian_fit(mapping, num_samples=500, seed=0, cache_root=tmp_path / "other")
    assert len(list((tmp_path / "other" / "gaussian_fit").glob("*.pt"))) == 1


# ---------------------------------------------------------------- pretrained loading


def test_pretrained_missing_files_named(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        StyleGANGenerator.pretrained(tmp_path)
    message = str(info.value)
    assert "synthesis.pt" in message and "mapping.pt" in message and "gaussian_fit.pt" in message
    assert str(tmp_path) in message and "scripts/fetch_weights.py ffhq" in message

    torch.save(Synthesis(**SMALL).state_dict(), tmp_path / "synthesis.pt")
    with pytest.raises(FileNotFoundError, match=r"missing in .*: mapping\.pt \(or gaussian_fit\.pt\)\."):
        StyleGANGenerator.pretrained(tmp_path, **SMALL)


def test_pretrained_default_folder_is_in_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PULSE_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="stylegan_ffhq"):
        StyleGANGenerator.pretrained()


def test_pretrained_round_trip_with_gaussian_fit(synthetic, tmp_path):
    torch.save(synthetic.synthesis.state_dict(), tmp_path / "synthesis.pt")
    torch.save({"mean": synthetic.mean.clone(), "std": synthetic.std.clone()}, tmp_path / "gaussian_fit.pt")
    loaded = StyleGANGenerator.pretrained(tmp_path, **SMALL)
    latent, noise = _inputs(synthetic, batch=2)
    with torch.no_grad():
        expected = synthetic.synthesize(synthetic.to_style(latent), noise)
        actual = loaded.synthesize(loaded.to_style(latent), noise)
    assert torch.equal(actual, expected)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_pretrained_with_mapping_computes_and_caches_fit(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("PULSE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    mapping = Mapping()
    torch.save(synthetic.synthesis.state_dict(), tmp_path / "synthesis.pt")
    torch.save(mapping.state_dict(), tmp_path / "mapping.pt")
    loaded = StyleGANGenerator.pretrained(tmp_path, fit_samples=300, progress=False, **SMALL)
    fit = gaussian_fit(mapping, num_samples=300, seed=0, progress=False)
    torch.testing.assert_close(loaded.mean, fit["mean"])
    torch.testing.assert_close(loaded.std, fit["std"])
    assert len(list((tmp_path / "cache" / "gaussian_fit").glob("*.pt"))) == 1


def test_pretrained_rejects_non_state_dict_and_wrong_layout(tmp_path):
    torch.save({"mean": torch.zeros(512), "std": torch.ones(512)}, tmp_path / "gaussian_fit.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "synthesis.pt")  # a pickled module, not a state dict
    with pytest.raises(RuntimeError, match="synthesis.pt"):
        StyleGANGenerator.pretrained(tmp_path, **SMALL)
    torch.save(Synthesis(resolution=16, fmap_base=64, fmap_max=16).state_dict(), tmp_path / "synthesis.pt")
    with pytest.raises(RuntimeError, match="synthesis.pt.*does not match"):
        StyleGANGenerator.pretrained(tmp_path, **SMALL)


# ---------------------------------------------------------------- full size


@pytest.mark.slow
def test_full_1024_forward_backward_is_finite():
    torch.manual_seed(0)
    generator = StyleGANGenerator(Synthesis(), {"mean": torch.zeros(512), "std": torch.ones(512)})
    assert (generator.resolution, generator.num_latents) == (1024, 18)
    latent, noise = _inputs(generator, batch=1)
    latent.requires_grad_(True)
    images = generator.synthesize(generator.to_style(latent), noise)
    assert images.shape == (1, 3, 1024, 1024) and torch.isfinite(images).all()
    images.square().mean().backward()
    assert torch.isfinite(latent.grad).all() and latent.grad.abs().sum() > 0
