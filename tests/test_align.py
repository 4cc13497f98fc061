"""FFHQ alignment (pulse.align) and scripts/align_faces.py, on synthetic faces made of coloured dots."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pulse.align import (
    NO_DETECTOR,
    DetectorUnavailable,
    LandmarkError,
    MediaPipeLandmarks,
    align_face,
    align_image,
    ffhq_quad,
    keypoints_from_landmarks,
    lookup_landmarks,
    quad_to_output,
    read_landmarks_file,
)
from pulse.data import load_image
from pulse.downscale import BicubicDownscale

ROOT = Path(__file__).parents[1]

# An upright symmetric face: eyes at (cx -+ D, EY), mouth corners at (cx -+ M, EY + H).
CX, EY, D, H, M = 100.0, 80.0, 20.0, 40.0, 15.0
FIVE = np.array([[CX - D, EY], [CX + D, EY], [CX, EY + 0.6 * H], [CX - M, EY + H], [CX + M, EY + H]])
DOT_COLOURS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1], [1, 1, 1]], dtype=np.float64)  # nose: not drawn


def expected_dots(size: int) -> np.ndarray:
    """Where the eyes and mouth corners must land, derived by hand from the FFHQ recipe for FIVE.

    eye_to_eye = (2D, 0), eye_to_mouth = (0, H): x = (r, 0), y = (0, r) with r = max(4D, 1.8H) = 80,
    centre (CX, EY + 0.1H); a point p lands at size * ((p - centre) / r + 1) / 2 - 0.5.
    """
    r = max(4 * D, 1.8 * H)
    centre = np.array([CX, EY + 0.1 * H])
    points = FIVE[[0, 1, 3, 4]]
    return size * ((points - centre) / r + 1.0) / 2.0 - 0.5


def render_dots(points: np.ndarray, sigma: float, height: int, width: int) -> np.ndarray:
    """``[H, W, 3]`` uint8: a Gaussian dot of its own colour at each of the five points, on black."""
    ys, xs = np.mgrid[:height, :width].astype(np.float64)
    image = np.zeros((height, width, 3))
    for (x, y), colour in zip(points, DOT_COLOURS, strict=True):
        image += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))[..., None] * colour
    return np.uint8(np.clip(image * 255, 0, 255).round())


def dot_centres(image: np.ndarray) -> np.ndarray:
    """``[4, 2]`` colour-weighted centroids of the red, green, blue and white dots (``[H, W, 3]`` in 0..255)."""
    rgb = np.asarray(image, dtype=np.float64) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    weights = [
        np.clip(r - np.maximum(g, b), 0, None),
        np.clip(g - np.maximum(r, b), 0, None),
        np.clip(b - np.maximum(r, g), 0, None),
        np.minimum(np.minimum(r, g), b),
    ]
    weights = [np.clip(w - 0.1, 0, None) for w in weights]  # ignores faint resampling ringing at photo edges
    ys, xs = np.mgrid[: image.shape[0], : image.shape[1]]
    return np.array([[(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()] for w in weights])


def similarity(points: np.ndarray, angle: float, scale: float, shift: tuple[float, float]) -> tuple[np.ndarray, int]:
    """The points moved by a similarity, then shifted so that the whole crop (and its border) fits in a square
    photo; returns them and the photo's side. Mirrored padding would otherwise copy dots into the crop."""
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = points @ rotation.T * scale + np.asarray(shift)
    margin = 135.0 * scale  # > half-diagonal of the crop (80 * sqrt(2)) plus the FFHQ border
    moved += margin - moved.min(axis=0)
    return moved, int(np.ceil(moved.max() + margin))


def dlib68_from_five(five: np.ndarray) -> np.ndarray:
    """68 points whose eye means and mouth corners are those of ``five``; the rest is noise that must be ignored."""
    points = np.random.default_rng(0).uniform(0, 200, size=(68, 2))
    ring = np.array([[-3, 0], [-1, -2], [1, -2], [3, 0], [1, 2], [-1, 2]], dtype=np.float64)  # mean zero
    points[36:42] = five[0] + ring
    points[42:48] = five[1] + ring
    points[48], points[54] = five[3], five[4]
    return points


