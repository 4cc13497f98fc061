"""Read ncnn models (``.param`` text + ``.bin`` weights) as data, and turn an ESRGAN RRDBNet into a state dict.

ncnn (Tencent's inference library) stores a network as a ``.param`` text file, one layer a line
(``type name n_in n_out inputs... outputs... key=value...``), and a ``.bin`` file with each weight-bearing
layer's tensors in layer order. A ``Convolution`` stores its weight ``[out, in, kh, kw]`` (row-major, the
PyTorch order) behind a 4-byte storage tag (``0x01306B47``: float16, padded to 4 bytes; zero: float32;
``0x0002C056``: float32 with a tag; ``0x000D4B38``: int8; other non-zero: a 256-entry float32 codebook and
uint8 indices), then its bias as plain float32 (no tag). Nothing here runs ncnn or any code from the files.

:func:`rrdbnet_state_dict` checks that the graph is an ESRGAN/Real-ESRGAN RRDBNet (conv_first, ``B`` blocks of
3 residual dense blocks of 5 convolutions, conv_body, nearest x2 upsampling + conv per factor of 2, conv_hr,
conv_last; leaky ReLU 0.2 where RRDBNet has it; residual scale 0.2) and returns the tensors under BasicSR's
names (``conv_first.weight``, ``body.0.rdb1.conv1.weight``, ...), the layout Real-ESRGAN's own ``.pth``
files use and :mod:`spandrel` recognises. Any other layer type, parameter or shape is refused naming it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "NcnnError",
    "NcnnLayer",
    "parse_param",
    "read_convolution_weights",
    "rrdbnet_state_dict",
    "convert_rrdbnet",
]

PARAM_MAGIC = 7767517
TAG_FLOAT16 = 0x01306B47
TAG_FLOAT32 = 0x0002C056
TAG_INT8 = 0x000D4B38
# Layer types an RRDBNet graph holds; none but Convolution carries weights.
RRDBNET_LAYER_TYPES = ("Input", "Convolution", "Split", "Concat", "Eltwise", "BinaryOp", "Interp")
LEAKY_RELU = 2  # ncnn Convolution activation_type 2 = leaky ReLU, activation_params[0] = slope
ARRAY_KEY_BASE = -23300  # an array parameter with id k is written as key -23300 - k


class NcnnError(ValueError):
    """An ncnn file is malformed or not the network expected; the message names the layer and the problem."""


@dataclass
class NcnnLayer:
    """One line of a ``.param`` file: ``params`` maps an ncnn parameter id to an int, a float or a list."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, int | float | list[int | float]] = field(default_factory=dict)


def _number(text: str, where: str) -> int | float:
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise NcnnError(f"{where}: {text!r} is not a number") from None


def parse_param(text: str) -> list[NcnnLayer]:
    """The layers of an ncnn ``.param`` text (magic ``7767517``), in file order.

    Raises:
        NcnnError: wrong magic, a layer count that does not match, or a malformed line (named by its number).
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != str(PARAM_MAGIC):
        raise NcnnError(f"not an ncnn .param text file (first line must be {PARAM_MAGIC})")
    try:
        layer_count, _blob_count = (int(v) for v in lines[1].split())
    except (IndexError, ValueError):
        raise NcnnError("line 2 of the .param file must be '<layer count> <blob count>'") from None
    layers = []
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        where = f".param line {number}"
        if len(fields) < 4:
            raise NcnnError(f"{where}: expected 'type name inputs outputs ...', got {line!r}")
        try:
            n_in, n_out = int(fields[2]), int(fields[3])
        except ValueError:
            raise NcnnError(f"{where}: input/output counts are not integers") from None
        blobs = fields[4 : 4 + n_in + n_out]
        if len(blobs) != n_in + n_out:
            raise NcnnError(f"{where}: {n_in} inputs and {n_out} outputs announced, fewer blob names given")
        params: dict[int, int | float | list[int | float]] = {}
        for pair in fields[4 + n_in + n_out :]:
            key, sep, value = pair.partition("=")
            if not sep:
                raise NcnnError(f"{where}: parameter {pair!r} is not key=value")
            key_id = int(_number(key, where))
            if key_id <= ARRAY_KEY_BASE:
                items = [_number(v, where) for v in value.split(",")]
                count = int(items[0])
                if count != len(items) - 1:
                    raise NcnnError(f"{where}: array parameter {key} announces {count} values, has {len(items) - 1}")
                params[ARRAY_KEY_BASE - key_id] = items[1:]
            else:
                params[key_id] = _number(value, where)
        layers.append(NcnnLayer(fields[0], fields[1], blobs[:n_in], blobs[n_in:], params))
    if len(layers) != layer_count:
        raise NcnnError(f".param announces {layer_count} layers but lists {len(layers)}")
    return layers


class _Reader:
    """Sequential reads from the ``.bin`` bytes, with the position in error messages."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, size: int, what: str) -> bytes:
        if self.pos + size > len(self.data):
            raise NcnnError(f".bin ends at byte {len(self.data)} while reading {what} ({size} bytes at {self.pos})")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def align4(self) -> None:
        self.pos += -self.pos % 4

    def tagged(self, count: int, what: str) -> np.ndarray:
        """A weight array behind a storage tag (ncnn's ``ModelBin::load(w, 0)``), as float32."""
        (tag,) = struct.unpack("<I", self.take(4, f"{what} storage tag"))
        if tag == TAG_FLOAT16:
            values = np.frombuffer(self.take(2 * count, what), dtype="<f2").astype(np.float32)
            self.align4()
            return values
        if tag in (0, TAG_FLOAT32):
            return np.frombuffer(self.take(4 * count, what), dtype="<f4").copy()
        if tag == TAG_INT8:
            raise NcnnError(f"{what}: int8-quantised weights (tag 0x{tag:08X}) are not supported")
        codebook = np.frombuffer(self.take(256 * 4, f"{what} codebook"), dtype="<f4")
        indices = np.frombuffer(self.take(count, what), dtype=np.uint8)
        self.align4()
        return codebook[indices].astype(np.float32)

    def plain(self, count: int, what: str) -> np.ndarray:
        """A float32 array without a tag (ncnn's ``ModelBin::load(w, 1)``, used for biases)."""
        return np.frombuffer(self.take(4 * count, what), dtype="<f4").copy()


