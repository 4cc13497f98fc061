"""StyleGAN (v1) synthesis and mapping networks, interchangeable with the official PULSE weights.

The layer arithmetic follows the official PULSE port (``adamian98/pulse``, ``stylegan.py``, itself
derived from lernapparat's port of NVIDIA's TensorFlow StyleGAN): equalised learning rate (weights are
stored N(0, 1)-scaled and multiplied by ``gain / sqrt(fan_in)`` at run time), a [1, 2, 1] blur after
every upsampling, a fused transposed-convolution upsampling from 128 px on, and per layer the order
noise -> leaky ReLU(0.2) -> instance norm -> style modulation. There is no truncation.

Module attribute names mirror the official module tree so that ``state_dict`` keys match the
official ``synthesis.pt`` / ``mapping.pt`` files (``blocks.4x4.const``, ``blocks.8x8.conv0_up.weight``,
``dense0.weight``, ...) and ``load_state_dict`` takes them unchanged.

Search space (PULSE): the latent ``z`` (``[batch, layers, 512]``, each row on the sphere) is mapped to
the synthesis input by ``leaky_relu(z * std + mean, 0.2)``, where ``mean``/``std`` are statistics of
``leaky_relu(mapping(z), 5)`` (the inverse of the mapping's last activation) over random ``z``.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pulse.generators.base import freeze
from pulse.io.cache import atomic_write_bytes
from pulse.io.cache import cache_dir as default_cache_dir
from pulse.io.safe_pickle import load_torch_weights

LRELU_SLOPE = 0.2
# Inverse of the mapping's last leaky ReLU (slope 0.2): statistics are gathered in this "Gaussian" space.
INVERSE_LRELU_SLOPE = 5.0
# The official network switches from "nearest upsample + conv" to a fused transposed conv at this output size.
FUSED_UPSAMPLE_MIN_SIDE = 128
# Instance-norm epsilon: official PULSE's port uses nn.InstanceNorm2d's default 1e-5, and PULSE's published
# numbers were made with it; NVIDIA's TensorFlow StyleGAN adds 1e-8. At 1024 px the two give images about
# 5e-4 apart (docs/generators.md); ``instance_norm_eps`` picks one.
INSTANCE_NORM_EPS = 1e-5
NVIDIA_INSTANCE_NORM_EPS = 1e-8
# Random-init images have std ~1.4; this brings the synthetic generator's output to about [-1, 1].
SYNTHETIC_RGB_SCALE = 0.35
WEIGHTS_HINT = (
    "run `python scripts/fetch_weights.py ffhq --trust-unverified` (or --sha256 NAME=HEX), or convert NVIDIA's pickle "
    "with `python scripts/fetch_weights.py convert karras2019stylegan-ffhq-1024x1024.pkl`, "
    "or copy the official PULSE synthesis.pt/mapping.pt there"
)


def noise_shapes(num_layers: int) -> list[tuple[int, int, int]]:
    """Per-sample noise shapes ``(1, r, r)``: two layers per resolution, ``r = 4, 4, 8, 8, 16, ...``."""
    return [(1, 2 ** (i // 2 + 2), 2 ** (i // 2 + 2)) for i in range(num_layers)]


def check_instance_norm_eps(eps: float) -> float:
    """``eps`` as a float if it is a finite number > 0, else a one-line ``ValueError``."""
    value = float(eps)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"instance_norm_eps must be a finite number > 0 (1e-5: official PULSE, 1e-8: NVIDIA), got {eps!r}"
        )
    return value


def _new_weight(*shape: int, std: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.empty(*shape).normal_(0.0, std, generator=generator)


# --------------------------------------------------------------------------------------------------
# Equalised-learning-rate layers
# --------------------------------------------------------------------------------------------------


class EqualizedLinear(nn.Module):
    """Dense layer whose weight is stored unscaled and multiplied by ``gain / sqrt(in) * lr_multiplier``.

    ``[..., in_features] -> [..., out_features]``. The bias is multiplied by ``lr_multiplier``
    (0.01 in the mapping network, 1 elsewhere), as in the official layer.
    """

    def __init__(self, in_features: int, out_features: int, gain: float, lr_multiplier: float = 1.0) -> None:
        super().__init__()
        self.lr_multiplier = lr_multiplier
        self.weight_gain = gain / math.sqrt(in_features) * lr_multiplier
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Reference init: weight ~ N(0, 1 / lr_multiplier**2), zero bias (effective weight is He-scaled)."""
        with torch.no_grad():
            self.weight.copy_(_new_weight(*self.weight.shape, std=1.0 / self.lr_multiplier, generator=generator))
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_multiplier)


