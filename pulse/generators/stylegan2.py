"""StyleGAN2 (Karras et al. 2020, config-f) mapping + synthesis in plain torch, for the PULSE search.

Layer arithmetic (as in the official network and rosinality's ``stylegan2-pytorch`` port):

* equalised learning rate: weights are stored N(0, 1)-scaled and multiplied by ``1 / sqrt(fan_in)`` at
  run time (mapping layers also by ``lr_mul = 0.01``, their biases too);
* modulated convolution: the kernel is scaled per input channel by an affine map of the style row
  (bias initialised to 1), then demodulated so every output channel has unit expected norm;
* after each 3x3 convolution: ``x + strength * noise`` (one scalar strength per layer), per-channel
  bias, leaky ReLU(0.2) times ``sqrt(2)``;
* upsampling convolutions: stride-2 transposed convolution followed by the [1, 3, 3, 1] FIR low-pass;
* "skip" output architecture: every resolution adds its own 1x1 modulated toRGB (no demodulation) to
  the FIR-upsampled RGB image of the resolution below.

Module attribute names mirror rosinality's ``Generator`` so that our ``state_dict`` keys equal the
``g_ema`` keys of its ``.pt`` checkpoints (``style.1.weight``, ``input.input``, ``conv1.conv.weight``,
``convs.0.conv.blur.kernel``, ``to_rgbs.0.upsample.kernel``, ``noises.noise_0`` ...) and
``load_state_dict(ckpt["g_ema"])`` needs no renaming. NVIDIA ``stylegan2-ada-pytorch`` pickles are read
as data through :mod:`pulse.io.safe_pickle`'s allow-listed unpickler (:func:`load_nvidia_pkl`) and renamed
(:func:`nvidia_to_rosinality`).

Search space (PULSE, as for StyleGAN v1): ``to_style(z) = leaky_relu(z * std + mean, 0.2)`` where
``mean``/``std`` are statistics of ``leaky_relu(mapping(z), 5)``. The mapping's last activation is
``sqrt(2) * leaky_relu(x, 0.2)``; ``leaky_relu(., 5)`` maps that to ``sqrt(2) * x`` (linear), and
``leaky_relu(., 0.2)`` maps it back, so the search covers exactly the mapping's output space.
"""

from __future__ import annotations

import argparse
import collections
import math
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pulse.generators.base import freeze
from pulse.generators.stylegan import GaussianisedLatent, cached_gaussian_fit, gaussian_fit, pixel_norm
from pulse.io.cache import cache_dir as default_cache_dir
from pulse.io.safe_pickle import NUMPY_ALLOWED, UnsafePickleError, load_torch_weights, restricted_load, stub_class

LRELU_SLOPE = 0.2
ACTIVATION_GAIN = math.sqrt(2.0)
FIR_TAPS = (1.0, 3.0, 3.0, 1.0)
DEMODULATION_EPS = 1e-8
MAPPING_LR_MUL = 0.01
# Random-init RGB outputs sum one toRGB per resolution; this brings the synthetic generator to about [-1, 1].
SYNTHETIC_RGB_SCALE = 0.4
# Random-init noise strengths are zero in the reference (noise would be inert); the synthetic model draws them.
SYNTHETIC_NOISE_STD = 0.1
WEIGHTS_HINT = "put a rosinality .pt or NVIDIA .pkl there (see docs/generators.md)"


# --------------------------------------------------------------------------------------------------
# Shapes of the architecture
# --------------------------------------------------------------------------------------------------


