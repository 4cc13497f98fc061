"""scripts/gpu_check.py --dry-run: the prepared GPU check runs its steps on the CPU and writes its report."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_writes_the_report(tmp_path):
    # The compile benchmark alone takes a minute of CPU compiling; the other steps cover the plumbing.
    steps = "pytest_cuda,run_device,run_cpu,run_bf16,benchmark_eager_vs_fast"
    report = load_script().main(["--dry-run", "--out", str(tmp_path), "--only", steps])
    assert [s["step"] for s in report["steps"]] == steps.split(",")
    assert all(s["status"] == "ok" for s in report["steps"]), [s["output_tail"] for s in report["steps"]]
    comparison = report["device_vs_cpu"]
    assert comparison["compared"] == 2 and comparison["within_tolerance"] is True
    assert report["bf16"]["all_finite"] is True
    best = report["benchmarks"]["eager_vs_fast"]["best"]["fast"]
    assert best["seconds_per_100_step_search"] == pytest.approx(100 * best["s_per_step"])
    assert report["benchmarks"]["compile"] is None  # not run: no numbers, never placeholders
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["dry_run"] is True
    text = (tmp_path / "gpu_check.md").read_text()
    assert "dry run on the CPU: no GPU numbers" in text and "compile: no numbers" in text


def test_refuses_to_run_without_cuda_unless_dry(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit):
        load_script().main(["--out", str(tmp_path)])
