"""pulse.io.fetch against a local HTTP server, and the restricted unpickler in pulse.io.safe_pickle."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import re
import tarfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from pulse.io.fetch import ChecksumMismatch, DownloadError, download, read_tar_members, verify_sha256
from pulse.io.safe_pickle import NUMPY_ALLOWED, restricted_load, stub_class

# --------------------------------------------------------------------------------------------------
# A tiny HTTP server serving files from a folder, with optional single-range support.


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        requested_range = self.headers.get("Range")
        self.server.requests.append((self.path, requested_range))
        path = self.server.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-", requested_range or "")
        if match and self.server.ranges:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        # Counted before writing: the client can finish reading (and the test assert) before write() returns.
        self.server.bytes_sent += len(body)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass  # keep pytest output clean


class _Server(http.server.ThreadingHTTPServer):
    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.ranges = True
        self.requests: list[tuple[str, str | None]] = []
        self.bytes_sent = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    httpd = _Server(root)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _serve(server: _Server, name: str, size: int = 300_000) -> tuple[bytes, str]:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    (server.root / name).write_bytes(data)
    return data, hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------------
# download / verify_sha256


def test_download_ok_and_verified(server, tmp_path):
    data, sha = _serve(server, "w.bin")
    dest = tmp_path / "out" / "w.bin"
    assert download([server.url("w.bin")], dest, sha, progress=False) == dest
    assert dest.read_bytes() == data
    assert not dest.with_name("w.bin.part").exists()
    # A verified file in place is not fetched again.
    download([server.url("w.bin")], dest, sha, progress=False)
    assert len(server.requests) == 1


def test_wrong_sha_raises_and_leaves_nothing(server, tmp_path):
    _, sha = _serve(server, "w.bin")
    wrong = "0" * 64
    dest = tmp_path / "w.bin"
    with pytest.raises(ChecksumMismatch) as caught:
        download([server.url("w.bin")], dest, wrong, progress=False)
    assert wrong in str(caught.value) and sha in str(caught.value)  # expected vs got, both named
    assert not dest.exists() and not dest.with_name("w.bin.part").exists()


def test_first_url_404_falls_back(server, tmp_path):
    data, sha = _serve(server, "w.bin")
    dest = tmp_path / "w.bin"
    download([server.url("missing.bin"), server.url("w.bin")], dest, sha, progress=False)
    assert dest.read_bytes() == data
    assert [path for path, _ in server.requests] == ["/missing.bin", "/w.bin"]


def test_all_urls_failing_names_each(server, tmp_path):
    with pytest.raises(DownloadError, match="404") as caught:
        download([server.url("a.bin"), "ftp://example.invalid/x"], tmp_path / "x", None, progress=False)
    assert "a.bin" in str(caught.value) and "unsupported scheme" in str(caught.value)
    assert not isinstance(caught.value, ChecksumMismatch)


def test_resume_partial_with_range(server, tmp_path):
    data, sha = _serve(server, "w.bin")
    dest = tmp_path / "w.bin"
    dest.with_name("w.bin.part").write_bytes(data[:120_000])
    download([server.url("w.bin")], dest, sha, progress=False)
    assert dest.read_bytes() == data
    assert server.requests == [("/w.bin", "bytes=120000-")]
    assert server.bytes_sent == len(data) - 120_000  # only the rest travelled


def test_stale_partial_is_refetched_from_scratch(server, tmp_path):
    data, sha = _serve(server, "w.bin")
    dest = tmp_path / "w.bin"
    dest.with_name("w.bin.part").write_bytes(b"x" * 5000)  # from some other file
    download([server.url("w.bin")], dest, sha, progress=False)
    assert dest.read_bytes() == data
    assert server.requests == [("/w.bin", "bytes=5000-"), ("/w.bin", None)]


def test_server_without_ranges_restarts(server, tmp_path):
    data, sha = _serve(server, "w.bin")
    server.ranges = False
    dest = tmp_path / "w.bin"
    dest.with_name("w.bin.part").write_bytes(data[:1000])
    download([server.url("w.bin")], dest, sha, progress=False)
    assert dest.read_bytes() == data


def test_verify_sha256(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    good = hashlib.sha256(b"abc").hexdigest()
    assert verify_sha256(path, good.upper()) == good
    with pytest.raises(ChecksumMismatch, match=good):
        verify_sha256(path, "1" * 64)
    with pytest.raises(ValueError, match="64"):
        verify_sha256(path, good[:8])  # prefixes are not accepted


def test_read_tar_members(tmp_path):
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in (("pkg/w.ckpt", b"weights"), ("pkg/other", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        link = tarfile.TarInfo("pkg/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    assert read_tar_members(archive, ["pkg/w.ckpt"]) == {"pkg/w.ckpt": b"weights"}
    with pytest.raises(FileNotFoundError, match="nope"):
        read_tar_members(archive, ["pkg/w.ckpt", "nope"])
    with pytest.raises(ValueError, match="regular"):
        read_tar_members(archive, ["pkg/link"])
    with pytest.raises(ValueError, match="limit"):
        read_tar_members(archive, ["pkg/w.ckpt"], max_bytes=3)


# --------------------------------------------------------------------------------------------------
# Restricted unpickling. Malicious pickles are only ever *dumped* here (which runs nothing) and
# loaded with the restricted unpickler; the marker file proves nothing was executed.


class _RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Evals:
    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self):
        return (eval, (self.source,))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_dict_round_trip(protocol):
    original = OrderedDict(
        conv={"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2), "bias": np.ones(2, np.float32)},
        step=np.int64(7),
        scale=np.float64(0.5),
        strided=np.arange(10)[::3],
        fortran=np.asfortranarray(np.eye(3)),
        record=np.zeros(2, dtype=[("x", "<f4"), ("y", "<i8")]),
    )
    loaded = restricted_load(pickle.dumps(original, protocol=protocol), NUMPY_ALLOWED)
    assert isinstance(loaded, OrderedDict) and list(loaded) == list(original)
    np.testing.assert_array_equal(loaded["conv"]["kernel"], original["conv"]["kernel"])
    assert loaded["conv"]["kernel"].dtype == np.float32
    assert loaded["step"] == 7 and loaded["scale"] == 0.5
    np.testing.assert_array_equal(loaded["strided"], original["strided"])
    np.testing.assert_array_equal(loaded["fortran"], original["fortran"])
    assert loaded["record"].dtype == original["record"].dtype


def test_restricted_load_accepts_file_and_path(tmp_path):
    data = pickle.dumps({"a": np.zeros(3)})
    path = tmp_path / "p.pkl"
    path.write_bytes(data)
    assert restricted_load(path, NUMPY_ALLOWED)["a"].shape == (3,)
    with open(path, "rb") as handle:
        assert restricted_load(handle, NUMPY_ALLOWED)["a"].shape == (3,)


def test_os_system_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weights": np.zeros(2), "x": _RunsShell(f"echo pwned > {marker}")})
    with pytest.raises(pickle.UnpicklingError, match=r"refused global (os|posix|nt)\.system"):
        restricted_load(payload, NUMPY_ALLOWED)
    assert not marker.exists()


def test_builtins_eval_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps([_Evals(f"open({str(marker)!r}, 'w').write('pwned')")])
    with pytest.raises(pickle.UnpicklingError, match=r"refused global builtins\.eval"):
        restricted_load(payload, NUMPY_ALLOWED)
    assert not marker.exists()


def test_empty_allow_list_refuses_numpy():
    with pytest.raises(pickle.UnpicklingError, match="numpy"):
        restricted_load(pickle.dumps(np.zeros(2)), {})


def test_persistent_ids_refused():
    class _External(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage-0" if obj == "external" else None

    buffer = io.BytesIO()
    _External(buffer).dump(["external"])
    with pytest.raises(pickle.UnpicklingError, match="persistent id"):
        restricted_load(buffer.getvalue(), NUMPY_ALLOWED)


class _Network:
    """Stands in for a dnnlib class whose code must not run when its pickle is read."""

    constructed = 0

    def __init__(self) -> None:
        type(self).constructed += 1
        self.variables = {"w": np.ones(2, np.float32)}

    def __setstate__(self, state):  # pragma: no cover - must never be called by the restricted load
        raise AssertionError("real class code ran")


def test_stub_class_records_state_without_running_code():
    payload = pickle.dumps(_Network())
    key = (_Network.__module__, _Network.__qualname__)
    before = _Network.constructed
    loaded = restricted_load(payload, {**NUMPY_ALLOWED, key: stub_class(*key)})
    assert _Network.constructed == before
    assert type(loaded).__name__ == "_Network" and not isinstance(loaded, _Network)
    np.testing.assert_array_equal(loaded.state["variables"]["w"], np.ones(2))
