from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from pulse.data import GeneratedFaces, ImageFolder, save_image
from pulse.degradations import (
    OPERATORS,
    BilinearDownscale,
    GaussianDownscale,
    GrayDownscale,
    InpaintMask,
    JpegDownscale,
    KernelDownscale,
    NearestDownscale,
    NoisyDownscale,
    jpeg_quantisation_table,
    make_operator,
)
from pulse.downscale import AreaDownscale, BicubicDownscale
from pulse.generators.base import sample_images
from pulse.solvers.pulse import PulseSolver, SearchSettings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RESAMPLERS = ["bilinear", "nearest", "gaussian", "noisy", "jpeg", "bicubic", "area"]


def pil_resize(image: np.ndarray, size: int, resample: int) -> np.ndarray:
    """A float32 ``[H, W]`` array resized by PIL in mode F (no 8-bit rounding)."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize((size, size), resample))


@pytest.mark.parametrize("name", RESAMPLERS)
@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_shapes(name, factor):
    out = make_operator(name, factor)(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 3, 32 // factor, 32 // factor)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["inpaint", "gray"])
def test_same_size_operators_keep_shape(name):
    assert make_operator(name, 1)(torch.rand(2, 3, 16, 16)).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("name", ["bilinear", "nearest", "gaussian", "area", "bicubic"])
@pytest.mark.parametrize("factor", [2, 3, 4])
def test_constant_image_stays_constant(name, factor):
    image = torch.full((1, 3, 24, 24), 0.37)
    torch.testing.assert_close(make_operator(name, factor)(image), torch.full((1, 3, 24 // factor, 24 // factor), 0.37))


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_bilinear_matches_pil(factor):
    image = np.random.default_rng(factor).random((48, 48)).astype(np.float32)
    expected = pil_resize(image, 48 // factor, Image.BILINEAR)
    got = BilinearDownscale(factor)(torch.from_numpy(image)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_nearest_picks_pil_pixel(factor):
    image = np.random.default_rng(factor).random((24, 24)).astype(np.float32)
    got = NearestDownscale(factor)(torch.from_numpy(image)[None, None])[0, 0].numpy()
    np.testing.assert_array_equal(got, pil_resize(image, 24 // factor, Image.NEAREST))
    np.testing.assert_array_equal(got, image[factor // 2 :: factor, factor // 2 :: factor])


def test_gaussian_small_sigma_approaches_decimation():
    image = torch.rand(1, 3, 24, 24)
    # Odd factor: the block centre is a pixel.
    torch.testing.assert_close(GaussianDownscale(3, sigma=1e-3)(image), NearestDownscale(3)(image))
    # Even factor: the centre lies between the central 2x2 pixels, which share the weight.
    central = image[..., 1::4, 1::4] + image[..., 2::4, 1::4] + image[..., 1::4, 2::4] + image[..., 2::4, 2::4]
    torch.testing.assert_close(GaussianDownscale(4, sigma=1e-3)(image), central / 4)
    # Blur grows with sigma: a wider Gaussian departs further from decimation.
    gaps = [(GaussianDownscale(3, sigma=s)(image) - NearestDownscale(3)(image)).abs().mean() for s in (0.3, 1.0, 3.0)]
    assert gaps[0] < gaps[1] < gaps[2]
    assert GaussianDownscale(4).sigma == 2.0


def test_gaussian_interior_pixel_matches_formula():
    image = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    sigma, factor = 1.3, 4
    out = GaussianDownscale(factor, sigma=sigma)(image)
    positions = torch.arange(32, dtype=torch.float64) + 0.5
    weights = torch.exp(-((positions - 3.5 * factor) ** 2) / (2 * sigma**2))  # output pixel 3: centre at 14
    weights = weights / weights.sum()
    assert out[0, 0, 3, 3].item() == pytest.approx((weights[:, None] * weights[None, :] * image[0, 0]).sum().item())


def test_kernel_from_npy_round_trip(tmp_path):
    box = np.full((4, 4), 7.0)  # unnormalised on purpose
    np.save(tmp_path / "box.npy", box)
    operator = KernelDownscale(4, path=tmp_path / "box.npy")
    assert operator.kernel.sum().item() == pytest.approx(1.0)
    image = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(operator(image), AreaDownscale(4)(image))

    kernel = np.random.default_rng(0).random((5, 5))
    np.save(tmp_path / "k.npy", kernel)
    torch.save(torch.from_numpy(kernel), tmp_path / "k.pt")
    from_npy = KernelDownscale(2, path=tmp_path / "k.npy")(image)
    torch.testing.assert_close(KernelDownscale(2, path=tmp_path / "k.pt")(image), from_npy)
    assert from_npy.shape == (2, 3, 8, 8)
    torch.testing.assert_close(
        KernelDownscale(3, path=tmp_path / "k.npy")(torch.full((1, 3, 12, 12), 0.5)).mean(), torch.tensor(0.5)
    )


def test_kernel_from_png_and_centring(tmp_path):
    delta = np.zeros((3, 3), dtype=np.uint8)
    delta[1, 1] = 255
    Image.fromarray(delta).save(tmp_path / "delta.png")
    image = torch.rand(1, 3, 15, 15)
    # A centred delta kernel with an odd factor is exactly decimation at the block centre.
    torch.testing.assert_close(KernelDownscale(3, path=tmp_path / "delta.png")(image), NearestDownscale(3)(image))


def test_kernel_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        KernelDownscale(2, path=tmp_path / "missing.npy")
    np.save(tmp_path / "cube.npy", np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="2-D"):
        KernelDownscale(2, path=tmp_path / "cube.npy")
    np.save(tmp_path / "zero.npy", np.zeros((3, 3)))
    with pytest.raises(ValueError, match="sums to"):
        KernelDownscale(2, path=tmp_path / "zero.npy")
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="cannot read blur kernel"):
        KernelDownscale(2, path=tmp_path / "pickled.npy")
    torch.save({"kernel": torch.ones(3, 3)}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match="single tensor"):
        KernelDownscale(2, path=tmp_path / "dict.pt")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="junk.png"):
        KernelDownscale(2, path=tmp_path / "junk.png")


def test_jpeg_table_and_quantisation():
    assert jpeg_quantisation_table(50)[0, 0].item() == 16
    assert jpeg_quantisation_table(100).eq(1).all()
    assert jpeg_quantisation_table(10)[0, 0].item() == 80
    with pytest.raises(ValueError, match="quality"):
        jpeg_quantisation_table(0)
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    clean = BicubicDownscale(4)(image)
    differences = [JpegDownscale(4, quality=q, subsampling="4:4:4")(image) - clean for q in (100, 50, 10)]
    # Quality 100 without chroma subsampling: only coefficient rounding, amplified up to ~1.8x by YCbCr -> RGB.
    assert differences[0].abs().max() < 2.5 / 255
    assert (JpegDownscale(4, quality=100, color="rgb")(image) - clean).abs().max() < 1.5 / 255
    mean_errors = [d.abs().mean().item() for d in differences]
    assert mean_errors[0] < mean_errors[1] < mean_errors[2]
    # LR side not a multiple of 8 (64 / 16 = 4 px): padded and cropped back.
    assert JpegDownscale(16)(image).shape == (2, 3, 4, 4)


@pytest.mark.parametrize("subsampling", ["4:2:0", "4:4:4"])
@pytest.mark.parametrize("quality", [90, 30])
def test_jpeg_model_is_close_to_a_real_codec(quality, subsampling):
    """PIL (libjpeg) encodes and decodes the same LR photo: the YCbCr model lands within about one level
    of the codec's result on average (the crude per-RGB-channel model is several levels away)."""
    import io

    from PIL import Image

    photo = pytest.importorskip("skimage.data").astronaut()[::4, ::4][:120, :120]
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "JPEG", quality=quality, subsampling={"4:2:0": 2, "4:4:4": 0}[subsampling])
    codec = torch.from_numpy(np.array(Image.open(buffer))).permute(2, 0, 1)[None].float() / 255
    lr = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 255
    errors = {}
    for color in ("ycbcr", "rgb"):
        model = JpegDownscale(2, quality=quality, color=color, subsampling=subsampling)
        model.base = torch.nn.Identity()  # compress the photo itself
        errors[color] = (model(lr).clamp(0, 1) - codec).abs().mean().item() * 255
    assert errors["ycbcr"] < 1.6
    assert errors["rgb"] > 2 * errors["ycbcr"]


