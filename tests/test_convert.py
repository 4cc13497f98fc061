"""StyleGAN (v1) TF pickle conversion (pulse.io.convert) on small fake pickles built here, without TensorFlow.

The fake pickles are made the way NVIDIA's are: ``dnnlib.tflib.network.Network`` objects whose state
holds ``(name, numpy array)`` variables with TF names. The variables come from our own randomly
initialised small networks, renamed to TF names and laid out TF-style (HWIO kernels, ``[in, out]`` dense
weights) by an inverse mapping written independently of the converter, so a round trip must give back
exactly the same networks.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import types

import numpy as np
import pytest
import torch

from pulse.generators.stylegan import Mapping, Synthesis
from pulse.io.cli_fetch import main as cli_main
from pulse.io.convert import ConversionError, convert_stylegan1_pickle, load_tf_pickle

SMALL = {"resolution": 32, "fmap_base": 256, "fmap_max": 32, "dlatent_size": 16}
# 128 px reaches the fused (transposed-conv) upsampling; tiny feature maps keep it fast.
FUSED = {"resolution": 128, "fmap_base": 64, "fmap_max": 8, "dlatent_size": 16}
MAPPING = {"latent_size": 16, "dlatent_size": 16, "mapping_layers": 3, "mapping_fmaps": 8}


class Network:
    """Pickles like dnnlib.tflib.network.Network (module/qualname set below); its state is plain data."""

    def __init__(self, state: dict) -> None:
        self._state = state

    def __getstate__(self) -> dict:
        return self._state


Network.__module__ = "dnnlib.tflib.network"


@pytest.fixture
def dnnlib_modules(monkeypatch):
    """Register a fake ``dnnlib.tflib.network`` so pickle can name our Network class when dumping."""
    for name in ("dnnlib", "dnnlib.tflib", "dnnlib.tflib.network"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["dnnlib.tflib.network"].Network = Network


def _random_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (biases and noise strengths too), so each mapped variable matters."""
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=rng))
    return module


def _tf_synthesis_variables(synthesis: Synthesis) -> dict[str, np.ndarray]:
    """Our Synthesis -> TF G_synthesis variables (names and layouts of NVIDIA's networks_stylegan.py)."""
    state = {k: v.numpy() for k, v in synthesis.state_dict().items()}
    out: dict[str, np.ndarray] = {}

    def layer(tf_scope: str, prefix: str, conv: str | None, epi: str) -> None:
        if conv is not None:
            out[f"{tf_scope}/weight"] = state[f"{prefix}.{conv}.weight"].transpose(2, 3, 1, 0)  # OIHW -> HWIO
            out[f"{tf_scope}/bias"] = state[f"{prefix}.{conv}.bias"]
        out[f"{tf_scope}/Noise/weight"] = state[f"{prefix}.{epi}.noise.weight"]
        out[f"{tf_scope}/StyleMod/weight"] = state[f"{prefix}.{epi}.style_mod.lin.weight"].T
        out[f"{tf_scope}/StyleMod/bias"] = state[f"{prefix}.{epi}.style_mod.lin.bias"]

    out["4x4/Const/const"] = state["blocks.4x4.const"]
    out["4x4/Const/bias"] = state["blocks.4x4.bias"]
    layer("4x4/Const", "blocks.4x4", None, "epi1")
    layer("4x4/Conv", "blocks.4x4", "conv", "epi2")
    for block in list(synthesis.blocks)[1:]:
        layer(f"{block}/Conv0_up", f"blocks.{block}", "conv0_up", "epi1")
        layer(f"{block}/Conv1", f"blocks.{block}", "conv1", "epi2")
    out["ToRGB_lod0/weight"] = state["torgb.weight"].transpose(2, 3, 1, 0)
    out["ToRGB_lod0/bias"] = state["torgb.bias"]
    # Not weights of ours: progressive-growing state, lower-resolution RGB heads, fixed noise inputs.
    out["lod"] = np.float32(0.0)
    channels = out["4x4/Conv/bias"].shape[0]
    out["ToRGB_lod1/weight"] = np.ones((1, 1, channels, 3), np.float32)
    out["ToRGB_lod1/bias"] = np.zeros(3, np.float32)
    for index, (c, h, w) in enumerate(synthesis.noise_shapes):
        out[f"noise{index}"] = np.zeros((1, c, h, w), np.float32)
    return {name: np.ascontiguousarray(value) for name, value in out.items()}


