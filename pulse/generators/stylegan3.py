"""StyleGAN3 (Karras et al. 2021, "Alias-Free GAN", configs T and R) in plain torch, for the PULSE search.

The layer arithmetic follows NVIDIA's ``stylegan3`` (``training/networks_stylegan3.py``), checked against
it on pickles written by that code (``tests/test_stylegan3.py``, fixtures from
``scripts/make_stylegan3_fixtures.py``):

* mapping: z normalised to unit second moment, ``num_layers`` (2) dense layers, lr multiplier 0.01, leaky
  ReLU(0.2) times ``sqrt(2)``; the same ``w`` for all ``num_ws`` rows (``w_avg`` is truncation only);
* input: Fourier features. ``w`` row 0 gives a rotation + translation (an affine layer, normalised to a unit
  rotation), composed with the stored user ``transform``; the fixed frequencies/phases are transformed by it,
  out-of-band frequencies damped, sines sampled on a ``size x size`` grid (image plus margin) and mixed by a
  learned ``[C, C]`` matrix;
* layers ``L0 .. L{n}``: modulated convolution (weights and styles pre-normalised, demodulated, input scaled
  by ``1 / sqrt(magnitude_ema)``; ``conv_kernel - 1`` zero padding, i.e. a *full* convolution), then the
  filtered leaky ReLU: bias, zero-insertion upsampling by ``up`` with the stored low-pass ``up_filter`` (gain
  ``up**2``), padding/cropping ``[x0, x1, y0, y1]``, leaky ReLU(0.2) times ``sqrt(2)``, clamp to
  ``conv_clamp``, the stored ``down_filter`` and keeping every ``down``-th sample. Filters are separable
  (``[K]``) or, for config R's non-critical layers, radial (``[K, K]``); both are *convolved* (flipped). The
  last layer is the ToRGB (1x1, no demodulation, linear, same clamp); the image is multiplied by
  ``output_scale`` (0.25).

Module and buffer names are NVIDIA's, so our ``state_dict`` keys equal ``G_ema``'s (``mapping.fc0.weight``,
``synthesis.input.freqs``, ``synthesis.L3_36_512.down_filter``, ...); pickles are read as data by
:mod:`pulse.io.safe_pickle`'s allow-listed unpickler (the embedded source code is dropped unread), and the
hyperparameters each module pickled (sizes, factors, padding, clamp) are checked and used as given.

One deliberate difference: NVIDIA pre-normalises the styles by their root mean square over the whole batch,
we over each sample, so a sample's image never depends on the batch. Demodulation cancels that scale up to
its ``1e-8`` epsilon (relative effect about 1e-9).

Search space (PULSE, as for StyleGAN2): ``num_ws`` latent rows, ``to_style(z) = leaky_relu(z * std + mean,
0.2)`` with the Gaussian fit of ``leaky_relu(mapping(z), 5)``; there are no noise inputs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pulse.generators.base import freeze
from pulse.generators.stylegan import GaussianisedLatent, cached_gaussian_fit, gaussian_fit
from pulse.generators.stylegan2 import _module_state, flatten_module, nvidia_allowed_globals
from pulse.io.cache import cache_dir as default_cache_dir
from pulse.io.safe_pickle import UnsafePickleError, restricted_load

LRELU_SLOPE = 0.2
ACTIVATION_GAIN = math.sqrt(2.0)
MAPPING_LR_MUL = 0.01
DEMODULATION_EPS = 1e-8
WEIGHTS_HINT = "put an NVIDIA stylegan3 network .pkl there (see docs/generators.md)"

# NVIDIA's training configurations (train.py --cfg=stylegan3-t / stylegan3-r) at their default channel counts.
CONFIGS: dict[str, dict[str, Any]] = {
    "T": {"channel_base": 32768, "channel_max": 512, "conv_kernel": 3, "radial": False},
    "R": {"channel_base": 65536, "channel_max": 1024, "conv_kernel": 1, "radial": True},
}


# --------------------------------------------------------------------------------------------------
# Architecture description
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """The Fourier-feature input: ``channels`` sines on a ``size x size`` grid at ``sampling_rate``."""

    channels: int
    size: int
    sampling_rate: float
    bandwidth: float


@dataclass(frozen=True)
class LayerSpec:
    """One synthesis layer ``L<i>_<out_size>_<out_channels>``.

    ``padding`` is ``(x_before, x_after, y_before, y_after)`` on the upsampled image (negative crops).
    """

    name: str
    in_channels: int
    out_channels: int
    in_size: int
    out_size: int
    conv_kernel: int
    up: int
    down: int
    padding: tuple[int, int, int, int]
    is_torgb: bool
    conv_clamp: float | None


@dataclass(frozen=True)
class SynthesisSpec:
    """Everything but the tensors: the input, the layers in order and the output scale."""

    w_dim: int
    resolution: int
    input: InputSpec
    layers: tuple[LayerSpec, ...]
    output_scale: float = 0.25
    # Designed filters (``{layer name: (up_filter, down_filter)}``, None = identity) for new networks.
    filters: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = field(default_factory=dict, compare=False)

    @property
    def num_ws(self) -> int:
        return len(self.layers) + 1


def kaiser_beta(attenuation: float) -> float:
    """Kaiser's window parameter for a stopband ``attenuation`` in dB (Kaiser & Schafer's formula)."""
    if attenuation > 50:
        return 0.1102 * (attenuation - 8.7)
    if attenuation > 21:
        return 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21)
    return 0.0


def kaiser_attenuation(numtaps: int, width: float) -> float:
    """Attenuation (dB) of a Kaiser FIR with ``numtaps`` taps and transition ``width`` (fraction of Nyquist)."""
    return 2.285 * (numtaps - 1) * math.pi * width + 7.95


def design_lowpass_filter(
    numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False
) -> torch.Tensor | None:
    """Kaiser-windowed low-pass FIR as NVIDIA designs it (``scipy.signal.firwin`` / windowed jinc), no scipy.

    Returns ``None`` for one tap (identity), ``[numtaps]`` (separable, unit DC gain) or ``[numtaps, numtaps]``
    (radial jinc, normalised to sum 1). ``cutoff``/``width`` are in the units of the sampling rate ``fs``.
    """
    if numtaps < 1:
        raise ValueError(f"a filter needs at least one tap, got {numtaps}")
    if numtaps == 1:
        return None
    nyquist = fs / 2
    beta = kaiser_beta(kaiser_attenuation(numtaps, width / nyquist))
    window = np.kaiser(numtaps, beta)
    offsets = np.arange(numtaps) - (numtaps - 1) / 2
    if not radial:
        taps = (cutoff / nyquist) * np.sinc((cutoff / nyquist) * offsets) * window
        return torch.as_tensor(taps / taps.sum(), dtype=torch.float32)
    x = offsets / fs
    radius = torch.as_tensor(np.hypot(*np.meshgrid(x, x)))
    jinc = torch.special.bessel_j1(2 * math.pi * cutoff * radius) / (math.pi * radius)
    taps = jinc.numpy() * np.outer(window, window)
    return torch.as_tensor(taps / taps.sum(), dtype=torch.float32)


def design_synthesis(
    resolution: int,
    channel_base: int = 32768,
    channel_max: int = 512,
    w_dim: int = 512,
    conv_kernel: int = 3,
    radial: bool = False,
    num_layers: int = 14,
    num_critical: int = 2,
    first_cutoff: float = 2.0,
    first_stopband: float = 2**2.1,
    last_stopband_rel: float = 2**0.3,
    margin_size: int = 10,
    filter_size: int = 6,
    lrelu_upsampling: int = 2,
    conv_clamp: float | None = 256.0,
    output_scale: float = 0.25,
) -> SynthesisSpec:
    """The layers (and their filters) NVIDIA's ``SynthesisNetwork`` builds for these hyperparameters.

    Cutoffs and minimum stopbands grow geometrically from the first layer to the last ``num_critical``
    (critically sampled) ones; each layer samples at the smallest power of two above twice its stopband
    (at most ``resolution``), works on that grid plus ``margin_size`` pixels per side (the last two layers on
    the image itself), and runs its leaky ReLU at ``lrelu_upsampling`` times the higher of its input and
    output rates. Config T: ``conv_kernel=3``; config R: ``conv_kernel=1``, ``radial=True``, doubled channels.
    """
    if resolution < 4 or resolution & (resolution - 1):
        raise ValueError(f"StyleGAN3 resolution must be a power of two >= 4, got {resolution}")
    last_cutoff = resolution / 2
    exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
    stopbands = first_stopband * (last_cutoff * last_stopband_rel / first_stopband) ** exponents
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, resolution))))
    half_widths = np.maximum(stopbands, rates / 2) - cutoffs
    sizes = rates + margin_size * 2
    sizes[-2:] = resolution
    channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
    channels[-1] = 3
    layers, filters = [], {}
    for index in range(num_layers + 1):
        prev = max(index - 1, 0)
        is_torgb = index == num_layers
        critical = index >= num_layers - num_critical
        kernel = 1 if is_torgb else conv_kernel
        tmp_rate = max(rates[prev], rates[index]) * (1 if is_torgb else lrelu_upsampling)
        up, down = int(np.rint(tmp_rate / rates[prev])), int(np.rint(tmp_rate / rates[index]))
        up_taps = filter_size * up if up > 1 and not is_torgb else 1
        down_taps = filter_size * down if down > 1 and not is_torgb else 1
        # Output size before downsampling, minus the upsampled full convolution, plus what the filters trim;
        # the half-sample shift of the symmetric interpretation puts the odd pixel before (NVIDIA's App. C.3).
        total = (sizes[index] - 1) * down + 1 - (sizes[prev] + kernel - 1) * up + up_taps + down_taps - 2
        low = int((total + up) // 2)
        name = f"L{index}_{int(sizes[index])}_{int(channels[index])}"
        layers.append(
            LayerSpec(
                name=name,
                in_channels=int(channels[prev]),
                out_channels=int(channels[index]),
                in_size=int(sizes[prev]),
                out_size=int(sizes[index]),
                conv_kernel=kernel,
                up=up,
                down=down,
                padding=(low, int(total) - low, low, int(total) - low),
                is_torgb=is_torgb,
                conv_clamp=conv_clamp,
            )
        )
        filters[name] = (
            design_lowpass_filter(up_taps, cutoffs[prev], half_widths[prev] * 2, tmp_rate),
            design_lowpass_filter(
                down_taps, cutoffs[index], half_widths[index] * 2, tmp_rate, radial=radial and not critical
            ),
        )
    spec_input = InputSpec(int(channels[0]), int(sizes[0]), float(rates[0]), float(cutoffs[0]))
    return SynthesisSpec(w_dim, resolution, spec_input, tuple(layers), output_scale, filters)


# --------------------------------------------------------------------------------------------------
# Filtered leaky ReLU in plain torch
# --------------------------------------------------------------------------------------------------


def _crop_or_pad(x: torch.Tensor, dim: int, start: int, length: int) -> torch.Tensor:
    """``x[start : start + length]`` along ``dim``, zeros where that range leaves ``x``."""
    before, after = max(-start, 0), max(start + length - x.shape[dim], 0)
    if before or after:
        pads = [0, 0] * (x.dim() - 1 - dim) + [before, after]
        x = F.pad(x, pads)
        start += before
    return x.narrow(dim, start, length)


def _depthwise(filt: torch.Tensor, channels: int, axis: str) -> torch.Tensor:
    """``filt`` as a depthwise conv weight ``[C, 1, kh, kw]``: ``[K]`` along ``axis`` ("h" or "w"), or ``[K, K]``."""
    if filt.dim() == 2:
        weight = filt[None, None]
    else:
        weight = filt[None, None, :, None] if axis == "h" else filt[None, None, None, :]
    return weight.expand(channels, 1, *weight.shape[2:]).contiguous()


def upsample_filter(
    x: torch.Tensor, filt: torch.Tensor | None, up: int, padding: tuple[int, int, int, int], gain: float = 1.0
) -> torch.Tensor:
    """Zero-insertion upsampling by ``up``, padding ``(x0, x1, y0, y1)``, *convolution* with ``filt`` (gain ``up**2``).

    ``[B, C, H, W] -> [B, C, H*up + y0 + y1 - K + 1, W*up + x0 + x1 - K + 1]`` (``K`` taps; NVIDIA's
    ``upfirdn2d`` semantics), times ``gain``. Computed as a strided depthwise transposed convolution (the full
    convolution of the zero-inserted signal, without multiplying the inserted zeros) followed by a crop: output
    sample ``m`` is full-convolution sample ``m + K - 1 - pad_before``.
    """
    x0, x1, y0, y1 = padding
    channels, height, width = x.shape[1:]
    if filt is None:
        filt = torch.ones(1, dtype=x.dtype, device=x.device)
    filt = filt.to(x)
    taps = filt.shape[-1]
    out_h, out_w = height * up + y0 + y1 - taps + 1, width * up + x0 + x1 - taps + 1
    if filt.dim() == 2:
        x = F.conv_transpose2d(x, _depthwise(filt * (up**2 * gain), channels, "hw"), stride=up, groups=channels)
    elif up > 1 or taps > 1:
        x = F.conv_transpose2d(x, _depthwise(filt * (up * gain), channels, "w"), stride=(1, up), groups=channels)
        x = F.conv_transpose2d(x, _depthwise(filt * up, channels, "h"), stride=(up, 1), groups=channels)
    elif gain != 1:
        x = x * gain
    x = _crop_or_pad(x, 2, taps - 1 - y0, out_h)
    return _crop_or_pad(x, 3, taps - 1 - x0, out_w)


def downsample_filter(x: torch.Tensor, filt: torch.Tensor | None, down: int) -> torch.Tensor:
    """*Convolution* with ``filt`` (valid part) keeping every ``down``-th sample: ``[B, C, H, W] -> [B, C, H', W']``.

    ``H' = (H - K) // down + 1``; a strided depthwise convolution, so the discarded samples are never computed.
    """
    if filt is None:
        return x[:, :, ::down, ::down] if down > 1 else x
    channels = x.shape[1]
    filt = torch.flip(filt.to(x), list(range(filt.dim())))  # conv2d correlates; flip to convolve
    if filt.dim() == 2:
        return F.conv2d(x, _depthwise(filt, channels, "hw"), stride=down, groups=channels)
    x = F.conv2d(x, _depthwise(filt, channels, "w"), stride=(1, down), groups=channels)
    return F.conv2d(x, _depthwise(filt, channels, "h"), stride=(down, 1), groups=channels)


class _LeakyReluClamp(torch.autograd.Function):
    """``clamp(leaky_relu(x, slope), -clamp, clamp)`` keeping one tensor for backward (autograd would keep two).

    The layers' largest tensors live at twice the sampling rate; the gradient is rebuilt from the output alone
    (``y > 0``: 1, else ``slope``; 0 where the clamp saturated), so their activations cost one saved copy.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, slope: float, clamp: float | None) -> torch.Tensor:
        y = F.leaky_relu(x, slope)
        if clamp is not None:
            y = y.clamp_(-clamp, clamp)
        ctx.save_for_backward(y)
        ctx.slope, ctx.clamp = slope, clamp
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (y,) = ctx.saved_tensors
        scale = torch.where(y > 0, 1.0, ctx.slope).to(grad.dtype)
        if ctx.clamp is not None:
            scale = scale.masked_fill(y.abs() >= ctx.clamp, 0.0)
        return grad * scale, None, None


