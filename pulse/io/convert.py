"""NVIDIA's StyleGAN (v1) TensorFlow pickles -> our ``synthesis.pt`` / ``mapping.pt``, without TensorFlow.

A ``karras2019stylegan-*.pkl`` holds ``(G, D, Gs)``, each a ``dnnlib.tflib.network.Network`` whose
pickled state is a plain dict: ``version``, ``name``, ``static_kwargs``, ``components`` (nested networks:
``synthesis`` = G_synthesis, ``mapping`` = G_mapping), ``build_module_src`` (Python source as a string,
which we never run), ``build_func_name`` and ``variables`` (``[(name, numpy array), ...]``).

The pickle is read with :mod:`pulse.io.safe_pickle`: only numpy's array/dtype/scalar reconstructors and an
inert stub for ``Network`` are allowed, so any other global (``os.system``, ``builtins.eval``, ...) is
refused before it can run. The variables of ``Gs`` are then renamed to our state-dict keys and laid out
the PyTorch way:

* conv kernels: TF ``[kh, kw, in, out]`` (HWIO) -> ``[out, in, kh, kw]`` (transpose ``(3, 2, 0, 1)``);
* dense / style weights: TF ``[in, out]`` -> ``[out, in]``;
* the fused upsampling conv (>= 128 px) stores an ordinary HWIO kernel too. TF applies it with
  ``conv2d_transpose`` after padding and summing four shifts, and :func:`pulse.generators.stylegan.fused_upsample_conv`
  repeats exactly that with ``conv_transpose2d``; both are the adjoint of the same cross-correlation with
  the same ``[kh, kw]`` indexing, so the kernel is transposed like any other conv and never flipped
  (the official PULSE weights were converted the same way).

Every key of our networks must receive a variable (apart from the constant blur kernels, which are not
variables in TF) and every TF variable must be used, except the known non-weights: ``lod``, the noise
inputs ``noise0..``, ``dlatent_avg`` and the lower-resolution ``ToRGB_lod1..`` heads of progressive growing.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pulse.generators.stylegan import Mapping as MappingNetwork
from pulse.generators.stylegan import Synthesis
from pulse.io.cache import atomic_write_bytes
from pulse.io.safe_pickle import NUMPY_ALLOWED, restricted_load, stub_class

__all__ = [
    "ConversionError",
    "ConvertedStyleGAN",
    "TFNetwork",
    "TF_PICKLE_ALLOWED",
    "convert_mapping",
    "convert_stylegan1_pickle",
    "convert_synthesis",
    "load_tf_pickle",
    "save_converted",
]

_NETWORK = ("dnnlib.tflib.network", "Network")
TF_PICKLE_ALLOWED: Mapping[tuple[str, str], object] = {
    **NUMPY_ALLOWED,
    _NETWORK: stub_class(*_NETWORK),
    # A dict subclass with attribute access; rebuilding it as a plain dict keeps the data and runs nothing.
    ("dnnlib.util", "EasyDict"): dict,
}
"""Globals a StyleGAN (v1) pickle may name: numpy reconstructors and inert stand-ins for dnnlib classes."""

_SUPPORTED_VERSIONS = (2, 3, 4)  # dnnlib.tflib.network.Network.__setstate__ accepts these
# TF variables that are not weights of our networks (state of progressive growing, fixed noise, w average).
_IGNORED = re.compile(r"^(lod|dlatent_avg|noise\d+|ToRGB_lod[1-9]\d*/(weight|bias))$")
# Our per-layer scope names: TF layer scope -> (our conv module, our epilogue).
_LAYERS = {
    "Const": (None, "epi1"),
    "Conv": ("conv", "epi2"),
    "Conv0_up": ("conv0_up", "epi1"),
    "Conv1": ("conv1", "epi2"),
}
_SYNTHESIS_VAR = re.compile(
    r"^(\d+x\d+)/(Const|Conv|Conv0_up|Conv1)/(const|weight|bias|Noise/weight|StyleMod/(?:weight|bias))$"
)
_TORGB_VAR = re.compile(r"^ToRGB_lod0/(weight|bias)$")
_DENSE_VAR = re.compile(r"^Dense(\d+)/(weight|bias)$")
# Official G_synthesis defaults (networks_stylegan.py), used when the pickle's static_kwargs do not say.
_SYNTHESIS_DEFAULTS = {"fmap_base": 8192, "fmap_decay": 1.0, "fmap_max": 512}


class ConversionError(RuntimeError):
    """The pickle is not a StyleGAN (v1) generator we can convert (the message says what is wrong)."""


@dataclass
class TFNetwork:
    """The data of one pickled ``dnnlib.tflib.network.Network`` (no TensorFlow objects)."""

    name: str
    variables: dict[str, np.ndarray]
    static_kwargs: dict[str, Any] = field(default_factory=dict)
    components: dict[str, TFNetwork] = field(default_factory=dict)


@dataclass
class ConvertedStyleGAN:
    """Converted state dicts plus the layout they fit.

    Attributes:
        synthesis: state dict for :class:`~pulse.generators.stylegan.Synthesis` (``synthesis_kwargs``).
        mapping: state dict for :class:`~pulse.generators.stylegan.Mapping` (``mapping_kwargs``).
        dlatent_avg: ``[dlatent_size]`` running mean of ``w`` stored with the pickle (truncation trick;
            PULSE does not use it), or None.
    """

    synthesis: dict[str, torch.Tensor]
    mapping: dict[str, torch.Tensor]
    synthesis_kwargs: dict[str, Any]
    mapping_kwargs: dict[str, Any]
    dlatent_avg: torch.Tensor | None = None


# --------------------------------------------------------------------------------------------------
# Reading the pickle


def load_tf_pickle(path: str | os.PathLike[str]) -> TFNetwork:
    """Read a StyleGAN (v1) pickle safely and return its ``Gs`` network (the averaged generator).

    Accepts the official ``(G, D, Gs)`` tuple or a pickle of a single generator network.

    Raises:
        ConversionError: a global outside :data:`TF_PICKLE_ALLOWED` (nothing was run), or not a
            StyleGAN generator pickle.
    """
    try:
        obj = restricted_load(path, TF_PICKLE_ALLOWED, encoding="latin1")
    except pickle.UnpicklingError as error:
        raise ConversionError(
            f"refusing {Path(path).name}: {error} (a StyleGAN (v1) pickle needs only numpy arrays and "
            "dnnlib.tflib.network.Network objects)"
        ) from error
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise ConversionError(f"{Path(path).name} is not a readable pickle: {type(error).__name__}: {error}") from error
    stub_type = TF_PICKLE_ALLOWED[_NETWORK]
    if isinstance(obj, (tuple, list)) and len(obj) == 3 and all(isinstance(o, stub_type) for o in obj):
        obj = obj[2]  # (G, D, Gs): Gs holds the moving average of G's weights, the one used for sampling
    if not isinstance(obj, stub_type):
        raise ConversionError(
            f"{Path(path).name} holds {type(obj).__name__}, expected the (G, D, Gs) tuple of a StyleGAN pickle"
        )
    return _network(obj, "Gs")


def _network(stub: Any, where: str) -> TFNetwork:
    state = stub.state
    if not isinstance(state, dict):
        raise ConversionError(f"{where}: Network state is {type(state).__name__}, expected a dict")
    version = state.get("version")
    if version not in _SUPPORTED_VERSIONS:
        raise ConversionError(f"{where}: unsupported Network pickle version {version!r} (known: {_SUPPORTED_VERSIONS})")
    variables: dict[str, np.ndarray] = {}
    for entry in state.get("variables", []):
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str)):
            raise ConversionError(f"{where}: a variables entry is not a (name, array) pair")
        name, value = entry
        variables[name] = np.asarray(value)
    components: dict[str, TFNetwork] = {}
    for key, value in dict(state.get("components") or {}).items():
        if isinstance(value, type(stub)):
            components[key] = _network(value, f"{where}.{key}")
    kwargs = state.get("static_kwargs") or {}
    return TFNetwork(
        name=str(state.get("name", "")),
        variables=variables,
        static_kwargs=dict(kwargs) if isinstance(kwargs, dict) else {},
        components=components,
    )


# --------------------------------------------------------------------------------------------------
# Name and layout mapping (pure functions of the variable dicts)


def _conv(value: np.ndarray) -> np.ndarray:
    """TF ``[kh, kw, in, out]`` -> ``[out, in, kh, kw]``."""
    return value.transpose(3, 2, 0, 1)


def _dense(value: np.ndarray) -> np.ndarray:
    """TF ``[in, out]`` -> ``[out, in]``."""
    return value.T


def _copy(value: np.ndarray) -> np.ndarray:
    return value


def _synthesis_key(name: str) -> tuple[str, Any] | None:
    """Our key and layout transform for a G_synthesis variable; None when it is not one of ours."""
    if match := _TORGB_VAR.match(name):
        part = match.group(1)
        return f"torgb.{part}", _conv if part == "weight" else _copy
    match = _SYNTHESIS_VAR.match(name)
    if match is None:
        return None
    block, layer, tail = match.groups()
    conv, epi = _LAYERS[layer]
    prefix = f"blocks.{block}"
    if tail == "Noise/weight":
        return f"{prefix}.{epi}.noise.weight", _copy
    if tail.startswith("StyleMod/"):
        part = tail.split("/")[1]
        return f"{prefix}.{epi}.style_mod.lin.{part}", _dense if part == "weight" else _copy
    if layer == "Const":
        # The learned constant is stored NCHW already; its bias is a block parameter in our layout.
        return (f"{prefix}.const", _copy) if tail == "const" else (f"{prefix}.bias", _copy) if tail == "bias" else None
    if tail == "const":
        return None
    return f"{prefix}.{conv}.{tail}", _conv if tail == "weight" else _copy


def _mapping_key(name: str) -> tuple[str, Any] | None:
    if match := _DENSE_VAR.match(name):
        index, part = match.groups()
        return f"dense{int(index)}.{part}", _dense if part == "weight" else _copy
    return None


def _strip_scope(name: str, scope: str) -> str:
    # Own variables are stored relative to the network's scope; accept full names as well.
    return name[len(scope) + 1 :] if name.startswith(scope + "/") else name


def _match_template(
    variables: Mapping[str, np.ndarray],
    rename: Any,
    template: nn.Module,
    what: str,
) -> dict[str, torch.Tensor]:
    """Rename/transform ``variables`` into ``template``'s state dict, failing on any gap or leftover."""
    expected = template.state_dict()
    buffers = {name for name, _ in template.named_buffers()}
    out: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    unknown: list[str] = []
    for name, value in variables.items():
        mapped = rename(name)
        if mapped is None:
            if not _IGNORED.match(name):
                unknown.append(name)
            continue
        key, transform = mapped
        if key not in expected:
            unknown.append(f"{name} (-> {key}, not in our {what})")
            continue
        if key in out:
            raise ConversionError(f"{what}: TF variables {sources[key]} and {name} both map to {key}")
        array = np.ascontiguousarray(transform(np.asarray(value, dtype=np.float32)))
        if tuple(array.shape) != tuple(expected[key].shape):
            raise ConversionError(
                f"{what}: {name} has shape {tuple(np.shape(value))}, which gives {tuple(array.shape)} for {key}; "
                f"our network expects {tuple(expected[key].shape)} (wrong fmap_base/fmap_max/resolution?)"
            )
        out[key] = torch.from_numpy(array.copy())
        sources[key] = name
    if unknown:
        raise ConversionError(f"{what}: TF variables with no place in our network: {', '.join(sorted(unknown))}")
    missing = []
    for key, tensor in expected.items():
        if key in out:
            continue
        if key in buffers:
            out[key] = tensor.detach().clone()  # constants (blur kernels), not variables in TF
        else:
            missing.append(key)
    if missing:
        raise ConversionError(f"{what}: no TF variable for our keys: {', '.join(missing)}")
    return {key: out[key] for key in expected}  # our key order


