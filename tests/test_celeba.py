"""``pulse-fetch celeba`` against a loopback PyPI-style index (a small fake wheel made here), and data=celeba.

The fake wheel holds three tiny 178x218 JPEGs where the real one has 500 CelebA photos, plus code and
odd member names that must never be written. A last test reads the real photos when they are fetched
(``$PULSE_CACHE/celeba``) and is skipped otherwise.
"""

from __future__ import annotations

import hashlib
import io
import json
import stat
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pulse.io.celeba as celeba
import run as cli
from pulse.data import CELEBA_FACE_BOX, CelebAFaces, celeba_face
from pulse.degradations import degrade, operator_factory
from pulse.io.celeba import CelebAUnavailable, celeba_photos, fetch_celeba
from pulse.io.cli_fetch import main as cli_main
from pulse.io.fetch import read_zip_members
from tests.test_cli import make_cfg
from tests.test_fetch import _Handler, _Server

PHOTOS = ["000001", "000002", "000003"]
# The user's fetched photos, looked up at import, before conftest points PULSE_CACHE at an empty folder.
REAL = celeba.celeba_dir()


def _jpeg(seed: int) -> bytes:
    """A 178x218 JPEG: a smooth gradient with a bright 'face' block in the crop box, different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:218, 0:178]
    image = np.stack([x * 255 / 177, y * 255 / 217, np.full_like(x, 40 * seed, dtype=float)], axis=-1)
    left, top, right, bottom = CELEBA_FACE_BOX
    image[top:bottom, left:right] = rng.uniform(100, 220, 3)
    buffer = io.BytesIO()
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _fake_wheel(path: Path, extra: dict[str, bytes] | None = None) -> str:
    """Write a felonfinder-like wheel to ``path``; returns its sha256."""
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("felonfinder/__init__.py", "raise SystemExit('never imported')\n")
        wheel.writestr("felonfinder/img/mode.png", b"\x89PNG not a face")
        for index, stem in enumerate(PHOTOS):
            wheel.writestr(f"felonfinder/img/faces/{stem}.jpg", _jpeg(index + 1))
        for name, data in (extra or {}).items():
            wheel.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _IndexHandler(_Handler):
    """Serves ``<folder>/index.json`` for ``<folder>/``, as a PEP 691 simple index page."""

    def do_GET(self) -> None:
        if self.path.endswith("/"):
            self.path += "index.json"
        super().do_GET()


@pytest.fixture
def index(tmp_path):
    """A loopback package index listing a fake felonfinder wheel; yields (server, sha256)."""
    root = tmp_path / "served"
    root.mkdir()
    server = _Server(root)
    server.RequestHandlerClass = _IndexHandler
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    files = server.root / "files"
    files.mkdir()
    sha = _fake_wheel(files / celeba.WHEEL_FILE, {"felonfinder/img/faces/sub/../../evil.jpg": _jpeg(9)})
    page = server.root / "simple" / "felonfinder"
    page.mkdir(parents=True)
    listing = {
        "files": [
            {"filename": "felonfinder-1.0.3.tar.gz", "hashes": {"sha256": "1" * 64}, "url": "/files/other.tar.gz"},
            {"filename": celeba.WHEEL_FILE, "hashes": {"sha256": sha}, "url": f"/files/{celeba.WHEEL_FILE}"},
        ]
    }
    (page / "index.json").write_text(json.dumps(listing))
    yield server, sha
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _fetch(server, sha: str, dest: Path, **kwargs) -> list[str]:
    lines: list[str] = []
    kwargs.setdefault("fallback_urls", ())
    fetch_celeba(dest=dest, index_url=server.url("simple"), sha256=sha, progress=False, log=lines.append, **kwargs)
    return lines


# --------------------------------------------------------------------------------------------------
# fetch


def test_fetch_through_the_index_writes_only_the_photos(index, tmp_path):
    server, sha = index
    dest = tmp_path / "celeba"
    lines = _fetch(server, sha, dest)
    assert sorted(p.name for p in dest.iterdir()) == [f"{stem}.jpg" for stem in PHOTOS] + ["manifest.json"]
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path.parent / "evil.jpg").exists()
    assert any("skipped felonfinder/img/faces/sub/../../evil.jpg" in line for line in lines)
    assert "3 photos" in lines[-1] and "non-commercial" in lines[-1]
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["wheel_sha256"] == sha
    assert manifest["files"]["000002.jpg"] == hashlib.sha256((dest / "000002.jpg").read_bytes()).hexdigest()
    assert [path for path, _ in server.requests] == ["/simple/felonfinder/index.json", f"/files/{celeba.WHEEL_FILE}"]
    assert [p.name for p in celeba_photos(dest)] == [f"{stem}.jpg" for stem in PHOTOS]

    # Idempotent: nothing is fetched again while every photo matches the manifest ...
    assert "present, 3 photos" in _fetch(server, sha, dest)[-1]
    assert len(server.requests) == 2
    # ... and a damaged photo makes the next call fetch and rewrite them.
    (dest / "000001.jpg").write_bytes(b"damaged")
    _fetch(server, sha, dest)
    assert len(server.requests) == 4 and (dest / "000001.jpg").read_bytes()[:3] == b"\xff\xd8\xff"


def test_interrupted_download_resumes(index, tmp_path):
    server, sha = index
    dest = tmp_path / "celeba"
    dest.mkdir()
    wheel = (server.root / "files" / celeba.WHEEL_FILE).read_bytes()
    (dest / (celeba.WHEEL_FILE + ".part")).write_bytes(wheel[:1000])
    _fetch(server, sha, dest)
    assert server.requests[-1] == (f"/files/{celeba.WHEEL_FILE}", "bytes=1000-")
    listing = (server.root / "simple" / "felonfinder" / "index.json").stat().st_size
    assert server.bytes_sent == listing + len(wheel) - 1000  # only the rest of the wheel travelled
    assert len(celeba_photos(dest)) == 3 and not list(dest.glob("*.whl*"))


def test_unreadable_index_falls_back_to_the_pinned_url(index, tmp_path):
    server, sha = index
    (server.root / "simple" / "felonfinder" / "index.json").unlink()
    _fetch(server, sha, tmp_path / "celeba", fallback_urls=[server.url(f"files/{celeba.WHEEL_FILE}")])
    assert len(celeba_photos(tmp_path / "celeba")) == 3


def test_wrong_hash_or_no_listing_fails_in_one_line_and_writes_nothing(index, tmp_path):
    server, sha = index
    dest = tmp_path / "celeba"
    with pytest.raises(CelebAUnavailable, match="lists no felonfinder 1.0.3 file with sha256 2222") as caught:
        _fetch(server, "2" * 64, dest)
    assert "\n" not in str(caught.value)
    # A pinned URL serving other bytes: the checksum fails and no photo is written.
    with pytest.raises(CelebAUnavailable, match="sha256 mismatch"):
        _fetch(server, "2" * 64, dest, fallback_urls=[server.url(f"files/{celeba.WHEEL_FILE}")])
    assert not dest.exists() or not any(dest.glob("*.jpg"))


def test_cli_from_a_local_wheel(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PULSE_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / celeba.WHEEL_FILE
    sha = _fake_wheel(wheel)
    monkeypatch.setattr(celeba, "WHEEL_SHA256", sha)
    assert cli_main(["celeba", "--from-wheel", str(wheel), "--quiet"]) == 0
    assert len(celeba_photos()) == 3 and wheel.is_file()  # a local wheel is the user's: kept
    wheel.write_bytes(b"PK not this wheel")
    assert cli_main(["celeba", "--from-wheel", str(wheel), "--force"]) == 1
    assert "error: CelebA photos not fetched: sha256 mismatch" in capsys.readouterr().err


def test_read_zip_members_refuses_links_and_duplicates(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("ok/a.jpg", b"a")
        link = zipfile.ZipInfo("ok/link.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zipped.writestr(link, "/etc/passwd")
    assert read_zip_members(archive, lambda name: name == "ok/a.jpg") == {"ok/a.jpg": b"a"}
    with pytest.raises(ValueError, match="symbolic link"):
        read_zip_members(archive, lambda name: name.startswith("ok/"))
    with pytest.raises(ValueError, match="limit 0"):
        read_zip_members(archive, lambda name: name == "ok/a.jpg", max_bytes=0)
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(archive, "a") as zipped:
        zipped.writestr("ok/a.jpg", b"again")
    with pytest.raises(ValueError, match="appears twice"):
        read_zip_members(archive, lambda name: name == "ok/a.jpg")
    (tmp_path / "b.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable zip"):
        read_zip_members(tmp_path / "b.zip", lambda name: True)


# --------------------------------------------------------------------------------------------------
# data=celeba


@pytest.fixture
def photos(tmp_path) -> Path:
    """A fetched folder made from the fake wheel (through the library, so the manifest is real)."""
    wheel = tmp_path / celeba.WHEEL_FILE
    sha = _fake_wheel(wheel)
    return fetch_celeba(dest=tmp_path / "celeba", from_wheel=wheel, sha256=sha, log=lambda line: None)


def test_data_source_crops_resizes_and_degrades(photos):
    data = CelebAFaces(resolution=32, count=2, start=1, factors=[4, 8], path=photos)
    problems = list(data)
    assert len(data) == len(problems) == 4
    assert [p.name for p in problems] == ["celeba000002_x4", "celeba000003_x4", "celeba000002_x8", "celeba000003_x8"]
    hr = celeba_face(photos / "000002.jpg", 32)
    assert hr.shape == (3, 32, 32) and torch.equal(problems[0].hr, hr) and torch.equal(problems[2].hr, hr)
    # The crop is the face box: the fake photo is flat there, so the HR image is (almost) one colour.
    assert hr.std(dim=(1, 2)).max() < 0.02
    bicubic = operator_factory(None)
    for problem, factor in zip(problems, (4, 4, 8, 8), strict=True):
        expected = (degrade(bicubic(factor), problem.hr[None])[0].clamp(0, 1) * 255).round() / 255
        assert problem.lr.shape == (3, 32 // factor, 32 // factor)
        assert torch.allclose(problem.lr, expected, atol=1e-6)


def test_data_source_options_are_checked(photos, tmp_path):
    assert len(CelebAFaces(resolution=16, count=None, start=1, factors=[4], path=photos)) == 2
    with pytest.raises(ValueError, match="data.count=3 from data.start=1.*3 are fetched"):
        CelebAFaces(resolution=16, count=3, start=1, path=photos)
    with pytest.raises(ValueError, match="data.start=3 is outside"):
        CelebAFaces(resolution=16, start=3, path=photos)
    (photos / "000003.jpg").unlink()
    with pytest.raises(CelebAUnavailable, match="1 of 3 CelebA photos missing.*pulse-fetch celeba"):
        CelebAFaces(resolution=16, path=photos)


def test_without_the_fetch_one_line_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PULSE_CACHE", str(tmp_path))
    with pytest.raises(CelebAUnavailable) as caught:
        CelebAFaces(resolution=64)
    message = str(caught.value)
    assert "\n" not in message and "`pulse-fetch celeba`" in message and str(tmp_path / "celeba") in message


def test_run_on_celeba_reports_fidelity_to_the_real_hr(photos, tmp_path):
    cfg = make_cfg(
        "data=celeba",
        f"data.path={photos}",
        "data.count=2",
        "data.factors=[8]",
        "solver.steps=2",
        "progress=false",
        f"out_dir={tmp_path / 'run'}",
    )
    summary = cli.run(cfg)
    assert summary.samples == 2
    assert np.isfinite(summary.metrics["psnr_hr"]) and np.isfinite(summary.metrics["ssim_hr"])


@pytest.mark.skipif(
    not (REAL / celeba.MANIFEST).is_file(), reason="real CelebA photos not fetched (pulse-fetch celeba)"
)
def test_real_photos_when_fetched():
    files = celeba_photos(REAL)
    assert len(files) == 500 and files[0].name == "000007.jpg"
    manifest = json.loads((REAL / celeba.MANIFEST).read_text())
    assert manifest["wheel_sha256"] == celeba.WHEEL_SHA256
    problems = list(CelebAFaces(resolution=64, count=2, factors=[8], path=REAL))
    assert [p.name for p in problems] == ["celeba000007_x8", "celeba000008_x8"]
    for problem in problems:
        assert problem.hr.shape == (3, 64, 64) and problem.lr.shape == (3, 8, 8)
        # A photo, not a flat or saturated image: real faces have texture and mid-tones.
        assert 0.1 < problem.hr.mean() < 0.9 and problem.hr.std() > 0.05


def test_real_faces_experiment_composes_for_both_data_sources():
    cfg = make_cfg("experiment=real_faces", "data=celeba", "data.count=64")
    assert cfg.task_name == "real_faces" and cfg.data.count == 64 and cfg.solver.steps == 100
    assert cfg.data._target_.endswith("CelebAFaces")
    cfg = make_cfg("experiment=real_faces", "data=generated_faces", "data.num=64")
    assert cfg.data.num == 64 and cfg.batch_size == 32


def test_committed_real_faces_table_is_the_generated_one():
    text = (Path(__file__).resolve().parents[1] / "experiments" / "real_faces" / "table.md").read_text()
    assert text.startswith("<!-- generated by: python scripts/make_table.py multirun/real_faces ")
    body = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| :")]
    assert body[0].startswith("| data | solver | scale | runs | n | success |")
    # 2 data sources x 2 solvers x 2 factors; each cell pools 3 search seeds x 64 faces.
    assert len(body) == 1 + 8 and all(" | 3 | 192 | " in line for line in body[1:])
