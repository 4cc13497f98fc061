"""Generators of any domain: channels, output range and domain, end to end through run.py (1-channel, tiny)."""

import csv
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

import run as cli
from pulse.data import ImageFolder, load_image, quantize_levels, save_image
from pulse.generators.base import (
    check_generator,
    freeze,
    generator_channels,
    generator_domain,
    generator_output_range,
    sample_images,
    to_unit,
)
from pulse.generators.dcgan import DCGANGenerator
from pulse.metrics.face_metrics import COLUMNS as FACE_COLUMNS
from pulse.metrics.face_metrics import FaceMetrics
from pulse.solvers.pulse import PulseSolver, SearchSettings
from tests.helpers import fake_result
from tests.test_cli import make_cfg


class GrayGenerator(nn.Module):
    """A tiny 1-channel layered generator on [0, 1] (sigmoid output), 16 px, of the made-up domain 'microscopy'."""

    num_latents = 1
    latent_dim = 16
    noise_shapes: list[tuple[int, ...]] = []
    resolution = 16
    channels = 1
    output_range = (0.0, 1.0)
    domain = "microscopy"
    num_blocks = 2

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc = nn.Linear(16, 4 * 8 * 8)
        self.up = nn.Conv2d(4, 1, 3, padding=1)
        freeze(self)

    def to_style(self, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def block_rows(self, block: int) -> slice:
        return slice(0, 1)

    def forward_blocks(self, features, style, noise, start, stop):
        x = features
        for block in range(start, stop):
            if block == 0:
                x = self.fc(style[:, 0]).view(-1, 4, 8, 8)
            else:
                x = self.up(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
        return x

    def features_to_image(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(features)

    def synthesize(self, style: torch.Tensor, noise: list[torch.Tensor]) -> torch.Tensor:
        return self.features_to_image(self.forward_blocks(None, style, noise, 0, self.num_blocks))


def test_declarations_default_to_rgb_on_minus_one_one_of_unknown_domain():
    class Old:  # a BYO generator written before the attributes existed
        resolution, num_latents, latent_dim, noise_shapes = 8, 1, 4, []
        to_style = synthesize = None

    old = check_generator(Old())
    assert generator_channels(old) == 3 and generator_output_range(old) == (-1.0, 1.0)
    assert generator_domain(old) == "unknown"
    face = DCGANGenerator(resolution=8)
    assert (generator_channels(face), generator_output_range(face), generator_domain(face)) == (3, (-1.0, 1.0), "faces")


def test_to_unit_maps_the_declared_range_linearly():
    x = torch.tensor([-1.0, 0.0, 1.0])
    assert torch.equal(to_unit(x, (-1.0, 1.0)), torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(to_unit(torch.tensor([2.0, 4.0, 6.0]), (2.0, 6.0)), torch.tensor([0.0, 0.5, 1.0]))


def test_a_bad_range_or_channel_count_is_refused():
    gen = GrayGenerator()
    gen.output_range = (1.0, 1.0)
    with pytest.raises(TypeError, match="output_range must be"):
        check_generator(gen)
    gen.output_range, gen.channels = (0.0, 1.0), 0
    with pytest.raises(TypeError, match="channels must be >= 1"):
        check_generator(gen)


def test_sampling_and_the_search_keep_one_channel():
    gen = GrayGenerator()
    images = sample_images(gen, 3, seed=0)
    assert images.shape == (3, 1, 16, 16)
    solver = PulseSolver(gen, settings=SearchSettings(steps=3))
    result = solver.solve(images[:, :, ::4, ::4].contiguous())
    assert result.hr.shape == (3, 1, 16, 16) and result.lr.shape == (3, 1, 4, 4)
    with pytest.raises(ValueError, match=r"\[N, 1, h, w\] \(the generator makes 1-channel images\)"):
        solver.solve(torch.rand(1, 3, 4, 4))
    solver.check_input_size(4, 4)


def test_output_range_zero_one_is_not_shifted():
    gen = GrayGenerator()
    raw = gen.synthesize(torch.randn(2, 1, 16, generator=torch.Generator().manual_seed(1)), [])
    got = sample_images(gen, 2, seed=1)
    assert torch.allclose(got, raw)  # declared (0, 1): used as it is, not shifted as (x + 1) / 2
    assert not torch.allclose(got, (raw + 1) / 2)


def test_face_metrics_are_null_with_a_reason_for_other_domains():
    hr = torch.rand(2, 1, 16, 16)
    values = FaceMetrics(domain="terrain")(fake_result(hr, [0, 1], [0, 0]), [])
    assert all(torch.isnan(values.values[c]).all() for c in FACE_COLUMNS)
    (note,) = values.notes.values()
    assert "face generators only" in note and "'terrain'" in note


def test_gray_files_load_as_one_channel_and_png16_keeps_16_bits(tmp_path):
    ramp = torch.linspace(0, 1, 64 * 64).view(1, 64, 64)
    save_image(ramp, tmp_path / "a16.png", bits=16)
    save_image(ramp, tmp_path / "b8.png")
    assert Image.open(tmp_path / "a16.png").mode.startswith("I") and Image.open(tmp_path / "b8.png").mode == "L"
    back16, back8 = load_image(tmp_path / "a16.png", channels=1), load_image(tmp_path / "b8.png", channels=1)
    assert back16.shape == (1, 64, 64)
    assert (back16 - ramp).abs().max() <= 0.5 / 65535 + 1e-7 and (back8 - ramp).abs().max() <= 0.5 / 255 + 1e-7
    Image.fromarray(np.full((16, 16, 3), (255, 0, 0), np.uint8)).save(tmp_path / "red.png")
    with pytest.warns(UserWarning, match="read as one channel"):
        red = load_image(tmp_path / "red.png", channels=1)
    assert torch.allclose(red, torch.full((1, 16, 16), 0.299), atol=1e-6)
    with pytest.raises(ValueError, match="16 bits for 1-channel"):
        save_image(torch.rand(3, 4, 4), tmp_path / "x.png", bits=16)
    folder = ImageFolder(tmp_path, resolution=64, factor=4, channels=1)
    problems = {p.name: p for p in folder}
    assert problems["a16"].lr.shape == (1, 16, 16) and problems["a16"].hr.shape == (1, 64, 64)


def test_quantize_levels():
    x = torch.tensor([0.1234567])
    assert torch.equal(quantize_levels(x, True), (x * 255).round() / 255)
    assert torch.equal(quantize_levels(x, 16), (x * 65535).round() / 65535)
    assert torch.equal(quantize_levels(x, False), x)
    with pytest.raises(ValueError, match="quantize must be"):
        quantize_levels(x, 12)


@pytest.mark.parametrize("solver", ["pulse", "ilo"])
def test_one_channel_byo_generator_runs_end_to_end(tmp_path, solver):
    cfg = make_cfg(
        f"solver={solver}",
        "solver.steps=4",
        "data.num=2",
        "data.factors=[4]",
        "+data.prefix=gray",
        "data.quantize=16",
        "save_formats=[png16,npy]",
        "progress=false",
        f"out_dir={tmp_path}",
    )
    cfg.generator = OmegaConf.create({"_target_": "tests.test_channels.GrayGenerator"})
    if solver == "ilo":
        cfg.solver.ilo.blocks = [1]
        cfg.solver.ilo.steps = 3
    summary = cli.run(cfg)
    assert summary.samples == 2
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [r["name"] for r in rows] == ["gray000_x4", "gray001_x4"]
    assert all(float(r["psnr_hr"]) > 0 and r["id_dist_hr"] == "" and r["ita_sr"] == "" for r in rows)
    sr = Image.open(tmp_path / rows[0]["image"])
    assert sr.mode == "L" and sr.size == (16, 16)
    assert Image.open(tmp_path / "sr16" / "gray000_x4_0.png").mode.startswith("I")
    array = np.load(tmp_path / "sr_npy" / "gray000_x4_0.npy")
    assert array.shape == (1, 16, 16) and array.dtype == np.float32
    assert abs(array[0] - np.asarray(sr, np.float32) / 255).max() <= 0.5 / 255 + 1e-6
    assert Image.open(tmp_path / "grid.png").mode == "L"
    notes = json.loads((tmp_path / "summary.json").read_text())["notes"]
    assert any("face generators only" in v and "'microscopy'" in v for v in notes.values())


def test_batch_size_probe_uses_the_generator_channels():
    from pulse.autobatch import solver_step_timer

    solver = PulseSolver(GrayGenerator(), settings=SearchSettings(steps=10))
    time_step = solver_step_timer(solver, 4, torch.device("cpu"), steps=1, warmup=1)
    assert time_step(2) > 0
