"""Registry of the StyleGAN weights pulse can download, and fetching them into the cache.

The official PULSE FFHQ 1024 weights (``synthesis.pt``, ``mapping.pt``) live on Google Drive, the
only places the authors published them (``adamian98/pulse``, ``PULSE.py``); Drive often answers with a
quota or confirmation page instead of the file. No checksum was ever published for them, and we do not
make one up: their registry entries say ``sha256=None`` and :func:`fetch_ffhq` then refuses to download
unless the caller supplies a sha256 from a source they trust or explicitly accepts unverified files.
Either way the downloaded file must be a plain tensor dict (``torch.load(weights_only=True)``) whose keys
and shapes are exactly those of our :class:`~pulse.generators.stylegan.Synthesis` / ``Mapping``.

NVIDIA's original TensorFlow pickle (``karras2019stylegan-ffhq-1024x1024.pkl``) is the alternative
source; :mod:`pulse.io.convert` turns it into the same two files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from pulse.generators.stylegan import Mapping as MappingNetwork
from pulse.generators.stylegan import Synthesis, load_tensor_dict
from pulse.io.cache import cache_dir, sha256_file
from pulse.io.fetch import DownloadError, download

__all__ = [
    "FFHQ_FILES",
    "FFHQ_LAYOUT",
    "STYLEGAN1_FFHQ_PKL_URLS",
    "FetchResult",
    "Layout",
    "WeightFile",
    "WeightsError",
    "check_state_dict",
    "fetch_ffhq",
    "ffhq_dir",
]


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class WeightsError(RuntimeError):
    """Weights could not be fetched or do not fit our networks (the message says why and what to do)."""


@dataclass(frozen=True)
class WeightFile:
    """One downloadable file.

    Attributes:
        filename: name in the cache folder.
        urls: mirrors, tried in order.
        sha256: full hex digest, or None when no trustworthy checksum is known.
        network: which of our networks its state dict must fit (``"synthesis"`` or ``"mapping"``).
        note: where the URLs come from.
    """

    filename: str
    urls: tuple[str, ...]
    sha256: str | None
    network: str
    note: str = ""


def _drive(file_id: str) -> tuple[str, ...]:
    # The plain uc?id= link serves an HTML "cannot scan for viruses" page for large files; confirm=t skips it.
    return (
        f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t",
        f"https://drive.google.com/uc?id={file_id}&export=download&confirm=t",
    )


FFHQ_FILES: Mapping[str, WeightFile] = {
    "synthesis": WeightFile(
        filename="synthesis.pt",
        urls=_drive("1TCViX1YpQyRsklTVYEJwdbmK91vklCo8"),
        sha256=None,  # never published; see the module docstring
        network="synthesis",
        note="official PULSE link (adamian98/pulse PULSE.py), Google Drive, often quota-limited",
    ),
    "mapping": WeightFile(
        filename="mapping.pt",
        urls=_drive("14R6iHGf5iuVx3DMNsACAl7eBr7Vdpd0k"),
        sha256=None,
        network="mapping",
        note="official PULSE link (adamian98/pulse PULSE.py), Google Drive, often quota-limited",
    ),
}
"""The official PULSE FFHQ 1024 files, by short name."""

STYLEGAN1_FFHQ_PKL_URLS: tuple[str, ...] = _drive("1MEGjdvVpUsu1jB4zrXZN7Y4kBBOzizDQ")
"""NVIDIA's karras2019stylegan-ffhq-1024x1024.pkl (link from NVlabs/stylegan); no published sha256 either."""


@dataclass(frozen=True)
class Layout:
    """Constructor arguments of the networks the files must fit."""

    synthesis: dict[str, Any] = field(default_factory=dict)
    mapping: dict[str, Any] = field(default_factory=dict)

    def template(self, network: str) -> nn.Module:
        """A randomly initialised CPU instance of ``network`` (for its keys and shapes)."""
        if network == "synthesis":
            return Synthesis(**self.synthesis)
        if network == "mapping":
            return MappingNetwork(**self.mapping)
        raise ValueError(f"unknown network {network!r}; expected 'synthesis' or 'mapping'")


FFHQ_LAYOUT = Layout()
"""The official FFHQ 1024 layout (our constructors' defaults), which ``StyleGANGenerator.pretrained`` loads."""


@dataclass
class FetchResult:
    name: str
    path: Path
    action: str  # "present" (valid file already there) or "downloaded"
    sha256: str
    verified: bool  # whether the digest was checked against a known/given one


def ffhq_dir() -> Path:
    """``$PULSE_CACHE/stylegan_ffhq``, where ``StyleGANGenerator.pretrained`` looks."""
    return cache_dir() / "stylegan_ffhq"


