"""StyleGAN2 port: rosinality key layout, FIR filtering, layered synthesis, checkpoint loading (.pt / .pkl)."""

import argparse
import copy
import math
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from pulse.data import GeneratedFaces
from pulse.generators.base import Generator, LayeredGenerator, check_generator
from pulse.generators.stylegan2 import (
    ModulatedConv2d,
    StyledConv,
    StyleGAN2Generator,
    StyleGAN2Network,
    ToRGB,
    Upsample,
    config_f_channels,
    load_nvidia_pkl,
    noise_shapes,
    num_styles,
    upfirdn2d,
)
from pulse.solvers.ilo import ILOSettings, ILOSolver
from pulse.solvers.pulse import PulseSolver, SearchSettings

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
# Tiny network for loading tests: 16 px, 8 channels, 32-dim styles, 2 mapping layers.
TINY = dict(resolution=16, channel_base=64, channel_max=8, style_dim=32, n_mlp=2, fit_samples=500)


@pytest.fixture(scope="module")
def synthetic() -> StyleGAN2Generator:
    return StyleGAN2Generator.synthetic(resolution=32, fit_samples=4000)


@pytest.fixture()
def tiny(tmp_path, monkeypatch) -> StyleGAN2Generator:
    monkeypatch.setenv("PULSE_CACHE", str(tmp_path / "cache"))  # gaussian-fit cache stays in the test folder
    return StyleGAN2Generator.synthetic(**TINY, seed=3)


def _inputs(generator, batch: int, seed: int = 1):
    rng = torch.Generator().manual_seed(seed)
    latent = torch.randn(batch, generator.num_latents, generator.latent_dim, generator=rng)
    noise = [torch.randn(batch, *shape, generator=rng) for shape in generator.noise_shapes]
    return generator.to_style(latent), noise


# ---------------------------------------------------------------- layout (facts from rosinality's model.py)


