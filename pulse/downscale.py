"""Downscaling operators: the forward model that maps a high-resolution image to its low-resolution input.

Every operator is a module taking ``[batch, channels, H, W]`` and returning
``[batch, channels, H // factor, W // factor]``; it is built from the integer ``factor`` alone so a
config can name it once and the runner instantiates it for whatever scale an input needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def keys_cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel evaluated at ``x`` (any shape); zero for ``|x| >= 2``."""
    t = x.abs()
    near = (a + 2.0) * t**3 - (a + 3.0) * t**2 + 1.0
    far = a * t**3 - 5.0 * a * t**2 + 8.0 * a * t - 4.0 * a
    return torch.where(t <= 1.0, near, torch.where(t < 2.0, far, torch.zeros_like(t)))


def bicubic_taps(factor: int, a: float = -0.5) -> torch.Tensor:
    """The antialiased 1-D bicubic filter for integer downscaling, ``[4 * factor]``, summing to one.

    The cubic is stretched by ``factor`` (antialiasing) and sampled at the centres of the
    ``4 * factor`` input pixels that one output pixel covers: ``(i - 2 * factor + 0.5) / factor``.
    """
    positions = (torch.arange(4 * factor, dtype=torch.float64) - 2 * factor + 0.5) / factor
    taps = keys_cubic(positions, a)
    return (taps / taps.sum()).float()


def check_factor(height: int, width: int, factor: int) -> None:
    """Raise a ``ValueError`` naming the problem when ``[H, W]`` cannot be reduced by ``factor``."""
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"downscale factor must be a positive integer, got {factor!r}")
    if height % factor or width % factor:
        raise ValueError(f"image of size {height}x{width} is not divisible by the downscale factor {factor}")


class BicubicDownscale(nn.Module):
    """The PULSE paper's operator: separable antialiased bicubic (Keys, ``a = -0.5``), reflect padding.

    Filtering uses ``4 * factor`` taps at stride ``factor``, padded by ``3 * factor`` in total per
    dimension (``floor(3 * factor / 2)`` before), first along rows then along columns.
    """

    def __init__(self, factor: int, a: float = -0.5, padding: str = "reflect") -> None:
        super().__init__()
        check_factor(factor, factor, factor)
        self.factor = int(factor)
        self.padding = padding
        self.register_buffer("taps", bicubic_taps(self.factor, a), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C, H / factor, W / factor]``."""
        _, channels, height, width = images.shape
        check_factor(height, width, self.factor)
        if self.factor == 1:
            return images
        total_pad = 3 * self.factor
        before, after = total_pad // 2, total_pad - total_pad // 2
        taps = self.taps.to(dtype=images.dtype)
        vertical = taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
        horizontal = taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
        x = F.pad(images, (0, 0, before, after), mode=self.padding)
        x = F.conv2d(x, vertical, stride=(self.factor, 1), groups=channels)
        x = F.pad(x, (before, after, 0, 0), mode=self.padding)
        return F.conv2d(x, horizontal, stride=(1, self.factor), groups=channels)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, padding={self.padding!r}"


class AreaDownscale(nn.Module):
    """Box filter: each output pixel is the mean of its ``factor x factor`` input block."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        check_factor(factor, factor, factor)
        self.factor = int(factor)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C, H / factor, W / factor]``."""
        check_factor(images.shape[-2], images.shape[-1], self.factor)
        return F.avg_pool2d(images, self.factor) if self.factor > 1 else images

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def integer_factor(hr_size: int, lr_size: int) -> int:
    """The integer scale between an output side and an input side, or a ``ValueError`` saying why not."""
    if lr_size <= 0 or hr_size % lr_size:
        allowed = [d for d in range(1, hr_size + 1) if hr_size % d == 0]
        raise ValueError(
            f"input size {lr_size} px does not divide the generator's {hr_size} px output; "
            f"allowed input sizes: {', '.join(map(str, allowed))}"
        )
    return hr_size // lr_size