def read_convolution_weights(layers: list[NcnnLayer], data: bytes) -> dict[str, dict[str, torch.Tensor]]:
    """``{layer name: {"weight": [out, in, kh, kw], "bias": [out]}}`` for every Convolution, from the ``.bin`` bytes.

    Only weightless layers may sit between convolutions (:data:`RRDBNET_LAYER_TYPES`): a layer that would
    own tensors in the ``.bin`` but is not read here would shift every later weight, so it is refused.

    Raises:
        NcnnError: an unsupported layer or parameter, a weight count that does not factor into the kernel,
            or a ``.bin`` shorter or longer than the layers need.
    """
    reader = _Reader(data)
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for layer in layers:
        if layer.type not in RRDBNET_LAYER_TYPES:
            raise NcnnError(f"layer {layer.name}: type {layer.type} is not supported (only {RRDBNET_LAYER_TYPES})")
        if layer.type != "Convolution":
            continue
        p = layer.params
        out_channels, kernel_w = int(p.get(0, 0)), int(p.get(1, 0))
        kernel_h = int(p.get(11, kernel_w))
        size = int(p.get(6, 0))
        for key, name in ((8, "int8_scale_term"), (19, "dynamic_weight")):
            if p.get(key, 0):
                raise NcnnError(f"layer {layer.name}: {name} is not supported")
        if out_channels <= 0 or kernel_w <= 0 or size % (out_channels * kernel_h * kernel_w):
            raise NcnnError(
                f"layer {layer.name}: weight_data_size {size} is not num_output {out_channels} x kernel "
                f"{kernel_h}x{kernel_w} x input channels"
            )
        in_channels = size // (out_channels * kernel_h * kernel_w)
        weight = reader.tagged(size, f"layer {layer.name} weight")
        entry = {"weight": torch.from_numpy(weight).reshape(out_channels, in_channels, kernel_h, kernel_w)}
        if p.get(5, 0):
            entry["bias"] = torch.from_numpy(reader.plain(out_channels, f"layer {layer.name} bias"))
        weights[layer.name] = entry
    if reader.pos != len(data):
        raise NcnnError(f".bin has {len(data) - reader.pos} bytes left after the last layer: not this .param's file")
    return weights


def _rrdbnet_names(num_blocks: int, upsamples: int) -> list[str]:
    """BasicSR's RRDBNet convolution names in forward order."""
    names = ["conv_first"]
    for block in range(num_blocks):
        names += [f"body.{block}.rdb{r}.conv{c}" for r in (1, 2, 3) for c in range(1, 6)]
    names.append("conv_body")
    names += [f"conv_up{u}" for u in range(1, upsamples + 1)]
    return [*names, "conv_hr", "conv_last"]


