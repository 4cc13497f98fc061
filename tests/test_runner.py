import csv
import json

import torch

from pulse.data import GeneratedFaces
from pulse.runner import Runner
from pulse.solver import PulseSolver, SearchSettings


class CountingSolver(PulseSolver):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.solved = []

    def solve(self, lr_images, seeds=None, callback=None):
        self.solved.append(lr_images.shape[0])
        return super().solve(lr_images, seeds=seeds, callback=callback)


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_outputs_summary_and_resume(tmp_path, dcgan):
    problems = list(GeneratedFaces(dcgan, num=3, factors=[4, 8]))
    solver = CountingSolver(dcgan, settings=SearchSettings(steps=4, duplicates=2))
    summary = Runner(solver, tmp_path, batch_size=2, progress=False).run(problems)
    # Batches never mix input sizes: 3 x4 inputs -> 2 + 1, 3 x8 inputs -> 2 + 1.
    assert solver.solved == [2, 1, 2, 1]
    rows = read_rows(tmp_path / "results.csv")
    assert len(rows) == 12 and summary.samples == 12
    assert {r["scale"] for r in rows} == {"4", "8"}
    for row in rows:
        assert (tmp_path / row["image"]).is_file()
        assert float(row["downscale_error"]) >= 0 and row["success"] in ("True", "False")
        assert float(row["psnr_hr"]) > 5
    assert summary.successes == sum(r["success"] == "True" for r in rows)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["samples"] == 12 and saved["metrics"]["psnr_hr"] is not None
    assert (tmp_path / "grid.png").is_file()

    # Rerun: nothing is recomputed, nothing is lost.
    before = (tmp_path / "results.csv").read_text()
    again = Runner(solver, tmp_path, batch_size=2, progress=False).run(problems)
    assert solver.solved == [2, 1, 2, 1] and again.samples == 12
    assert (tmp_path / "results.csv").read_text() == before

    # A lost image is redone; the other rows are kept as they were.
    (tmp_path / "sr" / "face001_x8_1.png").unlink()
    Runner(solver, tmp_path, batch_size=2, progress=False).run(problems)
    assert solver.solved[-1] == 1
    rows_after = read_rows(tmp_path / "results.csv")
    assert len(rows_after) == 12
    kept = {(r["name"], r["duplicate"]): r for r in rows}
    for row in rows_after:
        if row["name"] != "face001_x8":
            assert row == kept[(row["name"], row["duplicate"])]


def test_interrupted_run_keeps_finished_batches(tmp_path, dcgan):
    problems = list(GeneratedFaces(dcgan, num=4, factors=[8]))

    class Crash(CountingSolver):
        def solve(self, lr_images, seeds=None, callback=None):
            if len(self.solved) == 1:
                raise KeyboardInterrupt
            return super().solve(lr_images, seeds=seeds, callback=callback)

    crashing = Crash(dcgan, settings=SearchSettings(steps=3))
    try:
        Runner(crashing, tmp_path, batch_size=2, progress=False).run(problems)
    except KeyboardInterrupt:
        pass
    assert len(read_rows(tmp_path / "results.csv")) == 2
    solver = CountingSolver(dcgan, settings=SearchSettings(steps=3))
    summary = Runner(solver, tmp_path, batch_size=2, progress=False).run(problems)
    assert solver.solved == [2] and summary.samples == 4


def test_same_seed_same_results_regardless_of_batching(tmp_path, dcgan):
    problems = list(GeneratedFaces(dcgan, num=3, factors=[8]))
    settings = SearchSettings(steps=5)
    Runner(PulseSolver(dcgan, settings=settings), tmp_path / "a", batch_size=3, progress=False).run(problems)
    Runner(PulseSolver(dcgan, settings=settings), tmp_path / "b", batch_size=1, progress=False).run(problems)
    a = {r["name"]: r for r in read_rows(tmp_path / "a" / "results.csv")}
    b = {r["name"]: r for r in read_rows(tmp_path / "b" / "results.csv")}
    assert a.keys() == b.keys()
    for name in a:
        assert a[name]["seed"] == b[name]["seed"]
        assert abs(float(a[name]["downscale_error"]) - float(b[name]["downscale_error"])) < 1e-5
    torch.manual_seed(0)