def filtered_lrelu(
    x: torch.Tensor,
    up_filter: torch.Tensor | None,
    down_filter: torch.Tensor | None,
    bias: torch.Tensor,
    up: int,
    down: int,
    padding: tuple[int, int, int, int],
    gain: float = ACTIVATION_GAIN,
    slope: float = LRELU_SLOPE,
    clamp: float | None = None,
) -> torch.Tensor:
    """NVIDIA's filtered leaky ReLU: bias, upsample + filter, ``gain * leaky_relu``, clamp, filter + downsample.

    ``x`` ``[B, C, H, W]``, ``bias`` ``[C]``; filters ``[K]`` (separable), ``[K, K]`` or None (identity).
    Returns ``[B, C, (H*up + y0 + y1 - Ku - Kd + 2 + down - 1) // down, ...]``. The filters are shared by all
    channels and run as depthwise convolutions (about 3x faster on the CPU than channels-as-batch ones).
    """
    x = x + bias.to(x).view(1, -1, 1, 1)
    # leaky_relu(gain * v) == gain * leaky_relu(v) for gain > 0: the filter applies the gain (one pass fewer).
    x = upsample_filter(x, up_filter, up, padding, gain)
    if slope != 1:
        x = _LeakyReluClamp.apply(x, slope, clamp)
    elif clamp is not None:
        x = x.clamp(-clamp, clamp)
    return downsample_filter(x, down_filter, down)


