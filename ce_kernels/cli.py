"""The ``ce-kernels`` command (also ``python -m ce_kernels``)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence, Tuple

from ._threads import get_num_threads as ck_threads
from ._version import __version__


def parse_shape(text: str) -> Tuple[int, int]:
    """'2048x32000' -> (2048, 32000)."""
    try:
        n, v = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 2048x32000, got {text!r}") from None
    if n < 1 or v < 1:
        raise argparse.ArgumentTypeError(f"shape sizes must be positive, got {text!r}")
    return n, v


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ce-kernels",
        description="Fused softmax cross-entropy kernels: benchmarks and tools.")
    parser.add_argument("--version", action="version", version=f"ce_kernels {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser(
        "bench", help="time ce_kernels against NumPy, PyTorch and the memory floor",
        description="Times the forward pass and the fused forward+backward on float32 logits "
                    "against a careful NumPy implementation, PyTorch (when installed) and the "
                    "memory floor, all in one run. Figures are minimums of repeats.")
    bench.add_argument("--shape", dest="shapes", type=parse_shape, action="append",
                       help="an NxV shape to run (repeatable); default: "
                            "2048x32000, 512x128256, 8x256000, 1x256000")
    bench.add_argument("--quick", action="store_true", help="small shapes, for a fast check")
    bench.add_argument("--threads", type=positive_int, default=None,
                       help="threads for every contender (default: ce_kernels.get_num_threads())")
    bench.add_argument("--repeat", type=positive_int, default=7, help="timed calls per figure")
    bench.add_argument("--no-numpy", action="store_true", help="skip the (slow) NumPy baseline")
    bench.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.add_argument("--plot", metavar="FILE.png", default=None,
                       help="also draw throughput vs vocabulary size and vs thread count "
                            "(needs matplotlib)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        from . import bench

        shapes: List[Tuple[int, int]] = args.shapes or list(
            bench.QUICK_SHAPES if args.quick else bench.DEFAULT_SHAPES)
        bench.run(shapes, threads=args.threads, repeat=args.repeat,
                  with_numpy=not args.no_numpy, with_torch=not args.no_torch, as_json=args.json)
        if args.plot:
            try:
                bench.plot(args.plot, threads=args.threads or ck_threads(), repeat=args.repeat,
                           with_torch=not args.no_torch)
            except RuntimeError as exc:
                print(f"ce-kernels: {exc}", file=sys.stderr)
                return 2
            if not args.json:
                print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