def test_jpeg_options_are_checked():
    with pytest.raises(ValueError, match="subsampling must be one of"):
        JpegDownscale(2, subsampling="4:2:2")
    with pytest.raises(ValueError, match="color must be"):
        JpegDownscale(2, color="lab")
    assert JpegDownscale(4)(torch.rand(1, 3, 40, 40)).shape == (1, 3, 10, 10)  # padded to 16 px units, cropped


def test_jpeg_straight_through_gradient():
    image = torch.rand(1, 3, 32, 32, requires_grad=True)
    JpegDownscale(2, quality=30)(image).square().sum().backward()
    assert torch.isfinite(image.grad).all()
    assert image.grad.abs().sum() > 0


def test_noisy_adds_noise_only_when_making_data():
    image = torch.rand(4, 3, 32, 32)
    operator = NoisyDownscale(4, sigma=0.05, seed=3)
    torch.testing.assert_close(operator(image), BicubicDownscale(4)(image))
    noisy = operator.degrade(image)
    residual = noisy - BicubicDownscale(4)(image)
    assert residual.std().item() == pytest.approx(0.05, rel=0.15)
    assert operator.noise_floor == pytest.approx(0.0025)
    torch.testing.assert_close(operator.degrade(image), noisy)  # seeded: reproducible
    # Each image its own noise, whatever the batching: alone or in a batch, same result; twins differ.
    other = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    batch = operator.degrade(torch.cat([other, image]))
    torch.testing.assert_close(batch[1:], noisy)
    torch.testing.assert_close(operator.degrade(image[2:3]), noisy[2:3])
    assert not torch.allclose(residual[0], residual[1], atol=1e-2)  # equal-sized images, different noise
    assert not torch.equal(NoisyDownscale(4, sigma=0.05, seed=4).degrade(image), noisy)
    area = NoisyDownscale(2, sigma=0.0, base="area")
    torch.testing.assert_close(area.degrade(image), AreaDownscale(2)(image))