def _check_convolution(layer: NcnnLayer, weight: torch.Tensor, out_channels: int, in_channels: int, leaky: bool):
    p = layer.params
    want = (out_channels, in_channels, 3, 3)
    if tuple(weight.shape) != want:
        raise NcnnError(f"layer {layer.name}: weight {list(weight.shape)}, an RRDBNet needs {list(want)} here")
    geometry = {"stride": int(p.get(3, 1)), "pad": int(p.get(4, 0)), "dilation": int(p.get(2, 1))}
    if geometry != {"stride": 1, "pad": 1, "dilation": 1}:
        raise NcnnError(f"layer {layer.name}: {geometry}, an RRDBNet uses stride 1, pad 1, dilation 1")
    activation = int(p.get(9, 0))
    slope = p.get(10, [0.0])
    if leaky and not (activation == LEAKY_RELU and isinstance(slope, list) and abs(float(slope[0]) - 0.2) < 1e-6):
        raise NcnnError(f"layer {layer.name}: an RRDBNet has leaky ReLU 0.2 here, the file has activation {activation}")
    if not leaky and activation:
        raise NcnnError(f"layer {layer.name}: an RRDBNet has no activation here, the file has activation {activation}")


def rrdbnet_state_dict(layers: list[NcnnLayer], weights: Mapping[str, Mapping[str, torch.Tensor]]) -> dict:
    """The RRDBNet state dict (BasicSR names) of an ncnn ESRGAN/Real-ESRGAN graph, float32 tensors.

    Block count, features, growth channels and scale (``2 ** number of Interp layers``) are read from the file;
    every convolution is checked against the RRDBNet it must be (shape, activation, geometry), the upsamplings
    must be nearest x2 and the residual sums ``0.2 x branch + skip``.

    Raises:
        NcnnError: the graph is not an RRDBNet (the message names the first layer that differs).
    """
    convolutions = [layer for layer in layers if layer.type == "Convolution"]
    interps = [layer for layer in layers if layer.type == "Interp"]
    for layer in interps:
        p = layer.params
        if int(p.get(0, 0)) != 1 or float(p.get(1, 1.0)) != 2.0 or float(p.get(2, 1.0)) != 2.0:
            raise NcnnError(f"layer {layer.name}: an RRDBNet upsamples nearest x2 (0=1 1=2 2=2), the file has {p}")
    for layer in layers:
        if layer.type == "Eltwise":
            coefficients = layer.params.get(1, [])
            if int(layer.params.get(0, 1)) != 1 or not (
                isinstance(coefficients, list) and np.allclose(coefficients, [0.2, 1.0])
            ):
                raise NcnnError(
                    f"layer {layer.name}: an RRDBNet residual is 0.2 x branch + skip, the file has {layer.params}"
                )
    upsamples = len(interps)
    blocks, remainder = divmod(len(convolutions) - 4 - upsamples, 15)
    if remainder or blocks < 1 or not convolutions:
        raise NcnnError(
            f"{len(convolutions)} convolutions and {upsamples} upsamplings do not make an RRDBNet "
            "(1 + 15 per block + 1 + 1 per x2 + 2)"
        )
    first = weights[convolutions[0].name]["weight"]
    features, in_channels = first.shape[:2]
    growth = weights[convolutions[1].name]["weight"].shape[0]
    out_channels = weights[convolutions[-1].name]["weight"].shape[0]
    expected: list[tuple[int, int, bool]] = [(features, in_channels, False)]
    for _ in range(blocks * 3):
        expected += [(growth, features + i * growth, True) for i in range(4)]
        expected.append((features, features + 4 * growth, False))
    expected.append((features, features, False))
    expected += [(features, features, True)] * (upsamples + 1)
    expected.append((out_channels, features, False))
    state: dict[str, torch.Tensor] = {}
    for name, layer, (out_c, in_c, leaky) in zip(
        _rrdbnet_names(blocks, upsamples), convolutions, expected, strict=True
    ):
        tensors = weights[layer.name]
        _check_convolution(layer, tensors["weight"], out_c, in_c, leaky)
        if "bias" not in tensors:
            raise NcnnError(f"layer {layer.name}: an RRDBNet convolution has a bias, the file has none")
        state[f"{name}.weight"] = tensors["weight"].float().contiguous()
        state[f"{name}.bias"] = tensors["bias"].float().contiguous()
    return state


def convert_rrdbnet(param: str | os.PathLike[str], bin_path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Files ``NAME.param`` and ``NAME.bin`` of an ncnn RRDBNet -> its state dict (see :func:`rrdbnet_state_dict`)."""
    layers = parse_param(Path(param).read_text())
    return rrdbnet_state_dict(layers, read_convolution_weights(layers, Path(bin_path).read_bytes()))


def rrdbnet_scale(state: Mapping[str, torch.Tensor]) -> int:
    """Upscaling factor of a BasicSR RRDBNet state dict: 2 per ``conv_upN``."""
    return 2 ** sum(1 for key in state if key.startswith("conv_up") and key.endswith(".weight"))
