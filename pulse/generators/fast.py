"""An inference-optimised copy of a frozen :class:`~pulse.generators.stylegan.StyleGANGenerator`.

The PULSE search runs a forward and a backward pass through the frozen synthesis network at every
step, differentiating only with respect to the styles and noise maps. The faithful port
(:mod:`pulse.generators.stylegan`) mirrors the official module tree, which costs, per layer and step,
a weight rescale, a separate blur pass and about ten full-size elementwise passes (forward and
backward) for noise, leaky ReLU, instance norm and style modulation; at 1024 px those passes, and the
memory they allocate, cost about as much as the convolutions. :class:`FastStyleGANGenerator`
computes the same function (fp32 results within float rounding of the faithful port) with:

- **Pre-scaled weights as buffers**: the equalised-learning-rate scales are applied once (the same
  float32 product the reference forms at every call), and nothing in the network is an
  ``nn.Parameter`` (no autograd bookkeeping for weights).
- **One fused layer function** (:class:`_StyledConv`): convolution, noise, leaky ReLU, instance norm
  and style modulation with a hand-written backward. Instance norm and style collapse into one
  per-channel affine map ``a * (y - mean) + shift`` (centred in cache-sized row chunks: folding the
  mean into the offset would lose digits when ``|mean| >> std``). Every full-size map is walked in
  cache-sized row chunks, each finished before the next: in the forward, noise, bias, activation and
  the statistics in one pass (the chunks' moments merged pairwise) and the normalised output in a
  second; the backward needs one pass for its channel reductions and one that forms the input
  gradient, the activation's derivative and the noise gradient, instead of autograd's chain of
  temporaries, and returns the style gradients from the same reductions.
- **toRGB folded into the last layer**: the 1x1 toRGB convolution is linear per pixel, so it absorbs
  the last layer's affine map and the normalised 16-channel image is never materialised.
- **Mixed precision under autocast** (Lightning's ``bf16-mixed``, ``scripts/benchmark.py --bf16``): the
  convolutions run in autocast's dtype; noise, activation, statistics, style and the backward's
  reductions stay float32, and autocast is switched off inside so it cannot recast the hand-written
  layers (it made oneDNN fail on mixed-dtype convolutions before). Polyphase layers stay float32.
- ``channels_last`` memory (default on CPU), with the kernels stored in that layout too so oneDNN
  does not reorder them on every call, and optional ``torch.compile`` with a logged fallback.
- Optional **polyphase upsampling** (off by default, see :data:`POLYPHASE_MIN_SIDE`): "x2 upsample,
  3x3 conv, 3x3 blur" as one 3x3 convolution on the low-resolution input producing the four output
  phases, then a pixel shuffle, with the blur folded into the phase kernels (read off the reference
  operator's impulse response in float64) and the one-pixel border, where the reference blur sees
  zero padding, recomputed exactly from two-pixel strips. Exact, but measured slower on CPU.

Measured with ``scripts/benchmark.py`` (2-core CPU, 1024 px, random weights, batch 1, both paths in
one process): with the allocator tuning of :mod:`pulse.runtime` (the default) 1.16 s per solver step
against 1.44 s for the faithful port (1.23x); with glibc's defaults 1.50 s against 3.33 s (2.2x), as
the faithful port's many full-size temporaries are page-faulted anew at every step. Convolutions take
0.85 s of the fast step (``--profile``), which bounds what fusing the rest can still gain on a CPU.
Outputs are 4.5e-4 apart, which is the faithful fp32 port's own distance from a float64 evaluation
(3e-4); the fast path's distance is the same.

The class follows :class:`pulse.generators.base.Generator` (``resolution``, ``num_latents``,
``latent_dim``, ``noise_shapes``, ``to_style``, ``synthesize``), so :class:`pulse.solvers.pulse.PulseSolver`
uses it unchanged, and the layered interface (``num_blocks``, ``block_rows``, ``forward_blocks``,
``features_to_image``) for :class:`pulse.solvers.ilo.ILOSolver`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pulse.autobatch import is_out_of_memory
from pulse.device_cache import cached
from pulse.generators.stylegan import (
    FUSED_UPSAMPLE_MIN_SIDE,
    INSTANCE_NORM_EPS,
    LRELU_SLOPE,
    ConstantInputBlock,
    LayerEpilogue,
    StyleGANGenerator,
    UpsamplingBlock,
    fused_upsample_conv,
    transposed_upsample_kernel,
)

log = logging.getLogger(__name__)

# Upsampling layers with a smaller output side run as the reference does (nearest or fused transposed
# conv, then blur). Default: all of them. Measured on a 2-core CPU at 1024 px, the polyphase form was
# slower overall: from 128 px on it needs 4 x 9 taps per input pixel where the transposed conv needs
# 16, and below that its exact-border strips cost as much as the tiny layer. Lower it to experiment.
POLYPHASE_MIN_SIDE = 2**30
_BLUR_TAPS = (1.0, 2.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Polyphase upsampling: kernels and exact borders
# --------------------------------------------------------------------------------------------------


def _blur(x: torch.Tensor) -> torch.Tensor:
    """The reference [1, 2, 1] blur (zero padding), ``[B, C, H, W]`` kept, in ``x``'s dtype."""
    kernel = cached(("fast-blur", x.device, x.dtype), lambda: _blur_kernel(x.device, x.dtype))
    channels = x.shape[1]
    return F.conv2d(x, kernel.expand(channels, 1, 3, 3), padding=1, groups=channels)


