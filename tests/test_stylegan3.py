"""StyleGAN3 (T, R): parity with NVIDIA's own code on its pickles, filtered leaky ReLU, filter design, search."""

import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from pulse.data import GeneratedFaces
from pulse.generators.base import LayeredGenerator, check_generator
from pulse.generators.stylegan2 import StyleGAN2Generator, nvidia_allowed_globals, upfirdn2d
from pulse.generators.stylegan3 import CONFIGS as CONFIGS_BY_NAME
from pulse.generators.stylegan3 import (
    StyleGAN3Generator,
    design_lowpass_filter,
    design_synthesis,
    filtered_lrelu,
    network_from_tensors,
    read_stylegan3_pkl,
    spec_from_pickle,
)
from pulse.io.safe_pickle import restricted_load
from pulse.solvers.ilo import ILOSettings, ILOSolver
from pulse.solvers.pulse import PulseSolver, SearchSettings

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "stylegan3"
CONFIGS = str(ROOT / "configs")
# float32 rounding over 15 layers of a 16/32 px network; measured 1.5e-6 (T) and 2e-7 (R) against NVIDIA.
PARITY_TOL = 1e-5
# The hyperparameters scripts/make_stylegan3_fixtures.py gave NVIDIA's Generator.
FIXTURE_DESIGNS = {
    "stylegan3_t16": dict(resolution=16, channel_base=256, channel_max=32, conv_kernel=3, radial=False),
    "stylegan3_r32": dict(resolution=32, channel_base=512, channel_max=24, conv_kernel=1, radial=True, conv_clamp=1.5),
}
NAMES = sorted(FIXTURE_DESIGNS)


def _load(name: str):
    spec, z_dim, mapping_layers, tensors = read_stylegan3_pkl(FIXTURES / f"{name}.pkl")
    return network_from_tensors(spec, z_dim, mapping_layers, tensors, name)


def _render(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}_render.pt", weights_only=True)


@pytest.fixture(scope="module")
def fixture_generator() -> StyleGAN3Generator:
    return StyleGAN3Generator.pretrained(FIXTURES / "stylegan3_t16.pkl", fit_samples=2000, progress=False)


# ---------------------------------------------------------------- parity with NVIDIA's code


@pytest.mark.parametrize("name", NAMES)
def test_nvidia_pickle_renders_like_nvidia(name):
    network, ref = _load(name), _render(name)
    with torch.no_grad():
        torch.testing.assert_close(network.mapping(ref["z"]), ref["ws"][:, 0], rtol=0, atol=1e-6)
        for ws, images in ((ref["ws"], ref["images"]), (ref["mixed_ws"], ref["mixed_images"])):
            ours = network.synthesis(ws)
            assert ours.shape == images.shape
            assert (ours - images).abs().max() <= PARITY_TOL
    assert images.abs().max() > 0.1  # a real image, not a vanishing signal that would match anything


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("damage", ["flip_up_filter", "flip_down_filter", "identity_transform", "swap_padding"])
def test_parity_fails_when_a_filter_is_flipped_or_the_transform_ignored(name, damage):
    network, ref = _load(name), _render(name)
    synthesis = network.synthesis
    layer = getattr(synthesis, synthesis.layer_names[3])
    with torch.no_grad():
        if damage == "flip_up_filter":
            layer.up_filter.copy_(layer.up_filter.flip(0))
        elif damage == "flip_down_filter":
            layer.down_filter.copy_(layer.down_filter.flip(list(range(layer.down_filter.dim()))))
        elif damage == "identity_transform":
            synthesis.input.transform.copy_(torch.eye(3))
        else:
            x0, x1, y0, y1 = layer.spec.padding
            object.__setattr__(layer.spec, "padding", (x0 - 1, x1 + 1, y0 - 1, y1 + 1))
        assert (synthesis(ref["mixed_ws"]) - ref["mixed_images"]).abs().max() > 10 * PARITY_TOL


@pytest.mark.parametrize("name", NAMES)
def test_architecture_and_filters_designed_like_nvidia(name):
    """Our design (no scipy) reproduces the layers NVIDIA pickled and the filters scipy designed for it."""
    spec = _load(name).synthesis.spec
    designed = design_synthesis(w_dim=32, **FIXTURE_DESIGNS[name])
    assert designed.layers == spec.layers and designed.input == spec.input and designed.num_ws == 16
    reference = _render(name)["designed_filters"]
    assert len(reference) == 2 * (len(spec.layers) - 1)  # every layer but the ToRGB filters both ways
    for key, value in reference.items():
        _, layer, kind = key.split(".")
        ours = designed.filters[layer][0 if kind == "up_filter" else 1]
        assert ours.shape == value.shape
        torch.testing.assert_close(ours, value, rtol=0, atol=1e-7)
    radial = [k for k, v in reference.items() if v.dim() == 2]
    assert bool(radial) == FIXTURE_DESIGNS[name]["radial"]


