"""pulse-demo (pulse/demo.py): the page's logic without a browser, then the real page in headless Chromium.

The browser test needs the `demo` extra (Gradio), Playwright's Python package and a system Chromium
(`apt-get install -y chromium`; Playwright's own browser download is never used). It skips, naming what is
missing, otherwise. Nothing needs the internet: the server listens on 127.0.0.1 with analytics off.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pulse.faces import dlib_available

ROOT = Path(__file__).resolve().parents[1]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


def missing_for_browser_test() -> str | None:
    if importlib.util.find_spec("gradio") is None:
        return "Gradio not installed (pip install -e '.[demo]')"
    if importlib.util.find_spec("playwright") is None:
        return "Playwright not installed (pip install playwright; its browser download is not needed)"
    if chromium_path() is None:
        return "no Chromium on PATH (apt-get install -y chromium)"
    if not dlib_available():
        return "dlib not installed (pip install -e '.[faces]')"
    if importlib.util.find_spec("skimage") is None:
        return "scikit-image not installed (the test photo is skimage.data.astronaut())"
    return None


def astronaut(path: Path, size: tuple[int, int] = (192, 256)) -> Path:
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()[:, 64:448]).resize(size, Image.Resampling.LANCZOS).save(path)
    return path


def test_examples_are_the_fetched_celeba_photos(tmp_path, monkeypatch):
    import json

    from pulse.demo import example_photos

    assert example_photos() == []  # the test cache has nothing fetched
    folder = tmp_path / "celeba"
    folder.mkdir()
    for name in ("000009.jpg", "000007.jpg", "000008.jpg"):
        (folder / name).write_bytes(b"jpeg")
    manifest = {"files": {name: "0" * 64 for name in ("000009.jpg", "000007.jpg", "000008.jpg")}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("PULSE_CACHE", str(tmp_path))
    assert [Path(p).name for p in example_photos(2)] == ["000007.jpg", "000008.jpg"]


def test_solver_names_and_generator_choice(tmp_path):
    from pulse.demo import default_generator, solver_names

    (tmp_path / "solver").mkdir()
    for name in ("ilo", "pulse", "langevin"):
        (tmp_path / "solver" / f"{name}.yaml").write_text("")
    assert solver_names(tmp_path) == ["pulse", "ilo", "langevin"]
    assert "pulse" in solver_names() and "ilo" in solver_names()
    assert default_generator("cpu") == "dcgan_faces"
    assert default_generator("cuda") == "dcgan_faces"  # the test cache has no StyleGAN weights
    from pulse.io.weights import ffhq_dir

    ffhq_dir().mkdir(parents=True)
    for name in ("synthesis.pt", "mapping.pt"):
        (ffhq_dir() / name).write_bytes(b"")
    assert default_generator("cuda") == "stylegan_ffhq" and default_generator("cpu") == "dcgan_faces"


@pytest.mark.skipif(not dlib_available(), reason="dlib not installed (pip install -e '.[faces]')")
def test_backend_restores_a_photo_and_reports_progress(tmp_path):
    pytest.importorskip("skimage")
    from PIL import Image

    from pulse.demo import DemoBackend, metrics_markdown

    photo = np.asarray(Image.open(astronaut(tmp_path / "a.png")))
    seen = []
    result = DemoBackend().restore(photo, 2, "pulse", 2, 3, progress=lambda fraction, text: seen.append(text))
    assert result.restored.shape == (3, 512, 384) and result.faces
    assert seen[-1] == "step 3/3" and len(seen) == 3
    assert all(len(face.samples) == 2 for face in result.faces)
    report = metrics_markdown(result)
    assert report.startswith("**restored") and "192x256 -> 384x512" in report and "(pasted)" in report
    with pytest.raises(ValueError, match="no photo"):
        DemoBackend().restore(None, 2, "pulse", 1, 3)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"pulse-demo exited with {process.returncode}: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"pulse-demo did not answer at {url} within {timeout} s")


RECORD_PROGRESS = """() => {
    window.progressTexts = [];
    new MutationObserver(() => {
        const found = document.body.innerText.match(/step \\d+\\/\\d+/);
        if (found) window.progressTexts.push(found[0]);
    }).observe(document.body, {childList: true, subtree: true, characterData: true});
}"""


def stand_in_celeba(cache: Path) -> Path:
    """A cache whose CelebA folder holds one 178 x 218 JPEG (a crop of skimage's astronaut, not a CelebA photo)."""
    import hashlib
    import json

    from PIL import Image
    from skimage import data

    folder = cache / "celeba"
    folder.mkdir(parents=True)
    Image.fromarray(data.astronaut()[40:258, 110:288]).save(folder / "000007.jpg", quality=95)
    digest = hashlib.sha256((folder / "000007.jpg").read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps({"files": {"000007.jpg": digest}}))
    return folder / "000007.jpg"


def restored_size(page) -> tuple[int, int]:
    restored = page.locator("#restored img").first
    restored.wait_for(timeout=180_000)
    return tuple(restored.evaluate("img => [img.naturalWidth, img.naturalHeight]"))


@pytest.mark.slow
@pytest.mark.skipif(missing_for_browser_test() is not None, reason=str(missing_for_browser_test()))
def test_the_page_restores_an_uploaded_photo_and_an_example_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    photo = astronaut(tmp_path / "astronaut.png")
    stand_in_celeba(tmp_path / "cache")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1"}
    env["PULSE_CACHE"] = str(tmp_path / "cache")
    command = [sys.executable, "-m", "pulse.demo", "--port", str(port), "--steps", "3", "--device", "cpu"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_server(url, process)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url)
            page.locator("#restore").wait_for(timeout=30_000)
            assert "DigiFace" in page.locator("#prior-note").inner_text()  # what the embedded prior cannot do

            # An uploaded photo, the page's defaults (x4, PULSE, 1 sample, 3 steps).
            page.locator("#photo input[type=file]").set_input_files(str(photo))
            page.locator("#photo img").first.wait_for(timeout=30_000)  # the upload's preview
            page.locator("#restore").click()
            assert restored_size(page) == (4 * 192, 4 * 256)  # the scale, the photo's aspect ratio
            assert page.locator("#samples-out img").count() >= 1 and page.locator("#lr-faces img").count() >= 1
            assert "restored" in page.locator("#metrics").inner_text()

            # A CelebA example, x2, 2 samples, 40 steps: the progress bar counts the steps meanwhile.
            page.locator("img[src*='000007.jpg']").first.click()
            page.locator("#scale").get_by_text("2", exact=True).click()
            for slider, value in (("#steps", "40"), ("#samples", "2")):
                page.locator(f"{slider} input[type=number]").fill(value)
                page.locator(f"{slider} input[type=number]").press("Enter")
            page.evaluate(RECORD_PROGRESS)
            page.locator("#restore").click()
            page.locator("#metrics").get_by_text("178x218 -> 356x436").wait_for(timeout=180_000)
            assert restored_size(page) == (2 * 178, 2 * 218)
            assert page.locator("#samples-out img").count() == 2  # one face, two samples
            progress = page.evaluate("window.progressTexts")
            assert any(text.endswith("/40") for text in progress), progress
            browser.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