class EqualizedConv2d(nn.Module):
    """``same``-padded convolution with run-time He scaling ``gain / sqrt(in * k * k)``.

    ``[B, in, H, W] -> [B, out, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, gain: float) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.weight_gain = gain / math.sqrt(in_channels * kernel_size**2)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            self.weight.copy_(_new_weight(*self.weight.shape, generator=generator))
            self.bias.zero_()

    def scaled_weight(self) -> torch.Tensor:
        """The effective kernel ``[out, in, k, k]``."""
        return self.weight * self.weight_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.scaled_weight(), self.bias, padding=self.kernel_size // 2)


class Blur(nn.Module):
    """Depthwise 3x3 binomial low-pass filter ([1, 2, 1] outer product / 16), ``[B, C, H, W]`` kept."""

    def __init__(self) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = taps[:, None] * taps[None, :]
        # Persistent buffer: the official state dicts carry it as ``...conv0_up.intermediate.kernel``.
        self.register_buffer("kernel", (kernel / kernel.sum())[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        return F.conv2d(x, self.kernel.expand(channels, -1, -1, -1), padding=1, groups=channels)


def fused_upsample_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Nearest x2 upsampling and a 3x3 convolution as one stride-2 transposed convolution.

    ``x``: ``[B, in, H, W]``; ``weight``: effective kernel ``[out, in, 3, 3]``; returns ``[B, out, 2H, 2W]``.
    Summing the four one-pixel shifts of the kernel gives the 4x4 kernel of "upsample then convolve".
    A transposed convolution flips its kernel, so this equals nearest upsampling followed by a
    convolution with the *spatially flipped* 3x3 kernel. The official weights were trained this way
    (TensorFlow's fused path), which is why the non-fused path at >= 128 px would not reproduce them.
    """
    return F.conv_transpose2d(x, transposed_upsample_kernel(weight), stride=2, padding=1)


def transposed_upsample_kernel(weight: torch.Tensor) -> torch.Tensor:
    """``[out, in, 3, 3] -> [in, out, 4, 4]``: the kernel :func:`fused_upsample_conv` transposes with."""
    kernel = F.pad(weight.transpose(0, 1), (1, 1, 1, 1))  # [in, out, 5, 5]
    return kernel[:, :, 1:, 1:] + kernel[:, :, :-1, 1:] + kernel[:, :, 1:, :-1] + kernel[:, :, :-1, :-1]


class UpsampleConv2d(EqualizedConv2d):
    """x2 upsampling, 3x3 equalised conv, blur, then bias. ``[B, in, H, W] -> [B, out, 2H, 2W]``.

    Below 128 px output: nearest upsampling then convolution; from 128 px on: the fused transposed
    convolution (:func:`fused_upsample_conv`), exactly as the official network switches.
    """

    def __init__(self, in_channels: int, out_channels: int, gain: float) -> None:
        super().__init__(in_channels, out_channels, 3, gain)
        self.intermediate = Blur()  # attribute name fixed by the official state-dict keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if 2 * min(x.shape[2:]) >= FUSED_UPSAMPLE_MIN_SIDE:
            x = fused_upsample_conv(x, self.scaled_weight())
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = F.conv2d(x, self.scaled_weight(), padding=1)
        # The bias comes after the blur (blurring a per-channel constant would not change it, but keeps
        # the float rounding identical to the reference).
        return self.intermediate(x) + self.bias.view(1, -1, 1, 1)


# --------------------------------------------------------------------------------------------------
# Per-layer epilogue: noise, activation, instance norm, style
# --------------------------------------------------------------------------------------------------