@pytest.mark.parametrize("config", ["T", "R"])
@pytest.mark.parametrize("resolution", [256, 512, 1024])
def test_design_matches_nvidia_at_released_sizes(config, resolution):
    """Layer names, sizes, factors, padding and filters as NVIDIA designs them for its released networks."""
    reference = torch.load(FIXTURES / "stylegan3_designs.pt", weights_only=True)[f"{config}{resolution}"]
    options = dict(CONFIGS_BY_NAME[config])
    spec = design_synthesis(resolution, w_dim=8, **options)
    assert [layer.name for layer in spec.layers] == list(reference["layers"])
    assert [spec.input.channels, spec.input.size, spec.input.sampling_rate, spec.input.bandwidth] == reference["input"]
    for layer in spec.layers:
        expected = reference["layers"][layer.name]
        ours = (layer.in_channels, list(layer.padding), layer.up, layer.down, layer.in_size, layer.conv_kernel)
        keys = ("in_channels", "padding", "up", "down", "in_size", "conv_kernel")
        assert ours == tuple(expected[k] for k in keys), layer.name
        for mine, theirs in zip(
            spec.filters[layer.name], (expected["up_filter"], expected["down_filter"]), strict=True
        ):
            assert (mine is None) == (theirs is None), layer.name
            if mine is not None:
                assert mine.shape == theirs.shape
                torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-7)


def test_lowpass_filter_properties():
    assert design_lowpass_filter(1, 2.0, 4.0, 16.0) is None
    taps = design_lowpass_filter(12, 2.0, 12.0, 32.0)
    assert taps.shape == (12,) and abs(float(taps.sum()) - 1) < 1e-6
    torch.testing.assert_close(taps, taps.flip(0))
    jinc = design_lowpass_filter(12, 2.0, 12.0, 32.0, radial=True)
    assert jinc.shape == (12, 12) and abs(float(jinc.sum()) - 1) < 1e-6
    torch.testing.assert_close(jinc, jinc.t())


# ---------------------------------------------------------------- filtered leaky ReLU


def _reference_filtered_lrelu(x, fu, fd, bias, up, down, padding, gain, slope, clamp):
    """NVIDIA's reference sequence through stylegan2's upfirdn2d (zero insertion, full-rate convolutions)."""

    def as_2d(f):
        if f is None:
            return torch.ones(1, 1)
        return f if f.dim() == 2 else f[:, None] * f[None, :]

    x0, x1, y0, y1 = padding
    assert x0 == y0 and x1 == y1  # stylegan2's upfirdn2d pads both axes alike
    x = x + bias.view(1, -1, 1, 1)
    x = upfirdn2d(x, as_2d(fu) * up**2, up=up, pad=(x0, x1))
    x = torch.nn.functional.leaky_relu(x, slope) * gain
    x = x.clamp(-clamp, clamp) if clamp is not None else x
    return upfirdn2d(x, as_2d(fd), down=down)


@pytest.mark.parametrize(
    "up, down, padding, radial, clamp",
    [
        (2, 2, (11, 10), False, None),
        (4, 2, (-2, -5), False, 0.5),
        (2, 2, (-9, -10), True, None),
        (1, 1, (0, 0), False, 1.0),
        (2, 1, (5, 4), True, None),
    ],
)
def test_filtered_lrelu_matches_the_reference_sequence(up, down, padding, radial, clamp):
    rng = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 24, 24, generator=rng)
    bias = torch.randn(3, generator=rng)
    # Random, asymmetric filters scaled like low-pass ones (values stay about 1, so float32 rounding stays small).
    fu = torch.randn(6 * up, generator=rng) / (6 * up) ** 0.5 if up > 1 else None
    fd = torch.randn(*([6 * down] * (2 if radial else 1)), generator=rng) / (6 * down) ** (1.0 if radial else 0.5)
    pad = (padding[0], padding[1], padding[0], padding[1])
    ours = filtered_lrelu(x, fu, fd, bias, up, down, pad, math.sqrt(2), 0.2, clamp)
    expected = _reference_filtered_lrelu(x, fu, fd, bias, up, down, pad, math.sqrt(2), 0.2, clamp)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("clamp", [None, 0.7])
