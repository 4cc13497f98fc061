"""Small constant tensors (filter taps, lookup tables, masks) made once per device instead of per step.

Built inside a search step from a Python list or a numpy array, such a constant is copied from the host
at every step, and on a GPU the copy waits for the queue. :func:`cached` keeps one copy per key (callers
put the device, dtype and sizes in the key). The cached tensors are read-only by convention.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

import torch

T = TypeVar("T")

_CACHE: dict[Hashable, object] = {}


def cached(key: Hashable, make: Callable[[], T]) -> T:
    """The value made by ``make()`` the first time ``key`` was asked for.

    Made outside inference mode, so that a constant first needed by a metric (under ``inference_mode``)
    can later be saved for backward by a search.
    """
    value = _CACHE.get(key)
    if value is None:
        with torch.inference_mode(False):
            value = make()
        _CACHE[key] = value
    return value  # type: ignore[return-value]


def clear() -> None:
    """Forget every cached constant (tests; frees device memory held by them)."""
    _CACHE.clear()
