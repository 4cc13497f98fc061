"""batch_size=auto (pulse.autobatch): the probe's choice, out-of-memory handling and the run integration."""

import json

import pytest
import torch

from pulse.autobatch import BatchTrial, choose_batch_size, is_out_of_memory, solver_step_timer
from pulse.solvers.pulse import PulseSolver, SearchSettings


def _steps_taking(seconds: dict[int, float], fail_from: int | None = None, error: Exception | None = None):
    calls: list[int] = []

    def time_step(batch: int) -> float:
        calls.append(batch)
        if fail_from is not None and batch >= fail_from:
            raise error or torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return seconds[batch]

    return time_step, calls


def test_the_fastest_size_per_input_wins_and_the_probe_stops_once_it_stops_improving():
    # inputs/s: 1, 1.8, 2.5, 2.4 -> 4 wins; 16 is never tried
    time_step, calls = _steps_taking({1: 1.0, 2: 2 / 1.8, 4: 4 / 2.5, 8: 8 / 2.4, 16: 1.0})
    chosen, trials = choose_batch_size(time_step, limit=64)
    assert chosen == 4 and calls == [1, 2, 4, 8]
    assert [t.batch for t in trials] == [1, 2, 4, 8]
    assert trials[2].inputs_per_second == pytest.approx(2.5)


def test_a_gain_below_min_gain_stops_the_probe_without_taking_the_larger_size_unless_faster():
    time_step, calls = _steps_taking({1: 1.0, 2: 2 / 1.03})  # 3% faster per input
    chosen, _ = choose_batch_size(time_step, limit=64, min_gain=0.05)
    assert calls == [1, 2] and chosen == 2  # still the faster one, but no further doubling


def test_out_of_memory_ends_the_probe_at_the_last_size_that_fit():
    time_step, calls = _steps_taking({1: 1.0, 2: 1.0, 4: 1.0}, fail_from=8)
    chosen, trials = choose_batch_size(time_step, limit=64)
    assert chosen == 4 and calls == [1, 2, 4, 8]
    assert trials[-1] == BatchTrial(8, None) and trials[-1].inputs_per_second is None


def test_cpu_allocation_failures_count_as_out_of_memory_and_bugs_propagate():
    cpu_oom = RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory")
    assert is_out_of_memory(cpu_oom) and is_out_of_memory(MemoryError())
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    # cuDNN and cuBLAS report their own workspace allocation failures as status codes.
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE"))
    assert not is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_BAD_PARAM"))
    try:  # wrapped by a compiler or a framework
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        except torch.cuda.OutOfMemoryError as inner:
            raise RuntimeError("backend compiler failed") from inner
    except RuntimeError as wrapped:
        assert is_out_of_memory(wrapped)
    time_step, _ = _steps_taking({1: 1.0}, fail_from=2, error=RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        choose_batch_size(time_step, limit=8)


def test_no_size_fitting_is_a_clear_error_and_the_limit_is_checked():
    time_step, _ = _steps_taking({}, fail_from=1)
    with pytest.raises(RuntimeError, match="one input per search already runs out of memory"):
        choose_batch_size(time_step, limit=8)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        choose_batch_size(time_step, limit=0)
    time_step, calls = _steps_taking({1: 1.0, 2: 0.5, 4: 0.25})
    assert choose_batch_size(time_step, limit=3) == (2, [BatchTrial(1, 1.0), BatchTrial(2, 0.5)])


def test_the_timer_cuts_a_long_search_short(dcgan):
    synthesized: list[int] = []
    original = dcgan.synthesize

    def counting(*args, **kwargs):
        synthesized.append(1)
        return original(*args, **kwargs)

    dcgan.synthesize = counting
    try:
        solver = PulseSolver(dcgan, settings=SearchSettings(steps=500, duplicates=2))
        seconds = solver_step_timer(solver, lr_side=8, device=torch.device("cpu"), steps=2, warmup=1)(3)
    finally:
        del dcgan.synthesize
    assert seconds > 0
    assert len(synthesized) <= 4  # warm-up + 2 timed steps (+ at most one more), not 500


def test_run_with_batch_size_auto_records_its_choice(tmp_path):
    from tests.test_cli import cli, make_cfg

    cfg = make_cfg(
        "batch_size=auto",
        "auto_batch_limit=2",
        "solver.steps=2",
        "data.num=3",
        "data.factors=[8]",
        "progress=false",
        f"out_dir={tmp_path}",
    )
    summary = cli.run(cfg)
    assert summary.samples == 3
    probe = json.loads((tmp_path / "batch_size.json").read_text())
    assert [t["batch"] for t in probe["trials"]] in ([1], [1, 2])
    assert probe["chosen"] in [t["batch"] for t in probe["trials"]]
    assert all(t["seconds_per_step"] > 0 for t in probe["trials"])


@pytest.mark.parametrize("value", ["big", 0, -2])
def test_bad_batch_sizes_are_named(value, tmp_path):
    from tests.test_cli import cli, make_cfg

    with pytest.raises(ValueError, match="batch_size must be a positive integer or 'auto'"):
        cli.run(make_cfg(f"batch_size={value}", f"out_dir={tmp_path}"))