def test_quad_matches_hand_derivation():
    quad = ffhq_quad(keypoints_from_landmarks(FIVE))
    centre, r = np.array([CX, EY + 0.1 * H]), 80.0
    np.testing.assert_allclose(quad, centre + np.array([[-r, -r], [-r, r], [r, r], [r, -r]]))
    np.testing.assert_allclose(quad_to_output(FIVE[[0, 1, 3, 4]], quad, 64), expected_dots(64))


@pytest.mark.parametrize("size", [64, 24])  # 24: qsize 160 > 4 * size, so the photo is shrunk first
def test_dots_land_where_the_recipe_puts_them(size):
    image = render_dots(FIVE, 3.0, 200, 200)
    aligned = align_face(image, ffhq_quad(keypoints_from_landmarks(FIVE)), size)
    assert aligned.shape == (size, size, 3) and aligned.dtype == np.uint8
    np.testing.assert_allclose(dot_centres(aligned), expected_dots(size), atol=0.25)


@pytest.mark.parametrize(
    ("angle", "scale", "shift"),
    [(0.5, 1.7, (30.0, -10.0)), (-1.2, 0.8, (60.0, 90.0)), (np.pi, 1.3, (300.0, 290.0))],
)
def test_similarity_transform_is_undone(angle, scale, shift):
    """A rotated, scaled, shifted face (even upside down) aligns to the same canonical crop."""
    moved, extent = similarity(FIVE, angle, scale, shift)
    image = render_dots(moved, 3.0 * scale, extent, extent)
    aligned = align_image(image, moved, size=64)
    np.testing.assert_allclose(
        dot_centres((aligned.hr.permute(1, 2, 0).numpy() * 255).round()), expected_dots(64), atol=0.5
    )


@pytest.mark.parametrize("padding", ["ffhq", "reflect", "black"])
def test_face_near_the_corner_is_padded(padding):
    """The crop leaves the photo at the top and left; the geometry must not move and the padding must be filled.

    The dots stay 40 px from the edges, out of reach of the blurred band and with mirror images outside the crop.
    """
    corner = FIVE - np.array([CX - 60.0, EY - 55.0])  # crop spans about [-20, 140] x [-21, 139]
    grey = np.uint8(render_dots(corner, 3.0, 200, 200) * 0.8 + 40)  # a grey photo, so "black" padding shows
    aligned = align_face(grey, ffhq_quad(keypoints_from_landmarks(corner)), 64, padding=padding)
    dots = np.clip(aligned.astype(np.float64) - 40, 0, None)
    np.testing.assert_allclose(dot_centres(dots), expected_dots(64), atol=0.5)
    top_left = aligned[:4, :4].astype(float).mean()
    assert (top_left < 5) if padding == "black" else (35 < top_left < 45)


def test_68_point_and_5_point_landmarks_agree():
    five, dlib = keypoints_from_landmarks(FIVE), keypoints_from_landmarks(dlib68_from_five(FIVE))
    np.testing.assert_allclose(ffhq_quad(dlib), ffhq_quad(five))
    flat = keypoints_from_landmarks(FIVE.flatten().tolist())
    np.testing.assert_allclose(ffhq_quad(flat), ffhq_quad(five))


@pytest.mark.parametrize("bad", [np.zeros((7, 2)), np.zeros((5, 3)), np.full((5, 2), np.nan), np.zeros((5, 2))])
def test_bad_landmarks_are_rejected(bad):
    with pytest.raises(LandmarkError):
        ffhq_quad(keypoints_from_landmarks(bad))