def test_inpainting_mask_zeroes_the_box(tmp_path):
    image = torch.rand(1, 3, 16, 16) + 0.1
    out = InpaintMask(1, box=[0.25, 0.5, 0.75, 1.0])(image)
    assert out[..., 4:12, 8:16].eq(0).all()
    torch.testing.assert_close(out[..., :4, :], image[..., :4, :])
    torch.testing.assert_close(out[..., :, :8], image[..., :, :8])
    mask = np.ones((16, 16))
    mask[:2] = 0
    np.save(tmp_path / "mask.npy", mask)
    from_file = InpaintMask(1, mask=str(tmp_path / "mask.npy"))(image)
    assert from_file[..., :2, :].eq(0).all() and from_file[..., 2:, :].equal(image[..., 2:, :])
    with pytest.raises(ValueError, match="resolution"):
        InpaintMask(1, mask=str(tmp_path / "mask.npy"))(torch.rand(1, 3, 8, 8))


@pytest.mark.parametrize("name", ["inpaint", "gray"])
def test_same_size_operators_refuse_other_factors(name):
    with pytest.raises(ValueError, match="factor must be 1"):
        make_operator(name, 4)


def test_gray_output_is_luma():
    image = torch.rand(1, 3, 8, 8)
    out = GrayDownscale(1)(image)
    assert out.shape == (1, 3, 8, 8)
    assert out[:, 0].equal(out[:, 1]) and out[:, 1].equal(out[:, 2])
    rgb = (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    pil_gray = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)
    luma = torch.from_numpy(rgb).float().permute(2, 0, 1)[None] / 255
    np.testing.assert_allclose(GrayDownscale(1)(luma)[0, 0].numpy() * 255, pil_gray, atol=1.0)


def test_make_operator_names_and_options():
    assert isinstance(make_operator("gaussian", 4, sigma=1.5), GaussianDownscale)
    assert make_operator("gaussian", 4, sigma=1.5).sigma == 1.5
    with pytest.raises(ValueError, match="valid names: bicubic, area"):
        make_operator("lanczos", 2)
    assert set(OPERATORS) >= {"bicubic", "area", "bilinear", "nearest", "gaussian", "kernel", "noisy", "jpeg"}


