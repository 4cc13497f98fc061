"""Run an ONNX graph as a torch module: the weights are data, the operators are written here in torch.

An ONNX file is a protobuf of initializers (tensors) and nodes (operator name, inputs, outputs,
attributes). :class:`OnnxGraph` reads it with the ``onnx`` package (parsing only; no code in the file can
run), keeps every initializer as a buffer and evaluates the nodes in file order (ONNX stores them
topologically sorted) with the torch functions of :data:`OPERATORS`, so the graph is differentiable and
moves with ``.to(device)``. Only the operators and attribute values that have been checked against
onnxruntime are accepted; anything else is refused when the graph is built, naming the node, rather
than computed wrongly. This is what ``onnx2torch`` does, minus its gaps for opset 18 (``Split`` with
``num_outputs``, ``Reshape`` with ``allowzero=1``, ``Resize`` 18), and without a dependency.

Tests: ``tests/test_onnx_graph.py`` compares every operator on a small synthetic graph with the outputs
onnxruntime gave (``tests/fixtures/onnx_ops.npz``, made by ``scripts/make_onnx_fixtures.py``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OPERATORS", "OnnxGraph", "OnnxUnsupported", "load_onnx_model"]

Value = torch.Tensor | None


class OnnxUnsupported(ValueError):
    """The graph uses an operator or attribute value this interpreter does not implement."""


def load_onnx_model(path: str | os.PathLike[str]) -> Any:
    """Parse an ONNX file (``onnx.ModelProto``); needs the ``onnx`` package (``pip install 'pulse[terrain]'``)."""
    try:
        import onnx
    except ImportError as error:
        raise ImportError("reading ONNX files needs the onnx package: pip install 'pulse[terrain]'") from error
    return onnx.load(os.fspath(path))


def _ints(value: torch.Tensor) -> list[int]:
    return [int(v) for v in value.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# --------------------------------------------------------------------------------------------------
# Operators: f(inputs, attributes) -> outputs. ``inputs`` keeps ONNX's order, None for an omitted input.


def _shape(inputs: Sequence[Value], attrs: dict[str, Any]) -> list[torch.Tensor]:
    (x,) = inputs[:1]
    dims = list(x.shape)
    start, end = attrs.get("start", 0), attrs.get("end", len(dims))
    return [torch.tensor(dims[slice(start, end)], dtype=torch.long)]


def _reshape(inputs: Sequence[Value], attrs: dict[str, Any]) -> list[torch.Tensor]:
    x, shape = inputs[0], _ints(inputs[1])
    if not attrs.get("allowzero", 0):  # 0 copies the input's size there; with allowzero=1 it is a real 0
        shape = [x.shape[i] if size == 0 else size for i, size in enumerate(shape)]
    return [x.reshape(shape)]


def _unsqueeze(inputs: Sequence[Value], attrs: dict[str, Any]) -> list[torch.Tensor]:
    x, axes = inputs[0], _ints(inputs[1])
    rank = x.dim() + len(axes)
    for axis in sorted(_axis(a, rank) for a in axes):
        x = x.unsqueeze(axis)
    return [x]


def _squeeze(inputs: Sequence[Value], attrs: dict[str, Any]) -> list[torch.Tensor]:
    x = inputs[0]
    if len(inputs) < 2 or inputs[1] is None:
        return [x.squeeze()]
    axes = sorted((_axis(a, x.dim()) for a in _ints(inputs[1])), reverse=True)
    for axis in axes:
        if x.shape[axis] != 1:
            raise ValueError(f"Squeeze of axis {axis} of size {x.shape[axis]}")
        x = x.squeeze(axis)
    return [x]


def _split(inputs: Sequence[Value], attrs: dict[str, Any]) -> list[torch.Tensor]:
    x = inputs[0]
    axis = _axis(attrs.get("axis", 0), x.dim())
    if len(inputs) > 1 and inputs[1] is not None:
        sizes = _ints(inputs[1])
    else:  # opset 18: num_outputs pieces of ceil(size / n), the last one smaller if need be
        count = attrs["num_outputs"]
        piece = math.ceil(x.shape[axis] / count)
        sizes = [min(piece, x.shape[axis] - piece * i) for i in range(count)]
    return list(torch.split(x, sizes, dim=axis))


def _concat(inputs: Sequence[Value], attrs: dict[str, Any]) -> list[torch.Tensor]:
    return [torch.cat(list(inputs), dim=attrs["axis"])]


def _conv(inputs: Sequence[Value], attrs: dict[str, Any]) -> list[torch.Tensor]:
    x, weight = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    pads = attrs.get("pads", [0] * (2 * (x.dim() - 2)))
    half = len(pads) // 2
    if pads[:half] != pads[half:]:  # asymmetric: pad explicitly (F.pad lists the last dimension first)
        explicit = [p for dim in reversed(range(half)) for p in (pads[dim], pads[dim + half])]
        x, padding = F.pad(x, explicit), 0
    else:
        padding = tuple(pads[:half])
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x.dim()]
    return [
        conv(
            x,
            weight,
            bias,
            stride=tuple(attrs.get("strides", [1] * half)),
            padding=padding,
            dilation=tuple(attrs.get("dilations", [1] * half)),
            groups=attrs.get("group", 1),
        )
    ]


def _instance_norm(inputs: Sequence[Value], attrs: dict[str, Any]) -> list[torch.Tensor]:
    x, scale, shift = inputs
    return [F.instance_norm(x, weight=scale, bias=shift, eps=attrs.get("epsilon", 1e-5))]


def _gemm(inputs: Sequence[Value], attrs: dict[str, Any]) -> list[torch.Tensor]:
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    out = attrs.get("alpha", 1.0) * (a @ b)
    return [out if c is None else out + attrs.get("beta", 1.0) * c]


def _einsum(inputs: Sequence[Value], attrs: dict[str, Any]) -> list[torch.Tensor]:
    equation = attrs["equation"]
    return [torch.einsum(equation.decode() if isinstance(equation, bytes) else equation, *inputs)]


def _softmax(inputs: Sequence[Value], attrs: dict[str, Any]) -> list[torch.Tensor]:
    return [torch.softmax(inputs[0], dim=attrs.get("axis", -1))]


def _average_pool(inputs: Sequence[Value], attrs: dict[str, Any]) -> list[torch.Tensor]:
    x = inputs[0]
    kernel = attrs["kernel_shape"]
    pads = attrs.get("pads", [0] * 2 * len(kernel))
    half = len(pads) // 2
    if pads[:half] != pads[half:]:
        raise OnnxUnsupported(f"AveragePool with asymmetric pads {pads}")
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(kernel)]
    return [
        pool(
            x,
            kernel_size=tuple(kernel),
            stride=tuple(attrs.get("strides", kernel)),
            padding=tuple(pads[:half]),
            ceil_mode=bool(attrs.get("ceil_mode", 0)),
            count_include_pad=bool(attrs.get("count_include_pad", 0)),
        )
    ]


def _resize(inputs: Sequence[Value], attrs: dict[str, Any]) -> list[torch.Tensor]:
    x = inputs[0]
    scales = inputs[2] if len(inputs) > 2 else None
    sizes = inputs[3] if len(inputs) > 3 else None
    if sizes is not None and sizes.numel():
        out = _ints(sizes)
    else:
        out = [int(math.floor(d * s)) for d, s in zip(x.shape, scales.tolist(), strict=True)]
    if out[:2] != list(x.shape[:2]):
        raise ValueError(f"Resize of the batch or channel dimension: {list(x.shape)} -> {out}")
    # torch's "nearest" picks floor(dst * in / out): ONNX's asymmetric transform with floor rounding.
    return [F.interpolate(x, size=out[2:], mode="nearest")]


def _clip(inputs: Sequence[Value], attrs: dict[str, Any]) -> list[torch.Tensor]:
    x = inputs[0]
    low = inputs[1] if len(inputs) > 1 else None
    high = inputs[2] if len(inputs) > 2 else None
    return [torch.clamp(x, min=low, max=high)]


def _unary(function: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., list[torch.Tensor]]:
    return lambda inputs, attrs: [function(inputs[0])]


def _binary(function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[..., list[torch.Tensor]]:
    return lambda inputs, attrs: [function(inputs[0], inputs[1])]


OPERATORS: dict[str, Callable[[Sequence[Value], dict[str, Any]], list[torch.Tensor]]] = {
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(torch.div),
    "Pow": _binary(torch.pow),
    "Reciprocal": _unary(torch.reciprocal),
    "Sqrt": _unary(torch.sqrt),
    "Log": _unary(torch.log),
    "Cos": _unary(torch.cos),
    "Sin": _unary(torch.sin),
    "Sigmoid": _unary(torch.sigmoid),
    "Clip": _clip,
    "Shape": _shape,
    "Reshape": _reshape,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Split": _split,
    "Concat": _concat,
    "Conv": _conv,
    "InstanceNormalization": _instance_norm,
    "Gemm": _gemm,
    "Einsum": _einsum,
    "Softmax": _softmax,
    "AveragePool": _average_pool,
    "Resize": _resize,
}

# Attribute values the operators above implement; any other value is refused when the graph is built.
_REQUIRED = {
    "Conv": {"auto_pad": b"NOTSET"},
    "AveragePool": {"auto_pad": b"NOTSET"},
    "Resize": {
        "mode": b"nearest",
        "coordinate_transformation_mode": b"asymmetric",
        "nearest_mode": b"floor",
        "antialias": 0,
        "exclude_outside": 0,
        "keep_aspect_ratio_policy": b"stretch",
    },
}
_DEFAULTS = {"Resize": {"mode": b"nearest", "coordinate_transformation_mode": b"half_pixel"}}
_FLOAT_TYPES = {1: torch.float32, 11: torch.float64}
_INT_TYPES = {6: torch.int32, 7: torch.int64}


def _check_node(node: Any, attrs: dict[str, Any]) -> None:
    where = f"node {node.name or node.output[0]!r} ({node.op_type})"
    if node.domain not in ("", "ai.onnx"):
        raise OnnxUnsupported(f"{where}: operator domain {node.domain!r} is not supported")
    if node.op_type not in OPERATORS:
        raise OnnxUnsupported(f"{where}: operator {node.op_type} is not implemented; known: {', '.join(OPERATORS)}")
    for name, wanted in _REQUIRED.get(node.op_type, {}).items():
        value = attrs.get(name, _DEFAULTS.get(node.op_type, {}).get(name, wanted))
        if value != wanted:
            raise OnnxUnsupported(f"{where}: {name}={value!r} is not implemented (only {wanted!r})")


class OnnxGraph(nn.Module):
    """An ONNX graph evaluated in torch, differentiable in its inputs; weights are buffers (frozen).

    Args:
        model: an ``onnx.ModelProto`` (see :func:`load_onnx_model`) of the default domain, opset <= 18.

    Raises:
        OnnxUnsupported: an operator or attribute value outside :data:`OPERATORS` (names the node).
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        from onnx import helper, numpy_helper

        graph = model.graph
        opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
        if opsets.get("ai.onnx", 0) > 18 or set(opsets) - {"ai.onnx"}:
            raise OnnxUnsupported(f"opsets {opsets}: only the default domain up to opset 18 is implemented")
        self.input_names = [v.name for v in graph.input]
        self.output_names = [v.name for v in graph.output]
        self._constant_slot: dict[str, str] = {}
        for index, tensor in enumerate(graph.initializer):
            if tensor.data_type not in _FLOAT_TYPES and tensor.data_type not in _INT_TYPES:
                raise OnnxUnsupported(f"initializer {tensor.name!r} has ONNX data type {tensor.data_type}")
            array = np.array(numpy_helper.to_array(tensor))  # a copy: writable, owned
            slot = f"c{index}"
            self.register_buffer(slot, torch.from_numpy(array), persistent=True)
            self._constant_slot[tensor.name] = slot
        self.nodes: list[tuple[str, list[str], list[str], dict[str, Any]]] = []
        for node in graph.node:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            _check_node(node, attrs)
            self.nodes.append((node.op_type, list(node.input), list(node.output), attrs))
        # After its last use a value is dropped, so a forward without gradients keeps few maps alive.
        self._last_use: list[list[str]] = [[] for _ in self.nodes]
        seen: set[str] = set(self.output_names)
        for index in reversed(range(len(self.nodes))):
            for name in self.nodes[index][1]:
                if name and name not in seen and name not in self._constant_slot:
                    seen.add(name)
                    self._last_use[index].append(name)

    def forward(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Graph inputs in :attr:`input_names` order -> graph outputs in :attr:`output_names` order."""
        if len(inputs) != len(self.input_names):
            raise ValueError(f"the graph takes {len(self.input_names)} inputs ({', '.join(self.input_names)})")
        values: dict[str, torch.Tensor] = dict(zip(self.input_names, inputs, strict=True))
        for index, (op_type, names, outputs, attrs) in enumerate(self.nodes):
            args = [self._value(name, values) for name in names]
            for name, value in zip(outputs, OPERATORS[op_type](args, attrs), strict=False):
                values[name] = value
            for name in self._last_use[index]:
                values.pop(name, None)
        return [values[name] for name in self.output_names]

    def _value(self, name: str, values: dict[str, torch.Tensor]) -> Value:
        if not name:
            return None
        slot = self._constant_slot.get(name)
        return getattr(self, slot) if slot is not None else values[name]
