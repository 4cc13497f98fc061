import numpy as np
import pytest
import torch

from pulse.downscale import AreaDownscale, BicubicDownscale, bicubic_taps, integer_factor, keys_cubic


def cubic_formula(x: float, a: float = -0.5) -> float:
    t = abs(x)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def test_keys_cubic_matches_formula_and_interpolates():
    xs = np.linspace(-2.5, 2.5, 101)
    got = keys_cubic(torch.tensor(xs)).numpy()
    np.testing.assert_allclose(got, [cubic_formula(x) for x in xs], atol=1e-12)
    assert keys_cubic(torch.tensor([0.0, 1.0, 2.0, -1.0])).tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_taps_are_normalised_stretched_cubic(factor):
    taps = bicubic_taps(factor).double().numpy()
    raw = np.array([cubic_formula((i - 2 * factor + 0.5) / factor) for i in range(4 * factor)])
    np.testing.assert_allclose(taps, raw / raw.sum(), rtol=1e-6)
    assert taps.shape == (4 * factor,)
    np.testing.assert_allclose(taps, taps[::-1])  # symmetric about the output pixel's centre


def reflect(index: int, size: int) -> int:
    """numpy/torch 'reflect' padding (edge pixel not repeated)."""
    period = 2 * (size - 1)
    index = abs(index) % period
    return period - index if index >= size else index


def direct_downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Independent reference: explicit 2-D weighted sums with reflected indices. image [C, H, W]."""
    taps = np.array([cubic_formula((i - 2 * factor + 0.5) / factor) for i in range(4 * factor)])
    taps /= taps.sum()
    channels, height, width = image.shape
    before = (3 * factor) // 2
    out = np.zeros((channels, height // factor, width // factor))
    for oy in range(height // factor):
        for ox in range(width // factor):
            for ky in range(4 * factor):
                y = reflect(oy * factor - before + ky, height)
                for kx in range(4 * factor):
                    x = reflect(ox * factor - before + kx, width)
                    out[:, oy, ox] += taps[ky] * taps[kx] * image[:, y, x]
    return out


@pytest.mark.parametrize("factor,size", [(2, 12), (4, 16), (8, 32)])
def test_bicubic_matches_direct_weighted_sum(factor, size):
    rng = np.random.default_rng(factor)
    image = rng.random((3, size, size))
    got = BicubicDownscale(factor)(torch.tensor(image, dtype=torch.float32)[None])[0].double().numpy()
    np.testing.assert_allclose(got, direct_downscale(image, factor), atol=2e-6)


def test_bicubic_preserves_constants_and_shapes():
    x = torch.full((2, 3, 64, 48), 0.37)
    y = BicubicDownscale(4)(x)
    assert y.shape == (2, 3, 16, 12)
    torch.testing.assert_close(y, torch.full_like(y, 0.37))
    assert AreaDownscale(4)(x).shape == (2, 3, 16, 12)


def test_area_is_block_mean():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(AreaDownscale(2)(x), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="not divisible by the downscale factor 4"):
        BicubicDownscale(4)(torch.zeros(1, 3, 30, 30))
    with pytest.raises(ValueError, match="allowed input sizes: 1, 2, 4, 8, 16, 32, 64"):
        integer_factor(64, 24)
    assert integer_factor(1024, 16) == 64
