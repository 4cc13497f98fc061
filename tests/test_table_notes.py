"""make_table's notes stay quiet: a metric empty in every run is one note (and no column), per-group notes
only where some rows have a value and others do not."""

import csv
import json
from pathlib import Path

import yaml

from pulse import tables

NIQE_WHY = "NIQE needs at least 192x192 px (two 96-px blocks per side); outputs are 64x64"


def write_job(folder: Path, lr: str, rows: list[dict[str, str]]) -> None:
    folder.mkdir(parents=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with (folder / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"optimizer.lr={lr}"]))
    (folder / "config.yaml").write_text(yaml.safe_dump({"tags": []}))
    (folder / "summary.json").write_text(json.dumps({"notes": {"niqe": NIQE_WHY, "niqe_hr": NIQE_WHY}}))


def row(name: str, psnr_hr: str) -> dict[str, str]:
    return {"name": name, "success": "True", "downscale_error": "0.001", "psnr_hr": psnr_hr, "niqe": "", "niqe_hr": ""}


def test_a_column_empty_everywhere_is_one_note_and_no_column(tmp_path):
    # A 4-job sweep: niqe and niqe_hr are empty in every run; psnr_hr is empty only in the job with lr=0.4.
    for lr in ("0.1", "0.2", "0.3", "0.4"):
        value = "" if lr == "0.4" else "20"
        write_job(tmp_path / lr, lr, [row(f"f{i}", value) for i in range(4)])
    table = tables.make_table([tmp_path])
    assert "niqe" not in table.metrics and "niqe_hr" not in table.metrics and "psnr_hr" in table.metrics
    empty_notes = [note for note in table.notes if "niqe" in note]
    assert empty_notes == [f"niqe, niqe_hr: no value in any of the 4 run(s) ({NIQE_WHY}); column left out"]
    group_notes = [note for note in table.notes if "psnr_hr" in note]
    assert len(group_notes) == 1 and group_notes[0].startswith("optimizer.lr=0.4: psnr_hr missing for 4 of 4")
    text = tables.to_markdown(table)
    assert "| niqe" not in text and text.count("niqe, niqe_hr") == 1

    asked = tables.make_table([tmp_path], metrics=["downscale_error", "niqe"])  # asked for: kept, still one note
    assert asked.metrics == ["downscale_error", "niqe"]
    assert [note for note in asked.notes if "niqe" in note] == [
        f"niqe: no value in any of the 4 run(s) ({NIQE_WHY}); shown as {tables.MISSING}"
    ]
