"""``fetch_weights.py ffhq`` / pulse.io.weights.fetch_ffhq against a loopback HTTP server (no internet).

The served files are small ``torch.save``'d state dicts of a 32 px Synthesis and a narrow Mapping made
here; ``pulse.io.weights.FFHQ_LAYOUT`` is pointed at that layout so the key/shape check applies to them.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import threading
from pathlib import Path

import pytest
import torch

import pulse.io.weights as weights
from pulse.generators.stylegan import Mapping, Synthesis
from pulse.io.cli_fetch import main as cli_main

SMALL = {"resolution": 32, "fmap_base": 256, "fmap_max": 32, "dlatent_size": 16}
MAPPING = {"latent_size": 16, "dlatent_size": 16, "mapping_layers": 3, "mapping_fmaps": 8}


class _Recording(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass  # keep pytest output clean


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Recording, directory=str(root)))
    httpd.paths = []  # type: ignore[attr-defined]
    httpd.root = root  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _url(server, name: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{name}"


def _serve_state(server, name: str, state: dict) -> str:
    """torch.save ``state`` as ``name`` on the server; returns its sha256."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (server.root / name).write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


@pytest.fixture
def small_layout(monkeypatch):
    monkeypatch.setattr(weights, "FFHQ_LAYOUT", weights.Layout(synthesis=SMALL, mapping=MAPPING))


@pytest.fixture
def served(server, small_layout):
    """Both files served; returns {name: (url, sha256, state)}."""
    torch.manual_seed(0)
    states = {"synthesis": Synthesis(**SMALL).state_dict(), "mapping": Mapping(**MAPPING).state_dict()}
    return {name: (_url(server, f"{name}.pt"), _serve_state(server, f"{name}.pt", s), s) for name, s in states.items()}


def _cache() -> Path:
    return weights.ffhq_dir()


def _cache_files() -> list[str]:
    return sorted(p.name for p in _cache().iterdir()) if _cache().exists() else []


def test_registry_has_urls_and_no_invented_checksums():
    for entry in weights.FFHQ_FILES.values():
        assert entry.urls and all(url.startswith("https://") for url in entry.urls)
        assert entry.sha256 is None  # none was ever published; see pulse.io.weights


def test_unknown_checksum_requires_explicit_choice(served, server, capsys):
    assert cli_main(["ffhq", "--url", f"synthesis={served['synthesis'][0]}", "--only", "synthesis"]) == 1
    error = capsys.readouterr().err
    assert "no known sha256 for synthesis.pt" in error and "--trust-unverified" in error
    assert server.paths == [] and _cache_files() == []  # nothing was even requested


def test_sha256_verified_download(served, server, capsys):
    argv = ["ffhq", "--quiet"]
    for name, (url, sha, _) in served.items():
        argv += ["--url", f"{name}={_url(server, 'missing.pt')}", "--url", f"{name}={url}", "--sha256", f"{name}={sha}"]
    assert cli_main(argv) == 0
    assert "sha256 verified" in capsys.readouterr().out
    assert _cache_files() == ["mapping.pt", "synthesis.pt"]
    for name, (_, _, state) in served.items():
        loaded = torch.load(_cache() / f"{name}.pt", weights_only=True)
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
    # 404 on the first mirror, then the second one, for each file.
    assert server.paths == ["/missing.pt", "/synthesis.pt", "/missing.pt", "/mapping.pt"]
    # Verified files in place are not fetched again.
    assert cli_main(argv) == 0
    assert len(server.paths) == 4


def test_checksum_mismatch_refused_and_leaves_nothing(served, capsys):
    url, sha, _ = served["synthesis"]
    wrong = "0" * 64
    assert cli_main(["ffhq", "--only", "synthesis", "--url", url, "--sha256", wrong, "--quiet"]) == 1
    error = capsys.readouterr().err
    assert "sha256 mismatch" in error and wrong in error and sha in error
    assert _cache_files() == []  # neither the file nor a partial or staging copy


def test_wrong_key_set_refused_and_removed(server, small_layout, capsys):
    state = Synthesis(**SMALL).state_dict()
    state.pop("torgb.bias")
    state["extra.weight"] = torch.zeros(2)
    url = _url(server, "synthesis.pt")
    sha = _serve_state(server, "synthesis.pt", state)
    assert cli_main(["ffhq", "--only", "synthesis", "--url", url, "--sha256", sha, "--quiet"]) == 1
    error = capsys.readouterr().err
    assert "does not fit our synthesis network" in error and "torgb.bias" in error and "extra.weight" in error
    assert _cache_files() == []


def test_wrong_shapes_refused(server, small_layout):
    state = Synthesis(**{**SMALL, "fmap_max": 16}).state_dict()  # same keys, narrower
    url = _url(server, "synthesis.pt")
    _serve_state(server, "synthesis.pt", state)
    with pytest.raises(weights.WeightsError, match="shapes differ"):
        weights.fetch_ffhq(["synthesis"], urls={"synthesis": [url]}, trust_unverified=True, progress=False)
    assert _cache_files() == []


def test_html_page_is_explained(server, small_layout):
    (server.root / "page").write_bytes(b"<!DOCTYPE html><html>Google Drive - Quota exceeded</html>")
    with pytest.raises(weights.WeightsError, match="HTML page"):
        weights.fetch_ffhq(
            ["mapping"], urls={"mapping": [_url(server, "page")]}, trust_unverified=True, progress=False, log=print
        )
    assert _cache_files() == []


def test_trust_unverified_downloads_and_reports_digest(served, server, capsys):
    url, sha, _ = served["mapping"]
    assert cli_main(["ffhq", "--only", "mapping", "--url", url, "--trust-unverified", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "UNVERIFIED" in out and sha in out
    assert _cache_files() == ["mapping.pt"]
    # A present, fitting file is used without flags and without a request.
    assert cli_main(["ffhq", "--only", "mapping", "--url", url]) == 0
    assert "present" in capsys.readouterr().out and server.paths == ["/mapping.pt"]


def test_bare_url_needs_a_file_name(served, capsys):
    assert cli_main(["ffhq", "--url", served["synthesis"][0], "--trust-unverified"]) == 1
    assert "say which file" in capsys.readouterr().err


def test_bad_sha256_argument(served, capsys):
    assert cli_main(["ffhq", "--only", "synthesis", "--sha256", "abc123"]) == 1
    assert "64-hex-digit" in capsys.readouterr().err