def _tf_mapping_variables(mapping: Mapping) -> dict[str, np.ndarray]:
    out = {}
    for key, value in mapping.state_dict().items():
        match = re.fullmatch(r"dense(\d+)\.(weight|bias)", key)
        out[f"Dense{match.group(1)}/{match.group(2)}"] = np.ascontiguousarray(value.numpy().T)
    return out


def _network(name: str, variables: dict, components: dict | None = None, **static_kwargs) -> Network:
    return Network(
        {
            "version": 4,
            "name": name,
            "static_kwargs": static_kwargs,
            "components": components or {},
            # A source string, as in real pickles: it must never be executed.
            "build_module_src": "import pathlib; pathlib.Path('BUILD_SRC_RAN').write_text('x')\ndef G_style(): pass\n",
            "build_func_name": name,
            "variables": list(variables.items()),
        }
    )


def _fake_pickle(path, synthesis: Synthesis, mapping: Mapping, layout: dict, extra_synthesis: dict | None = None):
    synthesis_vars = {**_tf_synthesis_variables(synthesis), **(extra_synthesis or {})}
    gs = _network(
        "G",
        {"lod": np.float32(0), "dlatent_avg": np.full(mapping.dlatent_size, 0.5, np.float32)},
        components={
            "synthesis": _network(
                "G_synthesis",
                synthesis_vars,
                resolution=layout["resolution"],
                fmap_base=layout["fmap_base"],
                fmap_max=layout["fmap_max"],
            ),
            "mapping": _network("G_mapping", _tf_mapping_variables(mapping)),
        },
    )
    discriminator = _network("D", {"4x4/Dense0/weight": np.zeros((4, 4), np.float32)})
    path.write_bytes(pickle.dumps((gs, discriminator, gs), protocol=3))  # (G, D, Gs) like NVIDIA's files
    return path


def _nets(layout: dict, seed: int = 0) -> tuple[Synthesis, Mapping]:
    return _random_(Synthesis(**layout), seed).eval(), _random_(Mapping(**MAPPING), seed + 1).eval()


@pytest.mark.parametrize("layout", [SMALL, FUSED], ids=["32px", "128px-fused"])
def test_round_trip_reproduces_outputs_exactly(tmp_path, dnnlib_modules, monkeypatch, layout):
    monkeypatch.chdir(tmp_path)
    synthesis, mapping = _nets(layout)
    path = _fake_pickle(tmp_path / "fake.pkl", synthesis, mapping, layout)

    converted = convert_stylegan1_pickle(path)

    assert not (tmp_path / "BUILD_SRC_RAN").exists()
    assert list(converted.synthesis) == list(synthesis.state_dict())  # every key, in our order
    assert converted.synthesis_kwargs == {**layout, "num_channels": 3, "fmap_decay": 1.0}
    assert converted.mapping_kwargs == MAPPING
    torch.testing.assert_close(converted.dlatent_avg, torch.full((16,), 0.5), rtol=0, atol=0)

    restored = Synthesis(**converted.synthesis_kwargs)
    restored.load_state_dict(converted.synthesis)
    restored_mapping = Mapping(**converted.mapping_kwargs)
    restored_mapping.load_state_dict(converted.mapping)
    rng = torch.Generator().manual_seed(3)
    dlatents = torch.randn(2, synthesis.num_layers, layout["dlatent_size"], generator=rng)
    noise = [torch.randn(2, *shape, generator=rng) for shape in synthesis.noise_shapes]
    z = torch.randn(4, MAPPING["latent_size"], generator=rng)
    with torch.no_grad():
        assert torch.equal(restored(dlatents, noise), synthesis(dlatents, noise))
        assert torch.equal(restored_mapping(z), mapping(z))


def test_cli_convert_writes_loadable_cache_files(tmp_path, dnnlib_modules, monkeypatch, capsys):
    monkeypatch.setenv("PULSE_CACHE", str(tmp_path / "cache"))
    synthesis, mapping = _nets(SMALL)
    path = _fake_pickle(tmp_path / "karras.pkl", synthesis, mapping, SMALL)

    assert cli_main(["convert", str(path)]) == 0
    folder = tmp_path / "cache" / "stylegan_ffhq"
    out = capsys.readouterr().out
    assert str(folder / "synthesis.pt") in out and "not the FFHQ 1024 one" in out
    loaded = torch.load(folder / "synthesis.pt", weights_only=True)
    for key, value in synthesis.state_dict().items():
        assert torch.equal(loaded[key], value), key
    restored = Mapping(**MAPPING)
    restored.load_state_dict(torch.load(folder / "mapping.pt", weights_only=True))
    z = torch.randn(3, MAPPING["latent_size"])
    with torch.no_grad():
        assert torch.equal(restored(z), mapping(z))

    # Present files are not replaced without --force.
    assert cli_main(["ffhq", "--from-pkl", str(path)]) == 1
    assert "--force" in capsys.readouterr().err
    assert cli_main(["ffhq", "--from-pkl", str(path), "--force"]) == 0