def config_f_channels(resolution: int, channel_base: int = 32768, channel_max: int = 512) -> dict[int, int]:
    """Feature maps per resolution ``{4: c, 8: c, ..., R: c}``: ``min(channel_base // r, channel_max)``.

    The defaults are config-f (512 up to 64 px, then 256, 128, 64, 32 at 1024), identical to rosinality's
    ``channel_multiplier=2`` table.
    """
    log_size = int(math.log2(resolution)) if resolution > 0 else 0
    if resolution < 4 or 2**log_size != resolution:
        raise ValueError(f"StyleGAN2 resolution must be a power of two >= 4, got {resolution}")
    return {2**k: max(1, min(channel_base // 2**k, channel_max)) for k in range(2, log_size + 1)}


def num_styles(resolution: int) -> int:
    """Style rows: ``2 * log2(R) - 2`` (18 at 1024 px)."""
    return 2 * int(math.log2(resolution)) - 2


def noise_shapes(resolution: int) -> list[tuple[int, int, int]]:
    """Per-sample noise shapes ``(1, r, r)``: one at 4 px, then two per resolution (17 maps at 1024 px)."""
    sides = [4] + [2**k for k in range(3, int(math.log2(resolution)) + 1) for _ in range(2)]
    return [(1, r, r) for r in sides]


# --------------------------------------------------------------------------------------------------
# FIR filtering (upfirdn2d) in plain torch
# --------------------------------------------------------------------------------------------------


def fir_kernel(taps: Sequence[float] = FIR_TAPS) -> torch.Tensor:
    """Separable 2-D FIR kernel ``[K, K]``: outer product of ``taps``, normalised to sum 1."""
    t = torch.tensor(list(taps), dtype=torch.float32)
    kernel = t[:, None] * t[None, :]
    return kernel / kernel.sum()


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Upsample by zero insertion, pad, convolve with ``kernel``, keep every ``down``-th pixel.

    Same semantics as the official ``upfirdn2d`` (reference path): each input pixel is followed by
    ``up - 1`` zeros along both axes (size ``H * up``), ``pad = (before, after)`` is added on both axes
    (negative values crop), the result is *convolved* (kernel flipped, as in signal processing, not
    cross-correlated) and subsampled. ``[B, C, H, W] -> [B, C, (H*up + p0 + p1 - K) // down + 1, ...]``.
    """
    batch, channels, height, width = x.shape
    k_h, k_w = kernel.shape
    p0, p1 = pad
    out = x.reshape(batch * channels, 1, height, 1, width, 1)
    if up > 1:
        out = F.pad(out, (0, up - 1, 0, 0, 0, up - 1))
    out = out.reshape(batch * channels, 1, height * up, width * up)
    out = F.pad(out, (max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)))
    # Negative padding crops; slicing keeps the index arithmetic of the official reference.
    out = out[:, :, max(-p0, 0) : out.shape[2] - max(-p1, 0), max(-p0, 0) : out.shape[3] - max(-p1, 0)]
    weight = torch.flip(kernel, (0, 1)).to(out)[None, None]
    out = F.conv2d(out, weight)
    out = out[:, :, ::down, ::down]
    return out.reshape(batch, channels, out.shape[2], out.shape[3])


class Blur(nn.Module):
    """FIR low-pass with fixed padding, ``[B, C, H, W] -> [B, C, H + p0 + p1 - 3, ...]``.

    ``kernel`` (``[4, 4]``) is a persistent buffer because rosinality's checkpoints carry it.
    """

    def __init__(self, pad: tuple[int, int], gain: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("kernel", fir_kernel() * gain)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """x2 FIR upsampling of the skip image, ``[B, C, H, W] -> [B, C, 2H, 2W]``.

    Zero insertion keeps 1/4 of the energy, hence the kernel gain ``factor**2 = 4``. Padding
    ``(2, 1)`` for the 4-tap kernel is the official one and keeps the image centred.
    """

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", fir_kernel() * factor**2)
        p = len(FIR_TAPS) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``sqrt(2) * leaky_relu(x + bias, 0.2)``; ``bias`` ``[C]`` is added along dim 1 of ``x``."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    return F.leaky_relu(x + bias.view(shape), LRELU_SLOPE) * ACTIVATION_GAIN


class FusedLeakyReLU(nn.Module):
    """Bias + leaky ReLU with gain ``sqrt(2)``; the bias (``[C]``) is the conv layer's bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class EqualLinear(nn.Module):
    """Dense layer with run-time scaling ``lr_mul / sqrt(in)``; bias scaled by ``lr_mul``.

    ``[..., in_dim] -> [..., out_dim]``; with ``activation`` the output goes through
    :func:`fused_leaky_relu` (mapping layers).
    """

    def __init__(
        self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activation: bool = False
    ) -> None:
        super().__init__()
        # Stored as N(0, 1/lr_mul^2) so the effective weight is N(0, 1/in) at init (reference init).
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class ModulatedConv2d(nn.Module):
    """Style-modulated (and optionally demodulated) convolution, one kernel per sample.

    ``x`` ``[B, in, H, W]``, ``style`` ``[B, style_dim]`` -> ``[B, out, H, W]`` (``[B, out, 2H, 2W]``
    with ``upsample``). The per-sample kernels run as one grouped convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.upsample = upsample
        self.demodulate = demodulate
        if upsample:
            # After a stride-2 transposed 3x3 conv (size 2H + 1) this padding gives exactly 2H, centred.
            factor = 2
            p = (len(FIR_TAPS) - factor) - (kernel_size - 1)
            self.blur = Blur(pad=((p + 1) // 2 + factor - 1, p // 2 + 1), gain=factor**2)
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        batch, in_channels, height, width = x.shape
        scales = self.modulation(style).view(batch, 1, in_channels, 1, 1)
        weight = self.scale * self.weight * scales  # [B, out, in, k, k]
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + DEMODULATION_EPS)
            weight = weight * demod.view(batch, self.out_channels, 1, 1, 1)
        k = self.kernel_size
        x = x.reshape(1, batch * in_channels, height, width)
        if self.upsample:
            # conv_transpose2d wants [in, out / groups, k, k] per group.
            weight = weight.transpose(1, 2).reshape(batch * in_channels, self.out_channels, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=batch)
            out = out.view(batch, self.out_channels, out.shape[2], out.shape[3])
            return self.blur(out)
        out = F.conv2d(
            x, weight.reshape(batch * self.out_channels, in_channels, k, k), padding=self.padding, groups=batch
        )
        return out.view(batch, self.out_channels, height, width)


class NoiseInjection(nn.Module):
    """``x + strength * noise`` with one learned scalar ``strength`` (``weight``, shape ``[1]``).

    ``x`` ``[B, C, H, W]``; ``noise`` ``[B or 1, 1, H, W]``, ``None`` draws N(0, 1).
    """

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        return x + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4x4 input, ``input`` ``[1, C, 4, 4]``, repeated over the batch."""

    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated 3x3 conv -> noise -> bias + leaky ReLU * sqrt(2). ``[B, in, H, W] -> [B, out, H', W']``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        style_dim: int,
        upsample: bool = False,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        out = self.activate(self.noise(self.conv(x, style), noise))
        return out if self.conv_clamp is None else out.clamp(-self.conv_clamp, self.conv_clamp)


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) + bias, added to the upsampled skip image.

    ``x`` ``[B, C, r, r]``, ``skip`` ``[B, 3, r/2, r/2]`` or None -> ``[B, 3, r, r]``.
    """

    def __init__(
        self, in_channels: int, style_dim: int, upsample: bool = True, conv_clamp: float | None = None
    ) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        if self.conv_clamp is not None:  # before the skip is added, as in stylegan2-ada-pytorch
            out = out.clamp(-self.conv_clamp, self.conv_clamp)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class MappingNetwork(nn.Sequential):
    """``z [B, D] -> w [B, D]``: pixel norm, then ``n_mlp`` equalised dense layers (lr_mul 0.01, leaky ReLU).

    A ``Sequential`` so parameter names are rosinality's (``1.weight`` ... ``8.bias``; index 0 is the
    parameter-free pixel norm). ``latent_size``/``dlatent_size`` let :func:`gaussian_fit` drive it.
    """

    def __init__(self, style_dim: int = 512, n_mlp: int = 8, lr_mul: float = MAPPING_LR_MUL) -> None:
        layers: list[nn.Module] = [PixelNorm()]
        layers += [EqualLinear(style_dim, style_dim, lr_mul=lr_mul, activation=True) for _ in range(n_mlp)]
        super().__init__(*layers)
        self.latent_size = style_dim
        self.dlatent_size = style_dim


class PixelNorm(nn.Module):
    """Each ``[B, D]`` row scaled to unit root-mean-square."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_norm(x)


# --------------------------------------------------------------------------------------------------
# The network (rosinality module tree)
# --------------------------------------------------------------------------------------------------


class StyleGAN2Network(nn.Module):
    """Mapping + synthesis with rosinality's module tree (its ``Generator``; our keys == its ``g_ema`` keys).

    Blocks: block 0 is the 4x4 const -> ``conv1`` (style row 0, noise 0) -> ``to_rgb1`` (row 1); block
    ``b >= 1`` at side ``r = 2**(b + 2)`` runs ``convs[2b - 2]`` (upsampling; row ``2b - 1``, noise
    ``2b - 1``), ``convs[2b - 1]`` (row ``2b``, noise ``2b``) and ``to_rgbs[b - 1]`` (row ``2b + 1``).

    Args:
        channels: ``{side: feature maps}`` for every side 4, 8, ..., R (see :func:`config_f_channels`).
        style_dim: size of z, w and each style row (512 in config-f).
        n_mlp: dense layers in the mapping network (8).
        conv_clamp: stylegan2-ada-pytorch's ``conv_clamp``: every layer's activations and every toRGB
            output are clamped to ``[-conv_clamp, conv_clamp]`` (256 in its training configs; ``None``,
            rosinality's and the original StyleGAN2's behaviour, clamps nothing).
    """

    def __init__(
        self, channels: dict[int, int], style_dim: int = 512, n_mlp: int = 8, conv_clamp: float | None = None
    ) -> None:
        super().__init__()
        sides = sorted(channels)
        self.resolution = sides[-1]
        if sides != sorted(config_f_channels(self.resolution)):
            raise ValueError(f"channels must have one entry per side 4, 8, ..., R; got sides {sides}")
        self.channels = dict(channels)
        self.style_dim = style_dim
        self.conv_clamp = conv_clamp
        self.style = MappingNetwork(style_dim, n_mlp)
        self.input = ConstantInput(channels[4])
        self.conv1 = StyledConv(channels[4], channels[4], style_dim, conv_clamp=conv_clamp)
        self.to_rgb1 = ToRGB(channels[4], style_dim, upsample=False, conv_clamp=conv_clamp)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for low, high in zip(sides[:-1], sides[1:], strict=True):
            up = StyledConv(channels[low], channels[high], style_dim, upsample=True, conv_clamp=conv_clamp)
            self.convs.extend([up, StyledConv(channels[high], channels[high], style_dim, conv_clamp=conv_clamp)])
            self.to_rgbs.append(ToRGB(channels[high], style_dim, conv_clamp=conv_clamp))
        self.noises = nn.Module()  # fixed noise maps of the checkpoint (rosinality's "noises.noise_N")
        for index, shape in enumerate(noise_shapes(self.resolution)):
            self.noises.register_buffer(f"noise_{index}", torch.randn(1, *shape))
        self.num_layers = num_styles(self.resolution)
        self.num_noises = len(noise_shapes(self.resolution))
        self.num_blocks = len(sides)

    def fixed_noise(self) -> list[torch.Tensor]:
        """The checkpoint's stored noise maps, ``[1, 1, r, r]`` each."""
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_noises)]

    def run_blocks(
        self,
        features: torch.Tensor | None,
        styles: torch.Tensor,
        noise: Sequence[torch.Tensor | None],
        start: int,
        stop: int,
    ) -> torch.Tensor:
        """Blocks ``start .. stop - 1``.

        Features between blocks are the conv features and the RGB skip image stacked on channels,
        ``[B, C_r + 3, r, r]`` (the skip architecture carries both); ``features`` is None at ``start == 0``.
        """
        out: torch.Tensor | None = None
        skip: torch.Tensor | None = None
        if features is not None:
            out, skip = features[:, :-3], features[:, -3:]
        for block in range(start, stop):
            if block == 0:
                out = self.conv1(self.input(styles.shape[0]), styles[:, 0], noise[0])
                skip = self.to_rgb1(out, styles[:, 1])
                continue
            out = self.convs[2 * block - 2](out, styles[:, 2 * block - 1], noise[2 * block - 1])
            out = self.convs[2 * block - 1](out, styles[:, 2 * block], noise[2 * block])
            skip = self.to_rgbs[block - 1](out, styles[:, 2 * block + 1], skip)
        if out is None or skip is None:
            raise ValueError(f"run_blocks({start}, {stop}) ran no block and was given no features")
        return torch.cat([out, skip], dim=1)

    def synthesize(self, styles: torch.Tensor, noise: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """``styles`` ``[B, L, D]``, ``noise`` ``[B, 1, r_i, r_i]`` each (None: random) -> ``[B, 3, R, R]``."""
        if styles.dim() != 3 or styles.shape[1] != self.num_layers or styles.shape[2] != self.style_dim:
            raise ValueError(f"styles must be [batch, {self.num_layers}, {self.style_dim}], got {list(styles.shape)}")
        noise = [None] * self.num_noises if noise is None else list(noise)
        if len(noise) != self.num_noises:
            raise ValueError(f"expected {self.num_noises} noise maps, got {len(noise)}")
        return self.run_blocks(None, styles, noise, 0, self.num_blocks)[:, -3:]


# --------------------------------------------------------------------------------------------------
# Checkpoints: rosinality .pt
# --------------------------------------------------------------------------------------------------


def infer_architecture(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``{"channels", "style_dim", "n_mlp"}`` of a rosinality-layout state dict (from tensor shapes)."""
    try:
        channels = {4: int(state["input.input"].shape[1])}
        rgb = sorted(int(m.group(1)) for k in state if (m := re.fullmatch(r"to_rgbs\.(\d+)\.conv\.weight", k)))
        convs = {int(m.group(1)) for k in state if (m := re.fullmatch(r"convs\.(\d+)\.conv\.weight", k))}
        # Every block of a 'skip' generator has a toRGB; convs 2i, 2i + 1 belong to to_rgbs.i.
        absent = [f"to_rgbs.{i}" for i in range(max(convs, default=-1) // 2 + 1) if i not in rgb]
        if "to_rgb1.conv.weight" not in state:
            absent.insert(0, "to_rgb1")
        if absent:
            raise RuntimeError(
                f"not a 'skip' StyleGAN2 generator: no {', '.join(absent[:6])}{' ...' if len(absent) > 6 else ''} "
                "(every resolution needs its toRGB layer)"
            )
        for index in rgb:
            channels[2 ** (index + 3)] = int(state[f"to_rgbs.{index}.conv.weight"].shape[2])
        dense = [k for k in state if re.fullmatch(r"style\.\d+\.weight", k)]
        style_dim = int(state["conv1.conv.modulation.weight"].shape[1])
    except KeyError as error:
        raise RuntimeError(f"not a StyleGAN2 generator state dict (missing {error})") from None
    return {"channels": channels, "style_dim": style_dim, "n_mlp": len(dense)}


def load_rosinality(path: Path) -> dict[str, torch.Tensor]:
    """The ``g_ema`` state dict of a rosinality ``stylegan2-pytorch`` checkpoint, read as data.

    Accepts ``{"g_ema": state_dict, ...}`` (converted and training checkpoints; the ``argparse.Namespace``
    that training checkpoints carry is allowed as data) or a bare generator state dict.
    """
    try:
        ckpt = load_torch_weights(path, safe_globals=[argparse.Namespace])
    except Exception as error:
        raise RuntimeError(f"cannot read {path} as a PyTorch checkpoint: {error}") from error
    state = ckpt.get("g_ema", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "input.input" not in state:
        found = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise RuntimeError(f"{path} holds no rosinality StyleGAN2 generator ('g_ema' state dict); found {found}")
    return dict(state)


# --------------------------------------------------------------------------------------------------
# Checkpoints: NVIDIA stylegan2-ada-pytorch .pkl (read as data, never executed)
# --------------------------------------------------------------------------------------------------


class PersistentObject:
    """What :func:`_record_persistent_obj` returns instead of rebuilding a ``persistent_class`` object.

    Holds the class name and pickled ``state`` (the module ``__dict__``); the embedded source code
    (``meta["module_src"]``) is dropped unread, so nothing from the file is ever executed.
    """

    def __init__(self, class_name: str, state: Any) -> None:
        self.class_name, self.state = class_name, state


def _record_persistent_obj(meta: Any) -> PersistentObject:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError("unexpected torch_utils.persistence record (expected a 'class' meta dict)")
    return PersistentObject(str(meta.get("class_name")), meta.get("state"))


def _storage_from_bytes(data: bytes) -> Any:
    # Plain-pickled torch storages embed a torch.save blob; weights_only keeps that inner load data-only too.
    return load_torch_weights(data, label="a tensor storage inside the pickle")


class _EasyDict(dict):
    """Inert stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access; only the items matter)."""


NVIDIA_NETWORK_CLASSES = (
    "Generator",
    "MappingNetwork",
    "SynthesisNetwork",
    "SynthesisBlock",
    "SynthesisLayer",
    "ToRGBLayer",
    "FullyConnectedLayer",
    "Conv2dLayer",
    "Discriminator",
    "DiscriminatorBlock",
    "DiscriminatorEpilogue",
    "MinibatchStdLayer",
)


def nvidia_allowed_globals() -> dict[tuple[str, str], object]:
    """Allow-list for stylegan2-ada-pytorch pickles: persistence records, network stubs, tensors, containers."""
    allowed: dict[tuple[str, str], object] = dict(NUMPY_ALLOWED)
    allowed.update(
        {
            ("torch_utils.persistence", "_reconstruct_persistent_obj"): _record_persistent_obj,
            ("dnnlib.util", "EasyDict"): _EasyDict,
            ("dnnlib", "EasyDict"): _EasyDict,
            ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
            ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("builtins", "set"): set,
        }
    )
    for module in ("training.networks", "training.augment"):
        for name in (*NVIDIA_NETWORK_CLASSES, "AugmentPipe"):
            allowed[(module, name)] = stub_class(module, name)
    return allowed


def _module_state(obj: Any) -> dict[str, Any] | None:
    """The pickled ``__dict__`` of a network module (persistence record or stub), else None."""
    state = getattr(obj, "state", None)
    return state if isinstance(state, dict) and "_parameters" in state else None


def flatten_module(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """``state_dict``-style ``{dotted.name: tensor}`` from an unpickled module's parameters, buffers and children."""
    state = _module_state(obj)
    if state is None:
        raise RuntimeError(f"expected a pickled torch module at '{prefix or '<root>'}', got {type(obj).__name__}")
    tensors: dict[str, torch.Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is not None:
                tensors[prefix + name] = torch.as_tensor(value).detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            tensors.update(flatten_module(child, f"{prefix}{name}."))
    return tensors


def load_nvidia_pkl(path: Path | str | bytes) -> dict[str, torch.Tensor]:
    """``G_ema``'s tensors from a stylegan2-ada-pytorch network pickle (see :func:`read_nvidia_pkl`)."""
    return read_nvidia_pkl(path)[0]


def read_nvidia_pkl(path: Path | str | bytes) -> tuple[dict[str, torch.Tensor], float | None]:
    """``G_ema``'s tensors and its ``conv_clamp`` from a stylegan2-ada-pytorch pickle (restricted unpickler).

    Raises:
        pickle.UnpicklingError: the pickle names a global outside :func:`nvidia_allowed_globals`.
        RuntimeError: no ``G_ema`` network in it, or layers with different ``conv_clamp`` values.
    """
    try:
        data = restricted_load(path, nvidia_allowed_globals())
    except UnsafePickleError as error:
        label = "the pickle" if isinstance(path, bytes) else Path(path).name
        raise UnsafePickleError(f"{label}: {error}") from None
    network = data.get("G_ema") if isinstance(data, dict) else None
    if network is None:
        found = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise RuntimeError(f"{path!r:.200} is not a stylegan2-ada-pytorch network pickle (no 'G_ema'; found {found})")
    return flatten_module(network), conv_clamp_of(network)


def conv_clamp_of(obj: Any) -> float | None:
    """The ``conv_clamp`` attribute shared by an unpickled network's layers (``None``: absent or unset)."""
    values: set[float | None] = set()

    def visit(module: Any) -> None:
        state = _module_state(module)
        if state is None:
            return
        if "conv_clamp" in state:
            value = state["conv_clamp"]
            values.add(None if value is None else float(value))
        for child in (state.get("_modules") or {}).values():
            visit(child)

    visit(obj)
    if len(values) > 1:
        raise RuntimeError(f"layers of the pickle use different conv_clamp values {sorted(map(str, values))}")
    return values.pop() if values else None


# NVIDIA name (after "synthesis.b<r>.<layer>.") -> our name under the matching StyledConv / ToRGB.
_CONV_RENAMES = {
    "weight": "conv.weight",
    "affine.weight": "conv.modulation.weight",
    "affine.bias": "conv.modulation.bias",
    "noise_strength": "noise.weight",
    "bias": "activate.bias",
}
_RGB_RENAMES = {
    "weight": "conv.weight",
    "affine.weight": "conv.modulation.weight",
    "affine.bias": "conv.modulation.bias",
    "bias": "bias",
}
# Buffers recomputed here (FIR kernels) or not part of the synthesis (mapping.w_avg: truncation only).
_NVIDIA_IGNORED = re.compile(r"(.*\.)?resample_filter|mapping\.w_avg")


def nvidia_to_rosinality(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and reshape) stylegan2-ada-pytorch ``G_ema`` tensors to rosinality ``g_ema`` keys.

    Kernel buffers (``*.blur.kernel``, ``*.upsample.kernel``) are not in NVIDIA's files; the caller keeps
    its own. Shapes: conv weights gain a leading 1, ``const`` ``[C, 4, 4]`` -> ``[1, C, 4, 4]``, noise
    strengths ``[]`` -> ``[1]``, ``noise_const`` ``[r, r]`` -> ``[1, 1, r, r]``, toRGB bias -> ``[1, 3, 1, 1]``.

    Raises:
        RuntimeError: a tensor name that has no counterpart (e.g. a conditional or resnet generator).
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, value in tensors.items():
        if _NVIDIA_IGNORED.fullmatch(name):
            continue
        if m := re.fullmatch(r"mapping\.fc(\d+)\.(weight|bias)", name):
            out[f"style.{int(m.group(1)) + 1}.{m.group(2)}"] = value
            continue
        if name == "synthesis.b4.const":
            out["input.input"] = value.unsqueeze(0)
            continue
        m = re.fullmatch(r"synthesis\.b(\d+)\.(conv0|conv1|torgb)\.(.+)", name)
        if m is None:
            unknown.append(name)
            continue
        side, layer, leaf = int(m.group(1)), m.group(2), m.group(3)
        level = int(math.log2(side)) - 2  # 0 at 4 px
        if layer == "torgb":
            target = "to_rgb1" if level == 0 else f"to_rgbs.{level - 1}"
            if leaf not in _RGB_RENAMES:
                unknown.append(name)
                continue
            value = value.reshape(1, 3, 1, 1) if leaf == "bias" else value
            out[f"{target}.{_RGB_RENAMES[leaf]}"] = value.unsqueeze(0) if leaf == "weight" else value
            continue
        conv_index = 2 * level - 2 + (layer == "conv1")  # convs[] index for sides > 4
        target = "conv1" if level == 0 else f"convs.{conv_index}"
        noise_index = 0 if level == 0 else conv_index + 1
        if leaf == "noise_const":
            out[f"noises.noise_{noise_index}"] = value.reshape(1, 1, *value.shape[-2:])
        elif leaf in _CONV_RENAMES:
            if leaf == "weight":
                value = value.unsqueeze(0)
            elif leaf == "noise_strength":
                value = value.reshape(1)
            out[f"{target}.{_CONV_RENAMES[leaf]}"] = value
        else:
            unknown.append(name)
    if unknown:
        raise RuntimeError(
            f"unsupported tensors in the NVIDIA pickle (only unconditional config-f 'skip' generators are "
            f"supported): {', '.join(sorted(unknown)[:6])}{' ...' if len(unknown) > 6 else ''}"
        )
    _refuse_orig_architecture(tensors)
    return out


def _refuse_orig_architecture(tensors: dict[str, torch.Tensor]) -> None:
    """A one-line ``RuntimeError`` for generators whose blocks lack a toRGB (``architecture='orig'``).

    stylegan2-ada-pytorch's 'skip' blocks (config-f) each add their toRGB output to the upsampled image of
    the block before; 'orig' blocks have a toRGB at the last resolution only, which is another network.
    """
    sides = sorted({int(m.group(1)) for k in tensors if (m := re.match(r"synthesis\.b(\d+)\.", k))})
    with_rgb = {int(m.group(1)) for k in tensors if (m := re.match(r"synthesis\.b(\d+)\.torgb\.", k))}
    absent = [f"synthesis.b{side}.torgb" for side in sides if side not in with_rgb]
    if absent:
        kind = "an 'orig' architecture generator" if with_rgb == {sides[-1]} else "a generator"
        raise RuntimeError(
            f"unsupported NVIDIA pickle: {kind} without {', '.join(absent[:6])}{' ...' if len(absent) > 6 else ''} "
            f"(toRGB only at {', '.join(f'b{s}' for s in sorted(with_rgb)) or 'no block'}); only unconditional "
            "config-f 'skip' generators are supported"
        )


# --------------------------------------------------------------------------------------------------
# The Generator wrapper
# --------------------------------------------------------------------------------------------------


def _load_state(network: StyleGAN2Network, state: dict[str, torch.Tensor], source: str, fill_kernels: bool) -> None:
    if fill_kernels:  # NVIDIA files carry no FIR kernel buffers: keep ours (they are fixed, not learned)
        own = network.state_dict()
        state = {**{k: v for k, v in own.items() if k.endswith(".kernel")}, **state}
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise RuntimeError(f"{source} does not match the StyleGAN2 layout: {error}") from error


class StyleGAN2Generator(GaussianisedLatent):
    """Frozen StyleGAN2 + Gaussian fit, following :class:`pulse.generators.base.LayeredGenerator`.

    Args:
        network: the mapping + synthesis network (frozen here).
        gaussian_fit: ``{"mean": [D], "std": [D]}`` of ``leaky_relu(mapping(z), 5)``.
    """

    def __init__(self, network: StyleGAN2Network, gaussian_fit: dict[str, torch.Tensor]) -> None:
        super().__init__(network.style_dim, gaussian_fit)
        self.network = freeze(network)
        self.resolution = network.resolution
        self.num_latents = network.num_layers
        self.noise_shapes: list[tuple[int, ...]] = list(noise_shapes(self.resolution))
        self.eval()

    def synthesize(self, style: torch.Tensor, noise: Sequence[torch.Tensor | None] | None) -> torch.Tensor:
        """``style`` ``[B, L, D]``, noise ``[B, 1, r_i, r_i]`` each -> ``[B, 3, R, R]`` in about [-1, 1]."""
        return self.network.synthesize(style, noise)

    # Layered access (pulse.generators.base.LayeredGenerator) for intermediate-layer optimisation.
    @property
    def num_blocks(self) -> int:
        return self.network.num_blocks

    def block_rows(self, block: int) -> slice:
        """Style rows block ``block`` reads: 0-1 for the 4x4 block, ``2b - 1 .. 2b + 1`` after."""
        return slice(0, 2) if block == 0 else slice(2 * block - 1, 2 * block + 2)

    def forward_blocks(
        self, features: torch.Tensor | None, style: torch.Tensor, noise: Sequence[torch.Tensor], start: int, stop: int
    ) -> torch.Tensor:
        """Blocks ``start .. stop - 1``; features are ``[B, C_r + 3, r, r]`` (conv features + RGB skip)."""
        return self.network.run_blocks(features, style, noise, start, stop)

    def features_to_image(self, features: torch.Tensor) -> torch.Tensor:
        """The skip image carried in the last 3 feature channels, ``[B, 3, R, R]``."""
        return features[:, -3:]

    @classmethod
    def synthetic(
        cls,
        resolution: int = 32,
        channel_base: int = 512,
        channel_max: int = 32,
        style_dim: int = 512,
        n_mlp: int = 8,
        seed: int = 0,
        fit_samples: int = 20000,
    ) -> StyleGAN2Generator:
        """Small StyleGAN2 with seeded random weights (rosinality's init), for tests and quick experiments.

        Differences from the reference init, so the random model behaves like a trained one: noise
        strengths ``|N(0, 0.1**2)|`` instead of 0 (else the noise inputs would be inert) and toRGB
        weights scaled by ``SYNTHETIC_RGB_SCALE`` so images lie mostly in [-1, 1]. The Gaussian fit
        uses ``fit_samples`` draws through the equally seeded mapping network.
        """
        network = StyleGAN2Network(config_f_channels(resolution, channel_base, channel_max), style_dim, n_mlp)
        seeded_init(network, torch.Generator().manual_seed(seed))
        fit = gaussian_fit(network.style, num_samples=fit_samples, seed=seed, progress=False)
        return cls(network, fit)

    @classmethod
    def pretrained(
        cls,
        path: str | Path | None = None,
        cache_dir: str | Path | None = None,
        fit_samples: int = 1_000_000,
        progress: bool = True,
    ) -> StyleGAN2Generator:
        """StyleGAN2 weights from a rosinality ``.pt`` or NVIDIA stylegan2-ada-pytorch ``.pkl``; never downloads.

        Args:
            path: the checkpoint file. Default: the single ``*.pt`` / ``*.pkl`` in ``cache_dir``.
            cache_dir: default ``$PULSE_CACHE/stylegan2_ffhq``.
            fit_samples: draws for the Gaussian fit (cached by weights' hash under ``$PULSE_CACHE/gaussian_fit``).

        The architecture (resolution, channels, mapping depth) is read from the tensor shapes; an NVIDIA
        pickle's ``conv_clamp`` (if its layers set one) is applied as there.

        Raises:
            FileNotFoundError: no checkpoint there. RuntimeError: unreadable file or layout mismatch.
            pickle.UnpicklingError: a ``.pkl`` that names globals outside the allow-list.
        """
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "stylegan2_ffhq"
        file = find_checkpoint(Path(path).expanduser() if path is not None else None, folder)
        conv_clamp = None
        if file.suffix == ".pkl":
            tensors, conv_clamp = read_nvidia_pkl(file)
            state, from_nvidia = nvidia_to_rosinality(tensors), True
        else:
            state, from_nvidia = load_rosinality(file), False
        network = StyleGAN2Network(**infer_architecture(state), conv_clamp=conv_clamp)
        _load_state(network, state, str(file), fill_kernels=from_nvidia)
        fit = cached_gaussian_fit(network.style, num_samples=fit_samples, seed=0, progress=progress)
        return cls(network, fit)


def find_checkpoint(path: Path | None, folder: Path) -> Path:
    """The checkpoint: ``path`` if it is a file, else the only ``.pt``/``.pkl`` in ``path`` (a folder) or ``folder``."""
    if path is not None and path.is_dir():
        path, folder = None, path
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"StyleGAN2 weights not found at {path}; {WEIGHTS_HINT}")
        return path
    found = sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pkl")) if folder.is_dir() else []
    if not found:
        raise FileNotFoundError(f"StyleGAN2 weights not found at {folder}; {WEIGHTS_HINT}")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise FileNotFoundError(f"several StyleGAN2 checkpoints in {folder} ({names}); choose one with `path:`")
    return found[0]


@torch.no_grad()
def seeded_init(network: StyleGAN2Network, rng: torch.Generator) -> None:
    """Re-draw every parameter from ``rng`` (reference init, plus the synthetic tweaks of ``synthetic``)."""
    for name, param in network.named_parameters():
        if name.endswith("modulation.bias"):
            param.fill_(1.0)
        elif name.endswith("noise.weight"):
            param.copy_(torch.randn(param.shape, generator=rng).abs() * SYNTHETIC_NOISE_STD)
        elif name.endswith("bias"):
            param.zero_()
        elif name.startswith("style."):
            param.copy_(torch.randn(param.shape, generator=rng) / MAPPING_LR_MUL)
        else:
            param.copy_(torch.randn(param.shape, generator=rng))
        if name.startswith(("to_rgb1.conv.weight", "to_rgbs.")) and name.endswith("conv.weight"):
            param.mul_(SYNTHETIC_RGB_SCALE)
    for buffer in network.noises.buffers():
        buffer.copy_(torch.randn(buffer.shape, generator=rng))