# --------------------------------------------------------------------------------------------------
# Layers (attribute names as NVIDIA's, so state_dict keys match G_ema's)
# --------------------------------------------------------------------------------------------------


class FullyConnectedLayer(nn.Module):
    """Dense layer with run-time gains ``lr_multiplier / sqrt(in)`` (weight) and ``lr_multiplier`` (bias).

    ``[B, in] -> [B, out]``; ``activation`` adds leaky ReLU(0.2) times ``sqrt(2)``.
    """

    def __init__(
        self, in_features: int, out_features: int, lr_multiplier: float = 1.0, activation: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return F.leaky_relu(x, LRELU_SLOPE) * ACTIVATION_GAIN if self.activation else x


class MappingNetwork(nn.Module):
    """``z [B, z_dim] -> w [B, w_dim]``: unit second moment, then ``num_layers`` dense layers (``fc0``, ...).

    Returns one ``w`` per sample (NVIDIA's broadcast to ``num_ws`` rows is left to the caller);
    ``latent_size``/``dlatent_size`` let :func:`pulse.generators.stylegan.gaussian_fit` drive it.
    """

    def __init__(self, z_dim: int, w_dim: int, num_layers: int = 2, lr_multiplier: float = MAPPING_LR_MUL) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.latent_size, self.dlatent_size = z_dim, w_dim
        for index in range(num_layers):
            layer = FullyConnectedLayer(z_dim if index == 0 else w_dim, w_dim, lr_multiplier, activation=True)
            setattr(self, f"fc{index}", layer)
        self.register_buffer("w_avg", torch.zeros(w_dim))  # truncation trick only; kept so keys match

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z.float() * (z.float().square().mean(1, keepdim=True) + 1e-8).rsqrt()
        for index in range(self.num_layers):
            x = getattr(self, f"fc{index}")(x)
        return x


class SynthesisInput(nn.Module):
    """Fourier features: ``w [B, w_dim] -> [B, channels, size, size]`` (see the module docstring)."""

    def __init__(self, spec: InputSpec, w_dim: int) -> None:
        super().__init__()
        self.spec = spec
        self.weight = nn.Parameter(torch.randn(spec.channels, spec.channels))
        self.affine = FullyConnectedLayer(w_dim, 4)
        self.register_buffer("transform", torch.eye(3))  # user-specified inverse transform of the image
        self.register_buffer("freqs", torch.zeros(spec.channels, 2))
        self.register_buffer("phases", torch.zeros(spec.channels))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        # Row 0 of ws -> (cos, sin, tx, ty); the rotation part is normalised to unit length.
        t = self.affine(w)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        batch = w.shape[0]
        eye = torch.eye(3, device=w.device, dtype=w.dtype)
        rotation = eye.repeat(batch, 1, 1)
        rotation[:, 0, 0], rotation[:, 0, 1] = t[:, 0], -t[:, 1]
        rotation[:, 1, 0], rotation[:, 1, 1] = t[:, 1], t[:, 0]
        translation = eye.repeat(batch, 1, 1)
        translation[:, 0, 2], translation[:, 1, 2] = -t[:, 2], -t[:, 3]
        transforms = rotation @ translation @ self.transform.unsqueeze(0)  # [B, 3, 3]
        phases = self.phases.unsqueeze(0) + (self.freqs.unsqueeze(0) @ transforms[:, :2, 2:]).squeeze(2)
        freqs = self.freqs.unsqueeze(0) @ transforms[:, :2, :2]  # [B, C, 2]
        # Frequencies pushed above the bandwidth by the transform fade out linearly up to Nyquist.
        amplitudes = (1 - (freqs.norm(dim=2) - spec.bandwidth) / (spec.sampling_rate / 2 - spec.bandwidth)).clamp(0, 1)
        # Pixel centres of the size x size grid, in units of the input's sampling period (x along width).
        centres = ((torch.arange(spec.size, device=w.device, dtype=w.dtype) + 0.5) * 2 / spec.size - 1) * (
            0.5 * spec.size / spec.sampling_rate
        )
        grid = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), dim=-1)  # [H, W, 2] as (x, y)
        x = torch.einsum("hwk,bck->bhwc", grid, freqs) + phases[:, None, None, :]
        x = torch.sin(x * (2 * math.pi)) * amplitudes[:, None, None, :]
        x = x @ (self.weight / math.sqrt(spec.channels)).t()
        return x.permute(0, 3, 1, 2)


