import ctypes
import ctypes.util
import sys

import pytest

from pulse.runtime import tune_cpu_allocator


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
