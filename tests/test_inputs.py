"""Odd inputs never crash a run: every accepted size works with every downscale option or is refused
before the search with a reason, and every entry of an input folder is a result or a named skip."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

import run as cli
from pulse.data import ImageFolder, Problem, unique_names
from pulse.downscale import BicubicDownscale
from pulse.generators.stylegan import StyleGANGenerator
from pulse.runner import run_search, split_solvable
from pulse.solvers.pulse import PulseSolver, SearchSettings

ROOT = Path(__file__).resolve().parents[1]
DOWNSCALE_OPTIONS = sorted(p.stem for p in (ROOT / "configs" / "downscale").glob("*.yaml"))
SAME_SIZE = {"gray", "inpaint"}  # operators that keep the size: factor 1 only
TINY = ("generator=stylegan_synthetic", "generator.resolution=16", "generator.fmap_base=64", "generator.fmap_max=16")


def make_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="module")
def tiny():
    """A 16 px generator: accepted input sizes 1, 2, 4, 8 and 16."""
    return StyleGANGenerator.synthetic(resolution=16, fmap_base=64, fmap_max=16, fit_samples=500)


@pytest.mark.parametrize("option", DOWNSCALE_OPTIONS)
def test_every_accepted_size_runs_or_is_refused_before_the_search(option, tiny, tmp_path):
    kernel = tmp_path / "kernel.npy"
    np.save(kernel, np.ones((5, 5)))
    cfg = make_cfg(f"downscale={option}", *([f"downscale.path={kernel}"] if option == "kernel" else []))
    solver = PulseSolver(tiny, downscale=instantiate(cfg.downscale), settings=SearchSettings(steps=1))
    for side in (1, 2, 4, 8, 16):
        lr = torch.rand(1, 3, side, side)
        if option in SAME_SIZE and side != 16:
            with pytest.raises(ValueError, match="factor must be 1"):
                solver.check_input_size(side, side)
            continue
        solver.check_input_size(side, side)
        result = solver.solve(lr)
        assert result.lr.shape == lr.shape and torch.isfinite(result.downscale_error).all(), (option, side)


def test_bicubic_padding_wider_than_the_image_continues_the_mirror():
    # Factor 64 on a 64 px image pads 96 px per side: more than reflect padding can give in one fold.
    image = torch.rand(1, 3, 64, 64)
    assert BicubicDownscale(64)(image).shape == (1, 3, 1, 1)
    assert torch.allclose(BicubicDownscale(64)(torch.full((1, 3, 64, 64), 0.3)), torch.tensor(0.3))
    for padding in ("replicate", "circular", "constant"):
        assert BicubicDownscale(32, padding=padding)(image).shape == (1, 3, 2, 2)
    # Where F.pad's reflect works, the numbers are unchanged (factor 8: 12 px of a 64 px image).
    x = torch.nn.functional.pad(image, (0, 0, 12, 12), mode="reflect")
    from pulse.downscale import extend

    assert torch.equal(extend(image, 12, 12, dim=-2), x)
    with pytest.raises(ValueError, match="unknown bicubic padding 'mirror'"):
        BicubicDownscale(4, padding="mirror")


def test_inputs_the_operator_cannot_serve_are_skipped_with_a_reason(tiny, tmp_path):
    solver = PulseSolver(
        tiny, downscale=instantiate(make_cfg("downscale=gray").downscale), settings=SearchSettings(steps=1)
    )
    problems = [Problem("same", torch.rand(3, 16, 16)), Problem("small", torch.rand(3, 4, 4), source="small.png")]
    usable, refused = split_solvable(solver, problems)
    assert [p.name for p in usable] == ["same"] and list(refused) == ["small.png"]
    assert "factor must be 1" in refused["small.png"]
    summary = run_search(solver, problems, tmp_path, progress=False, metrics=[])
    assert summary.samples == 1 and "small.png" in summary.skipped_inputs
    assert "small.png" in json.loads((tmp_path / "summary.json").read_text())["skipped_inputs"]
    with pytest.raises(ValueError, match="no input can be searched.*factor must be 1"):
        run_search(solver, problems[1:], tmp_path / "none", progress=False, metrics=[])


def test_names_are_unique_by_construction(tmp_path):
    files = [tmp_path / n for n in ("photo.bmp", "photo.webp", "face.png", "a.png", "a.jpg", "a.png.jpg")]
    names, clashes = unique_names(files)
    assert names[tmp_path / "photo.bmp"] == "photo.bmp" and names[tmp_path / "photo.webp"] == "photo.webp"
    assert names[tmp_path / "face.png"] == "face"  # no clash: the stem, so seeds and outputs keep their names
    assert len(set(names.values())) == len(names)
    assert list(clashes) == ["a.png.jpg"] and "already a.png's" in clashes["a.png.jpg"]


def _save(path: Path, array: np.ndarray, mode: str | None = None, **options) -> None:
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path, **options)


def make_odd_folder(folder: Path, size: int = 8) -> dict[str, bool]:
    """The folder of issue 14: ``{entry: whether it should become a result}`` (sizes dividing 16 and 64)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def rgb(side: int, width: int | None = None) -> np.ndarray:
        return rng.integers(0, 256, (side, width or side, 3), dtype=np.uint8)

    _save(folder / "one.png", rgb(1))
    _save(folder / "two.png", rgb(2))
    _save(folder / "whole.jpg", rgb(size))
    (folder / "truncated.jpg").write_bytes((folder / "whole.jpg").read_bytes()[:40])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("this is not a PNG\n")
    Image.fromarray((rng.integers(0, 65536, (size, size))).astype(np.uint16)).save(folder / "deep16.png")
    _save(folder / "rgba.png", np.dstack([rgb(size), np.full((size, size), 200, np.uint8)]))
    _save(folder / "cmyk.jpg", rgb(size), "CMYK")
    _save(folder / "gray.jpg", rgb(size)[..., 0])
    frames = [Image.fromarray(rgb(size)) for _ in range(2)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    _save(folder / "photo.webp", rgb(size))
    _save(folder / "photo.bmp", rgb(size))
    _save(folder / "scan.tiff", rgb(size))
    _save(folder / "visage_é_顔.png", rgb(size))
    _save(folder / "wide.png", rgb(size, 2 * size))
    _save(folder / "odd17.png", rgb(17))
    (folder / "x.png").mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("a stray file\n")
    bad = {"truncated.jpg", "empty.png", "text.png", "wide.png", "odd17.png", "x.png", "notes.txt"}
    return {entry.name: entry.name not in bad for entry in folder.iterdir()}


def test_folder_of_odd_files_runs_end_to_end(tmp_path):
    expected = make_odd_folder(tmp_path / "in")
    out = tmp_path / "out"
    overrides = ("data=folder", f"data.path={tmp_path / 'in'}", "solver.steps=1", "progress=false", f"out_dir={out}")
    with pytest.warns(UserWarning):
        summary = cli.run(make_cfg(*TINY, *overrides))
    rows = list(csv.DictReader(open(out / "results.csv", encoding="utf-8")))
    skipped = json.loads((out / "summary.json").read_text(encoding="utf-8"))["skipped_inputs"]
    names = {row["name"] for row in rows}
    for entry, becomes_row in expected.items():
        as_row = Path(entry).stem in names or entry in names
        assert as_row == becomes_row and (entry in skipped) != becomes_row, (entry, skipped.get(entry))
    assert {"photo.webp", "photo.bmp", "visage_é_顔", "one", "two", "anim"} <= names
    assert summary.samples == len(rows) == sum(expected.values())
    assert "a folder" in skipped["x.png"] and "not an image file" in skipped["notes.txt"]
    assert "non-square" in skipped["wide.png"] and "allowed input sizes" in skipped["odd17.png"]
    images = ImageFolder(tmp_path / "in", resolution=16)
    assert len(images.files) == sum(expected.values()) + 5  # the five unreadable or unusable images


def test_an_image_too_large_for_pil_is_a_named_skip_not_a_crash(tmp_path, monkeypatch):
    from pulse.data import ImageError, load_image

    _save(tmp_path / "huge.png", np.zeros((8, 8, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 64 px is more than twice the limit: PIL's bomb error
    with pytest.raises(ImageError, match="huge.png: cannot read image"):
        load_image(tmp_path / "huge.png")
