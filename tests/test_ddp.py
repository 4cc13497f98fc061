"""Several processes (gloo DDP on the CPU) give the same run folder as one process.

The multi-process runs are subprocesses of ``tests/ddp_job.py``: Lightning's ``ddp`` strategy re-runs the
command line of the process that started it, and ``ddp_spawn`` pickles the work for fresh interpreters.
"""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pulse.runner import ShardedBatches

JOB = Path(__file__).with_name("ddp_job.py")


def run_job(out_dir: Path, strategy: str, devices: int, inputs: int, batch: int = 1) -> str:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(JOB), str(out_dir), strategy, str(devices), str(inputs), str(batch)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def rows(out_dir: Path) -> list[dict[str, str]]:
    """results.csv without the wall-time columns (the only ones that may differ between runs)."""
    with (out_dir / "results.csv").open(newline="") as handle:
        timings = ("seconds", "step_seconds")
        return [{k: v for k, v in row.items() if k not in timings} for row in csv.DictReader(handle)]


def logged_samples(out_dir: Path) -> int:
    with (out_dir / "logs" / "version_0" / "metrics.csv").open(newline="") as handle:
        return sum(row.get("sample/downscale_error") not in (None, "") for row in csv.DictReader(handle))


def test_ranks_without_a_batch_get_one_empty_batch():
    batches = [[0, 1], [2]]
    assert [list(ShardedBatches(batches, rank, 3)) for rank in range(3)] == [[[0, 1]], [[2]], [[]]]
    assert list(ShardedBatches([], 0, 1)) == []  # one process: nothing to do is nothing to iterate


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Three inputs, two duplicates each, one process."""
    out = tmp_path_factory.mktemp("one_process")
    run_job(out, "auto", 1, 3)
    return out


@pytest.mark.slow
def test_ddp_spawn_runs_every_rank_on_its_own_share(reference, tmp_path):
    # The loader used to be built in the parent, as rank 0: both workers ran batches 0 and 2, none ran batch 1.
    run_job(tmp_path, "ddp_spawn", 2, 3)
    assert rows(tmp_path) == rows(reference)
    assert logged_samples(tmp_path) == 6  # the per-sample series holds every rank's samples
    assert not list(tmp_path.glob("results.rank*.csv")) and not list(tmp_path.rglob(".*.tmp*"))


@pytest.mark.slow
def test_ddp_resume_with_fewer_batches_than_processes(reference, tmp_path):
    # One input left to redo, two processes: rank 1 has no batch (it used to fail and hang rank 0).
    shutil.copytree(reference, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "logs")
    (tmp_path / "sr" / "face001_x4_0.png").unlink()
    stdout = run_job(tmp_path, "ddp", 2, 3)
    assert stdout.count("rank summary: 6 samples") == 2  # every process returns the whole run's summary
    assert rows(tmp_path) == rows(reference)
    assert logged_samples(tmp_path) == 2  # the redone input's two samples, logged once


def test_only_rank_zero_prints_the_run_summary(tmp_path, monkeypatch, capsys):
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    import run as cli
    from tests.test_cli import make_cfg

    cfg = make_cfg("solver.steps=1", "data.num=1", "data.factors=[8]", "progress=false", f"out_dir={tmp_path}")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    cli.run(cfg)
    assert "pulse: " not in capsys.readouterr().out
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    cli.run(cfg)
    assert "pulse: 1 samples" in capsys.readouterr().out


@pytest.fixture(scope="module")
def one_batch_reference(tmp_path_factory) -> Path:
    """Two inputs in one batch (batch size 4), one process."""
    out = tmp_path_factory.mktemp("one_batch")
    run_job(out, "auto", 1, 2, batch=4)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn", "ddp_fork"])
def test_one_batch_over_two_processes_matches_one_process(one_batch_reference, tmp_path, strategy):
    # One batch, two processes: rank 1 gets only the empty batch; the run must neither hang nor lose a sample.
    run_job(tmp_path, strategy, 2, 2, batch=4)
    assert rows(tmp_path) == rows(one_batch_reference)
    assert len(rows(tmp_path)) == 4