def _synthesis_layout(variables: Mapping[str, np.ndarray], static_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Synthesis constructor arguments: size from the variables, feature-map rule from the pickle's kwargs."""
    sides = [int(m.group(1).split("x")[0]) for n in variables if (m := _SYNTHESIS_VAR.match(n))]
    if not sides or "ToRGB_lod0/weight" not in variables or "4x4/Const/StyleMod/weight" not in variables:
        raise ConversionError(
            "G_synthesis has no 4x4/Const/StyleMod or ToRGB_lod0 variables: not a StyleGAN (v1) synthesis network"
        )
    layout = {
        "resolution": max(sides),
        "dlatent_size": int(variables["4x4/Const/StyleMod/weight"].shape[0]),
        "num_channels": int(variables["ToRGB_lod0/weight"].shape[-1]),
    }
    for key, default in _SYNTHESIS_DEFAULTS.items():
        value = static_kwargs.get(key, default)
        layout[key] = value if isinstance(value, (int, float)) and not isinstance(value, bool) else default
    return layout


def convert_synthesis(
    variables: Mapping[str, np.ndarray], static_kwargs: Mapping[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """G_synthesis variables -> (our Synthesis state dict, its constructor kwargs).

    ``variables`` maps TF names (``4x4/Const/const``, ``8x8/Conv0_up/weight``, ...) to arrays.

    Raises:
        ConversionError: a variable we cannot place, a key left without a variable, or a shape mismatch.
    """
    variables = {_strip_scope(n, "G_synthesis"): v for n, v in variables.items()}
    layout = _synthesis_layout(variables, static_kwargs or {})
    # A real (CPU) instance: its blur-kernel buffers are copied, and building it is faster than the
    # first random init on the meta device (which loads torch's decompositions, seconds).
    template = Synthesis(**layout)
    return _match_template(variables, _synthesis_key, template, "G_synthesis"), layout


def convert_mapping(variables: Mapping[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """G_mapping variables (``Dense0/weight`` ...) -> (our Mapping state dict, its constructor kwargs)."""
    variables = {_strip_scope(n, "G_mapping"): v for n, v in variables.items()}
    dense = sorted({int(m.group(1)) for n in variables if (m := _DENSE_VAR.match(n))})
    if not dense or dense != list(range(len(dense))) or f"Dense{dense[-1]}/weight" not in variables:
        raise ConversionError(f"G_mapping needs Dense0..DenseN weights, found layers {dense}")
    first, last = variables["Dense0/weight"], variables[f"Dense{dense[-1]}/weight"]
    layout = {
        "latent_size": int(first.shape[0]),
        "dlatent_size": int(last.shape[1]),
        "mapping_layers": len(dense),
        "mapping_fmaps": int(first.shape[1]) if len(dense) > 1 else int(last.shape[1]),
    }
    template = MappingNetwork(**layout)
    return _match_template(variables, _mapping_key, template, "G_mapping"), layout


def convert_stylegan1_pickle(path: str | os.PathLike[str]) -> ConvertedStyleGAN:
    """Convert NVIDIA's StyleGAN (v1) pickle (e.g. ``karras2019stylegan-ffhq-1024x1024.pkl``).

    Raises:
        ConversionError: unsafe or malformed pickle, or weights that do not fit our networks.
    """
    gs = load_tf_pickle(path)
    for key, scope in (("synthesis", "G_synthesis"), ("mapping", "G_mapping")):
        # Some pickles keep the sub-networks' variables on Gs itself, prefixed with their scope.
        prefixed = {n: v for n, v in gs.variables.items() if n.startswith(scope + "/")}
        if key not in gs.components and prefixed:
            gs.components[key] = TFNetwork(name=scope, variables=prefixed, static_kwargs=dict(gs.static_kwargs))
    if "synthesis" not in gs.components or "mapping" not in gs.components:
        raise ConversionError(
            f"network {gs.name!r} has components {sorted(gs.components)}; a StyleGAN generator has "
            "'synthesis' (G_synthesis) and 'mapping' (G_mapping)"
        )
    synthesis_net, mapping_net = gs.components["synthesis"], gs.components["mapping"]
    synthesis, synthesis_kwargs = convert_synthesis(synthesis_net.variables, synthesis_net.static_kwargs)
    mapping, mapping_kwargs = convert_mapping(mapping_net.variables)
    if mapping_kwargs["dlatent_size"] != synthesis_kwargs["dlatent_size"]:
        raise ConversionError(
            f"mapping outputs {mapping_kwargs['dlatent_size']} values but synthesis styles take "
            f"{synthesis_kwargs['dlatent_size']}"
        )
    avg = gs.variables.get("dlatent_avg")
    return ConvertedStyleGAN(
        synthesis=synthesis,
        mapping=mapping,
        synthesis_kwargs=synthesis_kwargs,
        mapping_kwargs=mapping_kwargs,
        dlatent_avg=None if avg is None else torch.from_numpy(np.array(avg, dtype=np.float32)),
    )


def save_converted(converted: ConvertedStyleGAN, folder: str | os.PathLike[str]) -> list[Path]:
    """Write ``synthesis.pt`` and ``mapping.pt`` (plain tensor dicts) into ``folder``, atomically each."""
    paths = []
    for name, state in (("synthesis.pt", converted.synthesis), ("mapping.pt", converted.mapping)):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        path = Path(folder) / name
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths
