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


PAD_MODES = ("reflect", "replicate", "circular", "constant")


def extend(images: torch.Tensor, before: int, after: int, dim: int, mode: str = "reflect") -> torch.Tensor:
    """Pad ``images`` by ``before``/``after`` samples along ``dim`` (-1 or -2), any amount in any mode.

    ``F.pad`` refuses reflect padding as wide as the image (and circular padding wider than it), which
    large factors need: a 1 px input of a 64 px generator pads 96 px on each side. Then the mirror
    (or periodic) extension is continued as far as needed: index ``i`` maps to ``i mod 2(n - 1)``
    folded back into ``[0, n)`` (a 1 px image repeats its pixel). Where ``F.pad`` can, it is used,
    and both give the same numbers.
    """
    if mode not in PAD_MODES:
        raise ValueError(f"unknown padding {mode!r}; valid: {', '.join(PAD_MODES)}")
    size = images.shape[dim]
    fits = (
        mode in ("replicate", "constant")
        or max(before, after) < size
        or (mode == "circular" and max(before, after) <= size)
    )
    if fits:
        pad = (before, after, 0, 0) if dim == -1 else (0, 0, before, after)
        return F.pad(images, pad, mode=mode)
    index = torch.arange(-before, size + after, device=images.device)
    if mode == "circular" or size == 1:
        index = index % size
    else:
        period = 2 * (size - 1)
        index = index % period
        index = torch.where(index >= size, period - index, index)
    return images.index_select(dim, index)


class BicubicDownscale(nn.Module):
    """The PULSE paper's operator: separable antialiased bicubic (Keys, ``a = -0.5``), reflect padding.

    Filtering uses ``4 * factor`` taps at stride ``factor``, padded by ``3 * factor`` in total per
    dimension (``floor(3 * factor / 2)`` before), first along rows then along columns. The padding
    (``reflect``, ``replicate``, ``circular`` or ``constant``) works for every factor: where it is wider
    than the image (factor 64 on a 64 px image) the mirror is continued (see :func:`extend`).
    """

    def __init__(self, factor: int, a: float = -0.5, padding: str = "reflect") -> None:
        super().__init__()
        check_factor(factor, factor, factor)
        if padding not in PAD_MODES:
            raise ValueError(f"unknown bicubic padding {padding!r}; valid: {', '.join(PAD_MODES)}")
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
        x = extend(images, before, after, dim=-2, mode=self.padding)
        x = F.conv2d(x, vertical, stride=(self.factor, 1), groups=channels)
        x = extend(x, before, after, dim=-1, mode=self.padding)
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
