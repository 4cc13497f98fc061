"""The benchmark times what run.py runs; whole-process timing and the fair comparison with the official code."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from pulse.benchmark import (
    OFFICIAL_WEIGHT_IDS,
    ProcessCommand,
    Spread,
    format_process_timings,
    measure_processes,
    official_seconds,
    pulse_run_command,
    results_csv_seconds,
    results_csv_step_seconds,
    step_description,
    write_random_input,
    write_random_official_weights,
)
from pulse.generators.stylegan import StyleGANGenerator
from pulse.runtime import allocator_environment

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def benchmark_script():
    return _load("benchmark_script_runs", ROOT / "scripts" / "benchmark.py")


@pytest.fixture(scope="module")
def run_module():
    sys.path.insert(0, str(ROOT))
    import run

    return run


def _run_config(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["loss=l1+geocross", "solver.num_trainable_noise_layers=3", "optimizer=spherical_sgdm", "solver.eps=1e-3"],
        ["schedule=fixed", "downscale=area", "solver.noise_type=fixed"],
    ],
)
def test_benchmark_builds_the_step_run_py_builds(benchmark_script, run_module, overrides):
    # A 1024 px network (tiny feature maps): run.py zeroes noise layer 17 there, as the official code does.
    generator = StyleGANGenerator.synthetic(resolution=1024, fmap_base=2048, fmap_max=4, fit_samples=100)
    cfg = _run_config(overrides)
    _, run_solver = run_module.build_solver(cfg, generator=generator)
    bench_solver = benchmark_script.run_solver_factory(overrides)(generator, cfg.solver.steps)
    run_step, bench_step = step_description(run_solver), step_description(bench_solver)
    assert bench_step == run_step
    assert run_step["settings"]["bad_noise_layers"] == (17,)
    if overrides:
        assert run_step != step_description(benchmark_script.run_solver_factory([])(generator, cfg.solver.steps))
    # The benchmark asks for its own step count and nothing else changes.
    shorter = step_description(benchmark_script.run_solver_factory(overrides)(generator, 3))
    assert shorter["settings"]["steps"] == 3
    assert {**shorter, "settings": {**shorter["settings"], "steps": cfg.solver.steps}} == run_step


def test_random_official_weights_load_as_the_synthetic_generator(tmp_path):
    folder = write_random_official_weights(tmp_path / "w", resolution=32, fmap_base=256, fmap_max=32, fit_samples=300)
    assert sorted(p.name for p in folder.iterdir()) == ["gaussian_fit.pt", "mapping.pt", "synthesis.pt"]
    loaded = StyleGANGenerator.pretrained(cache_dir=folder, resolution=32, fmap_base=256, fmap_max=32)
    synthetic = StyleGANGenerator.synthetic(resolution=32, fmap_base=256, fmap_max=32, fit_samples=300)
    for (name, a), (_, b) in zip(loaded.state_dict().items(), synthetic.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    mtime = (folder / "synthesis.pt").stat().st_mtime_ns
    write_random_official_weights(folder, resolution=32, fmap_base=256, fmap_max=32, fit_samples=300)
    assert (folder / "synthesis.pt").stat().st_mtime_ns == mtime  # kept, not rewritten


def test_allocator_environment_is_what_tune_cpu_allocator_sets():
    env = allocator_environment()
    assert env == {
        "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
        "MALLOC_MMAP_MAX_": "0",
        "MALLOC_TRIM_THRESHOLD_": str((1 << 31) - 1),
        "MALLOC_TOP_PAD_": str(1 << 30),
    }


def test_program_timers_are_read(tmp_path):
    line = "BEST (12) | L2: 0.0885 | GEOCROSS: 33.9109 | TOTAL: 10.5422 | time: 17.5 | it/s: 0.69 | batchsize: 1"
    assert official_seconds("Optimizing\n" + line + "\n") == 17.5
    assert official_seconds("no timer here") is None
    (tmp_path / "results.csv").write_text("name,seconds\na,1.5\nb,2.25\n")
    assert results_csv_seconds(tmp_path) == 3.75
    assert results_csv_seconds(tmp_path / "missing") is None
    assert results_csv_step_seconds(tmp_path) is None  # no step_seconds column: an older or foreign results.csv
    (tmp_path / "results.csv").write_text("name,seconds,step_seconds\na,1.5,0.5\nb,2.25,\nc,1,0.75\nd,1,2\n")
    assert results_csv_step_seconds(tmp_path) == 0.75  # median of the filled cells


def test_measure_processes_interleaves_runs_and_derives_step_and_startup(tmp_path):
    # A program that "starts" in 0.2 s and takes 0.1 s per step, and reports its own search time.
    program = "import sys, time; n = int(sys.argv[1]); time.sleep(0.2 + 0.1 * n); print(f'| time: {0.1 * n} |')"
    order = []

    def make(name):
        def command(steps, out_dir):
            order.append((name, steps))
            return ProcessCommand(
                [sys.executable, "-c", program, str(steps)], tmp_path, out_dir, lambda o, d: official_seconds(o)
            )

        return command

    timings = measure_processes({"a": make("a"), "b": make("b")}, tmp_path, short=1, long=3, repeats=3)
    assert order == [
        ("a", 1),
        ("a", 3),
        ("b", 1),
        ("b", 3),
        ("b", 1),
        ("b", 3),
        ("a", 1),
        ("a", 3),
        ("a", 1),
        ("a", 3),
        ("b", 1),
        ("b", 3),
    ]
    for timing in timings.values():
        assert len(timing.step_wall_s.values) == 3
        assert 0.05 < timing.step_wall_s.median < 0.5  # 0.1 s, plus a loaded machine's jitter
        assert timing.step_program_s is not None and math.isclose(timing.step_program_s.median, 0.1)
        assert timing.startup_s.min > 0.1
        assert timing.step_wall_s.min <= timing.step_wall_s.median <= timing.step_wall_s.max
        assert timing.step_in_run_s is None  # these programs report no step of their own
    text = format_process_timings(timings, [("a", "b")])
    assert "time(a) / time(b): s/step" in text and "s/step = (wall(3) - wall(1)) / 2" in text
    with pytest.raises(ValueError, match="short < long"):
        measure_processes({"a": make("a")}, tmp_path, short=3, long=3)


def test_measure_processes_counts_the_runs_cpu_and_what_else_ran(tmp_path):
    # Each run spins for 0.1 s of its own CPU time per step: its CPU per step is 0.1 s however loaded the machine is.
    program = (
        "import sys, time; n = int(sys.argv[1]); end = time.process_time() + 0.05 + 0.1 * n\n"
        "while time.process_time() < end: pass"
    )

    def make(steps, out_dir):
        return ProcessCommand([sys.executable, "-c", program, str(steps)], tmp_path, out_dir, lambda o, d: None)

    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # someone else's work on the machine
    try:
        timing = measure_processes({"spin": make}, tmp_path, short=1, long=4, repeats=2)["spin"]
    finally:
        burner.kill()
        burner.wait()
    assert timing.step_program_s is None and timing.step_cpu_s is not None
    assert 0.07 < timing.step_cpu_s.median < 0.13
    if Path("/proc/stat").is_file():
        assert timing.others_load is not None and timing.others_load.min > 0.2  # the burner is seen
        assert timing.steal_share is not None and 0 <= timing.steal_share.min <= 1
    assert timing.machine_probe_s is not None and len(timing.machine_probe_s.values) == 4  # before every run
    assert timing.machine_probe_s.min > 0
    text = format_process_timings({"spin": timing})
    assert "what else happened" in text and "page faults/step" in text and "machine probe s" in text


def test_spread_and_a_failing_program_is_named(tmp_path):
    spread = Spread.of([3.0, 1.0, 2.0])
    assert (spread.median, spread.min, spread.max) == (2.0, 1.0, 3.0) and spread.text(".1f") == "2.0 [1.0-3.0]"
    failing = ProcessCommand(
        [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path, tmp_path, lambda o, d: None
    )
    with pytest.raises(RuntimeError, match=r"exited with 3:\nboom"):
        measure_processes({"x": lambda steps, out: failing}, tmp_path, repeats=1)


def test_pulse_run_command_is_a_run_py_command(tmp_path):
    command = pulse_run_command(
        ROOT / "run.py",
        "stylegan_ffhq_fast",
        tmp_path,
        tmp_path / "in",
        tmp_path / "out",
        2,
        ["seed=1"],
        {"resolution": 32},
    )
    assert command.argv[1:5] == [
        str(ROOT / "run.py"),
        "generator=stylegan_ffhq_fast",
        f"generator.generator.cache_dir={tmp_path}",
        "+generator.generator.resolution=32",
    ]
    assert "solver.steps=2" in command.argv and "batch_size=1" in command.argv and command.argv[-1] == "seed=1"
    eager = pulse_run_command(ROOT / "run.py", "stylegan_ffhq", tmp_path, tmp_path, tmp_path, 2)
    assert f"generator.cache_dir={tmp_path}" in eager.argv


@pytest.mark.slow
def test_whole_run_of_run_py_is_timed(tmp_path):
    """One real run.py process per step count at 32 px: its own timer and the wall clock are read."""
    weights = write_random_official_weights(tmp_path / "w", resolution=32, fmap_base=256, fmap_max=32, fit_samples=300)
    inputs = write_random_input(tmp_path / "in", side=8).parent
    size = {"resolution": 32, "fmap_base": 256, "fmap_max": 32}

    def make(steps, out_dir):
        return pulse_run_command(ROOT / "run.py", "stylegan_ffhq_fast", weights, inputs, out_dir, steps, [], size)

    timing = measure_processes({"fast": make}, tmp_path / "runs", short=1, long=2, repeats=1)["fast"]
    assert timing.step_program_s is not None and timing.wall_short_s.median > timing.step_program_s.median > -1
    assert results_csv_seconds(tmp_path / "runs" / "fast" / "2_0") > 0
    # the 2-step run's own step after the first, from results.csv, in the same process as the user's run
    assert timing.step_in_run_s is not None and 0 < timing.step_in_run_s.median < timing.wall_long_s.median


def test_official_driver_redirects_cuda_and_downloads(tmp_path, capsys):
    """scripts/official_cpu.py on a stand-in for the official code (the real one is not in the test data)."""
    official = tmp_path / "official"
    official.mkdir()
    (official / "PULSE.py").write_text("")
    (official / "bicubic.py").write_text(
        textwrap.dedent(
            """
            class BicubicDownSample:
                def __init__(self, factor=4, cuda=True, padding="reflect"):
                    self.cuda = cuda
            """
        )
    )
    (official / "run.py").write_text(
        textwrap.dedent(
            f"""
            import sys, torch
            from drive import open_url
            from bicubic import BicubicDownSample
            net = torch.nn.Linear(2, 2).cuda()
            x = torch.randn((1, 2), device="cuda").cuda()
            z = torch.zeros((1,), device="cuda")
            with open_url("https://drive.google.com/uc?id={next(iter(OFFICIAL_WEIGHT_IDS))}", cache_dir="c") as f:
                weights = torch.load(f)
            fit = torch.load("gaussian_fit.pt")
            print("args", sys.argv[1:], x.device, z.device, BicubicDownSample(2).cuda, sorted(weights), sorted(fit))
            """
        )
    )
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save({"w": torch.ones(1)}, weights / "synthesis.pt")
    torch.save({"mean": torch.zeros(1), "std": torch.ones(1)}, weights / "gaussian_fit.pt")
    work = tmp_path / "work"
    work.mkdir()
    driver = ROOT / "scripts" / "official_cpu.py"
    argv = [sys.executable, str(driver), "--official", str(official), "--weights", str(weights), "--", "-steps", "2"]
    done = subprocess.run(argv, cwd=work, capture_output=True, text=True, check=True)
    assert "args ['-steps', '2'] cpu cpu False ['w'] ['mean', 'std']" in done.stdout
    script = _load("official_cpu_script", driver)
    with pytest.raises(SystemExit):
        script.parse_args(["--official", str(tmp_path), "--weights", str(weights)])
    assert "no PULSE.py there" in capsys.readouterr().err


def test_whole_runs_mode_runs_run_py_for_both_paths_with_the_allocator_env(benchmark_script, monkeypatch, capsys):
    seen = {}

    def fake_measure(programs, work_dir, short, long, repeats, env, log=None):
        seen.update(short=short, long=long, repeats=repeats, env=env)
        seen["commands"] = {name: make(short, Path(work_dir) / name) for name, make in programs.items()}
        spread = Spread.of([1.0, 2.0])
        from pulse.benchmark import ProcessTiming

        return {name: ProcessTiming(name, short, long, spread, spread, spread, spread, spread) for name in programs}

    monkeypatch.setattr(benchmark_script, "measure_processes", fake_measure)
    tiny = ["--resolution", "32", "--fmap-base", "256", "--fmap-max", "32", "--rounds", "2", "--batch", "1"]
    benchmark_script.main(["--whole-runs", *tiny, "--short", "1", "--long", "3", "--set", "loss=l2"])
    assert (seen["short"], seen["long"], seen["repeats"]) == (1, 3, 2)
    assert {key: seen["env"][key] for key in allocator_environment()} == allocator_environment()
    eager, fast = seen["commands"]["eager"].argv, seen["commands"]["fast"].argv
    assert "generator=stylegan_ffhq" in eager and "+generator.resolution=32" in eager and "loss=l2" in eager
    assert "generator=stylegan_ffhq_fast" in fast and "+generator.generator.fmap_max=32" in fast
    assert "solver.steps=1" in eager and "data=folder" in fast
    assert "time(fast) / time(eager): s/step 1.00 [1.00-1.00]" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        benchmark_script.parse_args(["--whole-runs", "--generator", "dcgan"])


def test_images_are_written_losslessly_at_the_fast_zlib_level(tmp_path):
    import numpy as np
    from PIL import Image

    from pulse.data import PNG_COMPRESS_LEVEL, save_image, to_uint8

    image = torch.rand(3, 64, 48, generator=torch.Generator().manual_seed(0))
    save_image(image, tmp_path / "a.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), to_uint8(image))
    assert PNG_COMPRESS_LEVEL == 1
    slow = tmp_path / "slow.png"
    Image.fromarray(to_uint8(image)).save(slow)  # PIL's default level 6
    assert (tmp_path / "a.png").read_bytes() != slow.read_bytes()  # the level is applied


def test_probe_machine_times_the_same_work_repeatedly(benchmark_script, capsys):
    result = benchmark_script.main(["--probe-machine", "0.3", "--threads", "1"])
    assert len(result["probe_s"]) >= 1 and min(result["probe_s"]) > 0
    assert "machine probe (1 threads" in capsys.readouterr().out


def test_measure_processes_reads_each_long_runs_own_step(tmp_path):
    # The program writes its step (0.01 s per step count, so the long runs' value is recognisable) where the
    # command's step timer reads it; only the long runs' values enter step_in_run_s.
    program = "import sys, pathlib; n = int(sys.argv[1]); pathlib.Path(sys.argv[2]).write_text(str(0.01 * n))"

    def make(steps, out_dir):
        return ProcessCommand(
            [sys.executable, "-c", program, str(steps), str(out_dir / "step.txt")],
            tmp_path,
            out_dir,
            lambda o, d: None,
            lambda o, d: float((d / "step.txt").read_text()),
        )

    timing = measure_processes({"a": make}, tmp_path, short=1, long=4, repeats=2)["a"]
    assert timing.step_in_run_s is not None and timing.step_in_run_s.values == [0.04, 0.04]
    assert "0.040 [0.040-0.040]" in format_process_timings({"a": timing})


def test_agreement_mode_pairs_the_benchmark_with_run_py_per_round(benchmark_script, monkeypatch, capsys):
    from pulse.benchmark import ProcessTiming

    calls = []
    steps = {"eager": iter([2.0, 2.2]), "fast": iter([1.0, 1.2])}

    def fake_isolated(child_argv, path, out, env=None):
        calls.append(("benchmark", path))
        assert "--agreement" not in child_argv and "--weights" in child_argv  # the run.py runs' weight files
        assert {key: env[key] for key in allocator_environment()} == allocator_environment()
        return {"eager": 2.0, "fast": 1.0}[path]

    def fake_measure(programs, work_dir, short, long, repeats, env, log=None):
        (path,) = programs
        calls.append(("run.py", path))
        wall = Spread.of([next(steps[path])])
        in_run = Spread.of([{"eager": 2.5, "fast": 1.0}[path]])
        return {path: ProcessTiming(path, short, long, wall, wall, wall, None, wall, step_in_run_s=in_run)}

    monkeypatch.setattr(benchmark_script, "isolated_step", fake_isolated)
    monkeypatch.setattr(benchmark_script, "measure_processes", fake_measure)
    tiny = ["--resolution", "32", "--fmap-base", "256", "--fmap-max", "32", "--rounds", "2", "--batch", "1"]
    record = benchmark_script.main(["--agreement", *tiny])
    assert calls == [
        ("benchmark", "eager"),
        ("run.py", "eager"),
        ("benchmark", "fast"),
        ("run.py", "fast"),
        ("benchmark", "fast"),
        ("run.py", "fast"),
        ("benchmark", "eager"),
        ("run.py", "eager"),
    ]
    assert record["eager_benchmark_over_wall"] == [1.0, 2.0 / 2.2]
    assert record["eager_benchmark_over_in_run"] == [0.8, 0.8]
    out = capsys.readouterr().out
    assert "eager: benchmark / run.py (wall) 0.955 [0.909-1.000], benchmark / run.py (in run) 0.800" in out
    assert "fast / eager by run.py (in run): 0.400 [0.400-0.400]" in out

    def untimed_measure(programs, work_dir, short, long, repeats, env, log=None):
        (path,) = programs
        wall = Spread.of([1.0])
        return {path: ProcessTiming(path, short, long, wall, wall, wall, None, wall, step_in_run_s=None)}

    monkeypatch.setattr(benchmark_script, "measure_processes", untimed_measure)
    with pytest.raises(RuntimeError, match="wrote no step_seconds"):
        benchmark_script.main(["--agreement", *tiny])
