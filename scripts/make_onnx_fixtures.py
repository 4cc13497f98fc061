#!/usr/bin/env python
"""Make the fixtures of tests/test_onnx_graph.py with onnxruntime (the reference implementation of ONNX).

    python scripts/make_onnx_fixtures.py            # tests/fixtures/onnx_ops.onnx + onnx_ops.npz
    python scripts/make_onnx_fixtures.py --terrain  # also tests/fixtures/terrain_ort.npz (needs pulse-fetch terrain)

``onnx_ops.onnx`` is a small random-weight graph with every operator and attribute value the terrain UNet uses
(opset 18: Split with num_outputs, Reshape with allowzero 0 and 1, Resize nearest/asymmetric/floor, Einsum,
InstanceNormalization, ...); ``onnx_ops.npz`` holds its seeded inputs and onnxruntime's outputs.
``terrain_ort.npz`` holds one seeded noise map and onnxruntime's output of the real terrain model on it.
Needs ``onnx`` and ``onnxruntime`` (``pip install 'pulse[dev]'``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def ops_graph():
    """The synthetic graph: inputs X [2, 4, 8, 8] and t [2]; outputs Y [2, 4, 8, 8], A [2, 3, 8, 8], B [2, 2, 8, 8]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    inits = []

    def const(name: str, value) -> str:
        array = np.asarray(value)
        array = array.astype(np.int64) if array.dtype.kind in "iu" else array.astype(np.float32)
        inits.append(numpy_helper.from_array(array, name))
        return name

    def rand(name: str, *shape: int, scale: float = 0.3) -> str:
        return const(name, rng.standard_normal(shape) * scale)

    n = helper.make_node
    nodes = [
        # sigma-style preamble: scalars and a Fourier embedding
        n("Sub", ["t", const("one", 1.0)], ["t_sub"]),
        n("Pow", ["t_sub", const("two", 2.0)], ["t_pow"]),
        n("Add", ["t_pow", "one"], ["t_add"]),
        n("Reciprocal", ["t_add"], ["t_rec"]),
        n("Pow", ["t", "two"], ["t_sq"]),
        n("Add", ["t_sq", "one"], ["t_sq1"]),
        n("Sqrt", ["t_sq1"], ["t_sqrt"]),
        n("Div", ["t_rec", "t_sqrt"], ["t_div"]),
        n("Log", ["t"], ["t_log"]),
        n("Add", ["t_log", "t_div"], ["t_feat"]),
        n("Unsqueeze", ["t_feat", const("ax1", [1])], ["t_col"]),
        n("Mul", ["t_col", rand("freq", 1, 4, scale=2.0)], ["t_arg"]),
        n("Cos", ["t_arg"], ["t_cos"]),
        n("Sin", ["t_arg"], ["t_sin"]),
        n("Concat", ["t_cos", "t_sin"], ["t_four"], axis=-1),
        n("Gemm", ["t_four", rand("w1", 16, 8), rand("b1", 16)], ["e1"], transB=1),
        n("Sigmoid", ["e1"], ["e1_sig"]),
        n("Mul", ["e1", "e1_sig"], ["e1_silu"]),
        n("Gemm", ["e1_silu", rand("w2", 4, 16), rand("b2", 4)], ["emb"], transB=1, alpha=0.9, beta=1.1),
        n("Unsqueeze", ["emb", const("ax23", [2, 3])], ["emb4"]),
        # convolution, group norm as Reshape + InstanceNormalization + affine
        n("Conv", ["X", rand("wc", 4, 4, 3, 3), rand("bc", 4)], ["h0"], pads=[1, 1, 1, 1]),
        n("Add", ["h0", "emb4"], ["h"]),
        n("Reshape", ["h", const("grp", [0, 2, -1])], ["h_grp"], allowzero=0),
        n("InstanceNormalization", ["h_grp", rand("gs", 2), rand("gb", 2)], ["h_gn"], epsilon=1e-5),
        n("Shape", ["h"], ["h_shape"], start=0),
        n("Reshape", ["h_gn", "h_shape"], ["h_back"]),
        n("Mul", ["h_back", rand("aff_w", 1, 4, 1, 1)], ["h_aff"]),
        n("Add", ["h_aff", rand("aff_b", 1, 4, 1, 1)], ["h_norm"]),
        # attention: 1x1 qkv, Reshape allowzero=1, Split into 3, two Einsums, Softmax
        n("Conv", ["h_norm", rand("wqkv", 12, 4, 1, 1), rand("bqkv", 12)], ["qkv"]),
        n("Shape", ["qkv"], ["batch"], start=0, end=1),
        n("Concat", ["batch", const("qkv_rest", [12, 64])], ["qkv_shape"], axis=0),
        n("Reshape", ["qkv", "qkv_shape"], ["qkv_flat"], allowzero=1),
        n("Split", ["qkv_flat"], ["q", "k", "v"], axis=1, num_outputs=3),
        n("Einsum", ["q", "k"], ["att"], equation="bct,bcs->bts"),
        n("Mul", ["att", const("scale", 0.5)], ["att_s"]),
        n("Softmax", ["att_s"], ["att_p"], axis=-1),
        n("Einsum", ["att_p", "v"], ["mixed"], equation="bts,bcs->bct"),
        n("Reshape", ["mixed", "h_shape"], ["mixed4"]),
        n("Add", ["mixed4", "h"], ["res"]),
        # down and up: AveragePool 2x2, Resize nearest (asymmetric, floor) x2, Clip
        n("AveragePool", ["res"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        n(
            "Resize",
            ["pooled", "", const("scales", [1.0, 1.0, 2.0, 2.0])],
            ["up"],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
        n("Add", ["up", "res"], ["sum"]),
        n("Clip", ["sum", const("lo", -1.0), const("hi", 1.0)], ["Y"]),
        # an uneven Split (5 channels into 3 + 2) and Squeeze
        n("Conv", ["X", rand("w5", 5, 4, 3, 3), rand("b5", 5)], ["five"], pads=[1, 1, 1, 1]),
        n("Split", ["five"], ["A", "B0"], axis=1, num_outputs=2),
        n("Unsqueeze", ["B0", const("ax0", [0])], ["B1"]),
        n("Squeeze", ["B1", "ax0"], ["B"]),
    ]
    graph = helper.make_graph(
        nodes,
        "pulse_onnx_ops",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4, 8, 8]),
            helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 4, 8, 8]),
            helper.make_tensor_value_info("A", TensorProto.FLOAT, ["batch", 3, 8, 8]),
            helper.make_tensor_value_info("B", TensorProto.FLOAT, ["batch", 2, 8, 8]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def ops_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {
        "X": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
        "t": np.array([0.7, 3.0], np.float32),
    }


def terrain_inputs() -> dict[str, np.ndarray]:
    noise = np.random.default_rng(0).standard_normal((1, 1, 128, 128)).astype(np.float32)
    return {"noisy": noise * 80, "sigma": np.full(1, 80, np.float32), "difficulty": np.full(1, 100, np.float32)}


def run_onnxruntime(model_bytes: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    # No graph rewriting: the reference is the operators as written.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--terrain", action="store_true", help="also the real terrain model's output")
    args = parser.parse_args()
    import onnx

    FIXTURES.mkdir(parents=True, exist_ok=True)
    model = ops_graph()
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    (FIXTURES / "onnx_ops.onnx").write_bytes(data)
    feeds = ops_inputs()
    outputs = run_onnxruntime(data, feeds)
    np.savez(FIXTURES / "onnx_ops.npz", **feeds, **{f"out_{k}": v for k, v in zip("YAB", outputs, strict=True)})
    print(f"wrote {FIXTURES / 'onnx_ops.onnx'} ({len(data)} bytes) and onnx_ops.npz")
    if args.terrain:
        sys.path.insert(0, str(FIXTURES.parents[1]))
        from pulse.io.terrain import terrain_weights_path

        feeds = terrain_inputs()
        (denoised,) = run_onnxruntime(terrain_weights_path().read_bytes(), feeds)
        np.savez_compressed(FIXTURES / "terrain_ort.npz", **feeds, denoised=denoised)
        print(f"wrote {FIXTURES / 'terrain_ort.npz'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
