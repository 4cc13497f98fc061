import numpy as np
import pytest
import torch
from PIL import Image

from pulse.data import GeneratedFaces, ImageError, ImageFolder, image_files, load_image, save_image


def write(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_rgb_gray_rgba_and_16bit_are_read_as_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    x = load_image(write(tmp_path / "rgb.png", rgb))
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), rgb / 255.0, atol=1e-7)

    gray = rgb[..., 0]
    with pytest.warns(UserWarning, match="grayscale image replicated to RGB"):
        g = load_image(write(tmp_path / "gray.png", gray))
    assert torch.equal(g[0], g[2]) and g[0, 0, 0] == pytest.approx(gray[0, 0] / 255)

    rgba = np.dstack([rgb, np.full((8, 8), 128, np.uint8)])
    with pytest.warns(UserWarning, match="transparency composited over black"):
        a = load_image(write(tmp_path / "rgba.png", rgba))
    np.testing.assert_allclose(a.permute(1, 2, 0).numpy(), rgb / 255.0 * 128 / 255, atol=1e-6)

    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    with pytest.warns(UserWarning, match="grayscale image read as RGB"):
        d = load_image(tmp_path / "deep.png")
    assert d.max() <= 1 and d[0, 7, 7] == pytest.approx(63000 / 65535, abs=1e-6)


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="junk.png: cannot read image"):
        load_image(tmp_path / "junk.png")
    good = write(tmp_path / "good.png", np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageError, match="cut.png"):
        load_image(tmp_path / "cut.png")


def test_folder_skips_bad_files_with_reasons_and_keeps_good_ones(tmp_path):
    write(tmp_path / "a.png", np.zeros((16, 16, 3), np.uint8))
    write(tmp_path / "wide.png", np.zeros((16, 32, 3), np.uint8))
    write(tmp_path / "odd.png", np.zeros((24, 24, 3), np.uint8))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    (tmp_path / "notes.txt").write_text("ignored")
    folder = ImageFolder(tmp_path, resolution=64)
    with pytest.warns(UserWarning, match="skipping"):
        problems = list(folder)
    assert [p.name for p in problems] == ["a"]
    assert set(folder.skipped) == {"wide.png", "odd.png", "broken.jpg", "notes.txt"}
    assert "not an image file (extension '.txt')" in folder.skipped["notes.txt"]
    assert "non-square image 32x16" in folder.skipped["wide.png"]
    assert "allowed input sizes" in folder.skipped["odd.png"]
    with pytest.raises(ImageError):
        list(ImageFolder(tmp_path, resolution=64, strict=True))


def test_folder_of_ground_truth_is_downscaled(tmp_path):
    hr = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    write(tmp_path / "face.png", hr)
    (problem,) = list(ImageFolder(tmp_path, resolution=64, factor=8))
    assert problem.lr.shape == (3, 8, 8) and problem.hr.shape == (3, 64, 64)


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images"):
        image_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_files(tmp_path / "nope")


def test_save_image_round_trip(tmp_path):
    x = torch.rand(3, 8, 8)
    save_image(x, tmp_path / "out" / "x.png")
    assert (load_image(tmp_path / "out" / "x.png") - x).abs().max() <= 0.5 / 255 + 1e-6
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left behind


def test_exif_orientation_is_applied(tmp_path):
    stored = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)  # 4 rows, 6 columns as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif)
    loaded = load_image(tmp_path / "phone.png")
    upright = np.rot90(stored, k=-1)  # clockwise
    assert loaded.shape == (3, 6, 4)
    assert np.array_equal((loaded.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), upright)


def test_generated_faces_are_deterministic_and_realisable(dcgan):
    a = list(GeneratedFaces(dcgan, num=2, factors=[4, 8], seed=5))
    b = list(GeneratedFaces(dcgan, num=2, factors=[4, 8], seed=5))
    assert [p.name for p in a] == ["face000_x4", "face001_x4", "face000_x8", "face001_x8"]
    assert all(torch.equal(p.lr, q.lr) for p, q in zip(a, b, strict=True))
    assert a[0].lr.shape == (3, 16, 16) and a[2].lr.shape == (3, 8, 8) and a[0].hr.shape == (3, 64, 64)
    assert torch.equal(a[0].lr, (a[0].lr * 255).round() / 255)  # 8-bit like a PNG input