class NoiseInjection(nn.Module):
    """Adds a single-channel noise map scaled by a learned per-channel strength.

    ``x``: ``[B, C, H, W]``, ``noise``: ``[B or 1, 1, H, W]``; ``None`` draws fresh N(0, 1) noise.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            self.weight.zero_()

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
        return x + self.weight.view(1, -1, 1, 1) * noise


class StyleModulation(nn.Module):
    """Adaptive instance norm's affine part: ``x * (1 + scale(w)) + shift(w)``.

    ``x``: ``[B, C, H, W]``, ``dlatent``: ``[B, dlatent_size]``.
    """

    def __init__(self, dlatent_size: int, channels: int) -> None:
        super().__init__()
        self.lin = EqualizedLinear(dlatent_size, 2 * channels, gain=1.0)

    def forward(self, x: torch.Tensor, dlatent: torch.Tensor) -> torch.Tensor:
        style = self.lin(dlatent).view(-1, 2, x.shape[1], 1, 1)  # [B, (scale, shift), C, 1, 1]
        return x * (style[:, 0] + 1.0) + style[:, 1]


class LayerEpilogue(nn.Module):
    """What follows every convolution: noise -> leaky ReLU(0.2) -> instance norm -> style. Shape kept.

    ``instance_norm_eps`` is added to the variance (see :data:`INSTANCE_NORM_EPS`); it is a setting, not a
    weight, so it is not in the state dict.
    """

    def __init__(self, channels: int, dlatent_size: int, instance_norm_eps: float = INSTANCE_NORM_EPS) -> None:
        super().__init__()
        self.instance_norm_eps = check_instance_norm_eps(instance_norm_eps)
        self.noise = NoiseInjection(channels)
        self.style_mod = StyleModulation(dlatent_size, channels)

    def forward(self, x: torch.Tensor, dlatent: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        x = self.noise(x, noise)
        x = F.leaky_relu(x, LRELU_SLOPE)
        x = F.instance_norm(x, eps=self.instance_norm_eps)  # no affine, no running stats (nn.InstanceNorm2d's)
        return self.style_mod(x, dlatent)


# --------------------------------------------------------------------------------------------------
# Synthesis network
# --------------------------------------------------------------------------------------------------


class ConstantInputBlock(nn.Module):
    """The 4x4 block: learned constant (+ bias), epilogue, 3x3 conv, epilogue. Output ``[B, C, 4, 4]``."""

    def __init__(self, channels: int, dlatent_size: int, instance_norm_eps: float = INSTANCE_NORM_EPS) -> None:
        super().__init__()
        self.const = nn.Parameter(torch.ones(1, channels, 4, 4))
        self.bias = nn.Parameter(torch.ones(channels))
        self.epi1 = LayerEpilogue(channels, dlatent_size, instance_norm_eps)
        self.conv = EqualizedConv2d(channels, channels, 3, gain=math.sqrt(2))
        self.epi2 = LayerEpilogue(channels, dlatent_size, instance_norm_eps)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            self.const.fill_(1.0)
            self.bias.fill_(1.0)

    def forward(self, dlatents: torch.Tensor, noise: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """``dlatents``: ``[B, 2, dlatent_size]`` (this block's two layers); ``noise``: two maps."""
        x = self.const.expand(dlatents.shape[0], -1, -1, -1) + self.bias.view(1, -1, 1, 1)
        x = self.epi1(x, dlatents[:, 0], noise[0])
        x = self.conv(x)
        return self.epi2(x, dlatents[:, 1], noise[1])


class UpsamplingBlock(nn.Module):
    """One doubling: upsample-conv, epilogue, 3x3 conv, epilogue. ``[B, in, r, r] -> [B, out, 2r, 2r]``."""

    def __init__(
        self, in_channels: int, out_channels: int, dlatent_size: int, instance_norm_eps: float = INSTANCE_NORM_EPS
    ) -> None:
        super().__init__()
        self.conv0_up = UpsampleConv2d(in_channels, out_channels, gain=math.sqrt(2))
        self.epi1 = LayerEpilogue(out_channels, dlatent_size, instance_norm_eps)
        self.conv1 = EqualizedConv2d(out_channels, out_channels, 3, gain=math.sqrt(2))
        self.epi2 = LayerEpilogue(out_channels, dlatent_size, instance_norm_eps)

    def forward(self, x: torch.Tensor, dlatents: torch.Tensor, noise: Sequence[torch.Tensor | None]) -> torch.Tensor:
        x = self.epi1(self.conv0_up(x), dlatents[:, 0], noise[0])
        return self.epi2(self.conv1(x), dlatents[:, 1], noise[1])


class Synthesis(nn.Module):
    """StyleGAN (v1) synthesis network (official PULSE layout and state-dict keys).

    Args:
        resolution: output side ``R``, a power of two >= 4 (1024 for FFHQ).
        fmap_base, fmap_decay, fmap_max: feature maps at the block of side ``2**s`` are
            ``min(int(fmap_base / 2**((s - 1) * fmap_decay)), fmap_max)``.
        dlatent_size: size of one style vector ``w`` (512).
        num_channels: output colour channels (3).
        instance_norm_eps: added to each instance norm's variance: 1e-5 (official PULSE, the default) or
            1e-8 (NVIDIA's StyleGAN); see :data:`INSTANCE_NORM_EPS`.

    Attributes:
        num_layers: ``L = 2 * log2(R) - 2`` style/noise layers (18 at 1024 px).
    """

    def __init__(
        self,
        resolution: int = 1024,
        fmap_base: int = 8192,
        fmap_decay: float = 1.0,
        fmap_max: int = 512,
        dlatent_size: int = 512,
        num_channels: int = 3,
        instance_norm_eps: float = INSTANCE_NORM_EPS,
    ) -> None:
        super().__init__()
        log2 = int(round(math.log2(resolution))) if resolution > 0 else 0
        if resolution < 4 or 2**log2 != resolution:
            raise ValueError(f"StyleGAN resolution must be a power of two >= 4, got {resolution}")

        def channels_at(stage: int) -> int:
            return min(int(fmap_base / 2.0 ** (stage * fmap_decay)), fmap_max)

        self.resolution = resolution
        self.dlatent_size = dlatent_size
        self.num_layers = 2 * log2 - 2
        self.instance_norm_eps = check_instance_norm_eps(instance_norm_eps)
        eps = self.instance_norm_eps
        blocks: dict[str, nn.Module] = {"4x4": ConstantInputBlock(channels_at(1), dlatent_size, eps)}
        for level in range(3, log2 + 1):
            blocks[f"{2**level}x{2**level}"] = UpsamplingBlock(
                channels_at(level - 2), channels_at(level - 1), dlatent_size, eps
            )
        # Registered before ``blocks`` so the state-dict key order also matches the official files.
        self.torgb = EqualizedConv2d(channels_at(log2 - 1), num_channels, 1, gain=1.0)
        self.blocks = nn.ModuleDict(blocks)

    @property
    def noise_shapes(self) -> list[tuple[int, int, int]]:
        return noise_shapes(self.num_layers)

    def forward(self, dlatents: torch.Tensor, noise: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Render images.

        Args:
            dlatents: ``[batch, num_layers, dlatent_size]``, one style vector per layer.
            noise: ``num_layers`` maps, entry ``i`` of shape ``[batch or 1, 1, r_i, r_i]`` with
                ``r_i = 2**(i // 2 + 2)``; ``None`` (or a ``None`` entry) draws fresh N(0, 1) noise.

        Returns:
            ``[batch, num_channels, resolution, resolution]``, roughly in ``[-1, 1]`` for trained weights.
        """
        if dlatents.dim() != 3 or dlatents.shape[1] != self.num_layers:
            raise ValueError(
                f"dlatents must be [batch, {self.num_layers}, {self.dlatent_size}], got {list(dlatents.shape)}"
            )
        if noise is None:
            noise = [None] * self.num_layers
        if len(noise) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} noise maps, got {len(noise)}")
        return self.torgb(self.run_blocks(None, dlatents, noise, 0, len(self.blocks)))

    def run_blocks(
        self,
        features: torch.Tensor | None,
        dlatents: torch.Tensor,
        noise: Sequence[torch.Tensor | None],
        start: int,
        stop: int,
    ) -> torch.Tensor:
        """Blocks ``start .. stop - 1`` (block ``b`` uses style/noise layers ``2b`` and ``2b + 1``).

        Args:
            features: the output of block ``start - 1``, ``[B, C, r, r]``; ``None`` when ``start == 0``.

        Returns:
            The output of block ``stop - 1``, ``[B, C', r', r']`` (features, not RGB).
        """
        x = features
        for index, block in enumerate(list(self.blocks.values())[start:stop], start=start):
            layers = slice(2 * index, 2 * index + 2)
            x = (
                block(dlatents[:, layers], noise[layers])
                if index == 0
                else block(x, dlatents[:, layers], noise[layers])
            )
        return x


# --------------------------------------------------------------------------------------------------
# Mapping network and its Gaussian fit
# --------------------------------------------------------------------------------------------------


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each ``[B, D]`` row to unit root-mean-square."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


class Mapping(nn.Module):
    """StyleGAN (v1) mapping network ``z -> w``: pixel norm, then ``mapping_layers`` x (dense, leaky ReLU).

    Dense layers use equalised learning rate with a 0.01 learning-rate multiplier, and are named
    ``dense0 ... dense7`` like the official ``mapping.pt``. ``[batch, latent_size] -> [batch, dlatent_size]``.
    """

    def __init__(
        self,
        latent_size: int = 512,
        dlatent_size: int = 512,
        mapping_layers: int = 8,
        mapping_fmaps: int = 512,
        lr_multiplier: float = 0.01,
    ) -> None:
        super().__init__()
        self.latent_size = latent_size
        self.dlatent_size = dlatent_size
        self.num_dense = mapping_layers
        sizes = [latent_size] + [mapping_fmaps] * (mapping_layers - 1) + [dlatent_size]
        for index in range(mapping_layers):
            dense = EqualizedLinear(sizes[index], sizes[index + 1], gain=math.sqrt(2), lr_multiplier=lr_multiplier)
            self.add_module(f"dense{index}", dense)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(z)
        for index in range(self.num_dense):
            x = F.leaky_relu(getattr(self, f"dense{index}")(x), LRELU_SLOPE)
        return x


@torch.no_grad()
def gaussian_fit(
    mapping: Mapping,
    num_samples: int = 1_000_000,
    seed: int = 0,
    batch_size: int = 65536,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Mean and unbiased std of ``leaky_relu(mapping(z), 5)`` over ``num_samples`` z ~ N(0, I).

    ``z`` is drawn batch by batch from ``torch.Generator().manual_seed(seed)`` on the CPU (so the draw
    does not depend on the device or, since consecutive draws concatenate, on ``batch_size``) and moved
    to the mapping's device. Batch statistics are merged in float64 (Chan et al.'s parallel variance),
    so a million samples never sit in memory at once and no precision is lost to cancellation.

    Returns:
        ``{"mean": [dlatent_size], "std": [dlatent_size]}``, float32 on the CPU.
    """
    if num_samples < 2:
        raise ValueError(f"gaussian_fit needs at least 2 samples, got {num_samples}")
    from tqdm.auto import tqdm  # local: keep module import light

    param = next(mapping.parameters())
    rng = torch.Generator().manual_seed(seed)
    count = 0
    mean = torch.zeros(mapping.dlatent_size, dtype=torch.float64)
    m2 = torch.zeros(mapping.dlatent_size, dtype=torch.float64)
    with tqdm(total=num_samples, disable=not progress, desc="gaussian fit", unit="z") as bar:
        while count < num_samples:
            size = min(batch_size, num_samples - count)
            z = torch.randn(size, mapping.latent_size, generator=rng)
            w = mapping(z.to(device=param.device, dtype=param.dtype))
            y = F.leaky_relu(w, INVERSE_LRELU_SLOPE).to(device="cpu", dtype=torch.float64)
            batch_mean = y.mean(dim=0)
            batch_m2 = (y - batch_mean).pow(2).sum(dim=0)
            total = count + size
            delta = batch_mean - mean
            mean += delta * (size / total)
            m2 += batch_m2 + delta.pow(2) * (count * size / total)
            count = total
            bar.update(size)
    return {"mean": mean.float(), "std": (m2 / (count - 1)).sqrt().float()}


def mapping_fit_key(mapping: nn.Module, num_samples: int, seed: int) -> str:
    """Cache key: sha256 of the fit settings and the mapping's state dict (names, shapes, dtypes, bytes)."""
    header = f"pulse-gaussian-fit-v1;slope={INVERSE_LRELU_SLOPE};n={num_samples};seed={seed}\n"
    digest = hashlib.sha256(header.encode())
    for key, tensor in mapping.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cached_gaussian_fit(
    mapping: Mapping,
    num_samples: int,
    seed: int = 0,
    cache_root: str | Path | None = None,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """:func:`gaussian_fit`, stored under ``<cache_root or cache_dir()>/gaussian_fit/<hash>.pt``.

    The file name hashes the mapping weights, ``num_samples`` and ``seed``, so different weights or
    settings never share an entry. An unreadable cache entry is recomputed and overwritten.
    """
    root = Path(cache_root) if cache_root is not None else default_cache_dir()
    path = root / "gaussian_fit" / f"{mapping_fit_key(mapping, num_samples, seed)}.pt"
    if path.is_file():
        try:
            cached = torch.load(path, weights_only=True, map_location="cpu")
            return {"mean": cached["mean"], "std": cached["std"]}
        except Exception:  # truncated or foreign file: fall through and recompute
            pass
    fit = gaussian_fit(mapping, num_samples=num_samples, seed=seed, progress=progress)
    buffer = io.BytesIO()
    torch.save(fit, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return fit


# --------------------------------------------------------------------------------------------------
# Loading files
# --------------------------------------------------------------------------------------------------


def random_networks(
    resolution: int = 32,
    fmap_base: int = 256,
    fmap_max: int = 32,
    seed: int = 0,
    instance_norm_eps: float = INSTANCE_NORM_EPS,
) -> tuple[Synthesis, Mapping]:
    """Seeded random synthesis and mapping networks, initialised as :meth:`StyleGANGenerator.synthetic` says.

    Their state dicts are in the official PULSE layout (``synthesis.pt``, ``mapping.pt``), which is what lets
    speed comparisons feed the same random weights to pulse and to the official code.
    """
    rng = torch.Generator().manual_seed(seed)
    synthesis = Synthesis(
        resolution=resolution, fmap_base=fmap_base, fmap_max=fmap_max, instance_norm_eps=instance_norm_eps
    )
    mapping = Mapping()
    for module in (*synthesis.modules(), *mapping.modules()):
        if hasattr(module, "reset_parameters"):
            module.reset_parameters(rng)
        if isinstance(module, NoiseInjection):
            with torch.no_grad():
                module.weight.copy_(_new_weight(*module.weight.shape, std=0.1, generator=rng).abs())
    with torch.no_grad():
        synthesis.torgb.weight.mul_(SYNTHETIC_RGB_SCALE)
    return synthesis, mapping


def load_tensor_dict(path: Path) -> dict[str, torch.Tensor]:
    """A ``{name: tensor}`` file read with ``weights_only=True`` on the CPU; clear errors otherwise."""
    try:
        state = load_torch_weights(path)
    except Exception as error:  # not a plain tensor file (pickled module, corrupt, ...)
        raise RuntimeError(f"cannot read {path} as a plain PyTorch state dict: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuntimeError(f"{path} is not a state dict of tensors (got {type(state).__name__})")
    return state


def load_into(module: nn.Module, path: Path) -> None:
    """``module.load_state_dict`` from ``path`` (strict), naming the file when the layout does not match."""
    state = load_tensor_dict(path)
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise RuntimeError(f"{path} does not match the {type(module).__name__} layout: {error}") from error


def _listed(keys: Sequence[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def layout_mismatch(module: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """How ``state`` differs from ``module``'s state dict (missing, unexpected keys, shapes), or ``None``."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} is {list(state[k].shape)}, expected {list(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = []
    if missing:
        parts.append(f"missing {_listed(missing)}")
    if unexpected:
        parts.append(f"unexpected {_listed(unexpected)}")
    if wrong:
        parts.append(_listed(wrong, 2))
    return "; ".join(parts) or None


def _load_checked(module: nn.Module, state: dict[str, torch.Tensor], path: Path, how: str) -> None:
    """Strict load, or a one-line ``RuntimeError`` naming the file, the layout and the first differences."""
    problem = layout_mismatch(module, state)
    if problem is not None:
        raise RuntimeError(f"{path} does not match the {type(module).__name__} layout {how}: {problem}")
    module.load_state_dict(state)


def synthesis_layout(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """:class:`Synthesis` constructor arguments read off a synthesis state dict's tensor shapes.

    Resolution from the largest ``blocks.RxR`` block, style size from the 4x4 style layer, colour channels
    from ``torgb``, and ``fmap_base``/``fmap_max`` from the feature maps of each block (StyleGAN v1's rule
    ``min(fmap_base / 2**stage, fmap_max)``, ``fmap_decay`` 1 as in all of NVIDIA's networks).

    Raises:
        RuntimeError: a required tensor is missing, or the feature maps follow no such rule (one line).
    """
    sides = sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)x\1\.", k))})
    needed = ["blocks.4x4.const", "blocks.4x4.epi1.style_mod.lin.weight", "torgb.weight"]
    absent = [k for k in needed if k not in state]
    if absent:
        raise RuntimeError(f"not a StyleGAN (v1) synthesis state dict: no {_listed(absent)}")
    resolution = sides[-1]
    log2 = int(round(math.log2(resolution)))
    expected_sides = [2**level for level in range(2, log2 + 1)]
    if sides != expected_sides:
        gaps = [f"blocks.{r}x{r}" for r in expected_sides if r not in sides]
        raise RuntimeError(f"synthesis blocks must double from 4 px to {resolution} px; no {_listed(gaps)}")
    # Feature maps of the block of side 2**level are those of "stage" level - 1 (the 4x4 block: stage 1).
    channels = {1: int(state["blocks.4x4.const"].shape[1])}
    for level in range(3, log2 + 1):
        key = f"blocks.{2**level}x{2**level}.conv1.weight"
        if key not in state:
            raise RuntimeError(f"not a StyleGAN (v1) synthesis state dict: no {key}")
        channels[level - 1] = int(state[key].shape[0])
    fmap_max = max(channels.values())
    # int(fmap_base / 2**stage) == c means fmap_base >= c * 2**stage: the largest such bound is the candidate.
    bounds = [c * 2**stage for stage, c in channels.items() if c < fmap_max]
    fmap_base = max(bounds) if bounds else fmap_max * 2 ** max(channels)
    rule = {stage: min(int(fmap_base / 2.0**stage), fmap_max) for stage in channels}
    if rule != channels:
        found = ", ".join(f"{2 ** (stage + 1)}px: {c}" for stage, c in sorted(channels.items()))
        raise RuntimeError(f"synthesis feature maps ({found}) follow no min(fmap_base / 2**stage, fmap_max) rule")
    return {
        "resolution": resolution,
        "fmap_base": fmap_base,
        "fmap_max": fmap_max,
        "dlatent_size": int(state["blocks.4x4.epi1.style_mod.lin.weight"].shape[1]),
        "num_channels": int(state["torgb.weight"].shape[0]),
    }


def mapping_layout(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """:class:`Mapping` constructor arguments read off a mapping state dict (``dense0.weight`` ... shapes).

    Raises:
        RuntimeError: the dense layers are not ``dense0 .. denseN`` with 2-d weights (one line).
    """
    dense = sorted(int(m.group(1)) for k in state if (m := re.fullmatch(r"dense(\d+)\.weight", k)))
    if not dense or dense != list(range(len(dense))) or any(state[f"dense{i}.weight"].dim() != 2 for i in dense):
        raise RuntimeError(f"not a StyleGAN (v1) mapping state dict: dense layers {dense}, expected dense0 .. denseN")
    first, last = state["dense0.weight"], state[f"dense{dense[-1]}.weight"]
    return {
        "latent_size": int(first.shape[1]),
        "dlatent_size": int(last.shape[0]),
        "mapping_layers": len(dense),
        "mapping_fmaps": int(first.shape[0]) if len(dense) > 1 else int(last.shape[0]),
    }


def load_gaussian_fit(path: Path) -> dict[str, torch.Tensor]:
    """The official ``gaussian_fit.pt`` (``{"mean": [512], "std": [512]}``, saved on CUDA)."""
    fit = load_tensor_dict(path)
    if "mean" not in fit or "std" not in fit:
        raise RuntimeError(f"{path} must hold 'mean' and 'std' tensors, found keys {sorted(fit)}")
    return {"mean": fit["mean"].float().reshape(-1), "std": fit["std"].float().reshape(-1)}


# --------------------------------------------------------------------------------------------------
# The Generator wrapper
# --------------------------------------------------------------------------------------------------


class GaussianisedLatent(nn.Module):
    """PULSE's search space for style-based generators: Gaussian latents mapped to styles by the fitted statistics.

    Holds the fit's ``mean``/``std`` buffers ``[latent_dim]`` and provides ``to_style``; the StyleGAN and
    StyleGAN2 generators build on it.
    """

    channels = 3
    output_range = (-1.0, 1.0)
    domain = "faces"  # every shipped config is a face model (FFHQ, or random weights standing in for one)

    def __init__(self, latent_dim: int, gaussian_fit: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        for name in ("mean", "std"):
            value = torch.as_tensor(gaussian_fit[name]).detach().float().reshape(-1)
            if value.numel() != latent_dim:
                raise ValueError(f"gaussian fit '{name}' has {value.numel()} values, expected {latent_dim}")
            self.register_buffer(name, value.clone())

    def to_style(self, latent: torch.Tensor) -> torch.Tensor:
        """``[B, L, D] -> [B, L, D]``: ``leaky_relu(latent * std + mean, 0.2)`` (the mapping's output space)."""
        return F.leaky_relu(latent * self.std + self.mean, LRELU_SLOPE)


class StyleGANGenerator(GaussianisedLatent):
    """Frozen StyleGAN synthesis + Gaussian fit, following :class:`pulse.generators.base.Generator`.

    Args:
        synthesis: the synthesis network (frozen here).
        gaussian_fit: ``{"mean": [latent_dim], "std": [latent_dim]}`` from :func:`gaussian_fit`.
    """

    def __init__(self, synthesis: Synthesis, gaussian_fit: dict[str, torch.Tensor]) -> None:
        super().__init__(synthesis.dlatent_size, gaussian_fit)
        self.synthesis = freeze(synthesis)
        self.resolution = synthesis.resolution
        # The official PULSE code zeroes the last noise map of the 1024 px FFHQ network (its "bad" layer).
        self.default_bad_noise_layers: tuple[int, ...] = (17,) if self.resolution == 1024 else ()
        self.num_latents = synthesis.num_layers
        self.noise_shapes: list[tuple[int, ...]] = list(noise_shapes(self.num_latents))
        self.eval()

    @property
    def instance_norm_eps(self) -> float:
        """The epsilon of every instance norm (1e-5 official PULSE, 1e-8 NVIDIA; see :data:`INSTANCE_NORM_EPS`)."""
        return self.synthesis.instance_norm_eps

    def synthesize(self, style: torch.Tensor, noise: Sequence[torch.Tensor | None] | None) -> torch.Tensor:
        """``style [B, L, 512]``, noise ``[B, 1, r_i, r_i]`` each -> ``[B, 3, R, R]`` in about [-1, 1]."""
        return self.synthesis(style, noise)

    # Layered access (see pulse.generators.base.LayeredGenerator), used by intermediate-layer optimisation.
    @property
    def num_blocks(self) -> int:
        return len(self.synthesis.blocks)

    def block_rows(self, block: int) -> slice:
        """The style rows block ``block`` consumes."""
        return slice(2 * block, 2 * block + 2)

    def forward_blocks(
        self, features: torch.Tensor | None, style: torch.Tensor, noise: Sequence[torch.Tensor], start: int, stop: int
    ) -> torch.Tensor:
        return self.synthesis.run_blocks(features, style, noise, start, stop)

    def features_to_image(self, features: torch.Tensor) -> torch.Tensor:
        return self.synthesis.torgb(features)

    @classmethod
    def synthetic(
        cls,
        resolution: int = 32,
        fmap_base: int = 256,
        fmap_max: int = 32,
        seed: int = 0,
        fit_samples: int = 20000,
        instance_norm_eps: float = INSTANCE_NORM_EPS,
    ) -> StyleGANGenerator:
        """Small StyleGAN with seeded random weights (the official init), for tests and quick experiments.

        Weights follow the reference initialisation (N(0, 1) stored weights with run-time He scaling,
        zero biases, constant input of ones) except the noise strengths: zero in the reference, which
        would make the noise inputs inert, so here they are drawn ``|N(0, 0.1**2)|`` per channel; and
        ``torgb``, scaled by ``SYNTHETIC_RGB_SCALE`` so images lie mostly in [-1, 1] like a trained model's.
        The Gaussian fit comes from an equally seeded random mapping network (``fit_samples`` draws).
        ``instance_norm_eps`` changes the arithmetic, not the weights.
        """
        synthesis, mapping = random_networks(resolution, fmap_base, fmap_max, seed, instance_norm_eps)
        fit = gaussian_fit(mapping, num_samples=fit_samples, seed=seed, progress=False)
        return cls(synthesis, fit)

    @classmethod
    def pretrained(
        cls,
        cache_dir: str | Path | None = None,
        fit_samples: int = 1_000_000,
        resolution: int | None = None,
        fmap_base: int | None = None,
        fmap_max: int | None = None,
        progress: bool = True,
        instance_norm_eps: float = INSTANCE_NORM_EPS,
    ) -> StyleGANGenerator:
        """StyleGAN (v1) weights (official PULSE FFHQ or converted) from ``cache_dir`` (``cache_dir()/stylegan_ffhq``).

        Reads ``synthesis.pt`` (required) and ``gaussian_fit.pt`` if present, otherwise ``mapping.pt``
        and a cached :func:`gaussian_fit` over ``fit_samples`` draws (seed 0). Never downloads.
        Both networks are built from the files' own tensor shapes (:func:`synthesis_layout`,
        :func:`mapping_layout`), so networks converted from other NVIDIA pickles (another resolution,
        feature-map rule or mapping width) load too; ``resolution``/``fmap_*``, when given, are checked
        against the file instead. ``instance_norm_eps``: 1e-5 (official PULSE, default) or 1e-8 (NVIDIA's
        StyleGAN, which these weights were trained with); see :data:`INSTANCE_NORM_EPS`.

        Raises:
            FileNotFoundError: ``synthesis.pt`` missing, or both ``gaussian_fit.pt`` and ``mapping.pt``.
            RuntimeError: a file is not a plain state dict, or does not match the network layout (one line).
        """
        eps = check_instance_norm_eps(instance_norm_eps)
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "stylegan_ffhq"
        synthesis_path, fit_path, mapping_path = (folder / n for n in ("synthesis.pt", "gaussian_fit.pt", "mapping.pt"))
        missing = []
        if not synthesis_path.is_file():
            missing.append("synthesis.pt")
        if not fit_path.is_file() and not mapping_path.is_file():
            missing.append("mapping.pt (or gaussian_fit.pt)")
        if missing:
            raise FileNotFoundError(
                f"StyleGAN weights missing in {folder}: {' and '.join(missing)}. To obtain them, {WEIGHTS_HINT}."
            )
        state = load_tensor_dict(synthesis_path)
        given = {"resolution": resolution, "fmap_base": fmap_base, "fmap_max": fmap_max}
        if all(value is None for value in given.values()):
            try:
                layout = synthesis_layout(state)
            except RuntimeError as error:
                raise RuntimeError(f"{synthesis_path}: {error}") from None
            how = "read from its shapes"
        else:
            layout = {"resolution": 1024, "fmap_base": 8192, "fmap_max": 512}
            layout.update({k: v for k, v in given.items() if v is not None})
            how = "asked for (" + ", ".join(f"{k}={v}" for k, v in layout.items()) + ")"
        synthesis = Synthesis(**layout, instance_norm_eps=eps)
        _load_checked(synthesis, state, synthesis_path, how)
        if fit_path.is_file():
            fit = load_gaussian_fit(fit_path)
        else:
            mapping_state = load_tensor_dict(mapping_path)
            try:
                mapping = Mapping(**mapping_layout(mapping_state))
            except RuntimeError as error:
                raise RuntimeError(f"{mapping_path}: {error}") from None
            _load_checked(mapping, mapping_state, mapping_path, "read from its shapes")
            fit = cached_gaussian_fit(mapping, num_samples=fit_samples, seed=0, progress=progress)
        size = synthesis.dlatent_size
        for name in ("mean", "std"):
            if fit[name].numel() != size:
                source = fit_path if fit_path.is_file() else mapping_path
                raise RuntimeError(
                    f"{source} gives {fit[name].numel()} style values, but {synthesis_path.name} takes {size}"
                )
        return cls(synthesis, fit)
