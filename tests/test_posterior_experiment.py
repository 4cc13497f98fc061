"""experiments/posterior_sampling/analyse.py on small hand-made run folders."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("ps_analyse", ROOT / "experiments/posterior_sampling/analyse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(run: Path, coverage: float, ita_sr: list[float]) -> None:
    run.mkdir(parents=True)
    rows = [
        {"name": "a_x8", "duplicate": k, "scale": 8, "coverage_90": coverage, "ita_hr": 20.0, "ita_sr": v, "seconds": 1}
        for k, v in enumerate(ita_sr)
    ]
    with (run / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_tables_per_method_and_group(tmp_path):
    _write(tmp_path / "p", 0.5, [30.0, 34.0])
    _write(tmp_path / "l", 0.75, [18.0, 26.0])
    args = ["--run", f"pulse={tmp_path / 'p'}", "--run", f"langevin={tmp_path / 'l'}", "--label", "toy"]
    _load().main([*args, "--out", str(tmp_path), "--prior-samples", "0"])
    text = (tmp_path / "table_toy.md").read_text()
    assert "| toy | pulse | x8 | 1 | 2 | 0.500 | null |" in text
    assert "| pulse | x8 | tan | 1 | 12.0 | 2.8 |" in text  # mean ITA 32 - 20; stdev of (30, 34)
    assert "| langevin | x8 | tan | 1 | 2.0 | 5.7 |" in text


def test_plot_of_pulls_and_coverage(tmp_path):
    from PIL import Image

    module = _load()
    _write(tmp_path / "p", 0.5, [30.0, 34.0])
    _write(tmp_path / "l", 0.75, [18.0, 26.0])
    methods = {"pulse": module.per_input(tmp_path / "p"), "langevin": module.per_input(tmp_path / "l")}
    pulls = {8: [(1.0, -2.0, "tan"), (3.0, 0.5, "light"), (-1.0, -1.5, "tan")]}
    module.plot(methods, pulls, "toy", tmp_path / "plot_toy.png")
    with Image.open(tmp_path / "plot_toy.png") as image:
        assert image.format == "PNG" and image.width > 2 * image.height  # one pull panel, one coverage panel
