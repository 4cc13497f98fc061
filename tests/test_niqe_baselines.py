"""The paper's Table 2 pipeline end to end on a tiny stand-in: a data=folder run at 256 px (NIQE applies from
192 px), then scripts/niqe_baselines.py on its folder."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from PIL import Image
from skimage import data as skdata

import run as cli

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("niqe_baselines", ROOT / "scripts" / "niqe_baselines.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_records_niqe_and_the_baselines_script_prints_table_2(tmp_path, capsys):
    photos = tmp_path / "hr"
    photos.mkdir()
    astronaut = skdata.astronaut()  # 512 x 512 RGB
    for name, (y, x) in {"a": (0, 0), "b": (200, 150)}.items():
        Image.fromarray(np.ascontiguousarray(astronaut[y : y + 256, x : x + 256])).save(photos / f"{name}.png")
    overrides = [
        "generator=stylegan_synthetic", "generator.resolution=256", "data=folder", f"data.path={photos}",
        "data.factor=16", "solver.steps=2", "progress=false", f"out_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    cli.run(cfg)
    with (tmp_path / "run" / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert all(math.isfinite(float(r["niqe"])) and math.isfinite(float(r["niqe_hr"])) for r in rows)

    assert load_script().main([str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "2 images, x16" in out and "| paper (Table 2) | 3.90 | 12.48 | 7.06 | 2.47 |" in out
    cells = [c.strip() for c in out.splitlines()[-1].split("|")[2:-1]]
    means = [float(c.split(" ± ")[0]) for c in cells]  # HR, nearest, bicubic, PULSE
    hr_mean = float(np.mean([float(r["niqe_hr"]) for r in rows]))
    assert abs(means[0] - hr_mean) < 1e-3  # the script's HR score is the run's niqe_hr
    assert means[1] > means[0]  # blocky 16 px nearest upsampling is far less natural than the photo
