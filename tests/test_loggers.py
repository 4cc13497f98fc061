"""What each logger writes for a run of the default problem (CSV, TensorBoard, W&B offline/disabled)."""

import csv
import os
import struct
import threading
import time
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
    if len(data) < 7:  # W&B has not written its header yet
        return []
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
        if pos + 7 + length > len(data):  # a chunk still being written: read it next time
            break
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        partial = chunk if kind in (1, 2) else partial + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(partial)
            records.append(record)
    return records


def wait_for_wandb_run(folder: Path, timeout: float = 60.0) -> list:
    """The records of the one offline run under ``folder`` once W&B has written its ``exit`` record.

    W&B's service process writes the run file on its own schedule, so right after ``wandb.finish()`` the
    file may still hold only its 7-byte header; this polls until the run's last record is there (or the
    timeout passes, and the caller's assertions say what is missing).
    """
    deadline = time.monotonic() + timeout
    while True:
        files = list(folder.glob("offline-run-*/run-*.wandb"))
        records = wandb_records(files[0]) if len(files) == 1 else []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def test_waiting_reader_sees_a_run_file_that_is_written_late(tmp_path):
    """The flake (a 7-byte run file when read): the reader waits for the exit record instead of reading early."""
    pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2

    run_dir = tmp_path / "wandb" / "offline-run-20260101_000000-abc"
    run_dir.mkdir(parents=True)
    run_file = run_dir / "run-abc.wandb"
    header = b":W&B\x00\x00\x01"
    run_file.write_bytes(header)

    def chunk(record) -> bytes:
        payload = record.SerializeToString()
        return struct.pack("<IHB", 0, len(payload), 1) + payload

    history, done = wandb_internal_pb2.Record(), wandb_internal_pb2.Record()
    history.history.item.add(key="summary/success_rate", value_json="0.5")
    done.exit.exit_code = 0

    def finish_late() -> None:
        time.sleep(0.3)
        run_file.write_bytes(header + chunk(history)[:5])  # half a chunk first
        time.sleep(0.3)
        run_file.write_bytes(header + chunk(history) + chunk(done))

    writer = threading.Thread(target=finish_late)
    writer.start()
    assert wandb_records(run_file) == []  # what the old test read
    records = wait_for_wandb_run(tmp_path / "wandb", timeout=30)
    writer.join()
    assert [r.WhichOneof("record_type") for r in records] == ["history", "exit"]
    assert records[0].history.item[0].value_json == "0.5"


def test_wandb_logger_leaves_the_anonymous_setting_unset(tmp_path, monkeypatch):
    """Lightning hands wandb.init anonymous=None, which W&B warns has no effect; our logger does not."""
    wandb = pytest.importorskip("wandb")
    from hydra.utils import instantiate

    monkeypatch.setenv("WANDB_MODE", "offline")
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["logger=wandb", f"out_dir={tmp_path}"])
    seen = {}
    monkeypatch.setattr(wandb, "init", lambda **kwargs: seen.update(kwargs) or object())
    monkeypatch.setattr(wandb, "run", None)
    logger = instantiate(cfg.logger.wandb)
    logger.experiment  # noqa: B018  (starts the run: calls wandb.init)
    assert seen["project"] == "pulse" and seen["mode"] == "offline"
    assert "anonymous" not in seen
    from pytorch_lightning.loggers import WandbLogger

    assert isinstance(logger, WandbLogger)  # the runner's W&B-specific logging still applies


def test_wandb_offline_run_folder_holds_the_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    summary = run_with(tmp_path, "logger=wandb", "tags=[smoke]")
    records = wait_for_wandb_run(tmp_path / "wandb")
    assert len(list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
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
