"""What each logger writes for a run of the default problem (CSV, TensorBoard, W&B offline/disabled)."""

import csv
import os
import struct
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import run as cli

ROOT = Path(__file__).resolve().parents[1]


def run_with(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["solver.steps=3", "data.num=2", "data.factors=[8]", "progress=false", f"out_dir={tmp_path}"]
            + list(overrides),
        )
    return cli.run(cfg)


def test_csv_logger_holds_per_sample_and_summary_metrics(tmp_path):
    summary = run_with(tmp_path, "logger=csv", "log_steps=true")
    rows = list(csv.DictReader(open(tmp_path / "logs" / "metrics.csv")))
    samples = [r for r in rows if r.get("sample/downscale_error")]
    assert len(samples) == 2
    final = [r for r in rows if r.get("summary/success_rate")]
    assert float(final[-1]["summary/success_rate"]) == summary.success_rate
    assert float(final[-1]["summary/mean_downscale_error"]) == pytest.approx(summary.mean_downscale_error)
    assert len([r for r in rows if r.get("search/loss")]) == 3  # one per step (log_steps)
    assert (tmp_path / "logs" / "hparams.yaml").read_text().count("steps: 3") >= 1


def test_tensorboard_logger_holds_scalars_and_grid(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = run_with(tmp_path, "logger=tensorboard")
    scalars, images = {}, set()
    for events in (tmp_path / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = acc.Scalars(tag)
        images |= set(acc.Tags()["images"])
    assert scalars["summary/success_rate"][-1].value == pytest.approx(summary.success_rate)
    assert len(scalars["sample/downscale_error"]) == 2
    assert "grid" in images


def wandb_records(run_file: Path) -> list:
    """Records of an offline W&B run file: a LevelDB-style log (32 KiB blocks, 7-byte chunk headers)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    records, partial, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        partial = chunk if kind in (1, 2) else partial + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(partial)
            records.append(record)
    return records


def test_wandb_offline_run_folder_holds_the_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    summary = run_with(tmp_path, "logger=wandb", "tags=[smoke]")
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    history = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                history[item.key or "/".join(item.nested_key)] = item.value_json
    assert float(history["summary/success_rate"]) == pytest.approx(summary.success_rate)
    assert "sample/downscale_error" in history and "samples/_type" in history  # per-sample table
    (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert "smoke" in run_record.tags
    config = [r.config for r in records if r.WhichOneof("record_type") == "config"]
    assert any(
        item.key == "solver" and '"steps":3' in item.value_json.replace(" ", "") for c in config for item in c.update
    )
    # Offline mode was chosen through wandb.init, not through a leaked environment variable.
    assert os.environ.get("WANDB_MODE") == "offline"


def test_wandb_disabled_writes_nothing_and_still_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    summary = run_with(tmp_path, "logger=wandb")
    assert summary.samples == 2 and (tmp_path / "results.csv").is_file()
    assert not list((tmp_path / "wandb").glob("*run-*"))
