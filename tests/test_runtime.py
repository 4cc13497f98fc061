import ctypes
import ctypes.util
import sys

import pytest

from pulse.runtime import set_tf32, tf32, tune_cpu_allocator


def _is_glibc() -> bool:
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return False
    return sys.platform.startswith("linux")


def test_allocator_tuning_applies_on_glibc_and_is_a_no_op_elsewhere(monkeypatch):
    assert tune_cpu_allocator() is _is_glibc()
    monkeypatch.setattr(sys, "platform", "darwin")
    assert tune_cpu_allocator() is False


@pytest.mark.skipif(not _is_glibc(), reason="glibc only")
def test_allocations_after_tuning_still_work():
    import torch

    tune_cpu_allocator()
    blocks = [torch.ones(8 << 20) for _ in range(4)]  # 32 MiB each: at the mmap threshold
    assert all(float(b.sum()) == 8 << 20 for b in blocks)


_REUSE_PROBE = """
import resource, sys, torch
from pulse.runtime import tune_cpu_allocator
if sys.argv[1] == "tuned":
    tune_cpu_allocator()
def fill():
    block = torch.empty(16 << 20)  # 64 MiB: above glibc's largest mmap threshold (32 MiB)
    block.fill_(1.0)
    return float(block[-1])
for _ in range(16):  # glibc's aligned allocations settle into a reusable free chunk within 4-9 rounds
    fill()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    fill()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not _is_glibc(), reason="glibc only")
def test_tuning_reuses_blocks_above_the_mmap_threshold():
    import subprocess

    def page_faults(mode: str) -> int:
        result = subprocess.run([sys.executable, "-c", _REUSE_PROBE, mode], capture_output=True, text=True, check=True)
        return int(result.stdout.strip().splitlines()[-1])

    pages_per_block = (64 << 20) // 4096
    # Untuned, every 64 MiB block is a fresh mapping whose pages fault in when written.
    assert page_faults("default") >= 2 * pages_per_block
    # Tuned, the freed block is reused from the heap: (almost) no new faults.
    assert page_faults("tuned") < pages_per_block // 4


def test_tf32_switches_both_cuda_flags_and_the_context_restores_them():
    import torch

    flags = lambda: (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)  # noqa: E731
    saved = flags()
    try:
        set_tf32(True)
        assert flags() == (True, True)
        with tf32(False):
            assert flags() == (False, False)
        assert flags() == (True, True)
        set_tf32(False)
        assert flags() == (False, False)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_exit_without_teardown_runs_atexit_and_flushes(tmp_path):
    import subprocess
    import sys
    import textwrap

    marker = tmp_path / "atexit.txt"
    program = textwrap.dedent(
        f"""
        import atexit, logging, sys
        from pulse.runtime import exit_without_teardown
        atexit.register(lambda: open({str(marker)!r}, "w").write("ran"))
        logging.basicConfig(stream=sys.stderr)
        logging.getLogger("x").warning("logged")
        print("buffered line")  # stdout is a pipe here: block-buffered until flushed
        exit_without_teardown(3)
        print("never")
        """
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stdout == "buffered line\n" and "logged" in done.stderr
    assert marker.read_text() == "ran"


def test_exit_without_teardown_runs_the_threading_exit_hooks(tmp_path):
    """joblib/loky stop their workers in a ``threading._register_atexit`` hook; skipping it left a Hydra joblib
    sweep's workers alive for loky's 300 s idle timeout."""
    import subprocess
    import sys
    import textwrap

    marker = tmp_path / "threading_exit.txt"
    program = textwrap.dedent(
        f"""
        import threading
        from pulse.runtime import exit_without_teardown
        threading._register_atexit(lambda: open({str(marker)!r}, "w").write("ran"))
        exit_without_teardown(0)
        """
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "ran"
