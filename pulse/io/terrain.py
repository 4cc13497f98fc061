"""The terrain prior's weights for ``generator=terrain``: one ONNX file out of a pinned PyPI wheel, read as data.

The wheel ``adaptive-terrain-diffusion==0.4.2`` (MIT; pinned sha256) ships a one-step consistency UNet for
128x128 heightmaps, ``terrain_diffusion/weights/terrain_consistency_unet_difficulty100.onnx`` (ONNX opset
18, 45 MB). The wheel is downloaded through PyPI's index (resumable, sha256-verified; see
:mod:`pulse.io.fetch`), opened as a zip, and only that member is written to ``$PULSE_CACHE/terrain/``
(its own sha256 pinned too); the package is never installed or imported, and the downloaded wheel is
deleted afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from pulse.io.cache import atomic_write_bytes, cache_dir, sha256_file

__all__ = ["TERRAIN_FILE", "TerrainUnavailable", "fetch_terrain", "terrain_weights_path"]

WHEEL_NAME, WHEEL_VERSION = "adaptive-terrain-diffusion", "0.4.2"
WHEEL_FILE = "adaptive_terrain_diffusion-0.4.2-py3-none-any.whl"
WHEEL_SHA256 = "dd803be2c98d764e4e64db18c631eef46c210282b398c4dd080f4cda3fa7c84d"
MEMBER = "terrain_diffusion/weights/terrain_consistency_unet_difficulty100.onnx"
TERRAIN_FILE = "terrain_consistency_unet_difficulty100.onnx"
TERRAIN_SHA256 = "95be54b4a39d58320e187a7ec533351c957f16a00be58773c86074828ee67887"
FETCH_HINT = (
    "run `pulse-fetch terrain` (or `python scripts/fetch_weights.py terrain`) once; it downloads a 39 MB wheel "
    "from PyPI"
)


class TerrainUnavailable(FileNotFoundError):
    """The terrain weights are not fetched (or the fetch failed); the message names the fix."""


def terrain_dir() -> Path:
    """``$PULSE_CACHE/terrain``."""
    return cache_dir() / "terrain"


def terrain_weights_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The verified ONNX file (``path``, or the cached one); raises :class:`TerrainUnavailable` naming the fix."""
    file = Path(path).expanduser() if path is not None else terrain_dir() / TERRAIN_FILE
    if not file.is_file():
        raise TerrainUnavailable(f"terrain weights are not in {file.parent}: {FETCH_HINT}")
    if path is None and sha256_file(file) != TERRAIN_SHA256:
        raise TerrainUnavailable(f"{file} does not have the pinned sha256: {FETCH_HINT.replace('once', 'again')}")
    return file


def fetch_terrain(
    *,
    dest: str | os.PathLike[str] | None = None,
    from_wheel: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
    index_url: str | None = None,
    wheel_sha256: str = WHEEL_SHA256,
    member_sha256: str = TERRAIN_SHA256,
    log: Callable[[str], None] = print,
) -> Path:
    """Make the terrain ONNX file available in ``dest`` (default ``$PULSE_CACHE/terrain``); return its path.

    Idempotent: a file with the pinned sha256 is left alone unless ``force``. Otherwise the wheel
    (``from_wheel``, or downloaded into ``dest`` through the index) is checked against ``wheel_sha256``, the
    one member is read (size-limited) and checked against ``member_sha256``, then written atomically.

    Raises:
        TerrainUnavailable: the download, the wheel or a checksum failed (the message says which).
    """
    import hashlib

    from pulse.io.fetch import DownloadError, pinned_pypi_file, read_zip_members

    folder = Path(dest).expanduser() if dest is not None else terrain_dir()
    target = folder / TERRAIN_FILE
    if not force and target.is_file() and sha256_file(target) == member_sha256:
        log(f"terrain: present, {target}")
        return target
    try:
        wheel = pinned_pypi_file(
            WHEEL_NAME,
            WHEEL_VERSION,
            wheel_sha256,
            folder / WHEEL_FILE,
            local=from_wheel,
            index_url=index_url,
            progress=progress,
            timeout=timeout,
        )
        members = read_zip_members(wheel, lambda name: name == MEMBER, max_bytes=64 << 20, max_total=64 << 20)
        if MEMBER not in members:
            raise ValueError(f"{wheel.name} holds no {MEMBER}")
        data = members[MEMBER]
        got = hashlib.sha256(data).hexdigest()
        if got != member_sha256:
            raise ValueError(f"{MEMBER} has sha256 {got}, expected {member_sha256}")
    except (DownloadError, OSError, ValueError) as error:
        raise TerrainUnavailable(f"terrain weights not fetched: {' '.join(str(error).split())}") from error
    atomic_write_bytes(target, data)
    if from_wheel is None:
        wheel.unlink(missing_ok=True)
    log(f"terrain: {target} ({len(data) / 1e6:.1f} MB, from {WHEEL_NAME}=={WHEEL_VERSION}, MIT)")
    return target
