"""The Lightning runner and the run folder: outputs, resume after interruption, determinism, GIFs."""

import csv
import json

import pytest
import torch

from pulse.data import GeneratedFaces
from pulse.outputs import ResultStore
from pulse.runner import ShardedBatches, run_search, size_grouped_batches
from pulse.solvers.pulse import PulseSolver, SearchSettings


class CountingSolver(PulseSolver):
    def __init__(self, *args, crash_on_call=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.solved = []
        self.crash_on_call = crash_on_call

    def solve(self, lr_images, **kwargs):
        if len(self.solved) == self.crash_on_call:
            raise RuntimeError("simulated crash")
        self.solved.append(lr_images.shape[0])
        return super().solve(lr_images, **kwargs)


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_batches_group_by_size_and_shard_without_overlap(dcgan):
    problems = list(GeneratedFaces(dcgan, num=3, factors=[4, 8]))
    batches = size_grouped_batches(problems, 2)
    assert batches == [[0, 1], [2], [3, 4], [5]]
    shards = [list(ShardedBatches(batches, rank, 3)) for rank in range(3)]
    assert sorted(i for shard in shards for batch in shard for i in batch) == list(range(6))
    assert shards[0] == [[0, 1], [5]]


def test_outputs_summary_and_resume(tmp_path, dcgan):
    problems = list(GeneratedFaces(dcgan, num=3, factors=[4, 8]))
    solver = CountingSolver(dcgan, settings=SearchSettings(steps=4, duplicates=2))
    summary = run_search(solver, problems, tmp_path, batch_size=2, progress=False)
    assert solver.solved == [2, 1, 2, 1]  # never mixes input sizes in one batch
    rows = read_rows(tmp_path / "results.csv")
    assert len(rows) == 12 and summary.samples == 12
    assert [r["name"] for r in rows[:2]] == ["face000_x4", "face000_x4"]
    assert {r["scale"] for r in rows} == {"4", "8"}
    for row in rows:
        assert (tmp_path / row["image"]).is_file()
        assert float(row["downscale_error"]) >= 0 and row["success"] in ("True", "False")
        assert float(row["psnr_hr"]) > 5
    assert summary.successes == sum(r["success"] == "True" for r in rows)
    mean_error = sum(float(r["downscale_error"]) for r in rows) / 12
    assert summary.mean_downscale_error == pytest.approx(mean_error, rel=1e-4)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["samples"] == 12 and saved["metrics"]["psnr_hr"] == pytest.approx(summary.metrics["psnr_hr"])
    assert (tmp_path / "grid.png").is_file()

    # Rerun: nothing is recomputed, nothing is lost.
    before = (tmp_path / "results.csv").read_text()
    again = run_search(solver, problems, tmp_path, batch_size=2, progress=False)
    assert solver.solved == [2, 1, 2, 1] and again.samples == 12
    assert (tmp_path / "results.csv").read_text() == before

    # A lost image is redone (with both duplicates of its input); the other rows stay as they were.
    (tmp_path / "sr" / "face001_x8_1.png").unlink()
    run_search(solver, problems, tmp_path, batch_size=2, progress=False)
    assert solver.solved[-1] == 1
    rows_after = read_rows(tmp_path / "results.csv")
    assert len(rows_after) == 12
    kept = {(r["name"], r["duplicate"]): r for r in rows}
    for row in rows_after:
        if row["name"] != "face001_x8":
            assert row == kept[(row["name"], row["duplicate"])]


def test_interrupt_then_rerun_loses_and_repeats_nothing(tmp_path, dcgan):
    problems = list(GeneratedFaces(dcgan, num=4, factors=[8]))
    settings = SearchSettings(steps=3)
    crashing = CountingSolver(dcgan, settings=settings, crash_on_call=1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_search(crashing, problems, tmp_path, batch_size=2, progress=False)
    first = read_rows(tmp_path / "results.csv")
    assert [r["name"] for r in first] == ["face000_x8", "face001_x8"]

    solver = CountingSolver(dcgan, settings=settings)
    summary = run_search(solver, problems, tmp_path, batch_size=2, progress=False)
    assert solver.solved == [2] and summary.samples == 4
    final = read_rows(tmp_path / "results.csv")
    assert final[:2] == first  # finished rows untouched

    # And the resumed run equals an uninterrupted one.
    run_search(PulseSolver(dcgan, settings=settings), problems, tmp_path / "fresh", batch_size=2, progress=False)
    fresh = read_rows(tmp_path / "fresh" / "results.csv")
    for a, b in zip(final, fresh, strict=True):
        assert a["downscale_error"] == b["downscale_error"] and a["seed"] == b["seed"]


def test_same_seed_same_results_regardless_of_batching(tmp_path, dcgan):
    problems = list(GeneratedFaces(dcgan, num=3, factors=[8]))
    settings = SearchSettings(steps=5)
    run_search(PulseSolver(dcgan, settings=settings), problems, tmp_path / "a", batch_size=3, progress=False)
    run_search(PulseSolver(dcgan, settings=settings), problems, tmp_path / "b", batch_size=1, progress=False)
    a = {r["name"]: r for r in read_rows(tmp_path / "a" / "results.csv")}
    b = {r["name"]: r for r in read_rows(tmp_path / "b" / "results.csv")}
    assert a.keys() == b.keys()
    for name in a:
        assert a[name]["seed"] == b[name]["seed"]
        assert abs(float(a[name]["downscale_error"]) - float(b[name]["downscale_error"])) < 1e-5


def test_multi_process_rows_are_merged(tmp_path, dcgan):
    """Two ranks write their own files; the merge gives one table in input order."""
    problems = list(GeneratedFaces(dcgan, num=2, factors=[8]))
    solver = PulseSolver(dcgan, settings=SearchSettings(steps=2))
    for rank in (1, 0):
        store = ResultStore(tmp_path, rank=rank, world_size=2)
        mine = [problems[rank]]
        store.write_batch(mine, solver.solve(torch.stack([p.lr for p in mine])))
    assert sorted(p.name for p in tmp_path.glob("results.rank*.csv")) == ["results.rank0.csv", "results.rank1.csv"]
    assert ResultStore(tmp_path).finished(1) == {"face000_x8", "face001_x8"}
    rows = ResultStore(tmp_path).merge(problems)
    assert [r["name"] for r in rows] == ["face000_x8", "face001_x8"]
    assert not list(tmp_path.glob("results.rank*.csv"))


def test_intermediate_frames_become_gifs(tmp_path, dcgan):
    from PIL import Image

    problems = list(GeneratedFaces(dcgan, num=1, factors=[8]))
    run_search(PulseSolver(dcgan, settings=SearchSettings(steps=6)), problems, tmp_path, progress=False, frames_every=2)
    with Image.open(tmp_path / "frames" / "face000_x8_0.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (64, 64)


def test_grid_orders_samples_by_duplicate_number_not_file_name(tmp_path):
    """With 10+ samples, "_10" sorts before "_2" as text; the grid must follow the duplicate number."""
    from pulse.data import Problem, save_image

    problem = Problem(name="face", lr=torch.zeros(3, 4, 4), hr=None)
    rows = []
    for k in range(11):
        image = f"sr/face_{k}.png"
        save_image(torch.full((3, 8, 8), k / 10), tmp_path / image)
        rows.append({"name": "face", "duplicate": str(k), "image": image})
    grid = ResultStore(tmp_path).write_grid([problem], rows[::-1])
    from PIL import Image

    pixels = torch.tensor(list(Image.open(grid).convert("L").getdata()), dtype=torch.float32)
    width = Image.open(grid).width
    row = pixels.view(-1, width)[4]
    # Sample tiles follow the LR tile, in duplicate order: brightness rises monotonically.
    tile_values = [float(v) for v in row.unique_consecutive()]
    sample_values = [v for v in tile_values if v > 0]
    assert sample_values == sorted(sample_values) and len(sample_values) >= 10


def test_missing_metrics_sharing_a_reason_are_named_on_one_line():
    from pulse.outputs import RunSummary

    summary = RunSummary(
        samples=2,
        successes=1,
        success_rate=0.5,
        mean_downscale_error=0.1,
        metrics={"psnr_hr": 20.0, "coverage_90": None, "pixel_std": None, "niqe": None},
        notes={
            "coverage_90": "needs several samples",
            "niqe": "too small",
            "pixel_std": "needs several samples",
            "psnr_hr": "not shown: it has a value",
        },
    )
    assert summary.note_lines() == [
        "coverage_90, pixel_std unavailable: needs several samples",
        "niqe unavailable: too small",
    ]