def _is_html(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(512).lstrip().lower()
    return head.startswith((b"<!doctype", b"<html"))


def check_state_dict(path: str | os.PathLike[str], network: str, layout: Layout | None = None) -> None:
    """Check that ``path`` is a plain tensor dict with exactly our ``network``'s keys and shapes.

    ``layout`` defaults to :data:`FFHQ_LAYOUT` (looked up at call time).

    Raises:
        WeightsError: unreadable as a ``weights_only`` torch file, or keys/shapes differ (listed).
    """
    path = Path(path)
    try:
        state = load_tensor_dict(path)
    except RuntimeError as error:
        hint = ""
        if path.stat().st_size < 1 << 20 and path.read_bytes()[:512].lstrip().lower().startswith(
            (b"<!doctype", b"<html")
        ):
            hint = " (it is an HTML page: Google Drive probably refused the download because of its quota)"
        raise WeightsError(f"{error}{hint}") from error
    expected = (layout if layout is not None else FFHQ_LAYOUT).template(network).state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
        if extra:
            parts.append(f"unexpected {len(extra)} keys ({', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''})")
        raise WeightsError(f"{path.name} does not fit our {network} network: {'; '.join(parts)}")
    wrong = [
        f"{key} {tuple(state[key].shape)} != {tuple(value.shape)}"
        for key, value in expected.items()
        if tuple(state[key].shape) != tuple(value.shape)
    ]
    if wrong:
        raise WeightsError(f"{path.name} does not fit our {network} network, shapes differ: {', '.join(wrong[:5])}")


def fetch_ffhq(
    names: Sequence[str] = ("synthesis", "mapping"),
    *,
    urls: Mapping[str, Sequence[str]] | None = None,
    sha256: Mapping[str, str] | None = None,
    trust_unverified: bool = False,
    dest_dir: str | os.PathLike[str] | None = None,
    layout: Layout | None = None,
    force: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
    log: Callable[[str], None] = print,
) -> list[FetchResult]:
    """Download the official PULSE FFHQ files into ``dest_dir`` (default :func:`ffhq_dir`).

    Args:
        names: which of :data:`FFHQ_FILES` to fetch.
        urls: per name, mirrors to use instead of the registry's.
        sha256: per name, the digest the file must have (overrides the registry).
        trust_unverified: accept a file without a known digest (its key set is still checked).
        layout: the networks the files must fit (default :data:`FFHQ_LAYOUT`, the official 1024 one).
        force: download again even if a valid file is present.

    A file is downloaded to a hidden staging name (resumable ``.part``), checked (digest, then
    ``weights_only`` load and key set) and only then renamed to its final name, so the cache never holds
    an unverified or non-fitting ``synthesis.pt``/``mapping.pt``.

    Raises:
        WeightsError: no digest known and ``trust_unverified`` is false (nothing is downloaded), a
            download failed, the digest differs, or the file does not fit our networks.
    """
    urls, sha256 = dict(urls or {}), dict(sha256 or {})
    unknown = sorted((set(names) | set(urls) | set(sha256)) - set(FFHQ_FILES))
    if unknown:
        raise WeightsError(f"unknown file name(s) {unknown}; choose from {sorted(FFHQ_FILES)}")
    for name, digest in sha256.items():
        if not _SHA256.match(digest.strip().lower()):
            raise WeightsError(f"--sha256 for {name} must be a full 64-hex-digit sha256, got {digest!r}")
    sha256 = {name: digest.strip().lower() for name, digest in sha256.items()}
    folder = Path(dest_dir) if dest_dir is not None else ffhq_dir()
    results: list[FetchResult] = []
    todo = []
    for name in names:
        entry = FFHQ_FILES[name]
        expected = sha256.get(name, entry.sha256)
        dest = folder / entry.filename
        if dest.is_file() and not force:
            digest = sha256_file(dest)
            if expected is None or digest == expected:
                # A file the user placed (or an earlier fetch left) is used as is when it fits.
                check_state_dict(dest, entry.network, layout)
                log(f"{entry.filename}: present in {folder}" + ("" if expected else " (no sha256 to check against)"))
                results.append(FetchResult(name, dest, "present", digest, expected is not None))
                continue
            log(f"{entry.filename}: present but its sha256 {digest} is not {expected}; downloading again")
        if expected is None and not trust_unverified:
            raise WeightsError(
                f"no known sha256 for {entry.filename}: the official PULSE files were published without checksums. "
                f"Pass --sha256 {name}=HEX with a digest from a source you trust, or --trust-unverified to accept "
                "whatever the server sends (its keys and shapes are still checked). Nothing was downloaded."
            )
        todo.append((name, entry, expected, list(urls.get(name, entry.urls))))
    for name, entry, expected, mirrors in todo:
        dest = folder / entry.filename
        staging = folder / f".{entry.filename}.download"
        try:
            download(mirrors, staging, expected, progress=progress, timeout=timeout)
        except DownloadError as error:
            raise WeightsError(f"{entry.filename}: {error}") from error
        try:
            check_state_dict(staging, entry.network, layout)
        except WeightsError:
            staging.unlink(missing_ok=True)
            raise
        digest = expected if expected is not None else sha256_file(staging)  # download() verified it
        os.replace(staging, dest)
        if expected is None:
            log(f"{entry.filename}: downloaded UNVERIFIED (sha256 {digest}); keys and shapes match our network")
        else:
            log(f"{entry.filename}: downloaded, sha256 verified ({digest})")
        results.append(FetchResult(name, dest, "downloaded", digest, expected is not None))
    return results