def test_landmark_files_json_and_csv(tmp_path):
    dlib = dlib68_from_five(FIVE)
    (tmp_path / "marks.json").write_text(
        json.dumps({"a.png": FIVE.tolist(), "b": {"landmarks": dlib.flatten().tolist()}})
    )
    rows = ["name," + ",".join(f"x{i},y{i}" for i in range(5)), "a.jpg," + ",".join(map(str, FIVE.flatten()))]
    rows.append("c," + ",".join(map(str, dlib.flatten())))
    (tmp_path / "marks.csv").write_text("\n".join(rows) + "\n")

    from_json, from_csv = read_landmarks_file(tmp_path / "marks.json"), read_landmarks_file(tmp_path / "marks.csv")
    np.testing.assert_allclose(lookup_landmarks(from_json, Path("x/a.png")), FIVE)
    np.testing.assert_allclose(lookup_landmarks(from_json, Path("b.jpg")), dlib)  # by stem
    np.testing.assert_allclose(lookup_landmarks(from_csv, Path("a.jpg")), FIVE)
    assert lookup_landmarks(from_csv, Path("c.png")).shape == (68, 2)
    with pytest.raises(LandmarkError, match="no landmarks for d.png"):
        lookup_landmarks(from_csv, Path("d.png"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"a.png": [1, 2, 3]}', "odd number"),
        ('{"a.png": [[1, 2], [3, 4]]}', "a.png: got 2 landmarks"),
        ('{"b.png": {"points": []}}', "b.png: landmarks must be"),
        ("{", "JSON"),
    ],
)
def test_bad_landmark_files_name_the_problem(tmp_path, content, message):
    (tmp_path / "marks.json").write_text(content)
    with pytest.raises(LandmarkError, match=message):
        read_landmarks_file(tmp_path / "marks.json")


