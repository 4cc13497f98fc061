"""Write a BasicSR RRDBNet state dict as an ncnn ``.param``/``.bin`` pair, laid out like the Real-ESRGAN release.

Used by ``scripts/make_ncnn_fixture.py`` (the committed tiny fixture, whose reference output ncnn itself made) and
by the tests (corrupted variants, other storage tags). The graph mirrors ``REALESRGAN_X4PLUS_UP4X.param``: leaky
ReLU fused into the convolutions (``9=2 -23310=1,0.2``), ``Concat`` for the dense connections, ``Eltwise`` sums
with coefficients ``0.2, 1``, a ``BinaryOp`` add for the trunk, nearest ``Interp`` x2, and ``Split`` layers where a
blob has several consumers (ncnn needs one consumer per blob).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

TAG_FLOAT16 = 0x01306B47


def rrdbnet_random_state(
    features: int = 8, growth: int = 4, blocks: int = 1, upsamples: int = 2, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A random RRDBNet state dict whose values are exact in float16 (so ncnn's fp16 storage loses nothing)."""
    gen = torch.Generator().manual_seed(seed)
    shapes: list[tuple[str, int, int]] = [("conv_first", features, 3)]
    for b in range(blocks):
        for r in (1, 2, 3):
            shapes += [(f"body.{b}.rdb{r}.conv{c}", growth, features + (c - 1) * growth) for c in range(1, 5)]
            shapes.append((f"body.{b}.rdb{r}.conv5", features, features + 4 * growth))
    shapes.append(("conv_body", features, features))
    shapes += [(f"conv_up{u}", features, features) for u in range(1, upsamples + 1)]
    shapes += [("conv_hr", features, features), ("conv_last", 3, features)]
    state = {}
    for name, out_c, in_c in shapes:
        std = (2.0 / (in_c * 9)) ** 0.5
        state[f"{name}.weight"] = (torch.randn(out_c, in_c, 3, 3, generator=gen) * std).half().float()
        state[f"{name}.bias"] = (torch.randn(out_c, generator=gen) * 0.05).half().float()
    return state


def _graph(state: dict[str, torch.Tensor]) -> list[tuple[str, str, list[str], list[str], str, str | None]]:
    """``(type, name, inputs, outputs, params, conv key)`` of the RRDBNet's forward pass, before splits."""
    layers: list[tuple[str, str, list[str], list[str], str, str | None]] = []
    counter = iter(range(1, 10**6))

    def blob() -> str:
        return f"b{next(counter)}"

    def conv(key: str, source: str, leaky: bool, out: str | None = None) -> str:
        weight = state[f"{key}.weight"]
        result = out or blob()
        params = f"0={weight.shape[0]} 1=3 4=1 5=1 6={weight.numel()}" + (" 9=2 -23310=1,2.000000e-01" if leaky else "")
        layers.append(("Convolution", f"conv_{key.replace('.', '_')}", [source], [result], params, key))
        return result

    def concat(sources: list[str]) -> str:
        result = blob()
        layers.append(("Concat", f"cat_{result}", list(sources), [result], "", None))
        return result

    def scaled_sum(branch: str, skip: str) -> str:
        result = blob()
        layers.append(
            ("Eltwise", f"sum_{result}", [branch, skip], [result], "0=1 -23301=2,2.000000e-01,1.000000e+00", None)
        )
        return result

    layers.append(("Input", "input", [], ["data"], "", None))
    feature = conv("conv_first", "data", False)
    x = feature
    blocks = len({k.split(".")[1] for k in state if k.startswith("body.")})
    for b in range(blocks):
        block_in = x
        for r in (1, 2, 3):
            rdb_in, dense = x, [x]
            for c in range(1, 5):
                dense.append(conv(f"body.{b}.rdb{r}.conv{c}", dense[0] if c == 1 else concat(dense), True))
            x = scaled_sum(conv(f"body.{b}.rdb{r}.conv5", concat(dense), False), rdb_in)
        x = scaled_sum(x, block_in)
    trunk = conv("conv_body", x, False)
    x = blob()
    layers.append(("BinaryOp", "trunk_add", [feature, trunk], [x], "0=0", None))
    upsamples = sum(1 for k in state if k.startswith("conv_up") and k.endswith(".weight"))
    for u in range(1, upsamples + 1):
        up = blob()
        layers.append(("Interp", f"up{u}", [x], [up], "0=1 1=2.000000e+00 2=2.000000e+00", None))
        x = conv(f"conv_up{u}", up, True)
    x = conv("conv_hr", x, True)
    conv("conv_last", x, False, out="output")
    return layers


def _with_splits(layers):
    """Insert ``Split`` layers so that every blob has a single consumer."""
    uses: dict[str, int] = {}
    for _, _, inputs, _, _, _ in layers:
        for name in inputs:
            uses[name] = uses.get(name, 0) + 1
    taken: dict[str, int] = {}
    out = []
    for kind, name, inputs, outputs, params, key in layers:
        renamed = []
        for source in inputs:
            if uses[source] > 1:
                renamed.append(f"{source}_split{taken.get(source, 0)}")
                taken[source] = taken.get(source, 0) + 1
            else:
                renamed.append(source)
        out.append((kind, name, renamed, outputs, params, key))
        for produced in outputs:
            if uses.get(produced, 0) > 1:
                copies = [f"{produced}_split{i}" for i in range(uses[produced])]
                out.append(("Split", f"split_{produced}", [produced], copies, "", None))
    return out


def write_rrdbnet_ncnn(
    state: dict[str, torch.Tensor], param_path: str | Path, bin_path: str | Path, storage: str = "fp16"
) -> None:
    """Write ``state`` as ncnn files; ``storage``: ``fp16`` (tagged, as released), ``fp32`` (untagged), ``codebook``."""
    layers = _with_splits(_graph(state))
    blobs = {b for _, _, inputs, outputs, _, _ in layers for b in (*inputs, *outputs)}
    lines = ["7767517", f"{len(layers)} {len(blobs)}"]
    payload = bytearray()
    for kind, name, inputs, outputs, params, key in layers:
        lines.append(
            f"{kind:<24} {name:<24} {len(inputs)} {len(outputs)} {' '.join([*inputs, *outputs])} {params}".rstrip()
        )
        if key is None:
            continue
        weight = state[f"{key}.weight"].detach().numpy().astype(np.float32).ravel()
        if storage == "fp16":
            payload += struct.pack("<I", TAG_FLOAT16) + weight.astype("<f2").tobytes()
            payload += b"\0" * (-len(payload) % 4)
        elif storage == "fp32":
            payload += struct.pack("<I", 0) + weight.astype("<f4").tobytes()
        elif storage == "codebook":  # 256 levels, uint8 indices (ncnn's quantised storage)
            levels = np.linspace(weight.min(), weight.max(), 256).astype(np.float32)
            indices = np.abs(weight[:, None] - levels[None, :]).argmin(axis=1).astype(np.uint8)
            payload += bytes([1, 0, 0, 0]) + levels.astype("<f4").tobytes() + indices.tobytes()
            payload += b"\0" * (-len(payload) % 4)
        else:
            raise ValueError(f"unknown storage {storage!r}")
        payload += state[f"{key}.bias"].detach().numpy().astype("<f4").tobytes()
    Path(param_path).write_text("\n".join(lines) + "\n")
    Path(bin_path).write_bytes(bytes(payload))