def test_generated_faces_with_degradation(dcgan):
    faces = sample_images(dcgan, 2, seed=7)
    default = [p.lr for p in GeneratedFaces(dcgan, num=2, factors=[4], seed=7)]
    expected = (BicubicDownscale(4)(faces).clamp(0, 1) * 255).round() / 255
    torch.testing.assert_close(torch.stack(default), expected)

    named = GeneratedFaces(dcgan, num=2, factors=[4], seed=7, degradation="gaussian", quantize=False)
    torch.testing.assert_close(torch.stack([p.lr for p in named]), GaussianDownscale(4)(faces).clamp(0, 1))
    factory = GeneratedFaces(dcgan, num=2, factors=[8], seed=7, degradation=AreaDownscale, quantize=False)
    torch.testing.assert_close(torch.stack([p.lr for p in factory]), AreaDownscale(8)(faces))

    noisy_factory = partial(NoisyDownscale, sigma=0.05)
    noisy = torch.stack([p.lr for p in GeneratedFaces(dcgan, num=2, factors=[4], seed=7, degradation=noisy_factory)])
    assert (noisy - expected).abs().max() > 0.05  # noise made it into the inputs (beyond 8-bit rounding)
    assert (noisy - expected).std().item() == pytest.approx(0.05, rel=0.3)

    gray = list(GeneratedFaces(dcgan, num=2, factors=[1], seed=7, degradation="gray"))
    assert gray[0].name == "face000_x1" and gray[0].lr.shape == (3, 64, 64)
    assert gray[0].lr[0].equal(gray[0].lr[2])
    with pytest.raises(ValueError, match="factor must be 1"):
        GeneratedFaces(dcgan, num=2, factors=[4], degradation="inpaint")
    with pytest.raises(ValueError, match="unknown degradation"):
        GeneratedFaces(dcgan, num=2, factors=[4], degradation="blurry")


def test_image_folder_with_degradation(tmp_path):
    image = torch.rand(3, 32, 32)
    save_image(image, tmp_path / "a.png")
    stored = ImageFolder(tmp_path, resolution=32, factor=4).files[0]
    truth = torch.from_numpy(np.asarray(Image.open(stored), dtype=np.float32) / 255).permute(2, 0, 1)
    (problem,) = list(ImageFolder(tmp_path, resolution=32, factor=4, degradation="nearest"))
    torch.testing.assert_close(problem.lr, truth[:, 2::4, 2::4])
    (problem,) = list(ImageFolder(tmp_path, resolution=32, factor=4))
    torch.testing.assert_close(problem.lr, BicubicDownscale(4)(truth[None])[0].clamp(0, 1))
    with pytest.raises(ValueError, match="needs data.factor"):  # LR files as they are: nothing to degrade
        ImageFolder(tmp_path, resolution=32, degradation="nearest")


def test_solver_searches_same_size_gray_problem(dcgan):
    (problem,) = list(GeneratedFaces(dcgan, num=1, factors=[1], seed=3, degradation="gray"))
    solver = PulseSolver(dcgan, settings=SearchSettings(steps=3), downscale=GrayDownscale)
    result = solver.solve(problem.lr[None])
    assert result.hr.shape == (1, 3, 64, 64)
    assert torch.isfinite(result.downscale_error).all()


def test_hydra_configs_make_matched_and_mismatched_data(dcgan):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        for name in ["bilinear", "nearest", "gaussian", "noisy", "jpeg"]:
            cfg = compose("config", overrides=[f"downscale={name}"])
            assert instantiate(cfg.downscale)(4)(torch.rand(1, 3, 64, 64)).shape == (1, 3, 16, 16)
        cfg = compose("config", overrides=["downscale=gaussian", "downscale.sigma=3", "data.degradation=${downscale}"])
        data = instantiate(cfg.data, generator=dcgan)
        assert isinstance(data.operators[4], GaussianDownscale) and data.operators[8].sigma == 3
        cfg = compose("config", overrides=["downscale=area"])
        assert isinstance(instantiate(cfg.data, generator=dcgan).operators[4], BicubicDownscale)  # default: paper
        cfg = compose("config", overrides=["experiment=mismatch"], return_hydra_config=True)
        assert cfg.hydra.sweeper.params["data.degradation"] == "bicubic,area,gaussian"