@pytest.mark.parametrize(("size", "factor"), [(64, 4), (64, 16), (32, 8)])
def test_factor_gives_the_pulse_input(size, factor):
    image = torch.from_numpy(render_dots(FIVE, 3.0, 200, 200)).permute(2, 0, 1).float() / 255
    face = align_image(image, FIVE, size=size, factor=factor)
    assert face.hr.shape == (3, size, size) and face.lr.shape == (3, size // factor, size // factor)
    torch.testing.assert_close(face.lr, BicubicDownscale(factor)(face.hr[None])[0].clamp(0, 1))
    torch.testing.assert_close(face.hr, (face.hr * 255).round() / 255)  # what the PNG stores


def test_factor_must_divide_size():
    with pytest.raises(ValueError, match="not divisible"):
        align_image(render_dots(FIVE, 3.0, 200, 200), FIVE, size=64, factor=5)


# --------------------------------------------------------------------------- the command line


def _script():
    spec = importlib.util.spec_from_file_location("align_faces", ROOT / "scripts" / "align_faces.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def photos(tmp_path):
    """Two dot faces (one rotated, with 68 points), a corrupt file and a photo without landmarks."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(render_dots(FIVE, 3.0, 200, 200)).save(folder / "upright.png")
    moved, extent = similarity(FIVE, 0.4, 1.5, (40.0, -20.0))
    Image.fromarray(render_dots(moved, 4.5, extent, extent)).save(folder / "tilted.jpg", quality=98)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    Image.fromarray(render_dots(FIVE, 3.0, 200, 200)).save(folder / "nomarks.png")
    marks = {"upright.png": FIVE.tolist(), "tilted": dlib68_from_five(moved).tolist(), "broken.png": FIVE.tolist()}
    (tmp_path / "marks.json").write_text(json.dumps(marks))
    return folder, tmp_path / "marks.json"


def test_cli_aligns_a_folder_and_records_failures(photos, tmp_path, capsys):
    folder, marks = photos
    out = tmp_path / "out"
    code = _script().main(
        [str(folder), str(out), "--size", "64", "--factor", "8", "--landmarks", str(marks), "--quiet"]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "align_faces: 2 faces from 2/4 photos aligned to 64 px" in captured.out and "2 skipped" in captured.out
    assert "broken.png" in captured.err and "no landmarks for nomarks.png" in captured.err
    skipped = json.loads((out / "skipped.json").read_text())
    assert set(skipped) == {"broken.png", "nomarks.png"} and "cannot read image" in skipped["broken.png"]

    assert sorted(p.name for p in (out / "hr").iterdir()) == ["tilted_0.png", "upright_0.png"]
    for name in ("tilted_0.png", "upright_0.png"):
        hr, lr = load_image(out / "hr" / name), load_image(out / "lr" / name)
        assert hr.shape == (3, 64, 64) and lr.shape == (3, 8, 8)
        # The LR file is the paper's downscale of the HR file, up to 8-bit rounding.
        assert (lr - BicubicDownscale(8)(hr[None])[0].clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6
        np.testing.assert_allclose(dot_centres((hr.permute(1, 2, 0).numpy() * 255).round()), expected_dots(64), atol=1)


def test_cli_survives_an_unexpected_error(photos, tmp_path, capsys):
    folder, marks = photos
    script = _script()
    real = script.align_image

    def flaky(photo, landmarks, **kwargs):
        if len(landmarks) == 68:  # the tilted photo
            raise RuntimeError("out of memory")
        return real(photo, landmarks, **kwargs)

    script.align_image = flaky
    out = tmp_path / "out"
    assert script.main([str(folder), str(out), "--size", "32", "--landmarks", str(marks), "--quiet"]) == 0
    assert "unexpected RuntimeError: out of memory" in json.loads((out / "skipped.json").read_text())["tilted.jpg#0"]
    assert "1 faces from 1/4 photos aligned" in capsys.readouterr().out


def test_cli_single_file_without_factor(photos, tmp_path):
    folder, marks = photos
    out = tmp_path / "single"
    assert (
        _script().main([str(folder / "upright.png"), str(out), "--size", "32", "--landmarks", str(marks), "--quiet"])
        == 0
    )
    assert load_image(out / "hr" / "upright_0.png").shape == (3, 32, 32) and not (out / "lr").exists()
    assert json.loads((out / "skipped.json").read_text()) == {}


def test_cli_without_landmarks_or_detector_says_what_to_do(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe now raises ImportError
    monkeypatch.setitem(sys.modules, "dlib", None)  # and so does import dlib
    with pytest.raises(DetectorUnavailable, match="pass --landmarks FILE"):
        MediaPipeLandmarks()
    folder, _ = photos
    assert _script().main([str(folder), str(tmp_path / "out"), "--size", "64", "--quiet"]) == 2
    assert NO_DETECTOR in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    for detector, fix in (("dlib", "dlib unavailable"), ("mediapipe", "mediapipe not installed")):
        assert _script().main([str(folder), str(tmp_path / "out"), "--detector", detector, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert fix in err and len(err.strip().splitlines()) == 1
    assert "pip install -e '.[faces]'" in err


def test_cli_rejects_a_factor_that_does_not_divide(photos, tmp_path, capsys):
    folder, marks = photos
    assert (
        _script().main([str(folder), str(tmp_path / "o"), "--size", "64", "--factor", "6", "--landmarks", str(marks)])
        == 2
    )
    assert "not divisible by the downscale factor 6" in capsys.readouterr().err


# --------------------------------------------------------------------------- MediaPipe (only where it runs offline)


def _offline_mediapipe():
    mediapipe = pytest.importorskip("mediapipe")
    if getattr(getattr(mediapipe, "solutions", None), "face_mesh", None) is None:
        pytest.skip(f"mediapipe {getattr(mediapipe, '__version__', '?')} ships no face model (needs <= 0.10.21)")
    return MediaPipeLandmarks()


def test_mediapipe_finds_a_generated_face(dcgan):
    from pulse.generators.base import sample_images

    detector = _offline_mediapipe()
    face = sample_images(dcgan, 1, seed=0)[0]
    big = Image.fromarray((face.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).resize((256, 256))
    photo = np.full((400, 400, 3), 128, np.uint8)
    photo[80:336, 60:316] = np.asarray(big)
    try:
        points = detector(photo)
        with pytest.raises(LandmarkError, match="no face"):
            detector(np.full((200, 200, 3), 128, np.uint8))
    finally:
        detector.close()
    assert points.shape == (468, 2)
    keys = keypoints_from_landmarks(points)
    assert keys.eye_left[0] < keys.eye_right[0] and keys.eye_left[1] < keys.mouth_left[1]  # upright, not mirrored
    assert 60 <= keys.eye_left[0] and keys.eye_right[0] <= 316 and 80 <= keys.eye_left[1] <= keys.mouth_left[1] <= 336