def test_filtered_lrelu_gradients(clamp):
    """Gradients (our activation keeps only its output for backward) against finite differences, in float64."""
    rng = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, 8, 8, generator=rng, dtype=torch.float64, requires_grad=True)
    fu, fd = torch.randn(4, generator=rng, dtype=torch.float64), torch.randn(6, 6, generator=rng, dtype=torch.float64)
    bias = torch.zeros(2, dtype=torch.float64)

    def run(v):
        return filtered_lrelu(v, fu, fd, bias, 2, 2, (3, 2, 3, 2), math.sqrt(2), 0.2, clamp)

    assert torch.autograd.gradcheck(run, (x,))
    if clamp is not None:
        assert (run(x).abs() > 0).any() and (
            filtered_lrelu(x, fu, None, bias, 2, 1, (3, 2, 3, 2), 1.5, 0.2, clamp) == clamp
        ).any()


def test_filtered_lrelu_asymmetric_padding_shifts_only_its_axis():
    x = torch.randn(1, 1, 10, 10)
    f = torch.tensor([0.25, 0.5, 0.25])
    base = filtered_lrelu(x, f, None, torch.zeros(1), 2, 1, (2, 2, 2, 2), 1.0, 1.0)
    shifted = filtered_lrelu(x, f, None, torch.zeros(1), 2, 1, (3, 1, 2, 2), 1.0, 1.0)
    torch.testing.assert_close(shifted[..., 1:], base[..., :-1])  # x padded one more before: image moves right
    assert (shifted - base).abs().max() > 0.1


# ---------------------------------------------------------------- loading and refusals


def test_conditional_pickle_is_refused_in_one_line():
    with pytest.raises(RuntimeError, match=r"conditional StyleGAN3 networks \(c_dim=4\) are not supported") as error:
        StyleGAN3Generator.pretrained(FIXTURES / "stylegan3_t16_conditional.pkl", fit_samples=100, progress=False)
    assert "\n" not in str(error.value)


def test_stylegan2_pickles_are_told_apart(tmp_path):
    # A StyleGAN3 pickle given to the StyleGAN2 reader names the right generator ...
    with pytest.raises(RuntimeError, match=r"generator=stylegan3"):
        StyleGAN2Generator.pretrained(FIXTURES / "stylegan3_t16.pkl", fit_samples=100, progress=False)
    # ... and a StyleGAN2 network (no layer_names) given to the StyleGAN3 reader is refused, naming stylegan2.
    data = restricted_load(FIXTURES / "stylegan3_t16.pkl", nvidia_allowed_globals())
    synthesis = data["G_ema"].state["_modules"]["synthesis"].state
    del synthesis["layer_names"]
    with pytest.raises(RuntimeError, match=r"not a StyleGAN3 network .*stylegan2"):
        spec_from_pickle(data["G_ema"])


def test_odd_hyperparameters_and_missing_tensors_are_refused():
    data = restricted_load(FIXTURES / "stylegan3_t16.pkl", nvidia_allowed_globals())
    layer = data["G_ema"].state["_modules"]["synthesis"].state["_modules"]["L2_36_32"].state
    layer["up_factor"] = "2"
    with pytest.raises(RuntimeError, match=r"synthesis\.L2_36_32\.up_factor = '2'"):
        spec_from_pickle(data["G_ema"])
    spec, z_dim, layers, tensors = read_stylegan3_pkl(FIXTURES / "stylegan3_t16.pkl")
    del tensors["synthesis.L5_36_32.affine.bias"]
    with pytest.raises(RuntimeError, match=r"does not match the StyleGAN3 layout.*L5_36_32\.affine\.bias"):
        network_from_tensors(spec, z_dim, layers, tensors, "x.pkl")


def test_malicious_pickle_is_refused_before_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    with pytest.raises(pickle.UnpicklingError, match=r"evil\.pkl: refused global os\.system"):
        StyleGAN3Generator.pretrained(path, fit_samples=100, progress=False)
    assert not marker.exists()


def test_missing_weights_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"StyleGAN3 weights not found at .*docs/generators\.md"):
        StyleGAN3Generator.pretrained(cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"not found at .*nope\.pkl"):
        StyleGAN3Generator.pretrained(tmp_path / "nope.pkl")


# ---------------------------------------------------------------- the search on StyleGAN3