class SynthesisLayer(nn.Module):
    """Modulated conv + filtered leaky ReLU: ``[B, in, in_size, in_size], w [B, w_dim] -> [B, out, out_size, ...]``."""

    def __init__(
        self, spec: LayerSpec, w_dim: int, up_filter: torch.Tensor | None, down_filter: torch.Tensor | None
    ) -> None:
        super().__init__()
        self.spec = spec
        k = spec.conv_kernel
        self.affine = FullyConnectedLayer(w_dim, spec.in_channels)
        self.weight = nn.Parameter(torch.randn(spec.out_channels, spec.in_channels, k, k))
        self.bias = nn.Parameter(torch.zeros(spec.out_channels))
        self.register_buffer("magnitude_ema", torch.ones([]))
        self.register_buffer("up_filter", None if up_filter is None else up_filter.clone())
        self.register_buffer("down_filter", None if down_filter is None else down_filter.clone())

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        batch, in_channels, k = x.shape[0], spec.in_channels, spec.conv_kernel
        styles = self.affine(w)  # [B, in]
        weight = self.weight.unsqueeze(0)  # [1, out, in, k, k]
        if spec.is_torgb:
            styles = styles / math.sqrt(in_channels * k * k)
            weight = weight * styles[:, None, :, None, None]
        else:
            # Pre-normalise weight and styles (fp16 safety in NVIDIA's code; cancelled by demodulation but for eps).
            weight = weight * weight.square().mean([2, 3, 4], keepdim=True).rsqrt()
            styles = styles * styles.square().mean(1, keepdim=True).rsqrt()
            weight = weight * styles[:, None, :, None, None]
            weight = weight * (weight.square().sum([2, 3, 4], keepdim=True) + DEMODULATION_EPS).rsqrt()
        weight = weight * self.magnitude_ema.rsqrt()  # input gain: undo the expected input magnitude
        x = F.conv2d(
            x.reshape(1, batch * in_channels, *x.shape[2:]),
            weight.reshape(batch * spec.out_channels, in_channels, k, k),
            padding=k - 1,
            groups=batch,
        )
        x = x.reshape(batch, spec.out_channels, *x.shape[2:])
        gain, slope = (1.0, 1.0) if spec.is_torgb else (ACTIVATION_GAIN, LRELU_SLOPE)
        return filtered_lrelu(
            x,
            self.up_filter,
            self.down_filter,
            self.bias,
            spec.up,
            spec.down,
            spec.padding,
            gain,
            slope,
            spec.conv_clamp,
        )