def test_missing_variable_is_named(tmp_path, dnnlib_modules):
    synthesis, mapping = _nets(SMALL)
    path = tmp_path / "fake.pkl"
    _fake_pickle(path, synthesis, mapping, SMALL)
    gs = load_tf_pickle(path)
    assert gs.name == "G" and sorted(gs.components) == ["mapping", "synthesis"]
    # Rebuild without one variable.
    variables = _tf_synthesis_variables(synthesis)
    del variables["16x16/Conv1/Noise/weight"]
    gs_net = _network(
        "G",
        {},
        components={
            "synthesis": _network("G_synthesis", variables, **{k: SMALL[k] for k in ("fmap_base", "fmap_max")}),
            "mapping": _network("G_mapping", _tf_mapping_variables(mapping)),
        },
    )
    path.write_bytes(pickle.dumps(gs_net))
    with pytest.raises(ConversionError, match=r"no TF variable for our keys: blocks\.16x16\.epi2\.noise\.weight"):
        convert_stylegan1_pickle(path)


def test_flat_pickle_with_prefixed_variables(tmp_path, dnnlib_modules):
    """Sub-network variables stored on Gs itself as ``G_synthesis/...`` / ``G_mapping/...`` are found too."""
    synthesis, mapping = _nets(SMALL)
    variables = {f"G_synthesis/{n}": v for n, v in _tf_synthesis_variables(synthesis).items()}
    variables.update({f"G_mapping/{n}": v for n, v in _tf_mapping_variables(mapping).items()})
    gs = _network("Gs", variables, fmap_base=SMALL["fmap_base"], fmap_max=SMALL["fmap_max"])
    path = tmp_path / "flat.pkl"
    path.write_bytes(pickle.dumps(gs))
    converted = convert_stylegan1_pickle(path)
    for key, value in synthesis.state_dict().items():
        assert torch.equal(converted.synthesis[key], value), key
    for key, value in mapping.state_dict().items():
        assert torch.equal(converted.mapping[key], value), key


def test_unknown_variable_is_refused(tmp_path, dnnlib_modules):
    synthesis, mapping = _nets(SMALL)
    path = _fake_pickle(
        tmp_path / "fake.pkl", synthesis, mapping, SMALL, extra_synthesis={"8x8/Conv1/Mystery/weight": np.zeros(3)}
    )
    with pytest.raises(ConversionError, match=r"no place in our network: 8x8/Conv1/Mystery/weight"):
        convert_stylegan1_pickle(path)


def test_wrong_feature_maps_give_a_shape_error(tmp_path, dnnlib_modules):
    synthesis, mapping = _nets(SMALL)
    path = _fake_pickle(tmp_path / "fake.pkl", synthesis, mapping, {**SMALL, "fmap_max": 64})
    with pytest.raises(ConversionError, match=r"expects .*fmap_base/fmap_max"):
        convert_stylegan1_pickle(path)


# --------------------------------------------------------------------------------------------------
# Hostile pickles: refused by the allow-list before anything runs (the marker file proves it).


class _Shell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Eval:
    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self):
        return (eval, (self.source,))


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
def test_hostile_pickle_refused_and_not_run(tmp_path, dnnlib_modules, kind):
    marker = tmp_path / "pwned"
    payload = _Shell(f"touch {marker}") if kind == "os.system" else _Eval(f"open({str(marker)!r}, 'w').write('pwned')")
    synthesis, mapping = _nets(SMALL)
    gs = _network("G", {}, components={"synthesis": _network("G_synthesis", _tf_synthesis_variables(synthesis))})
    gs._state["static_kwargs"] = {"hook": payload}
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps((gs, gs, gs)))
    name = r"(os|posix|nt)\.system" if kind == "os.system" else r"builtins\.eval"
    with pytest.raises(ConversionError, match=rf"refusing evil\.pkl: refused global {name}"):
        convert_stylegan1_pickle(path)
    assert not marker.exists()


def test_not_a_stylegan_pickle(tmp_path):
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps({"weights": np.zeros(2)}))
    with pytest.raises(ConversionError, match=r"expected the \(G, D, Gs\) tuple"):
        convert_stylegan1_pickle(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(ConversionError, match="other.pkl"):
        convert_stylegan1_pickle(path)