def test_follows_the_layered_protocol(fixture_generator):
    g = fixture_generator
    assert isinstance(check_generator(g), LayeredGenerator)
    assert (g.resolution, g.num_latents, g.latent_dim, g.noise_shapes, g.num_blocks) == (16, 16, 32, [], 15)
    assert g.block_rows(0) == slice(0, 2) and g.block_rows(14) == slice(15, 16)
    style = g.to_style(torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        full = g.synthesize(style, [])
        for cut in (1, 7, 14):
            features = g.forward_blocks(None, style, [], 0, cut)
            split = g.features_to_image(g.forward_blocks(features, style, [], cut, g.num_blocks))
            torch.testing.assert_close(split, full)
    with pytest.raises(ValueError, match=r"\[batch, 16, 32\]"):
        g.synthesize(torch.zeros(1, 18, 32), [])


def test_every_row_drives_the_image(fixture_generator):
    g = fixture_generator
    style = g.to_style(torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        base = g.synthesize(style, [])
        for row in range(g.num_latents):
            moved = style.clone()
            moved[:, row] += 1.0
            assert (g.synthesize(moved, []) - base).abs().max() > 1e-4, row


def test_pulse_search_reduces_the_loss_and_ilo_never_gets_worse(fixture_generator):
    faces = list(GeneratedFaces(fixture_generator, num=1, factors=[4], seed=3))
    lr = torch.stack([p.lr for p in faces])
    base = PulseSolver(fixture_generator, settings=SearchSettings(steps=6))
    first = base.solve(lr)
    losses = [h["loss"] for h in first.history]
    assert first.hr.shape == (1, 3, 16, 16) and all(math.isfinite(v) for v in losses)
    assert min(losses[1:]) < losses[0]
    result = ILOSolver(
        PulseSolver(fixture_generator, settings=SearchSettings(steps=2)), ILOSettings(blocks=[7], steps=2)
    ).solve(lr)
    reference = PulseSolver(fixture_generator, settings=SearchSettings(steps=2)).solve(lr)
    assert (result.best_loss <= reference.best_loss + 1e-6).all()


@pytest.mark.parametrize("config", ["T", "R"])
def test_synthetic_generator_is_seeded_and_differentiable(config):
    make = lambda seed: StyleGAN3Generator.synthetic(  # noqa: E731
        resolution=16, config=config, channel_base=256, channel_max=16, w_dim=32, seed=seed, fit_samples=500
    )
    a, b, c = make(0), make(0), make(1)
    style = a.to_style(torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(a.synthesize(style.detach(), []), b.synthesize(style.detach(), []))
    with torch.no_grad():
        assert (a.synthesize(style, []) - c.synthesize(style, [])).abs().max() > 1e-3
    latent = torch.randn(1, 16, 32, requires_grad=True)
    image = a.synthesize(a.to_style(latent), [])
    assert image.shape == (1, 3, 16, 16) and torch.isfinite(image).all() and 0.01 < image.std() < 2
    image.square().mean().backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0
    kernels = {getattr(a.network.synthesis, n).weight.shape[-1] for n in a.network.synthesis.layer_names[:-1]}
    assert kernels == ({3} if config == "T" else {1})


def test_configs_build_the_generators():
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                "generator=stylegan3",
                f"generator.path={FIXTURES / 'stylegan3_r32.pkl'}",
                "generator.fit_samples=500",
            ],
        )
        synthetic = compose(
            config_name="config", overrides=["generator=stylegan3_synthetic", "generator.fit_samples=500"]
        )
    generator = instantiate(cfg.generator)
    assert isinstance(generator, StyleGAN3Generator) and generator.resolution == 32
    generator = instantiate(synthetic.generator)
    assert isinstance(generator, StyleGAN3Generator) and generator.resolution == 32 and generator.num_latents == 16


def test_command_line_search_end_to_end(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "run.py",
            "generator=stylegan3",
            "generator.path=tests/fixtures/stylegan3/stylegan3_t16.pkl",
            "generator.fit_samples=2000",
            "data.num=1",
            "data.factors=[4]",
            "solver.steps=3",
            "progress=false",
            f"hydra.run.dir={out}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pulse: 1 samples, success" in proc.stdout
    assert (out / "results.csv").is_file() and (out / "sr").is_dir()


def test_benchmark_script_times_stylegan3(tmp_path):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("benchmark_script", ROOT / "scripts" / "benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    path = tmp_path / "bench.json"
    script.main(
        ["--generator", "stylegan3", "--stylegan3-config", "R", "--quick", "--no-allocator-tuning", "--json", str(path)]
    )
    report = json.loads(path.read_text())
    assert report["resolution"] == 32 and report["generator"].startswith("stylegan3")
    for row in report["results"]:
        assert row["eager"]["s_per_step"] > 0
        assert row["fast"] is None and "StyleGAN only" in row["fast_unavailable"]
