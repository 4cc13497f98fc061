"""Whole-photo restoration (pulse/restore.py, pulse/cli_restore.py): geometry exact on linear images, any
solver through the Solver contract, bad files skipped, and the real pipeline (dlib + DCGAN) on the astronaut."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pulse.align import align_face, ffhq_quad, keypoints_from_landmarks
from pulse.downscale import BicubicDownscale
from pulse.faces import dlib_available
from pulse.io.cache import cache_dir
from pulse.restore import (
    DetectedFace,
    PhotoRestorer,
    bicubic_upscale,
    feather_mask,
    output_size,
    paste_face,
    restore_files,
)
from tests.helpers import fake_result

REAL_CACHE = cache_dir()  # read at import, before conftest points $PULSE_CACHE at a fresh folder per test

# Five landmarks (eyes, nose, mouth corners) of an upright face centred near (70, 55) in a 150 x 110 photo.
FIVE_POINTS = np.array([[58.0, 45.0], [82.0, 45.0], [70.0, 58.0], [60.0, 70.0], [80.0, 70.0]])


def gradient_photo(height: int = 110, width: int = 150) -> np.ndarray:
    """``[H, W, 3]`` uint8, each channel a different linear ramp within [25, 230] (bilinear sampling is exact)."""
    ys, xs = np.mgrid[:height, :width].astype(np.float64)
    channels = [25 + 1.3 * xs, 25 + 1.8 * ys, 230 - 0.6 * xs - 0.7 * ys]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


class ConstantSolver:
    """A stand-in solver: every sample is one colour; records the LR batch it was given."""

    def __init__(self, resolution: int = 64, colour: tuple[float, float, float] = (1.0, 0.0, 0.0), duplicates=1):
        self.generator = torch.nn.Linear(1, 1)
        self.generator.resolution = resolution
        self.settings = SimpleNamespace(duplicates=duplicates, seed=0, steps=1)
        self.colour = torch.tensor(colour).view(1, 3, 1, 1)
        self.inputs: list[torch.Tensor] = []

    def solve(self, lr_images, seeds=None, callback=None, frames_every=0):
        self.inputs.append(lr_images)
        count = len(lr_images) * self.settings.duplicates
        hr = self.colour.expand(count, 3, self.generator.resolution, self.generator.resolution).clone()
        hr[1::2] *= 0.5  # duplicates differ, so the chosen one (lowest error) is checked
        result = fake_result(hr, [i // self.settings.duplicates for i in range(count)],
                             [i % self.settings.duplicates for i in range(count)])  # fmt: skip
        result.downscale_error = torch.tensor([0.01 if i % 2 == 0 else 0.001 for i in range(count)])
        if callback is not None:
            callback(SimpleNamespace(step=0, steps=1))
        return result


def test_output_size_keeps_the_aspect_ratio():
    assert output_size(110, 150, 2.5) == (275, 375)
    assert output_size(3, 5, 0.5) == (2, 2)  # rounded half to even, never zero


def test_feather_mask_is_one_inside_zero_outside_and_smooth():
    unit = torch.tensor([[0.5, 0.5], [0.1, 0.5], [0.05, 0.5], [0.0, 0.3], [-0.1, 0.5], [0.5, 1.2]])
    mask = feather_mask(unit, 0.1)
    assert mask.tolist() == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0, 0.0])
    assert feather_mask(unit, 0.0).tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("scale", [1.0, 2.0, 3.0])
def test_pasting_the_aligned_crop_back_reproduces_a_linear_photo(scale):
    """Align (bilinear, no supersampling) then warp back (bilinear): on a linear image both are exact, so the
    pasted pixels must equal the photo's own linear function at the output pixels' source positions."""
    photo = gradient_photo()
    quad = ffhq_quad(keypoints_from_landmarks(FIVE_POINTS))
    aligned = align_face(photo, quad, 64, supersample=1, padding="black")
    face = torch.from_numpy(aligned.astype(np.float32) / 255).permute(2, 0, 1)
    size = output_size(*photo.shape[:2], scale)
    canvas = torch.zeros(3, *size)
    pasted = paste_face(canvas, face, quad, photo.shape[:2], feather=0.0)

    ys, xs = np.mgrid[: size[0], : size[1]].astype(np.float64)
    src_x, src_y = (xs + 0.5) / scale - 0.5, (ys + 0.5) / scale - 0.5
    expected = np.stack([25 + 1.3 * src_x, 25 + 1.8 * src_y, 230 - 0.6 * src_x - 0.7 * src_y]) / 255
    # Pixels well inside the quad (1.5 aligned pixels from its edge, where both samplers have neighbours).
    basis = np.stack([quad[3] - quad[0], quad[1] - quad[0]], axis=1)
    unit = np.linalg.solve(basis, np.stack([src_x - quad[0][0], src_y - quad[0][1]]).reshape(2, -1)).reshape(2, *size)
    inside = (unit.min(0) > 1.5 / 64) & (unit.max(0) < 1 - 1.5 / 64)
    assert inside.sum() > 0.3 * quad_area(quad) * scale**2
    difference = np.abs(pasted.numpy() - expected)[:, inside]
    assert difference.max() < 1.6 / 255  # two 8-bit roundings (photo, aligned crop)
    assert (pasted[:, ~torch.from_numpy(unit.min(0) >= 0) | ~torch.from_numpy(unit.max(0) <= 1)] == 0).all()


def quad_area(quad: np.ndarray) -> float:
    return float(np.linalg.norm(quad[3] - quad[0]) ** 2)


def test_restorer_pastes_the_chosen_sample_and_keeps_the_rest_bicubic():
    photo = torch.from_numpy(gradient_photo()).permute(2, 0, 1).float() / 255
    solver = ConstantSolver(duplicates=2)
    restorer = PhotoRestorer(solver, scale=2.5, face_factor=8, detector=lambda image: [], identity=False)
    steps = []
    result = restorer.restore(photo, name="grad", faces=[DetectedFace(None, FIVE_POINTS)], callback=steps.append)

    assert result.restored.shape == (3, 275, 375) and result.status == "restored 1 face" and len(steps) == 1
    face = result.faces[0]
    # The solver saw the aligned face, bicubic-downscaled by 8 and rounded to 8 bits.
    assert solver.inputs[0].shape == (1, 3, 8, 8)
    expected_lr = torch.round(BicubicDownscale(8)(face.aligned[None]).clamp(0, 1) * 255) / 255
    torch.testing.assert_close(solver.inputs[0], expected_lr)
    assert face.chosen == 1 and face.metrics["downscale_error"] == [0.01, 0.001]  # the lower error is pasted
    assert face.metrics["lr_psnr"] == [20.0, 30.0]
    background = bicubic_upscale(photo, (275, 375))
    torch.testing.assert_close(result.background, background)
    centre = (np.mean(face.quad, axis=0) + 0.5) * 2.5 - 0.5
    cx, cy = (int(round(v)) for v in centre)
    torch.testing.assert_close(result.restored[:, cy, cx], torch.tensor([0.5, 0.0, 0.0]))  # sample 1: half red
    changed = (result.restored != background).any(0)
    corners_out = (face.quad + 0.5) * 2.5 - 0.5
    ys, xs = torch.nonzero(changed, as_tuple=True)
    assert xs.min() >= corners_out[:, 0].min() - 1 and xs.max() <= corners_out[:, 0].max() + 1
    assert ys.min() >= corners_out[:, 1].min() - 1 and ys.max() <= corners_out[:, 1].max() + 1
    summary = result.summary()
    assert summary["input_size"] == [150, 110] and summary["output_size"] == [375, 275]
    assert summary["faces"][0]["box"] is None and len(summary["faces"][0]["landmarks"]) == 5
    assert summary["faces"][0]["lr_size"] == 8 and summary["faces"][0]["sr_size"] == 64


def test_a_photo_without_faces_is_upscaled_and_reported():
    photo = torch.rand(3, 40, 70)
    result = PhotoRestorer(ConstantSolver(), scale=2, detector=lambda image: []).restore(photo)
    assert result.status == "no face found: upscaled only" and result.faces == []
    torch.testing.assert_close(result.restored, bicubic_upscale(photo, (80, 140)))


def test_bad_settings_fail_with_one_clear_line():
    with pytest.raises(ValueError, match="scale must be a positive number"):
        PhotoRestorer(ConstantSolver(), scale=0)
    with pytest.raises(ValueError, match="factor"):
        PhotoRestorer(ConstantSolver(), scale=4, face_factor=3)  # 3 does not divide 64
    with pytest.raises(ValueError, match="unknown background method 'esrgan'; available: bicubic"):
        PhotoRestorer(ConstantSolver(), background="esrgan")
    assert PhotoRestorer(ConstantSolver(), scale=3).face_factor == 2  # 3 does not divide 64: smallest that does
    assert PhotoRestorer(ConstantSolver(), scale=8).face_factor == 8


def test_restore_files_skips_odd_files_and_goes_on(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(gradient_photo()).save(photos / "good.png")
    Image.fromarray(gradient_photo()[:, ::-1]).save(photos / "good.bmp")  # same stem: named by file name
    (photos / "broken.png").write_bytes(b"not a png")
    (photos / "notes.txt").write_text("hello")
    lines = []
    detector = lambda image: [DetectedFace((1, 2, 3, 4), FIVE_POINTS)]  # noqa: E731
    restorer = PhotoRestorer(ConstantSolver(), scale=2, detector=detector, identity=False)
    summary = restore_files([photos, tmp_path / "missing.jpg"], tmp_path / "out", restorer, log=lines.append)

    assert [p["name"] for p in summary["photos"]] == ["good.bmp", "good.png"]
    reasons = " | ".join(summary["skipped"].values())
    assert "broken.png: cannot read image" in reasons and "notes.txt" in reasons and "missing.jpg" in reasons
    assert sum(line.startswith("skipped") for line in lines) == 3
    out = tmp_path / "out"
    assert Image.open(out / "good.png.png").size == Image.open(out / "good.bmp.png").size == (300, 220)
    assert Image.open(out / "good.png_background.png").size == (300, 220)
    assert Image.open(out / "good.png_faces" / "face_0.png").size == (3 * 64, 64)  # LR | aligned | sample
    written = json.loads((out / "good.png.json").read_text())
    assert written["faces"][0]["box"] == [1, 2, 3, 4] and written["status"] == "restored 1 face"
    assert written["faces"][0]["detection_score"] is None
    assert json.loads((out / "summary.json").read_text())["skipped"] == summary["skipped"]


def test_overrides_choose_the_solver_as_run_py_does():
    from pulse.configured import build_solver, compose_config
    from pulse.solvers.ilo import ILOSolver

    generator, solver = build_solver(compose_config(["solver=ilo", "solver.steps=7", "seed=3"]))
    assert isinstance(solver, ILOSolver) and solver.generator is generator and generator.resolution == 64
    assert solver.base.settings.steps == 7 and solver.base.settings.seed == 3
    restorer = PhotoRestorer(solver, scale=4, detector=lambda image: [], identity=False)
    assert restorer.face_factor == 4 and restorer.resolution == 64


def test_cli_rejects_a_bad_override_and_no_photo(tmp_path, capsys):
    from pulse.cli_restore import main, split_inputs

    assert split_inputs(["a.png", "solver=ilo", "solver.steps=3"]) == (["a.png"], ["solver=ilo", "solver.steps=3"])
    assert main(["solver=ilo", "--out", str(tmp_path)]) == 2
    assert "no photo given" in capsys.readouterr().err
    (tmp_path / "a.png").write_bytes(b"")
    assert main([str(tmp_path / "a.png"), "solver=nonexistent", "--out", str(tmp_path / "o")]) == 2
    assert "Could not find 'solver/nonexistent'" in capsys.readouterr().err


@pytest.mark.skipif(not dlib_available(), reason="dlib and its models are not installed (pip install -e '.[faces]')")
def test_cli_restores_the_astronaut_offline(tmp_path, capsys):
    """Done-when of issue 20: same aspect ratio at the scale, faces replaced, the rest upscaled; CPU, offline."""
    skimage_data = pytest.importorskip("skimage.data")
    from pulse.cli_restore import main

    photo = skimage_data.astronaut()[:, 64:448]  # 512 x 384: not square
    Image.fromarray(photo).save(tmp_path / "astronaut.png")
    out = tmp_path / "out"
    assert main([str(tmp_path / "astronaut.png"), "--out", str(out), "--scale", "2", "--quiet", "solver.steps=3"]) == 0
    assert re.search(r"1 photos \(\d faces\) restored x2 into", capsys.readouterr().out)
    restored = np.asarray(Image.open(out / "astronaut.png"))
    background = np.asarray(Image.open(out / "astronaut_background.png"))
    assert restored.shape == background.shape == (1024, 768, 3)
    report = json.loads((out / "astronaut.json").read_text())
    face = report["faces"][0]
    left, top, right, bottom = face["box"]  # dlib's box of the real face, in input pixels
    assert face["detection_score"] > 0.5
    assert 80 < left < right < 240 and 40 < top < bottom < 200
    assert len(face["landmarks"]) == 68 and face["lr_size"] == 32 and face["sr_size"] == 64
    assert np.isfinite(face["downscale_error"][0]) and face["status"][0]
    assert 0 < face["id_dist"][0] < 2  # dlib's descriptors are unit vectors; the DCGAN face is another person
    inside = (slice(2 * top, 2 * bottom), slice(2 * left, 2 * right))
    assert np.abs(restored[inside].astype(int) - background[inside]).mean() > 2  # the face was replaced
    assert (restored[900:, 700:] == background[900:, 700:]).all()  # far from both faces: the bicubic photo


def test_a_face_at_the_photo_edge_is_clipped_not_an_error():
    photo = torch.from_numpy(gradient_photo()).permute(2, 0, 1).float() / 255
    corner = FIVE_POINTS - np.array([60.0, 45.0])  # the quad now reaches far beyond the top-left corner
    result = PhotoRestorer(ConstantSolver(), scale=2, identity=False).restore(photo, faces=[DetectedFace(None, corner)])
    assert result.restored.shape == (3, 220, 300) and len(result.faces) == 1
    assert torch.allclose(result.restored[:, 20, 20], torch.tensor([1.0, 0.0, 0.0]))  # deep inside: the sample
    assert torch.equal(result.restored[:, 150:, 200:], result.background[:, 150:, 200:])


@pytest.mark.skipif(not dlib_available(), reason="dlib and its models are not installed (pip install -e '.[faces]')")
def test_min_score_drops_the_false_detection_on_the_astronaut():
    skimage_data = pytest.importorskip("skimage.data")
    from pulse.restore import DlibFaceDetector

    photo = skimage_data.astronaut()
    every = DlibFaceDetector()(photo)
    assert [face.box for face in every] == [(175, 76, 265, 166), (126, 335, 215, 425)]  # face, suit (false)
    assert every[0].score > 1 > 0.5 > every[1].score > 0 and every[0].landmarks.shape == (68, 2)
    assert [face.box for face in DlibFaceDetector(min_score=0.5)(photo)] == [(175, 76, 265, 166)]


def test_identity_distance_is_null_with_a_note_without_dlib(monkeypatch):
    import pulse.metrics.faces

    monkeypatch.setattr(pulse.metrics.faces, "unavailable_reason", lambda: "dlib is not installed: pip install")
    photo = torch.from_numpy(gradient_photo()).permute(2, 0, 1).float() / 255
    faces = [DetectedFace(None, FIVE_POINTS), DetectedFace(None, FIVE_POINTS + 3)]
    result = PhotoRestorer(ConstantSolver(duplicates=2), scale=1).restore(photo, faces=faces)
    assert [face.metrics["id_dist"] for face in result.faces] == [[None, None], [None, None]]
    assert result.notes == ["id_dist unavailable: dlib is not installed: pip install"]  # once, not per face


def test_faces_that_cannot_be_aligned_are_noted_and_the_photo_upscaled():
    restorer = PhotoRestorer(ConstantSolver(), scale=2, identity=False)
    outside = DetectedFace(None, FIVE_POINTS + 500)  # landmarks given far beyond the photo
    result = restorer.restore(torch.rand(3, 5, 5), faces=[outside, DetectedFace(None, FIVE_POINTS[:3])])
    assert result.status == "no usable face: upscaled only" and result.restored.shape == (3, 10, 10)
    assert result.notes[0] == "face 0: its alignment crop lies outside the 5x5 photo; skipped"
    assert result.notes[1].startswith("face 1: got 3 landmarks")
    tiny = restorer.restore(torch.rand(3, 1, 1), faces=[DetectedFace(None, FIVE_POINTS)])  # PIL's crop would fail
    assert tiny.restored.shape == (3, 2, 2) and tiny.status == "no usable face: upscaled only"
    covering = restorer.restore(torch.rand(3, 1, 1), faces=[DetectedFace(None, FIVE_POINTS - 70)])
    assert covering.status == "restored 1 face" and torch.equal(covering.restored[0], torch.ones(2, 2))  # red


def test_the_command_line_help_runs_without_loading_the_pipeline():
    import subprocess
    import sys

    code = "import sys; from pulse.cli_restore import main; main(['--help'])"
    check = "; print('torch' in sys.modules, 'hydra' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", f"{code}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--face-factor" in out.stdout and "Hydra overrides" in out.stdout
    loaded = subprocess.run([sys.executable, "-c", f"import sys, pulse.cli_restore{check}"], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert loaded.stdout.split() == ["False", "False"]  # --help and a typo answer at once


def test_native_face_factor_matches_the_lr_face_to_the_photo_face():
    from pulse.restore import native_face_factor

    assert native_face_factor(64, [16.0]) == 4 and native_face_factor(1024, [64.0, 60.0, 70.0]) == 16
    assert native_face_factor(64, [24.0]) == 2  # 32 px is 1.33x off, 16 px 1.5x: the closer ratio wins
    assert native_face_factor(64, [170.0]) == 1  # faces larger than the generator: no super-resolution
    photo = torch.from_numpy(gradient_photo()).permute(2, 0, 1).float() / 255
    solver = ConstantSolver()
    restorer = PhotoRestorer(solver, scale=2, face_factor="native", identity=False)
    result = restorer.restore(photo, faces=[DetectedFace(None, FIVE_POINTS)])
    side = np.linalg.norm(result.faces[0].quad[3] - result.faces[0].quad[0])
    assert side == pytest.approx(96) and result.face_factor == 1  # 64 px (1.5x off) beats 32 px (3x)
    assert solver.inputs[0].shape[-1] == 64 and result.summary()["face_factor"] == 1
    result = restorer.restore(torch.rand(3, 30, 40), faces=[DetectedFace(None, FIVE_POINTS / 6)])
    assert result.face_factor == 4 and solver.inputs[-1].shape[-1] == 16  # a 16 px face: 16 px LR
    with pytest.raises(ValueError, match="positive integer or 'native'"):
        PhotoRestorer(solver, face_factor="auto")


def test_tiled_upscale_equals_one_pass_where_the_overlap_covers_the_receptive_field():
    from pulse.restore import tiled_upscale

    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.Conv2d(12, 12, 3, padding=1), torch.nn.PixelShuffle(2)
    ).eval()
    image = torch.rand(1, 3, 23, 37)  # tiles of 8 do not divide either side
    with torch.no_grad():
        whole = network(image)
        tiled = tiled_upscale(network, image, scale=2, tile=8, overlap=2)  # two 3x3 convs: radius 2
        torn = tiled_upscale(network, image, scale=2, tile=8, overlap=0)
    assert tiled.shape == whole.shape == (1, 3, 46, 74)
    assert (tiled - whole).abs().max() < 1e-6
    assert (torn - whole).abs().max() > 1e-3  # without overlap the tile borders show: the check can fail


def test_realesrgan_background_is_the_network_at_x4_on_a_non_square_photo(monkeypatch):
    from pulse.io.realesrgan import RealESRGANUnavailable

    monkeypatch.setenv("PULSE_CACHE", str(REAL_CACHE))  # the fetched weights, if any

    try:
        from pulse.restore import _realesrgan_network, background_upscaler

        network, scale, _ = _realesrgan_network()
    except (RealESRGANUnavailable, ImportError) as error:
        pytest.skip(f"Real-ESRGAN weights or spandrel missing: {error}")
    photo = torch.rand(3, 20, 28, generator=torch.Generator().manual_seed(1))
    upscaled = background_upscaler("realesrgan")(photo, (80, 112))
    with torch.no_grad():
        reference = network(photo[None])[0].clamp(0, 1)
    assert scale == 4 and upscaled.shape == (3, 80, 112)
    assert (upscaled - reference).abs().max() < 1e-4
    assert background_upscaler("realesrgan")(photo, (120, 168)).shape == (3, 120, 168)  # x6: twice x4, then resized
