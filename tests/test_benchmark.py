"""scripts/benchmark.py --quick: a correctness run of the timing harness (no timing assertions)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_timing(timing: dict, batch: int) -> None:
    assert timing["timed_steps"] == 1
    assert timing["s_per_step"] > 0
    assert math.isclose(timing["steps_per_s"], 1 / timing["s_per_step"])
    assert math.isclose(timing["images_per_min"], 60 * batch / timing["s_per_step"])
    assert timing["peak_memory_mb"] > 10  # a Python process with torch loaded


def test_quick_run_writes_consistent_json(script, tmp_path, capsys):
    path = tmp_path / "out" / "bench.json"
    script.main(["--quick", "--no-allocator-tuning", "--json", str(path)])
    report = json.loads(path.read_text())
    assert report["resolution"] == 32 and report["device"] == "cpu" and report["lr_side"] == 8
    assert report["options"] == {
        "compile": False,
        "channels_last": "auto",
        "quick": True,
        "cpu_allocator_tuned": False,
        "fast_tf32": False,
        "fast_bf16": False,
        "run_overrides": [],
    }
    assert report["environment"]["torch"] and "load_average" in report["environment"]
    assert "ru_maxrss" in report["peak_memory_note"]
    assert 0 <= report["max_abs_diff_image"] < 1e-4
    assert [row["batch"] for row in report["results"]] == [1, 2]
    for row in report["results"]:
        _check_timing(row["eager"], row["batch"])
        _check_timing(row["fast"], row["batch"])
        assert math.isclose(row["speedup"], row["fast"]["steps_per_s"] / row["eager"]["steps_per_s"])
        # Same seeds and targets: the two searches end at the same images (HR in [0, 1]).
        assert 0 <= row["max_abs_diff_hr"] < 1e-3
        assert row["fast_unavailable"] is None
    best = report["best"]
    eager_rates = {row["batch"]: row["eager"]["images_per_min"] for row in report["results"]}
    fast_rates = {row["batch"]: row["fast"]["images_per_min"] for row in report["results"]}
    assert best["eager_images_per_min"] == max(eager_rates.values()) == eager_rates[best["eager_batch"]]
    assert best["fast_images_per_min"] == max(fast_rates.values()) == fast_rates[best["fast_batch"]]
    assert math.isclose(best["ratio"], best["fast_images_per_min"] / best["eager_images_per_min"])
    printed = capsys.readouterr().out
    assert "fast/eager" in printed and f"{report['results'][0]['speedup']:.2f}" in printed
    assert f"best batch: eager {best['eager_images_per_min']:.2f} img/min" in printed


def test_generator_without_fast_path_reports_null_and_why(script, tmp_path, capsys):
    path = tmp_path / "dcgan.json"
    script.main(["--generator", "dcgan", "--batch", "1", "--steps", "1", "--rounds", "1", "--json", str(path)])
    row = json.loads(path.read_text())["results"][0]
    assert row["fast"] is None and row["speedup"] is None and row["max_abs_diff_hr"] is None
    assert "StyleGAN only" in row["fast_unavailable"]
    _check_timing(row["eager"], 1)
    assert "fast path unavailable: the fast path exists for StyleGAN only" in capsys.readouterr().out


def test_bad_arguments_are_named(script, capsys):
    with pytest.raises(SystemExit):
        script.main(["--quick", "--batch", "1,x"])
    assert "comma-separated integers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args(["--steps", "0"])
    assert "--steps, --warmup and --rounds must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args(["--rounds", "0"])
    assert "got 3, 1, 0" in capsys.readouterr().err


def test_rounds_pool_alternating_measurements_of_both_paths(script, tmp_path):
    path = tmp_path / "rounds.json"
    tiny = ["--resolution", "32", "--fmap-base", "256", "--fmap-max", "32", "--batch", "1", "--warmup", "1"]
    script.main([*tiny, "--rounds", "2", "--steps", "2", "--no-allocator-tuning", "--json", str(path)])
    report = json.loads(path.read_text())
    assert report["rounds"] == 2
    for row in report["results"]:
        assert row["eager"]["timed_steps"] == 4 and row["fast"]["timed_steps"] == 4
        assert math.isclose(row["speedup"], row["fast"]["steps_per_s"] / row["eager"]["steps_per_s"])


def test_profile_reports_convolution_time_and_the_ceiling_it_implies(script, tmp_path, capsys):
    path = tmp_path / "profile.json"
    script.main(["--quick", "--profile", "--no-allocator-tuning", "--json", str(path)])
    profile = json.loads(path.read_text())["profile"]
    assert set(profile) == {"eager", "fast"}
    for measured in profile.values():
        assert 0 < measured["convolution_s"] < measured["step_s"]
        assert math.isclose(measured["convolution_share"], measured["convolution_s"] / measured["step_s"])
        assert math.isclose(measured["ceiling"], profile["eager"]["step_s"] / measured["convolution_s"])
        assert math.isclose(
            measured["convolution_gflop_per_s"], measured["convolution_gflop"] / measured["convolution_s"]
        )
    # Below 128 px the eager port upsamples and runs a 3x3 convolution on the large grid (9 taps per output
    # pixel), the fast path one transposed convolution (4 taps): the same function with fewer FLOPs.
    assert 0 < profile["fast"]["convolution_gflop"] < profile["eager"]["convolution_gflop"]
    out = capsys.readouterr().out
    assert "profile (fast, batch 1, one step)" in out
    assert "GFLOP per step, run at" in out
    with pytest.raises(SystemExit):
        script.parse_args(["--profile", "--device", "cuda"])
    assert "--profile measures CPU operator time" in capsys.readouterr().err


def test_bf16_runs_the_fast_path_under_autocast_and_reports_its_difference(script, tmp_path):
    path = tmp_path / "bf16.json"
    script.main(["--quick", "--bf16", "--no-allocator-tuning", "--json", str(path)])
    report = json.loads(path.read_text())
    assert report["options"]["fast_bf16"] is True
    # bf16 convolutions: visibly different from the float32 port, still the same image.
    assert 1e-3 < report["max_abs_diff_image"] < 0.5
    for row in report["results"]:
        _check_timing(row["fast"], row["batch"])


def test_float64_reference_puts_the_path_difference_in_scale(script, tmp_path, capsys):
    path = tmp_path / "f64.json"
    script.main(["--quick", "--float64-reference", "--no-allocator-tuning", "--json", str(path)])
    report = json.loads(path.read_text())
    distances = report["max_abs_diff_from_float64"]
    assert set(distances) == {"eager", "fast"}
    assert all(0 < d < 1e-4 for d in distances.values())  # float32 rounding, not a different function
    # The two paths' difference is bounded by their distances from the common float64 result.
    assert report["max_abs_diff_image"] <= distances["eager"] + distances["fast"] + 1e-7
    assert "max |fast - float64|" in capsys.readouterr().out


def test_convolution_flops_counts_forward_transposed_and_backward_convolutions():
    import torch
    import torch.nn.functional as F

    from pulse.benchmark import convolution_flops

    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    weight = torch.randn(6, 4, 3, 3)  # frozen, as the generators' weights: only the input gets a gradient
    up = torch.randn(6, 4, 4, 4)

    def run():
        F.conv2d(x, weight, padding=1).sum().backward()
        F.conv_transpose2d(torch.randn(2, 6, 4, 4), up, stride=2, padding=1)
        torch.mm(torch.randn(8, 8), torch.randn(8, 8))  # not a convolution: not counted

    conv = 2 * 2 * 8 * 8 * 6 * 4 * 9  # 2 FLOPs per multiply-add, per output pixel and (in, out, tap)
    transposed = 2 * 2 * 4 * 4 * 6 * 4 * 16  # every input pixel meets all 16 taps
    assert convolution_flops(run) == 2 * conv + transposed  # the backward's input gradient costs a forward
