"""The ONNX interpreter against onnxruntime: every operator of the terrain UNet, wrong converters caught, the model.

Fixtures: ``tests/fixtures/onnx_ops.{onnx,npz}`` and ``terrain_ort.npz``, made by
``scripts/make_onnx_fixtures.py`` with onnxruntime (graph optimisations off).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="the ONNX interpreter reads files with the onnx package (pulse[terrain])")

from pulse.generators import onnx_graph  # noqa: E402
from pulse.generators.onnx_graph import OnnxGraph, OnnxUnsupported  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
# The user's fetched terrain weights, looked up at import, before conftest points PULSE_CACHE at an empty folder.
from pulse.io.terrain import TERRAIN_FILE, terrain_dir  # noqa: E402

REAL_TERRAIN = terrain_dir() / TERRAIN_FILE


def _ops_outputs(graph: OnnxGraph) -> tuple[dict[str, np.ndarray], list[torch.Tensor]]:
    reference = dict(np.load(FIXTURES / "onnx_ops.npz"))
    with torch.no_grad():
        outputs = graph(torch.from_numpy(reference["X"]), torch.from_numpy(reference["t"]))
    return reference, outputs


def _max_difference(reference: dict[str, np.ndarray], outputs: list[torch.Tensor]) -> float:
    return max(
        float(np.abs(out.numpy() - reference[f"out_{name}"]).max()) for name, out in zip("YAB", outputs, strict=True)
    )


def test_every_operator_matches_onnxruntime():
    graph = OnnxGraph(onnx.load(FIXTURES / "onnx_ops.onnx"))
    used = {op for op, *_ in graph.nodes}
    assert used == set(onnx_graph.OPERATORS), "the fixture graph must exercise every operator"
    reference, outputs = _ops_outputs(graph)
    assert [tuple(o.shape) for o in outputs] == [(2, 4, 8, 8), (2, 3, 8, 8), (2, 2, 8, 8)]
    assert _max_difference(reference, outputs) < 1e-5


def test_live_onnxruntime_agrees_with_the_fixture():
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'pulse[dev]')")
    reference = dict(np.load(FIXTURES / "onnx_ops.npz"))
    session = ort.InferenceSession((FIXTURES / "onnx_ops.onnx").read_bytes(), providers=["CPUExecutionProvider"])
    live = session.run(None, {"X": reference["X"], "t": reference["t"]})
    assert max(float(np.abs(a - reference[f"out_{n}"]).max()) for n, a in zip("YAB", live, strict=True)) < 1e-5


def _wrong_split(inputs, attrs):
    return list(reversed(onnx_graph._split(inputs, attrs)))


def _wrong_reshape(inputs, attrs):  # treats allowzero=1 like 0 and 0 like a literal: swaps the two meanings
    return onnx_graph._reshape(inputs, {"allowzero": 1 - attrs.get("allowzero", 0)})


def _wrong_resize(inputs, attrs):  # half-pixel bilinear instead of asymmetric nearest
    return [torch.nn.functional.interpolate(inputs[0], scale_factor=2, mode="bilinear", align_corners=False)]


def _wrong_einsum(inputs, attrs):  # the result transposed
    return [onnx_graph._einsum(inputs, attrs)[0].transpose(-1, -2)]


def _wrong_instance_norm(inputs, attrs):  # the scale input ignored
    return onnx_graph._instance_norm([inputs[0], torch.ones_like(inputs[1]), inputs[2]], attrs)


def _wrong_gemm(inputs, attrs):
    return onnx_graph._gemm(inputs, {**attrs, "alpha": 1.0, "beta": 1.0})


WRONG = {
    "Split": _wrong_split,
    "Reshape": _wrong_reshape,
    "Resize": _wrong_resize,
    "Einsum": _wrong_einsum,
    "InstanceNormalization": _wrong_instance_norm,
    "Gemm": _wrong_gemm,
    "Conv": lambda inputs, attrs: onnx_graph._conv(inputs[:2], attrs),  # bias dropped
    "Softmax": lambda inputs, attrs: [torch.softmax(inputs[0], dim=1)],
    "AveragePool": lambda inputs, attrs: [torch.nn.functional.max_pool2d(inputs[0], 2)],
    "Clip": lambda inputs, attrs: [inputs[0]],
    "Unsqueeze": lambda inputs, attrs: [inputs[0].reshape(1, *inputs[0].shape)],  # axes ignored
}


@pytest.mark.parametrize("op", sorted(WRONG))
def test_a_wrong_converter_is_caught(op, monkeypatch):
    monkeypatch.setitem(onnx_graph.OPERATORS, op, WRONG[op])
    graph = OnnxGraph(onnx.load(FIXTURES / "onnx_ops.onnx"))
    try:
        reference, outputs = _ops_outputs(graph)
        difference = _max_difference(reference, outputs)
    except (RuntimeError, ValueError, IndexError):
        return  # a shape error is caught too
    assert difference > 1e-3


def test_unsupported_attributes_and_operators_are_refused_naming_the_node():
    model = onnx.load(FIXTURES / "onnx_ops.onnx")
    resize = next(node for node in model.graph.node if node.op_type == "Resize")
    for attribute in resize.attribute:
        if attribute.name == "mode":
            attribute.s = b"linear"
    with pytest.raises(OnnxUnsupported, match=r"\(Resize\): mode=b'linear' is not implemented"):
        OnnxGraph(model)
    model = onnx.load(FIXTURES / "onnx_ops.onnx")
    model.graph.node[0].op_type = "Erf"
    with pytest.raises(OnnxUnsupported, match="operator Erf is not implemented"):
        OnnxGraph(model)


@pytest.mark.skipif(not REAL_TERRAIN.is_file(), reason="terrain weights not fetched (pulse-fetch terrain)")
def test_the_terrain_port_matches_onnxruntime():
    """The real model on one seeded noise map: the committed onnxruntime output, and onnxruntime itself if installed."""
    path = REAL_TERRAIN
    reference = dict(np.load(FIXTURES / "terrain_ort.npz"))
    graph = OnnxGraph(onnx.load(path))
    with torch.no_grad():
        (ours,) = graph(*(torch.from_numpy(reference[name]) for name in ("noisy", "sigma", "difficulty")))
    assert float(np.abs(ours.numpy() - reference["denoised"]).max()) < 1e-4
    try:
        import onnxruntime as ort
    except ImportError:
        return
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (live,) = session.run(None, {k: reference[k] for k in ("noisy", "sigma", "difficulty")})
    assert float(np.abs(ours.numpy() - live).max()) < 1e-4