def _blur_kernel(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[1, 1, 3, 3]``: the outer product of the [1, 2, 1] taps, normalised."""
    taps = torch.tensor(_BLUR_TAPS, dtype=dtype, device=device)
    return ((taps[:, None] * taps[None, :]) / 16.0)[None, None]


def reference_upsample(x: torch.Tensor, weight: torch.Tensor, fused: bool) -> torch.Tensor:
    """The faithful port's upsampling layer without bias: x2 upsample, 3x3 conv, blur.

    ``x``: ``[B, in, H, W]``; ``weight``: effective kernel ``[out, in, 3, 3]``; returns ``[B, out, 2H, 2W]``.
    ``fused`` picks the transposed-convolution variant (the official network's choice from 128 px on)
    regardless of the input size, so that thin border strips follow their layer's variant.
    """
    if fused:
        y = fused_upsample_conv(x, weight)
    else:
        y = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, padding=1)
    return _blur(y)


def phase_basis(fused: bool) -> torch.Tensor:
    """Impulse responses of :func:`reference_upsample` for each 3x3 weight tap, ``[9, 4, 3, 3]`` float64.

    Entry ``[t, 2a + b, 1 + di, 1 + dj]`` is the response at output pixel ``(2i + a, 2j + b)`` to a unit
    input at ``(i + di, j + dj)`` when the kernel is the unit tap ``t``. Every output pixel depends on a
    3x3 input neighbourhood (two taps of the upsampled conv widened by one by the blur), so each of the
    four phases is a 3x3 convolution of the low-resolution input. A 5x5 probe with its impulse in the
    middle keeps every read-off away from the zero padding.
    """
    basis = torch.zeros(9, 4, 3, 3, dtype=torch.float64)
    probe = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    probe[0, 0, 2, 2] = 1.0
    for tap in range(9):
        weight = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
        weight.view(-1)[tap] = 1.0
        response = reference_upsample(probe, weight, fused)[0, 0]  # [10, 10]
        for a in range(2):
            for b in range(2):
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        basis[tap, 2 * a + b, 1 + di, 1 + dj] = response[2 * (2 - di) + a, 2 * (2 - dj) + b]
    return basis


def phase_kernels(weight: torch.Tensor, fused: bool) -> torch.Tensor:
    """The polyphase form of an upsampling layer: ``[out, in, 3, 3] -> [4 * out, in, 3, 3]`` (float64).

    ``pixel_shuffle(conv2d(x, phase_kernels(w), padding=1), 2)`` equals ``reference_upsample(x, w)``
    except on the one-pixel border (see :func:`border_correction`). Output channel ``4 * o + 2a + b``
    is phase ``(a, b)`` of channel ``o``, the order :func:`torch.nn.functional.pixel_shuffle` expects.
    """
    out_channels, in_channels = weight.shape[:2]
    basis = phase_basis(fused).to(weight.device)
    kernels = torch.einsum("oit,tpxy->opixy", weight.double().reshape(out_channels, in_channels, 9), basis)
    return kernels.reshape(4 * out_channels, in_channels, 3, 3)


def _polyphase(x: torch.Tensor, kernels: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, in, H, W] -> [B, out, 2H, 2W]``: phase convolution then pixel shuffle."""
    return F.pixel_shuffle(F.conv2d(x, kernels, bias, padding=1), 2)


def border_correction(
    x: torch.Tensor, kernels: torch.Tensor, weight: torch.Tensor, fused: bool
) -> list[tuple[tuple[slice, slice], torch.Tensor]]:
    """What to add to the polyphase result's border to make it equal the reference layer.

    The reference blurs the cropped upsampled image with zero padding, whereas the folded kernels see
    the (non-zero) upsampled values one pixel beyond the crop; only the outermost output rows and
    columns differ. Each of them depends on the two outermost input rows (columns) alone, so it is
    recomputed from a two-pixel strip with both operators; corners are taken from the row strips.

    Args:
        x: ``[B, in, H, W]`` with ``H, W >= 2``.
        kernels: :func:`phase_kernels` output in ``x``'s dtype; ``weight``: the effective 3x3 kernel.

    Returns:
        ``[((row_index, col_index), delta), ...]`` with ``delta`` of shape ``[B, out, n]`` for a line of
        ``n`` pixels of the ``[B, out, 2H, 2W]`` output.
    """
    whole, inner = slice(None), slice(1, -1)

    def delta(strip: torch.Tensor) -> torch.Tensor:
        return reference_upsample(strip, weight, fused) - _polyphase(strip, kernels)

    return [
        ((0, whole), delta(x[:, :, :2, :])[:, :, 0, :]),
        ((-1, whole), delta(x[:, :, -2:, :])[:, :, -1, :]),
        ((inner, 0), delta(x[:, :, :, :2])[:, :, 1:-1, 0]),
        ((inner, -1), delta(x[:, :, :, -2:])[:, :, 1:-1, -1]),
    ]


# --------------------------------------------------------------------------------------------------
# The fused layer: convolution -> noise -> leaky ReLU -> instance norm -> style (-> toRGB)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LayerSpec:
    """Static description of one synthesis layer for :class:`_StyledConv`.

    Attributes:
        kind: ``"const"`` (the 4x4 constant, no convolution), ``"conv"`` (3x3), ``"up"`` (polyphase x2) or
            ``"up_ref"`` (the input is already the reference upsampling's output, without its bias; see
            :data:`POLYPHASE_MIN_SIDE`).
        fused: for ``"up"``/``"up_ref"``, whether the reference uses the transposed-convolution variant.
        instance_norm_eps: added to the variance, as the faithful port's epilogue does (1e-5 or 1e-8).
    """

    kind: str
    fused: bool = False
    instance_norm_eps: float = INSTANCE_NORM_EPS


_CHUNK_ELEMENTS = 2**20  # ~4 MiB float32 temporaries: below glibc's mmap threshold, so reused, not page-faulted


# On a GPU the CPU's cache-sized chunks would mean hundreds of small kernel launches per 1024 px step;
# there the chunks only bound the temporaries' memory (256 MiB of float32). Not measured: no GPU here.
_DEVICE_CHUNK_ELEMENTS = 2**26


def _row_chunks(t: torch.Tensor) -> list[slice]:
    """Slices of dim 2 (rows) of about ``_CHUNK_ELEMENTS`` elements (``_DEVICE_CHUNK_ELEMENTS`` off the CPU)."""
    per_row = max(1, t.numel() // t.shape[2])
    budget = _CHUNK_ELEMENTS if t.device.type == "cpu" else _DEVICE_CHUNK_ELEMENTS
    rows = max(1, budget // per_row)
    return [slice(start, start + rows) for start in range(0, t.shape[2], rows)]


def _flat(t: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, C, H * W]`` as a view for NCHW or channels-last memory (strided in the latter)."""
    batch, channels, height, width = t.shape
    if _memory_format(t) == torch.channels_last:
        return t.permute(0, 2, 3, 1).reshape(batch, height * width, channels).transpose(1, 2)
    return t.reshape(batch, channels, height * width)


def _gram(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``[B, O, H, W] x [B, C, H, W] -> [B, O, C]``: ``sum_p u[b, o, p] * v[b, c, p]`` as one batched GEMM."""
    return torch.matmul(_flat(u), _flat(v).transpose(1, 2))


def _channel_dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``sum_{h, w} u * v`` per sample and channel, ``[B, C, H, W] x2 -> [B, C]``.

    Callers pass row chunks (:func:`_row_chunks`), so the product temporary stays cache-sized. On NCHW
    memory ``einsum`` lowers this to a batched dot product without any temporary. On channels-last
    chunks the plain product-and-sum measured 2.5-6x faster than a ``C x C`` Gram GEMM's diagonal
    (1024-256 px layers, 2-core CPU) and is as accurate.
    """
    if u.is_contiguous() and v.is_contiguous():
        return torch.einsum("bchw,bchw->bc", u, v)
    return (u * v).sum(dim=(2, 3))


def _noise_relu_stats(
    source: torch.Tensor,
    noise: torch.Tensor,
    noise_weight: torch.Tensor,
    out: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``out = leaky_relu(source + bias + noise_weight * noise)`` and its per-channel mean and biased variance.

    ``source``, ``out``: ``[B, C, H, W]`` (the same tensor for in place, then without ``bias``); ``noise``:
    ``[B or 1, 1, H, W]``; ``bias``: ``[C]`` or ``None``; returns mean and variance, each ``[B, C]``.

    One pass over row chunks (:func:`_row_chunks`): each chunk gets its noise and activation and is reduced
    while it is still in cache; the chunks' means and centred sums of squares are merged by Chan et al.'s
    pairwise update, as stable as two passes over the whole map (``E[y^2] - E[y]^2`` in float32 would lose
    about five digits when ``|mean| >> std``).
    """
    batch, channels, _, width = out.shape
    mean = out.new_zeros(batch, channels)
    squares = out.new_zeros(batch, channels)
    weight = noise_weight.view(1, -1, 1, 1)
    count = 0
    for rows in _row_chunks(out):
        chunk = out[:, :, rows]
        if source is out:
            chunk.addcmul_(noise[:, :, rows], weight)
        elif bias is None:
            torch.addcmul(source[:, :, rows], noise[:, :, rows], weight, out=chunk)
        else:
            torch.add(source[:, :, rows], bias.view(1, -1, 1, 1), out=chunk).addcmul_(noise[:, :, rows], weight)
        F.leaky_relu_(chunk, LRELU_SLOPE)
        size = chunk.shape[2] * width
        chunk_mean = chunk.mean(dim=(2, 3))
        centred = chunk - _per_channel(chunk_mean)
        total = count + size
        delta = chunk_mean - mean
        mean += delta * (size / total)
        squares += _channel_dot(centred, centred) + delta.square() * (count * size / total)
        count = total
    return mean, squares / count


def _sum_and_centred_dot(g: torch.Tensor, y: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum_p g`` and ``sum_p g * (y - mean)`` per sample and channel, each ``[B, C]``, in one chunked pass."""
    total_g = torch.zeros_like(mean)
    total = torch.zeros_like(mean)
    for rows in _row_chunks(y):
        chunk = g[:, :, rows]
        total_g += chunk.sum(dim=(2, 3))
        total += _channel_dot(chunk, y[:, :, rows] - _per_channel(mean))
    return total_g, total


def _centred_gram(g: torch.Tensor, y: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``sum_p g[b, o, p] * (y[b, c, p] - mean[b, c])``, ``[B, O, C]`` (chunked)."""
    total = g.new_zeros(g.shape[0], g.shape[1], y.shape[1])
    for rows in _row_chunks(y):
        total += _gram(g[:, :, rows], y[:, :, rows] - _per_channel(mean))
    return total


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    """``[B, C] -> [B, C, 1, 1]`` for broadcasting over pixels."""
    return t[:, :, None, None]


class _StyledConv(torch.autograd.Function):
    """One synthesis layer with a hand-written backward (only inputs, noise and styles get gradients).

    Forward, with ``z = conv(x) + bias`` (or the constant), ``N = H * W``::

        y = leaky_relu(z + noise_weight * noise, 0.2)              # in place in z
        mean, var = per-channel statistics of y                     # [B, C]
        a = (1 + scale) * rsqrt(var + eps);  c = shift - mean * a   # instance norm + style as one affine
        out = y * a + c                                             # or toRGB(out) = (W a) y + (W c + b)

    Backward (``g`` the output gradient; ``xhat = (y - mean) * rstd``)::

        d scale = sum(g * xhat) = rstd * (sum(g * y) - mean * sum(g)),   d shift = sum(g)
        d y = a * g - a * mean(g) - a * rstd^2 * (y - mean) * (mean(g * y) - mean * mean(g))
        d z = d y * (1 if y > 0 else 0.2),  d noise = sum_c noise_weight_c * d z_c,  d x = conv^T(d z)
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor | None,
        noise: torch.Tensor,
        scale: torch.Tensor,
        shift: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        noise_weight: torch.Tensor,
        ref_weight: torch.Tensor | None,
        rgb_weight: torch.Tensor | None,
        rgb_bias: torch.Tensor | None,
        spec: _LayerSpec,
        compute_dtype: torch.dtype | None,
    ) -> torch.Tensor:
        if spec.kind == "const":
            z = weight.expand(scale.shape[0], -1, -1, -1).clone()  # the constant input (+ its bias)
        elif spec.kind == "conv" and compute_dtype is not None:
            # Mixed precision: the convolution in compute_dtype, everything after it in float32. The
            # low-precision input and kernel are what the backward's convolution needs, so they are saved.
            x, weight = x.to(compute_dtype), weight.to(compute_dtype)
            z = F.conv2d(x, weight, padding=1).float().add_(bias.view(1, -1, 1, 1))
        elif spec.kind == "conv":
            z = F.conv2d(x, weight, bias, padding=1)
        elif spec.kind == "up_ref":
            z = None  # x is already the upsampling's output (autograd differentiates that part)
        else:
            z = _polyphase(x, weight, bias)
            for index, delta in border_correction(x, weight, ref_weight, spec.fused):
                z[(slice(None), slice(None), *index)] += delta
        if z is None:
            y = torch.empty_like(x)  # x: the upsampling's output before its bias (see _FastLayer.forward)
            mean, var = _noise_relu_stats(x, noise, noise_weight, out=y, bias=bias)
            x = None  # not needed by the backward
        else:
            y = z
            mean, var = _noise_relu_stats(z, noise, noise_weight, out=z)
        rstd = torch.rsqrt(var + spec.instance_norm_eps)
        a = (scale + 1.0) * rstd
        # out = a * (y - mean) + shift, centred chunk by chunk: folding the mean into the offset
        # (a * y + (shift - a * mean)) cancels catastrophically when |mean| >> std, as happens in
        # early layers, and costs digits the reference (which centres first) keeps.
        if rgb_weight is not None:
            matrix, offset = rgb_weight[None] * a[:, None, :], shift @ rgb_weight.t() + rgb_bias
            out = torch.cat(
                [_pixelwise_linear(matrix, offset, y[:, :, rows] - _per_channel(mean)) for rows in _row_chunks(y)],
                dim=2,
            )
        else:
            out = torch.empty_like(y)
            for rows in _row_chunks(y):
                torch.addcmul(
                    _per_channel(shift), y[:, :, rows] - _per_channel(mean), _per_channel(a), out=out[:, :, rows]
                )
        ctx.save_for_backward(x, y, mean, rstd, a, noise, noise_weight, weight, ref_weight, rgb_weight)
        ctx.spec = spec
        ctx.noise_shape = noise.shape
        ctx.compute_dtype = compute_dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        # The engine runs this under whatever autocast state the caller of .backward() has (Lightning's
        # bf16-mixed: bf16), which would recast the reductions and GEMMs below. The forward ran with
        # autocast off; so does its backward (what torch.amp.custom_bwd does, for any device type).
        with torch.autocast(device_type=grad.device.type, enabled=False):
            return _StyledConv._backward(ctx, grad)

    @staticmethod
    def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, y, mean, rstd, a, noise, noise_weight, weight, ref_weight, rgb_weight = ctx.saved_tensors
        spec: _LayerSpec = ctx.spec
        pixels = y.shape[2] * y.shape[3]
        if rgb_weight is not None:
            # g_out = W^T g_rgb is never formed: its channel sums and centred dot products with y come
            # from [B, 3] and [B, 3, C] reductions of the 3-channel gradient.
            sum_g = grad.sum(dim=(2, 3)) @ rgb_weight  # [B, C]
            dot_c = (_centred_gram(grad, y, mean) * rgb_weight[None]).sum(dim=1)  # sum g_out * (y - mean)
        else:
            sum_g, dot_c = _sum_and_centred_dot(grad, y, mean)
        grad_scale = rstd * dot_c  # sum(g * xhat)
        grad_shift = sum_g
        k = a * rstd.square() * dot_c / pixels
        offset = -a * sum_g / pixels
        if rgb_weight is not None:
            grad_y = _pixelwise_linear((rgb_weight[None] * a[:, None, :]).transpose(1, 2), offset, grad, like=y)
        else:
            grad_y = torch.empty_like(y)
        grad_noise = None
        if ctx.needs_input_grad[1]:
            grad_noise = y.new_empty(y.shape[0], 1, y.shape[2], y.shape[3])
        # One pass over row chunks, each finished while in cache: a * g + offset, the centred term
        # - k * (y - mean) (centred for the same cancellation reason as in the forward), the activation's
        # derivative and the noise gradient sum_c noise_weight_c * d z_c.
        for rows in _row_chunks(y):
            chunk = grad_y[:, :, rows]
            if rgb_weight is None:
                torch.addcmul(_per_channel(offset), grad[:, :, rows], _per_channel(a), out=chunk)
            chunk.addcmul_(y[:, :, rows] - _per_channel(mean), _per_channel(-k))
            torch.ops.aten.leaky_relu_backward.grad_input(chunk, y[:, :, rows], LRELU_SLOPE, True, grad_input=chunk)
            if grad_noise is not None:
                grad_noise[:, 0, rows] = torch.einsum("bchw,c->bhw", chunk, noise_weight)
        grad_z = grad_y
        if grad_noise is not None and ctx.noise_shape[0] == 1 and grad_noise.shape[0] != 1:
            grad_noise = grad_noise.sum(dim=0, keepdim=True)
        grad_x = None
        if spec.kind != "const" and ctx.needs_input_grad[0]:
            if spec.kind == "conv" and ctx.compute_dtype is not None:
                grad_x = _conv_input_grad(grad_z.to(ctx.compute_dtype), x, weight).float()
            elif spec.kind == "conv":
                grad_x = _conv_input_grad(grad_z, x, weight)
            elif spec.kind == "up_ref":
                grad_x = grad_z
            else:
                grad_x = _conv_input_grad(F.pixel_unshuffle(grad_z, 2), x, weight)
                _border_correction_backward(grad_x, grad_z, x, weight, ref_weight, spec.fused)
        return grad_x, grad_noise, grad_scale, grad_shift, None, None, None, None, None, None, None, None


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _pixelwise_linear(
    matrix: torch.Tensor, offset: torch.Tensor, x: torch.Tensor, like: torch.Tensor | None = None
) -> torch.Tensor:
    """``out[b, o, p] = sum_c matrix[b, o, c] * x[b, c, p] + offset[b, o]`` as one GEMM (a 1x1 convolution).

    ``matrix``: ``[B, O, C]``; ``offset``: ``[B, O]``; ``x``: ``[B, C, H, W]`` in either layout. The
    result ``[B, O, H, W]`` takes the layout of ``like`` (default: NCHW), written directly by the GEMM.
    """
    batch, _, height, width = x.shape
    if like is not None and _memory_format(like) == torch.channels_last:
        out = torch.baddbmm(offset[:, None, :], _flat(x).transpose(1, 2), matrix.transpose(1, 2))  # [B, HW, O]
        return out.view(batch, height, width, -1).permute(0, 3, 1, 2)
    return torch.baddbmm(offset[:, :, None], matrix, _flat(x)).view(batch, -1, height, width)


def _conv_input_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Gradient of ``conv2d(x, weight, padding=1)`` w.r.t. ``x`` only (weights are frozen)."""
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False]
    )[0]


def _border_correction_backward(
    grad_x: torch.Tensor,
    grad_z: torch.Tensor,
    x: torch.Tensor,
    kernels: torch.Tensor,
    weight: torch.Tensor,
    fused: bool,
) -> None:
    """Adds the border correction's vector-Jacobian product to ``grad_x`` (in place, two-pixel strips)."""
    strips = {
        "top": (slice(None), slice(None), slice(0, 2), slice(None)),
        "bottom": (slice(None), slice(None), slice(-2, None), slice(None)),
        "left": (slice(None), slice(None), slice(None), slice(0, 2)),
        "right": (slice(None), slice(None), slice(None), slice(-2, None)),
    }
    with torch.enable_grad():
        leaves = {name: x[index].detach().requires_grad_(True) for name, index in strips.items()}

        def delta(strip: torch.Tensor) -> torch.Tensor:
            return reference_upsample(strip, weight, fused) - _polyphase(strip, kernels)

        terms = [
            (delta(leaves["top"])[:, :, 0, :] * grad_z[:, :, 0, :]).sum(),
            (delta(leaves["bottom"])[:, :, -1, :] * grad_z[:, :, -1, :]).sum(),
            (delta(leaves["left"])[:, :, 1:-1, 0] * grad_z[:, :, 1:-1, 0]).sum(),
            (delta(leaves["right"])[:, :, 1:-1, -1] * grad_z[:, :, 1:-1, -1]).sum(),
        ]
        grads = torch.autograd.grad(sum(terms), list(leaves.values()))
    for index, value in zip(strips.values(), grads, strict=True):
        grad_x[index] += value


# --------------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------------


class _FastLayer(nn.Module):
    """Pre-scaled, frozen tensors of one synthesis layer (all buffers) and its :class:`_LayerSpec`.

    Buffers: ``weight`` (``[out, in, 3, 3]``, ``[4 * out, in, 3, 3]`` phase kernels for ``"up"``, or the
    ``[1, C, 4, 4]`` constant plus bias for ``"const"``), ``bias`` (``[out]`` / ``[4 * out]`` / unused),
    ``ref_weight`` (``"up"`` only: the effective 3x3 kernel, for the exact borders), ``noise_weight``
    ``[C]``, ``style_weight`` ``[2C, 512]`` and ``style_bias`` ``[2C]``.
    """

    def __init__(self, spec: _LayerSpec, epilogue: LayerEpilogue, **tensors: torch.Tensor | None) -> None:
        super().__init__()
        self.spec = dataclasses.replace(spec, instance_norm_eps=epilogue.instance_norm_eps)
        self.channels = epilogue.noise.weight.numel()
        lin = epilogue.style_mod.lin
        with torch.no_grad():
            tensors["noise_weight"] = epilogue.noise.weight
            tensors["style_weight"] = lin.weight * lin.weight_gain
            tensors["style_bias"] = lin.bias * lin.lr_multiplier
            for name, value in tensors.items():
                self.register_buffer(name, None if value is None else value.detach().clone())

    def styles(self, dlatent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 512] -> (scale, shift)``, each ``[B, C]`` (the reference's ``StyleModulation`` affine)."""
        style = F.linear(dlatent, self.style_weight, self.style_bias)
        return style[:, : self.channels], style[:, self.channels :]

    def forward(
        self,
        x: torch.Tensor | None,
        dlatent: torch.Tensor,
        noise: torch.Tensor,
        rgb_weight: torch.Tensor | None = None,
        rgb_bias: torch.Tensor | None = None,
        compute_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        scale, shift = self.styles(dlatent)
        if self.spec.kind == "up_ref":
            # The convolutions' backward is autograd's. The bias comes after the blur, as in the reference;
            # _StyledConv adds it with the noise, chunk by chunk (no full-size map of its own).
            if compute_dtype is None:
                x = _blur(F.conv_transpose2d(x, self.weight, stride=2, padding=1))
            else:
                weight = self.weight.to(compute_dtype)
                x = _blur(F.conv_transpose2d(x.to(compute_dtype), weight, stride=2, padding=1)).float()
        return _StyledConv.apply(
            x,
            noise,
            scale,
            shift,
            self.weight,
            self.bias,
            self.noise_weight,
            self.ref_weight,
            rgb_weight,
            rgb_bias,
            self.spec,
            compute_dtype if self.spec.kind == "conv" else None,  # polyphase layers stay float32
        )


def _layers_from(synthesis: nn.Module) -> list[_FastLayer]:
    """The reference synthesis network's layers, in order, as :class:`_FastLayer` (weights pre-scaled)."""
    layers: list[_FastLayer] = []
    with torch.no_grad():
        for name, block in synthesis.blocks.items():
            if isinstance(block, ConstantInputBlock):
                constant = block.const + block.bias.view(1, -1, 1, 1)  # exactly the reference's first op
                layers.append(_FastLayer(_LayerSpec("const"), block.epi1, weight=constant, bias=None, ref_weight=None))
                conv = block.conv
                layers.append(
                    _FastLayer(
                        _LayerSpec("conv"), block.epi2, weight=conv.scaled_weight(), bias=conv.bias, ref_weight=None
                    )
                )
            elif isinstance(block, UpsamplingBlock):
                side = int(name.split("x")[0])
                fused = side >= FUSED_UPSAMPLE_MIN_SIDE
                up = block.conv0_up
                effective = up.scaled_weight()
                if side < POLYPHASE_MIN_SIDE:
                    # Nearest x2 then a 3x3 conv equals a stride-2 transposed conv with the flipped kernel
                    # (the fused variant's identity): 16 taps per input pixel instead of 36 on the upsampled grid.
                    kernel = transposed_upsample_kernel(effective if fused else effective.flip(-2, -1))
                    spec = _LayerSpec("up_ref", fused=fused)
                    layers.append(_FastLayer(spec, block.epi1, weight=kernel, bias=up.bias, ref_weight=None))
                else:
                    layers.append(
                        _FastLayer(
                            _LayerSpec("up", fused=fused),
                            block.epi1,
                            weight=phase_kernels(effective, fused).to(effective.dtype),
                            bias=up.bias.repeat_interleave(4),  # the same bias for the four phases
                            ref_weight=effective,
                        )
                    )
                conv = block.conv1
                layers.append(
                    _FastLayer(
                        _LayerSpec("conv"), block.epi2, weight=conv.scaled_weight(), bias=conv.bias, ref_weight=None
                    )
                )
            else:
                raise TypeError(f"unexpected synthesis block {name!r}: {type(block).__name__}")
    return layers


class FastStyleGANGenerator(nn.Module):
    """The same function as a frozen :class:`StyleGANGenerator`, computed faster (see the module doc).

    Args:
        generator: the faithful generator to copy (its weights are read once; it is not kept).
        channels_last: run the convolutions on channels-last memory; ``None`` picks it on the CPU and NCHW
            elsewhere (unmeasured: no GPU here), decided again whenever the copy moves (``.to(device)``),
            so a copy built on the CPU and moved to a GPU runs NCHW there, as the benchmark measures it.
        compile: wrap the synthesis in ``torch.compile``; if that is unavailable or fails, the eager fast
            path is used and the reason logged once.

    Attributes follow :class:`pulse.generators.base.Generator`. All tensors are buffers: ``.to(device)``
    moves the copy, and nothing in it is a parameter.
    """

    def __init__(self, generator: StyleGANGenerator, channels_last: bool | None = None, compile: bool = False) -> None:
        super().__init__()
        synthesis = generator.synthesis
        self.resolution = generator.resolution
        self.num_latents = generator.num_latents
        self.latent_dim = generator.latent_dim
        self.noise_shapes: list[tuple[int, ...]] = list(generator.noise_shapes)
        self.default_bad_noise_layers = tuple(generator.default_bad_noise_layers)
        self.instance_norm_eps = generator.instance_norm_eps
        self.channels, self.output_range, self.domain = generator.channels, generator.output_range, generator.domain
        self.channels_last_setting = channels_last
        self.channels_last = False
        self.register_buffer("mean", generator.mean.detach().clone())
        self.register_buffer("std", generator.std.detach().clone())
        self.layers = nn.ModuleList(_layers_from(synthesis))
        if len(self.layers) != self.num_latents:
            raise ValueError(f"found {len(self.layers)} layers for {self.num_latents} style rows")
        self._choose_layout(next(iter(generator.buffers())).device)
        torgb = synthesis.torgb
        with torch.no_grad():
            self.register_buffer("rgb_weight", torgb.scaled_weight().flatten(1).detach().clone())  # [3, C]
            self.register_buffer("rgb_bias", torgb.bias.detach().clone())
        self.compile = compile
        self._compiled: Callable[..., torch.Tensor] | None = None
        self._compile_failed = False
        self.eval()

    def _choose_layout(self, device: torch.device) -> None:
        """Memory layout for ``device`` (see ``channels_last``), with the 3x3 kernels stored in it."""
        use = self.channels_last_setting if self.channels_last_setting is not None else device.type == "cpu"
        self.channels_last = use
        layout = torch.channels_last if use else torch.contiguous_format
        # 3x3 kernels in the activations' layout: oneDNN would otherwise reorder them on every call. The
        # 4x4 transposed-convolution kernels stay NCHW: channels-last ones saved ~12 ms of reorders per
        # 1024 px step but moved the output from 3.5e-4 to 5.1e-4 away from float64 (the faithful port: 3.1e-4).
        for layer in self.layers:
            for name in ("weight", "ref_weight"):
                kernel = getattr(layer, name)
                if kernel is not None and kernel.dim() == 4 and kernel.shape[-1] == 3:
                    setattr(layer, name, kernel.contiguous(memory_format=layout))

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> FastStyleGANGenerator:
        """``.to()``, ``.cuda()``, ...: move, then pick the layout for the new device."""
        result = super()._apply(fn, *args, **kwargs)
        if hasattr(self, "layers"):
            self._choose_layout(self.mean.device)
        return result

    @classmethod
    def from_generator(
        cls, generator: StyleGANGenerator, channels_last: bool | None = None, compile: bool = False
    ) -> FastStyleGANGenerator:
        """Build the fast copy of ``generator`` on its device."""
        device = next(iter(generator.buffers())).device
        return cls(generator, channels_last=channels_last, compile=compile).to(device)

    def to_style(self, latent: torch.Tensor) -> torch.Tensor:
        """``[B, L, 512] -> [B, L, 512]``: ``leaky_relu(latent * std + mean, 0.2)``, as the reference."""
        return F.leaky_relu(latent * self.std + self.mean, LRELU_SLOPE)

    def _run_layers(
        self,
        x: torch.Tensor | None,
        style: torch.Tensor,
        noise: Sequence[torch.Tensor],
        start: int,
        stop: int,
        compute_dtype: torch.dtype | None,
        fold_rgb: bool,
    ) -> torch.Tensor:
        """Layers ``start .. stop - 1`` (one per style row); with ``fold_rgb`` the last one returns the image.

        With ``compute_dtype`` (under autocast, e.g. Lightning's bf16-mixed) the convolutions run in it and
        the rest in float32, with autocast switched off so it cannot recast inside the hand-written layers.
        """
        mixed = compute_dtype is not None
        with torch.autocast(device_type=style.device.type, enabled=False) if mixed else contextlib.nullcontext():
            if mixed:
                x, style, noise = None if x is None else x.float(), style.float(), [m.float() for m in noise]
            if x is not None and self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            last = len(self.layers) - 1
            for index in range(start, stop):
                rgb = (self.rgb_weight, self.rgb_bias) if fold_rgb and index == last else (None, None)
                x = self.layers[index](x, style[:, index], noise[index], *rgb, compute_dtype=compute_dtype)
                if index == 0 and self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
            return x

    def _synthesize(self, style: torch.Tensor, noise: Sequence[torch.Tensor]) -> torch.Tensor:
        return self._run_layers(None, style, noise, 0, len(self.layers), None, fold_rgb=True)

    # Layered access (pulse.generators.base.LayeredGenerator), for intermediate-layer optimisation (ILO).
    @property
    def num_blocks(self) -> int:
        return len(self.layers) // 2

    def block_rows(self, block: int) -> slice:
        """The style rows block ``block`` consumes (its two layers)."""
        return slice(2 * block, 2 * block + 2)

    def forward_blocks(
        self, features: torch.Tensor | None, style: torch.Tensor, noise: Sequence[torch.Tensor], start: int, stop: int
    ) -> torch.Tensor:
        """Blocks ``start .. stop - 1``: ``[B, C, r, r]`` features (None at 0) -> the block outputs.

        The features are the faithful port's (toRGB is not folded here; :meth:`features_to_image` applies it).
        """
        compute_dtype = _autocast_dtype(style.device.type)
        return self._run_layers(features, style, noise, 2 * start, 2 * stop, compute_dtype, fold_rgb=False)

    def features_to_image(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, C, R, R]`` last-block features -> ``[B, 3, R, R]`` (the 1x1 toRGB), NCHW-contiguous."""
        image = F.conv2d(features.float(), self.rgb_weight[:, :, None, None], self.rgb_bias)
        return image.contiguous()

    def synthesize(self, style: torch.Tensor, noise: Sequence[torch.Tensor | None] | None) -> torch.Tensor:
        """``style [B, L, 512]``, noise ``[B or 1, 1, r_i, r_i]`` each (``None``: fresh N(0, 1)) -> ``[B, 3, R, R]``.

        The image is NCHW-contiguous in either memory mode, like the reference's.
        """
        if style.dim() != 3 or style.shape[1] != self.num_latents or style.shape[2] != self.latent_dim:
            raise ValueError(f"style must be [batch, {self.num_latents}, {self.latent_dim}], got {list(style.shape)}")
        if noise is None:
            noise = [None] * self.num_latents
        if len(noise) != self.num_latents:
            raise ValueError(f"expected {self.num_latents} noise maps, got {len(noise)}")
        batch = style.shape[0]
        maps = [
            torch.randn(batch, *shape, device=style.device, dtype=style.dtype) if n is None else n
            for n, shape in zip(noise, self.noise_shapes, strict=True)
        ]
        compute_dtype = _autocast_dtype(style.device.type)
        if compute_dtype is not None:
            return self._run_layers(None, style, maps, 0, len(self.layers), compute_dtype, fold_rgb=True)
        if self.compile and not self._compile_failed:
            try:
                if self._compiled is None:
                    self._compiled = torch.compile(self._synthesize)
                if not torch.is_grad_enabled() or not any(t.requires_grad for t in (style, *maps)):
                    return self._compiled(style, maps)
                return _GuardedCompiled.apply(self, style, *maps)
            except Exception as error:  # no compiler, unsupported op, ...: keep going without it
                if is_out_of_memory(error):  # too large a batch, not a compiler problem (batch_size=auto probes)
                    raise
                self._compile_failed_because(error)
        return self._synthesize(style, maps)

    def _compile_failed_because(self, error: BaseException) -> None:
        self._compile_failed = True
        log.warning("torch.compile unavailable for the fast StyleGAN path (%s); running eager", error)


class _GuardedCompiled(torch.autograd.Function):
    """The compiled synthesis, with an eager fallback that also covers its backward.

    Inductor compiles the backward lazily, at the first ``.backward()`` (and again for new shapes), so an
    error there escapes a ``try`` around the forward. This function runs the compiled forward on detached
    copies of its inputs and differentiates that graph in :meth:`backward`; if doing so fails (other than
    by running out of memory), compiling is switched off and the step's gradients come from an eager
    recomputation of the same forward, so the search continues with correct gradients.
    """

    @staticmethod
    def forward(ctx: Any, owner: FastStyleGANGenerator, style: torch.Tensor, *maps: torch.Tensor) -> torch.Tensor:
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in (style, *maps)]
        with torch.enable_grad():
            image = owner._compiled(leaves[0], leaves[1:])
        ctx.owner, ctx.leaves, ctx.image = owner, leaves, image
        return image.detach()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        leaves, owner = ctx.leaves, ctx.owner
        wanted = [t for t in leaves if t.requires_grad]
        try:
            grads = torch.autograd.grad(ctx.image, wanted, grad, allow_unused=True)
        except Exception as error:
            if is_out_of_memory(error):
                raise
            owner._compile_failed_because(error)
            with torch.enable_grad():
                fresh = [t.detach().requires_grad_(t.requires_grad) for t in leaves]
                image = owner._synthesize(fresh[0], fresh[1:])
                grads = torch.autograd.grad(image, [t for t in fresh if t.requires_grad], grad, allow_unused=True)
        ctx.image = ctx.leaves = None
        found = iter(grads)
        return (None, *(next(found) if t.requires_grad else None for t in leaves))


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast casts convolutions to on ``device_type``, or ``None`` when autocast is off there."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    if device_type == "cpu":
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def accelerate(
    generator: StyleGANGenerator, channels_last: bool | None = None, compile: bool = False
) -> FastStyleGANGenerator:
    """The fast copy of a faithful StyleGAN generator (config entry point; see :class:`FastStyleGANGenerator`)."""
    if isinstance(generator, FastStyleGANGenerator):
        return generator
    if not isinstance(generator, StyleGANGenerator):
        raise TypeError(f"accelerate() needs a StyleGANGenerator, got {type(generator).__name__}")
    return FastStyleGANGenerator.from_generator(generator, channels_last=channels_last, compile=compile)