def rosinality_keys(resolution: int, channels: dict[int, int], style_dim: int, n_mlp: int) -> dict[str, tuple]:
    """Expected ``g_ema`` state dict of rosinality's ``Generator(size, style_dim, n_mlp)``: names -> shapes."""

    def modconv(prefix, c_in, c_out, k, blur):
        keys = {
            f"{prefix}.weight": (1, c_out, c_in, k, k),
            f"{prefix}.modulation.weight": (c_in, style_dim),
            f"{prefix}.modulation.bias": (c_in,),
        }
        if blur:
            keys[f"{prefix}.blur.kernel"] = (4, 4)
        return keys

    def styled(prefix, c_in, c_out, up):
        return {
            **modconv(f"{prefix}.conv", c_in, c_out, 3, up),
            f"{prefix}.noise.weight": (1,),
            f"{prefix}.activate.bias": (c_out,),
        }

    def to_rgb(prefix, c_in, up):
        keys = {f"{prefix}.bias": (1, 3, 1, 1), **modconv(f"{prefix}.conv", c_in, 3, 1, False)}
        if up:
            keys[f"{prefix}.upsample.kernel"] = (4, 4)
        return keys

    keys = {}
    for i in range(1, n_mlp + 1):  # style.0 is PixelNorm (no parameters)
        keys[f"style.{i}.weight"] = (style_dim, style_dim)
        keys[f"style.{i}.bias"] = (style_dim,)
    keys["input.input"] = (1, channels[4], 4, 4)
    keys.update(styled("conv1", channels[4], channels[4], False))
    keys.update(to_rgb("to_rgb1", channels[4], False))
    log_size = int(math.log2(resolution))
    for i in range(3, log_size + 1):
        c_in, c_out = channels[2 ** (i - 1)], channels[2**i]
        keys.update(styled(f"convs.{2 * (i - 3)}", c_in, c_out, True))
        keys.update(styled(f"convs.{2 * (i - 3) + 1}", c_out, c_out, False))
        keys.update(to_rgb(f"to_rgbs.{i - 3}", c_out, True))
    for layer in range((log_size - 2) * 2 + 1):
        side = 2 ** ((layer + 5) // 2)
        keys[f"noises.noise_{layer}"] = (1, 1, side, side)
    return keys


def test_config_f_1024_layout_matches_rosinality_g_ema():
    channels = config_f_channels(1024)
    # rosinality channel_multiplier=2 table
    assert channels == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
    with torch.device("meta"):  # layout only: no memory, no init cost
        network = StyleGAN2Network(channels)
    actual = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    assert actual == rosinality_keys(1024, channels, 512, 8)
    assert network.num_layers == 18 == num_styles(1024)
    assert len(noise_shapes(1024)) == 17 and noise_shapes(1024)[-1] == (1, 1024, 1024)


def test_small_layout_matches_rosinality_and_shapes():
    channels = config_f_channels(32, 512, 32)
    assert channels == {4: 32, 8: 32, 16: 32, 32: 16}
    with torch.device("meta"):
        network = StyleGAN2Network(channels, style_dim=64, n_mlp=3)
    assert {k: tuple(v.shape) for k, v in network.state_dict().items()} == rosinality_keys(32, channels, 64, 3)
    assert noise_shapes(32) == [(1, 4, 4), (1, 8, 8), (1, 8, 8), (1, 16, 16), (1, 16, 16), (1, 32, 32), (1, 32, 32)]
    assert num_styles(32) == 8


def test_bad_resolution_rejected():
    with pytest.raises(ValueError, match="power of two"):
        config_f_channels(48)


# ---------------------------------------------------------------- FIR filtering


def fir_matrix(n: int, taps: list[float], up: int, down: int, pad: tuple[int, int]) -> torch.Tensor:
    """1-D upfirdn as an explicit [out, n] matrix, written from the definition (convolution, not correlation)."""
    k = len(taps)
    out_n = (n * up + pad[0] + pad[1] - k) // down + 1
    matrix = torch.zeros(out_n, n, dtype=torch.float64)
    for o in range(out_n):
        for t in range(k):
            q = o * down + t - pad[0]  # index in the zero-inserted, unpadded signal
            if q >= 0 and q % up == 0 and q // up < n:
                matrix[o, q // up] += taps[k - 1 - t]
    return matrix


@pytest.mark.parametrize(
    "up, down, pad", [(2, 1, (2, 1)), (1, 1, (1, 1)), (1, 2, (1, 1)), (2, 1, (1, 1)), (1, 1, (-1, 2))]
)
def test_upfirdn2d_matches_explicit_matrices(up, down, pad):
    rows, cols = [1.0, 2.0, -3.0, 0.5], [0.25, -1.0, 4.0, 2.0]  # asymmetric: catches flips and transposes
    kernel = torch.tensor(rows, dtype=torch.float64)[:, None] * torch.tensor(cols, dtype=torch.float64)[None, :]
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    expected = fir_matrix(5, rows, up, down, pad) @ x @ fir_matrix(6, cols, up, down, pad).T
    torch.testing.assert_close(upfirdn2d(x, kernel, up=up, down=down, pad=pad), expected)


def test_upsample_keeps_a_constant_image_constant_inside():
    upsample = Upsample()
    # Official paddings for the 4-tap kernel: (2, 1) for the skip upsampling, (1, 1) after a transposed conv.
    assert upsample.pad == (2, 1) and ModulatedConv2d(2, 2, 3, 4, upsample=True).blur.pad == (1, 1)
    out = upsample(torch.full((1, 2, 6, 6), 3.0))
    assert out.shape == (1, 2, 12, 12)
    torch.testing.assert_close(out[..., 2:-2, 2:-2], torch.full((1, 2, 8, 8), 3.0))


# ---------------------------------------------------------------- layers


@pytest.mark.parametrize("upsample", [False, True])
def test_modulated_conv_matches_per_sample_reference(upsample):
    torch.manual_seed(0)
    layer = ModulatedConv2d(4, 5, 3, style_dim=6, upsample=upsample)
    x, style = torch.randn(3, 4, 8, 8), torch.randn(3, 6)
    out = layer(x, style)
    assert out.shape == ((3, 5, 16, 16) if upsample else (3, 5, 8, 8))
    for b in range(3):
        s = style[b] @ (layer.modulation.weight * layer.modulation.scale).T + layer.modulation.bias
        w = layer.weight[0] / math.sqrt(4 * 9) * s.view(1, 4, 1, 1)
        w = w / (w.pow(2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8).sqrt()
        if upsample:
            # Transposed stride-2 conv == zero insertion (H -> 2H - 1), pad 2, correlation with the flipped kernel.
            z = torch.zeros(1, 4, 15, 15)
            z[..., ::2, ::2] = x[b : b + 1]
            y = F.conv2d(F.pad(z, (2, 2, 2, 2)), w.flip(2, 3))  # [1, 5, 17, 17]
            y = upfirdn2d(y, layer.blur.kernel, pad=(1, 1))
        else:
            y = F.conv2d(x[b : b + 1], w, padding=1)
        torch.testing.assert_close(out[b : b + 1], y, atol=1e-5, rtol=1e-4)


def test_mapping_matches_independent_forward():
    torch.manual_seed(0)
    network = StyleGAN2Network(config_f_channels(8, 64, 8), style_dim=16, n_mlp=3)
    with torch.no_grad():
        for layer in list(network.style)[1:]:
            layer.bias.normal_()
        z = torch.randn(5, 16)
        x = z / z.pow(2).mean(dim=1, keepdim=True).add(1e-8).sqrt()
        for i in range(1, 4):
            w, b = network.state_dict()[f"style.{i}.weight"], network.state_dict()[f"style.{i}.bias"]
            x = F.leaky_relu(x @ (w * 0.01 / math.sqrt(16)).T + b * 0.01, 0.2) * math.sqrt(2)
        torch.testing.assert_close(network.style(z), x)


def test_styled_conv_adds_noise_before_bias_and_activation():
    torch.manual_seed(0)
    network = StyleGAN2Network(config_f_channels(8, 64, 8), style_dim=16, n_mlp=1)
    layer = network.conv1
    with torch.no_grad():
        layer.noise.weight.fill_(0.7)
        layer.activate.bias.normal_()
        x, style, noise = torch.randn(2, 8, 4, 4), torch.randn(2, 16), torch.randn(2, 1, 4, 4)
        pre = layer.conv(x, style) + 0.7 * noise + layer.activate.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(layer(x, style, noise), F.leaky_relu(pre, 0.2) * math.sqrt(2))


# ---------------------------------------------------------------- the generator


def test_synthetic_follows_layered_protocol(synthetic):
    assert isinstance(check_generator(synthetic), Generator) and isinstance(synthetic, LayeredGenerator)
    assert (synthetic.resolution, synthetic.num_latents, synthetic.latent_dim) == (32, 8, 512)
    assert synthetic.noise_shapes == noise_shapes(32)
    assert not any(p.requires_grad for p in synthetic.parameters())


def test_to_style_is_shifted_scaled_leaky_relu(synthetic):
    z = torch.randn(2, 8, 512)
    expected = F.leaky_relu(z * synthetic.std + synthetic.mean, 0.2)
    torch.testing.assert_close(synthetic.to_style(z), expected)
    # The fit describes leaky_relu(mapping(z), 5): mapping outputs are recovered by to_style of the standardised value.
    with torch.no_grad():
        w = synthetic.network.style(torch.randn(64, 512))
    gaussian = F.leaky_relu(w, 5.0)
    torch.testing.assert_close(synthetic.to_style((gaussian - synthetic.mean) / synthetic.std), w, atol=1e-4, rtol=1e-4)


def test_forward_shape_range_gradients_and_noise(synthetic):
    style, noise = _inputs(synthetic, 2)
    style.requires_grad_(True)
    noise[0].requires_grad_(True)
    image = synthetic.synthesize(style, noise)
    assert image.shape == (2, 3, 32, 32)
    assert image.abs().max() < 3 and 0.05 < image.std() < 1.5  # about [-1, 1]
    image.square().mean().backward()
    assert torch.isfinite(style.grad).all() and style.grad.abs().sum() > 0
    assert noise[0].grad.abs().sum() > 0  # noise strengths are non-zero in the synthetic model
    with torch.no_grad():
        other = synthetic.synthesize(style, [n.detach() * 0 for n in noise])
    assert (other - image).abs().max() > 1e-4


def test_synthesis_follows_rosinality_row_and_noise_order(synthetic):
    """rosinality's loop: conv1(row 0, noise 0), to_rgb1(row 1); then per level i = 1, 3, 5, ...:
    convs(row i, noise i), convs(row i + 1, noise i + 1), to_rgb(row i + 2)."""
    style, noise = _inputs(synthetic, 2)
    net = synthetic.network
    with torch.no_grad():
        out = net.conv1(net.input.input.repeat(2, 1, 1, 1), style[:, 0], noise[0])
        skip = net.to_rgb1(out, style[:, 1])
        i = 1
        for up, conv, to_rgb in zip(net.convs[::2], net.convs[1::2], net.to_rgbs, strict=True):
            out = conv(up(out, style[:, i], noise[i]), style[:, i + 1], noise[i + 1])
            skip = to_rgb(out, style[:, i + 2], skip)
            i += 2
        torch.testing.assert_close(synthetic.synthesize(style, noise), skip)


def test_rows_drive_their_layers(synthetic):
    style, noise = _inputs(synthetic, 1)
    with torch.no_grad():
        base = synthetic.synthesize(style, noise)
        for row in (0, synthetic.num_latents - 1):  # first conv and last toRGB
            changed = style.clone()
            changed[:, row] += 1.0
            assert (synthetic.synthesize(changed, noise) - base).abs().max() > 1e-4


def test_layered_split_equals_full_synthesis(synthetic):
    style, noise = _inputs(synthetic, 2)
    with torch.no_grad():
        full = synthetic.synthesize(style, noise)
        middle = synthetic.forward_blocks(None, style, noise, 0, 2)
        assert middle.shape == (2, 32 + 3, 8, 8)  # conv features + RGB skip image
        split = synthetic.features_to_image(synthetic.forward_blocks(middle, style, noise, 2, synthetic.num_blocks))
    torch.testing.assert_close(split, full)
    assert synthetic.num_blocks == 4
    assert [synthetic.block_rows(b) for b in range(4)] == [slice(0, 2), slice(1, 4), slice(3, 6), slice(5, 8)]


def test_synthetic_is_seeded():
    a = StyleGAN2Generator.synthetic(**{**TINY, "seed": 1})
    b = StyleGAN2Generator.synthetic(**{**TINY, "seed": 1})
    c = StyleGAN2Generator.synthetic(**{**TINY, "seed": 2})
    style, noise = _inputs(a, 1)
    with torch.no_grad():
        torch.testing.assert_close(a.synthesize(style, noise), b.synthesize(style, noise))
        assert (a.synthesize(style, noise) - c.synthesize(style, noise)).abs().max() > 1e-3


def test_wrong_style_shape_is_explained(synthetic):
    with pytest.raises(ValueError, match=r"\[batch, 8, 512\]"):
        synthetic.synthesize(torch.zeros(1, 18, 512), None)


def test_pulse_search_steps_reduce_the_loss(synthetic):
    faces = list(GeneratedFaces(synthetic, num=1, factors=[4], seed=2))
    lr = torch.stack([p.lr for p in faces])
    result = PulseSolver(synthetic, settings=SearchSettings(steps=6)).solve(lr)
    assert result.hr.shape == (1, 3, 32, 32)
    losses = [h["loss"] for h in result.history]
    assert all(math.isfinite(v) for v in losses) and min(losses[1:]) < losses[0]
    assert result.status == ["ok"]


def test_ilo_runs_on_stylegan2_and_never_gets_worse(synthetic):
    faces = list(GeneratedFaces(synthetic, num=1, factors=[4], seed=4))
    lr = torch.stack([p.lr for p in faces])
    base = PulseSolver(synthetic, settings=SearchSettings(steps=2))
    first = base.solve(lr)
    result = ILOSolver(base, ILOSettings(blocks=[2], steps=2)).solve(lr)
    assert (result.best_loss <= first.best_loss + 1e-6).all()
    assert result.hr.shape == (1, 3, 32, 32) and torch.isfinite(result.best_loss).all()


# ---------------------------------------------------------------- rosinality .pt


def _same_images(a: StyleGAN2Generator, b: StyleGAN2Generator) -> None:
    style, noise = _inputs(a, 2, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(b.synthesize(style, noise), a.synthesize(style, noise))


def test_rosinality_checkpoint_round_trip(tiny, tmp_path):
    state = tiny.network.state_dict()
    # Training checkpoints carry an argparse.Namespace next to the weights; it must load as data.
    ckpt = {"g_ema": state, "latent_avg": torch.zeros(32), "args": argparse.Namespace(size=16)}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    loaded = StyleGAN2Generator.pretrained(tmp_path / "ckpt.pt", fit_samples=500, progress=False)
    assert loaded.resolution == 16 and loaded.latent_dim == 32 and len(loaded.network.style) == 3
    _same_images(tiny, loaded)
    torch.testing.assert_close(loaded.network.fixed_noise()[0], tiny.network.fixed_noise()[0])
    # The Gaussian fit is recomputed from the loaded mapping (same weights, same seed -> same fit).
    reference = StyleGAN2Generator(tiny.network, {"mean": loaded.mean, "std": loaded.std})
    _same_images(reference, loaded)


def test_bare_state_dict_found_in_cache_dir(tiny, tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save(tiny.network.state_dict(), folder / "g.pt")
    _same_images(tiny, StyleGAN2Generator.pretrained(cache_dir=folder, fit_samples=500, progress=False))


def test_pretrained_missing_weights_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"StyleGAN2 weights not found at .*docs/generators\.md") as error:
        StyleGAN2Generator.pretrained(cache_dir=tmp_path)
    assert str(tmp_path) in str(error.value)
    monkeypatch.setenv("PULSE_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="stylegan2_ffhq"):
        StyleGAN2Generator.pretrained()
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        StyleGAN2Generator.pretrained(tmp_path / "nothere.pt")
    (tmp_path / "a.pt").write_bytes(b"")
    (tmp_path / "b.pkl").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"several .*a\.pt, b\.pkl.*path"):
        StyleGAN2Generator.pretrained(cache_dir=tmp_path)


def test_pretrained_rejects_foreign_and_mismatched_files(tiny, tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(RuntimeError, match="no rosinality StyleGAN2 generator"):
        StyleGAN2Generator.pretrained(tmp_path / "other.pt")
    state = dict(tiny.network.state_dict())
    state["conv1.activate.bias"] = torch.zeros(5)
    torch.save({"g_ema": state}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="does not match the StyleGAN2 layout"):
        StyleGAN2Generator.pretrained(tmp_path / "bad.pt", fit_samples=500, progress=False)


# ---------------------------------------------------------------- NVIDIA stylegan2-ada-pytorch .pkl


def nvidia_tensors(network: StyleGAN2Network) -> dict[str, dict[str, torch.Tensor]]:
    """Our weights under stylegan2-ada-pytorch names, grouped by module path (facts from its networks.py)."""
    sd = network.state_dict()
    modules: dict[str, dict[str, torch.Tensor]] = {"": {}, "mapping": {"w_avg": torch.randn(32)}, "synthesis": {}}
    fir = torch.ones(4, 4) / 16
    for i in range(len(network.style) - 1):
        modules[f"mapping.fc{i}"] = {"weight": sd[f"style.{i + 1}.weight"], "bias": sd[f"style.{i + 1}.bias"]}

    def layer(path, ours, noise_key, up):
        modules[path] = {
            "weight": sd[f"{ours}.conv.weight"][0],
            "noise_strength": sd[f"{ours}.noise.weight"][0],  # a 0-d scalar in NVIDIA's files
            "bias": sd[f"{ours}.activate.bias"],
            "resample_filter": fir,
            "noise_const": sd[noise_key][0, 0],
        }
        modules[f"{path}.affine"] = {
            "weight": sd[f"{ours}.conv.modulation.weight"],
            "bias": sd[f"{ours}.conv.modulation.bias"],
        }

    def torgb(path, ours):
        modules[path] = {"weight": sd[f"{ours}.conv.weight"][0], "bias": sd[f"{ours}.bias"].reshape(3)}
        modules[f"{path}.affine"] = {
            "weight": sd[f"{ours}.conv.modulation.weight"],
            "bias": sd[f"{ours}.conv.modulation.bias"],
        }

    modules["synthesis.b4"] = {"const": sd["input.input"][0], "resample_filter": fir}
    layer("synthesis.b4.conv1", "conv1", "noises.noise_0", False)
    torgb("synthesis.b4.torgb", "to_rgb1")
    for level, side in enumerate(sorted(network.channels)[1:], start=1):
        block = f"synthesis.b{side}"
        modules[block] = {"resample_filter": fir}
        layer(f"{block}.conv0", f"convs.{2 * level - 2}", f"noises.noise_{2 * level - 1}", True)
        layer(f"{block}.conv1", f"convs.{2 * level - 1}", f"noises.noise_{2 * level}", False)
        torgb(f"{block}.torgb", f"to_rgbs.{level - 1}")
    return modules


NVIDIA_CLASS = {"": "Generator", "mapping": "MappingNetwork", "synthesis": "SynthesisNetwork"}


def _class_name(path: str) -> str:
    leaf = path.rsplit(".", 1)[-1]
    if path in NVIDIA_CLASS:
        return NVIDIA_CLASS[path]
    if leaf.startswith("fc") or leaf == "affine":
        return "FullyConnectedLayer"
    if leaf == "torgb":
        return "ToRGBLayer"
    return "SynthesisBlock" if leaf.startswith("b") else "SynthesisLayer"


@pytest.fixture()
def fake_nvidia_modules(monkeypatch, tmp_path):
    """Importable stand-ins for torch_utils.persistence and training.networks, so pickle can name them."""
    marker = tmp_path / "executed"
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # never called by the loader under test
        raise AssertionError("the real hook must not run")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    networks = types.ModuleType("training.networks")
    for name in ("Generator", "MappingNetwork", "SynthesisNetwork", "SynthesisBlock", "SynthesisLayer"):
        networks.__dict__[name] = type(name, (), {"__module__": "training.networks", "__qualname__": name})
    for name in ("ToRGBLayer", "FullyConnectedLayer"):
        networks.__dict__[name] = type(name, (), {"__module__": "training.networks", "__qualname__": name})
    for module_name, module in (
        ("torch_utils", types.ModuleType("torch_utils")),
        ("torch_utils.persistence", persistence),
        ("training", types.ModuleType("training")),
        ("training.networks", networks),
    ):
        monkeypatch.setitem(sys.modules, module_name, module)

    class Persistent:
        """Pickles like a stylegan2-ada persistent_class instance: the hook, a meta dict with source and state."""

        def __init__(self, class_name, state):
            self.class_name, self.state = class_name, state

        def __reduce__(self):
            source = f"open({str(marker)!r}, 'w').write('ran')\nclass {self.class_name}: pass\n"
            meta = dict(type="class", version=6, module_src=source, class_name=self.class_name, state=self.state)
            return (_reconstruct_persistent_obj, (meta,))

    return networks, Persistent, marker


def build_nvidia_pickle(
    network: StyleGAN2Network, networks, persistent, style: str, conv_clamp=None, odd_clamp_at: str | None = None
) -> bytes:
    groups = nvidia_tensors(network)
    objects = {}

    def parent(path: str) -> str | None:
        return None if not path else (path.rsplit(".", 1)[0] if "." in path else "")

    for path in sorted(groups, key=lambda p: -p.count(".") if p else 1):  # children before parents
        children = OrderedDict((c.rsplit(".", 1)[-1], objects[c]) for c in groups if parent(c) == path)
        params = OrderedDict(
            (k, torch.nn.Parameter(v.clone(), requires_grad=False))
            for k, v in groups[path].items()
            if k not in ("resample_filter", "noise_const", "w_avg")
        )
        buffers = OrderedDict((k, v.clone()) for k, v in groups[path].items() if k not in params)
        state = {
            "training": False,
            "_parameters": params,
            "_buffers": buffers,
            "_non_persistent_buffers_set": set(),
            "_modules": children,
            "_init_kwargs": {"w_dim": 32},
        }
        if _class_name(path) in ("SynthesisLayer", "ToRGBLayer"):  # stylegan2-ada layers keep conv_clamp
            state["conv_clamp"] = conv_clamp if path != odd_clamp_at else 1.0
        if style == "persistence":
            objects[path] = persistent(_class_name(path), state)
        else:
            obj = getattr(networks, _class_name(path))()
            obj.__dict__.update(state)
            objects[path] = obj
    return pickle.dumps({"G": None, "D": None, "G_ema": objects[""], "training_set_kwargs": {"resolution": 16}})


@pytest.mark.parametrize("style", ["persistence", "class"])
def test_nvidia_pickle_maps_to_the_same_generator(tiny, tmp_path, fake_nvidia_modules, style):
    networks, persistent, marker = fake_nvidia_modules
    path = tmp_path / "network-snapshot.pkl"
    path.write_bytes(build_nvidia_pickle(tiny.network, networks, persistent, style))
    tensors = load_nvidia_pkl(path)
    assert "synthesis.b8.conv0.affine.weight" in tensors and tensors["synthesis.b4.conv1.noise_strength"].dim() == 0
    loaded = StyleGAN2Generator.pretrained(path, fit_samples=500, progress=False)
    _same_images(tiny, loaded)
    torch.testing.assert_close(loaded.network.fixed_noise()[-1], tiny.network.fixed_noise()[-1])
    assert not marker.exists()  # the embedded module source was never executed


def test_nvidia_conv_clamp_is_read_and_applied(tiny, tmp_path, fake_nvidia_modules):
    networks, persistent, _ = fake_nvidia_modules
    path = tmp_path / "ada.pkl"
    path.write_bytes(build_nvidia_pickle(tiny.network, networks, persistent, "persistence", conv_clamp=0.25))
    loaded = StyleGAN2Generator.pretrained(path, fit_samples=500, progress=False)
    assert loaded.network.conv_clamp == 0.25
    expected = copy.deepcopy(tiny.network)
    for module in expected.modules():
        if isinstance(module, (StyledConv, ToRGB)):
            module.conv_clamp = 0.25
    largest = []
    for module in loaded.network.modules():
        if isinstance(module, StyledConv):
            module.register_forward_hook(lambda m, args, out: largest.append(out.abs().max().item()))
    style, noise = tiny.to_style(torch.randn(2, tiny.num_latents, tiny.latent_dim)), tiny.network.fixed_noise()
    with torch.no_grad():
        clamped, free = loaded.synthesize(style, noise), tiny.synthesize(style, noise)
        reference = expected.synthesize(style, noise)
    assert max(largest) == pytest.approx(0.25)  # the clamp bites in this random network
    torch.testing.assert_close(clamped, reference)
    assert (clamped - free).abs().max() > 1e-3


def test_nvidia_pickle_with_mixed_conv_clamps_is_refused(tiny, tmp_path, fake_nvidia_modules):
    networks, persistent, _ = fake_nvidia_modules
    path = tmp_path / "mixed.pkl"
    data = build_nvidia_pickle(
        tiny.network, networks, persistent, "class", conv_clamp=256, odd_clamp_at="synthesis.b8.conv1"
    )
    path.write_bytes(data)
    with pytest.raises(RuntimeError, match="different conv_clamp values"):
        StyleGAN2Generator.pretrained(path, fit_samples=500, progress=False)


def test_nvidia_pickle_with_unknown_tensor_is_refused(tiny, tmp_path, fake_nvidia_modules):
    networks, persistent, _ = fake_nvidia_modules
    data = build_nvidia_pickle(tiny.network, networks, persistent, "persistence")
    path = tmp_path / "resnet.pkl"
    # A resnet-architecture block has a "skip" layer we do not implement.
    path.write_bytes(data.replace(b"noise_const", b"skip_weight"))
    with pytest.raises(RuntimeError, match="unsupported tensors.*skip_weight"):
        StyleGAN2Generator.pretrained(path, fit_samples=500, progress=False)


def test_malicious_pickle_is_refused_before_running(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match=r"refused global os\.system"):
        StyleGAN2Generator.pretrained(path)
    # An allowed hook carrying a forbidden callable inside its arguments is refused too.
    nested = (
        b"\x80\x02}X\x05\x00\x00\x00G_ema"
        b"ctorch_utils.persistence\n_reconstruct_persistent_obj\n"
        b"cbuiltins\neval\nX\x05\x00\x00\x001 + 1\x85R\x85Rs."
    )
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval"):
        load_nvidia_pkl(nested)
    assert not marker.exists()


# ---------------------------------------------------------------- configs


def _compose(*overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_synthetic_config_builds_the_32px_generator():
    cfg = _compose("generator=stylegan2_synthetic", "generator.fit_samples=500")
    generator = instantiate(cfg.generator)
    assert isinstance(generator, StyleGAN2Generator) and generator.resolution == 32 and generator.num_latents == 8


def test_ffhq_config_without_weights_fails_clearly(tmp_path):
    cfg = _compose("generator=stylegan2_ffhq", f"generator.cache_dir={tmp_path}")
    with pytest.raises(Exception, match=r"(?s)StyleGAN2 weights not found at .*docs/generators\.md") as error:
        instantiate(cfg.generator)
    assert str(tmp_path) in str(error.value)


def test_bad_noise_layers_auto_zeroes_none_here_and_a_missing_map_is_reported(caplog):
    import logging

    from pulse.generators.stylegan2 import StyleGAN2Generator
    from pulse.solvers.pulse import PulseSolver, SearchSettings

    generator = StyleGAN2Generator.synthetic(resolution=32)
    with caplog.at_level(logging.WARNING, logger="pulse.solvers.pulse"):
        solver = PulseSolver(generator, settings=SearchSettings())  # "auto"
    assert solver.settings.bad_noise_layers == () and not caplog.records
    with caplog.at_level(logging.WARNING, logger="pulse.solvers.pulse"):
        PulseSolver(generator, settings=SearchSettings(bad_noise_layers=[17]))  # StyleGAN1's official choice
    (message,) = [r.getMessage() for r in caplog.records]
    maps = len(generator.noise_shapes)
    assert "[17]" in message and f"it has {maps}: 0-{maps - 1}" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pulse.solvers.pulse"):
        PulseSolver(generator, settings=SearchSettings(bad_noise_layers=[maps - 1]))
    assert not caplog.records