class SynthesisNetwork(nn.Module):
    """``ws [B, num_ws, w_dim] -> [B, 3, R, R]``: input (row 0), layer ``i`` on row ``i + 1``, times output_scale."""

    def __init__(self, spec: SynthesisSpec) -> None:
        super().__init__()
        self.spec = spec
        self.input = SynthesisInput(spec.input, spec.w_dim)
        self.layer_names = [layer.name for layer in spec.layers]
        for layer in spec.layers:
            up_filter, down_filter = spec.filters.get(layer.name, (None, None))
            setattr(self, layer.name, SynthesisLayer(layer, spec.w_dim, up_filter, down_filter))

    def run_layers(self, x: torch.Tensor | None, ws: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Layers ``start .. stop - 1`` (layer 0 begins with the input; ``x`` is None there)."""
        for index in range(start, stop):
            if index == 0:
                x = self.input(ws[:, 0].float())
            x = getattr(self, self.layer_names[index])(x, ws[:, index + 1].float())
        if x is None:
            raise ValueError(f"run_layers({start}, {stop}) ran no layer and was given no features")
        return x

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        num_ws = self.spec.num_ws
        if ws.dim() != 3 or ws.shape[1] != num_ws or ws.shape[2] != self.spec.w_dim:
            raise ValueError(f"ws must be [batch, {num_ws}, {self.spec.w_dim}], got {list(ws.shape)}")
        return self.run_layers(None, ws, 0, len(self.layer_names)) * self.spec.output_scale


class StyleGAN3Network(nn.Module):
    """Mapping + synthesis with NVIDIA's module tree (our keys == ``G_ema``'s state dict keys)."""

    def __init__(self, spec: SynthesisSpec, z_dim: int, mapping_layers: int = 2) -> None:
        super().__init__()
        self.mapping = MappingNetwork(z_dim, spec.w_dim, mapping_layers)
        self.synthesis = SynthesisNetwork(spec)


# --------------------------------------------------------------------------------------------------
# NVIDIA stylegan3 .pkl (read as data, never executed)
# --------------------------------------------------------------------------------------------------


def _attr(state: dict[str, Any], name: str, kind: type, where: str) -> Any:
    """A pickled hyperparameter, checked to be a plain number/bool/sequence (never an arbitrary object)."""
    if name not in state:
        raise RuntimeError(f"not a StyleGAN3 network: {where} has no '{name}'")
    value = state[name]
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if kind is int and isinstance(value, (list, tuple)) and len(set(value)) == 1:
        value = value[0]  # sizes are stored as [width, height]; only square ones exist
    if kind is bool and isinstance(value, (bool, np.bool_)):
        return bool(value)
    if kind in (int, float) and isinstance(value, numbers.Real) and not isinstance(value, bool):
        if kind is int and int(value) != value:
            raise RuntimeError(f"{where}.{name} = {value!r} is not an integer")
        return kind(value)
    if kind is list and isinstance(value, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in value):
        return [int(v) for v in value]
    raise RuntimeError(f"unsupported StyleGAN3 network: {where}.{name} = {value!r:.60}")


def _child(state: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    child = (state.get("_modules") or {}).get(name)
    child_state = _module_state(child)
    if child_state is None:
        raise RuntimeError(f"not a StyleGAN3 network: {where} has no '{name}' module")
    return child_state


def spec_from_pickle(generator: Any) -> tuple[SynthesisSpec, int, int]:
    """``(synthesis spec, z_dim, mapping layers)`` from an unpickled ``G_ema``'s recorded hyperparameters.

    Raises:
        RuntimeError: not a StyleGAN3 generator, a conditional one, or hyperparameters of unexpected type.
    """
    top = _module_state(generator)
    if top is None:
        raise RuntimeError("G_ema is not a pickled torch module")
    c_dim = top.get("c_dim", 0)
    mapping = _child(top, "mapping", "G_ema")
    if c_dim or (mapping.get("_modules") or {}).get("embed") is not None:
        raise RuntimeError(
            f"conditional StyleGAN3 networks (c_dim={c_dim}) are not supported: PULSE searches unconditional generators"
        )
    synthesis = _child(top, "synthesis", "G_ema")
    if "layer_names" not in synthesis:
        raise RuntimeError(
            "not a StyleGAN3 network (no synthesis.layer_names; a StyleGAN2 pickle? use generator=stylegan2_ffhq)"
        )
    w_dim = _attr(synthesis, "w_dim", int, "synthesis")
    names = synthesis["layer_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RuntimeError("unsupported StyleGAN3 network: synthesis.layer_names is not a list of names")
    inp = _child(synthesis, "input", "synthesis")
    spec_input = InputSpec(
        channels=_attr(inp, "channels", int, "synthesis.input"),
        size=_attr(inp, "size", int, "synthesis.input"),
        sampling_rate=_attr(inp, "sampling_rate", float, "synthesis.input"),
        bandwidth=_attr(inp, "bandwidth", float, "synthesis.input"),
    )
    layers = []
    for name in names:
        layer = _child(synthesis, name, "synthesis")
        where = f"synthesis.{name}"
        padding = _attr(layer, "padding", list, where)
        if len(padding) != 4:
            raise RuntimeError(f"unsupported StyleGAN3 network: {where}.padding = {padding}")
        clamp = layer.get("conv_clamp")
        layers.append(
            LayerSpec(
                name=name,
                in_channels=_attr(layer, "in_channels", int, where),
                out_channels=_attr(layer, "out_channels", int, where),
                in_size=_attr(layer, "in_size", int, where),
                out_size=_attr(layer, "out_size", int, where),
                conv_kernel=_attr(layer, "conv_kernel", int, where),
                up=_attr(layer, "up_factor", int, where),
                down=_attr(layer, "down_factor", int, where),
                padding=(padding[0], padding[1], padding[2], padding[3]),
                is_torgb=_attr(layer, "is_torgb", bool, where),
                conv_clamp=None if clamp is None else _attr(layer, "conv_clamp", float, where),
            )
        )
    if not layers or not layers[-1].is_torgb or layers[-1].out_channels != 3:
        raise RuntimeError("unsupported StyleGAN3 network: the last layer is not a 3-channel ToRGB")
    spec = SynthesisSpec(
        w_dim=w_dim,
        resolution=_attr(synthesis, "img_resolution", int, "synthesis"),
        input=spec_input,
        layers=tuple(layers),
        output_scale=_attr(synthesis, "output_scale", float, "synthesis"),
    )
    z_dim = _attr(top, "z_dim", int, "G_ema")
    return spec, z_dim, _attr(mapping, "num_layers", int, "mapping")


def read_stylegan3_pkl(path: Path | str | bytes) -> tuple[SynthesisSpec, int, int, dict[str, torch.Tensor]]:
    """``(spec, z_dim, mapping layers, G_ema tensors)`` of an NVIDIA stylegan3 network pickle (restricted unpickler).

    Raises:
        pickle.UnpicklingError: the pickle names a global outside the allow-list (nothing in it was run).
        RuntimeError: no ``G_ema``, not a StyleGAN3 generator, or a conditional one.
    """
    label = "the pickle" if isinstance(path, bytes) else Path(path).name
    try:
        data = restricted_load(path, nvidia_allowed_globals())
    except UnsafePickleError as error:
        raise UnsafePickleError(f"{label}: {error}") from None
    network = data.get("G_ema") if isinstance(data, dict) else None
    if network is None:
        found = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise RuntimeError(f"{label} is not an NVIDIA network pickle (no 'G_ema'; found {found})")
    spec, z_dim, mapping_layers = spec_from_pickle(network)
    return spec, z_dim, mapping_layers, flatten_module(network)


def network_from_tensors(
    spec: SynthesisSpec, z_dim: int, mapping_layers: int, tensors: dict[str, torch.Tensor], source: str
) -> StyleGAN3Network:
    """Build the network for ``spec`` and load ``tensors`` (strict: every tensor used, none missing)."""
    filters = {}
    for layer in spec.layers:
        up, down = (tensors.get(f"synthesis.{layer.name}.{kind}_filter") for kind in ("up", "down"))
        filters[layer.name] = (up, down)
    spec = SynthesisSpec(spec.w_dim, spec.resolution, spec.input, spec.layers, spec.output_scale, filters)
    network = StyleGAN3Network(spec, z_dim, mapping_layers)
    try:
        network.load_state_dict(tensors)
    except RuntimeError as error:
        reason = " ".join(str(error).split())  # torch's message spans lines; keep one
        raise RuntimeError(f"{source} does not match the StyleGAN3 layout: {reason[:400]}") from None
    return network


# --------------------------------------------------------------------------------------------------
# The Generator wrapper
# --------------------------------------------------------------------------------------------------


class StyleGAN3Generator(GaussianisedLatent):
    """Frozen StyleGAN3 + Gaussian fit, following :class:`pulse.generators.base.LayeredGenerator`.

    Latent rows are the ``num_ws`` W vectors (16 for NVIDIA's networks); no noise inputs. Blocks are the
    synthesis layers: block 0 is the Fourier input and ``L0`` (rows 0-1), block ``b >= 1`` is layer ``L<b>``
    (row ``b + 1``), the last one the ToRGB.

    Args:
        network: mapping + synthesis (frozen here).
        gaussian_fit: ``{"mean": [w_dim], "std": [w_dim]}`` of ``leaky_relu(mapping(z), 5)``.
    """

    def __init__(self, network: StyleGAN3Network, gaussian_fit: dict[str, torch.Tensor]) -> None:
        spec = network.synthesis.spec
        super().__init__(spec.w_dim, gaussian_fit)
        self.network = freeze(network)
        self.resolution = spec.resolution
        self.num_latents = spec.num_ws
        self.noise_shapes: list[tuple[int, ...]] = []
        self.eval()

    def synthesize(self, style: torch.Tensor, noise: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """``style`` ``[B, num_ws, w_dim]`` (noise: none) -> ``[B, 3, R, R]`` in about [-1, 1]."""
        if noise:
            raise ValueError(f"StyleGAN3 has no noise inputs, got {len(noise)} noise maps")
        return self.network.synthesis(style)

    @property
    def num_blocks(self) -> int:
        return len(self.network.synthesis.layer_names)

    def block_rows(self, block: int) -> slice:
        """Rows block ``block`` reads: 0-1 (input and ``L0``) for block 0, ``b + 1`` after."""
        return slice(0, 2) if block == 0 else slice(block + 1, block + 2)

    def forward_blocks(
        self, features: torch.Tensor | None, style: torch.Tensor, noise: Sequence[torch.Tensor], start: int, stop: int
    ) -> torch.Tensor:
        """Layers ``start .. stop - 1``; features are the layer outputs ``[B, C, size, size]`` (margin included)."""
        return self.network.synthesis.run_layers(features, style, start, stop)

    def features_to_image(self, features: torch.Tensor) -> torch.Tensor:
        """The ToRGB output times ``output_scale``: ``[B, 3, R, R]``."""
        return features * self.network.synthesis.spec.output_scale

    @classmethod
    def synthetic(
        cls,
        resolution: int = 64,
        config: str = "T",
        channel_base: int | None = None,
        channel_max: int | None = None,
        w_dim: int = 512,
        seed: int = 0,
        fit_samples: int = 20000,
    ) -> StyleGAN3Generator:
        """A StyleGAN3-T or -R with seeded random weights (NVIDIA's init and filter design), for tests and timing.

        Channel counts default to NVIDIA's for the config (T: 32768 / 512, R: 65536 / 1024).
        """
        if config not in CONFIGS:
            raise ValueError(f"StyleGAN3 config must be one of {sorted(CONFIGS)}, got {config!r}")
        options = dict(CONFIGS[config])
        options["channel_base"] = channel_base or options["channel_base"]
        options["channel_max"] = channel_max or options["channel_max"]
        spec = design_synthesis(resolution, w_dim=w_dim, **options)
        network = StyleGAN3Network(spec, z_dim=w_dim)
        seeded_init(network, torch.Generator().manual_seed(seed))
        fit = gaussian_fit(network.mapping, num_samples=fit_samples, seed=seed, progress=False)
        return cls(network, fit)

    @classmethod
    def pretrained(
        cls,
        path: str | Path | None = None,
        cache_dir: str | Path | None = None,
        fit_samples: int = 1_000_000,
        progress: bool = True,
    ) -> StyleGAN3Generator:
        """A StyleGAN3 (T or R) from NVIDIA's network ``.pkl``; never downloads.

        Args:
            path: the pickle. Default: the single ``*.pkl`` in ``cache_dir`` (default ``$PULSE_CACHE/stylegan3``).
            fit_samples: draws for the Gaussian fit (cached by weights' hash under ``$PULSE_CACHE/gaussian_fit``).

        Raises:
            FileNotFoundError: no pickle there. RuntimeError: not an unconditional StyleGAN3 generator.
            pickle.UnpicklingError: globals outside the allow-list.
        """
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "stylegan3"
        file = find_pickle(Path(path).expanduser() if path is not None else None, folder)
        spec, z_dim, mapping_layers, tensors = read_stylegan3_pkl(file)
        network = network_from_tensors(spec, z_dim, mapping_layers, tensors, str(file))
        fit = cached_gaussian_fit(network.mapping, num_samples=fit_samples, seed=0, progress=progress)
        return cls(network, fit)


def find_pickle(path: Path | None, folder: Path) -> Path:
    """``path`` if it is a file, else the only ``.pkl`` in ``path`` (a folder) or ``folder``."""
    if path is not None and path.is_dir():
        path, folder = None, path
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"StyleGAN3 weights not found at {path}; {WEIGHTS_HINT}")
        return path
    found = sorted(folder.glob("*.pkl")) if folder.is_dir() else []
    if len(found) != 1:
        what = "not found" if not found else f"ambiguous ({', '.join(p.name for p in found)}; choose one with `path:`)"
        raise FileNotFoundError(f"StyleGAN3 weights {what} at {folder}; {WEIGHTS_HINT}")
    return found[0]


@torch.no_grad()
def seeded_init(network: StyleGAN3Network, rng: torch.Generator) -> None:
    """NVIDIA's initialisation drawn from ``rng``: N(0, 1) weights (mapping: / lr), zero biases, affine biases 1,
    an identity input transform (affine weight 0, bias ``[1, 0, 0, 0]``), frequencies uniform on the disc of
    radius ``bandwidth`` (NVIDIA's radial warp of a Gaussian), uniform phases."""
    for name, param in network.named_parameters():
        if name == "synthesis.input.affine.weight":
            param.zero_()
        elif name == "synthesis.input.affine.bias":
            param.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        elif name.endswith("affine.bias"):
            param.fill_(1.0)
        elif name.endswith("bias"):
            param.zero_()
        else:
            scale = 1 / MAPPING_LR_MUL if name.startswith("mapping.") else 1.0
            param.copy_(torch.randn(param.shape, generator=rng) * scale)
    inp = network.synthesis.input
    freqs = torch.randn(inp.spec.channels, 2, generator=rng)
    radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
    inp.freqs.copy_(freqs / (radii * radii.square().exp().pow(0.25)) * inp.spec.bandwidth)
    inp.phases.copy_(torch.rand(inp.spec.channels, generator=rng) - 0.5)
