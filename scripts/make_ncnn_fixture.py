#!/usr/bin/env python
"""Make tests/fixtures/ncnn_rrdbnet/: a tiny RRDBNet in ncnn format and the output ncnn itself computes for it.

    pip install ncnn==1.0.20261020 && python scripts/make_ncnn_fixture.py

Writes ``tiny.param``/``tiny.bin`` (1 block, 4 features, growth 32 (spandrel's RRDBNet fixes the growth at 32), x4;
random weights exact in float16, ``rrdbnet_random_state(features=4, seed=0)``, laid out like Real-ESRGAN's release,
see tests/ncnn_writer.py), ``input.npy`` (``[3, 7, 7]``, seed 1) and ``ncnn_output.npy`` (``[3, 28, 28]``, ncnn on
the CPU, float32 arithmetic). tests/test_baselines.py checks pulse's converter against ``ncnn_output.npy``
without needing ncnn.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.ncnn_writer import rrdbnet_random_state, write_rrdbnet_ncnn  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "ncnn_rrdbnet"


def run_ncnn(param: Path, weights: Path, image: np.ndarray) -> np.ndarray:
    """ncnn's output for ``image`` ``[3, h, w]`` float32, CPU, fp32 storage and arithmetic, one thread."""
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 1
    for option in ("use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed", "use_bf16_storage"):
        setattr(net.opt, option, False)
    if net.load_param(str(param)) or net.load_model(str(weights)):
        raise RuntimeError(f"ncnn could not load {param}")
    extractor = net.create_extractor()
    extractor.input("data", ncnn.Mat(np.ascontiguousarray(image, dtype=np.float32)))
    status, out = extractor.extract("output")
    if status:
        raise RuntimeError(f"ncnn extract failed with {status}")
    return np.array(out).copy()  # copy while the extractor still owns the memory


def main() -> None:
    FIXTURE.mkdir(parents=True, exist_ok=True)
    state = rrdbnet_random_state(features=4, growth=32, blocks=1, upsamples=2, seed=0)
    write_rrdbnet_ncnn(state, FIXTURE / "tiny.param", FIXTURE / "tiny.bin")
    image = np.random.default_rng(1).random((3, 7, 7), dtype=np.float32)
    np.save(FIXTURE / "input.npy", image)
    output = run_ncnn(FIXTURE / "tiny.param", FIXTURE / "tiny.bin", image)
    np.save(FIXTURE / "ncnn_output.npy", output)
    print(f"wrote {FIXTURE}: output {output.shape}, range [{output.min():.3f}, {output.max():.3f}]")


if __name__ == "__main__":
    main()
