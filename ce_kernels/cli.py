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


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def int64(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text} is outside the int64 range "
                                         f"[-2**63, 2**63 - 1] that token ids are compared in")
    return value


def row_range(text: str) -> Tuple[int, int]:
    """'1000:2000' -> (1000, 2000)."""
    try:
        a, b = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A:B (two integers), got {text!r}") from None
    if not 0 <= a < b:
        raise argparse.ArgumentTypeError(f"expected 0 <= A < B, got {text!r}")
    return a, b


class _Parser(argparse.ArgumentParser):
    """With ``one_line_errors``, a bad argument is reported on a single line
    (``PROG: error: ...``), like every other error of that command."""

    def __init__(self, *args, one_line_errors: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.one_line_errors = one_line_errors

    def error(self, message):
        if not self.one_line_errors:
            super().error(message)
        self.exit(2, f"{self.prog}: error: {_escape_line_breaks(message)} "
                     f"(see {self.prog} --help)\n")


def _escape_line_breaks(text: str) -> str:
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ce-kernels",
        description="Fused softmax cross-entropy kernels: benchmarks and tools.")
    parser.add_argument("--version", action="version", version=f"ce_kernels {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    bench = sub.add_parser(
        "bench", help="time ce_kernels against NumPy, PyTorch and the memory floor",
        description="Times the forward pass and the fused forward+backward on float32 logits "
                    "against a careful NumPy implementation, PyTorch (when installed) and the "
                    "memory floor, all in one run, contenders interleaved round by round. "
                    "Times are minimums and medians of repeats; ratios are given both as "
                    "ratios of minimums and as medians of the ratios within each round.")
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
    bench.add_argument("--vocab-parallel", type=positive_int, default=None, metavar="K",
                       help="also time vocab_parallel_cross_entropy on K local processes "
                            "(torch.distributed, gloo) against one process (needs PyTorch)")
    _add_linear_bench_arguments(bench)
    bench.add_argument("--plot", metavar="FILE.png", default=None,
                       help="also draw throughput vs vocabulary size and vs thread count "
                            "(needs matplotlib)")

    ev = sub.add_parser(
        "eval", one_line_errors=True, help="score a saved logits file against token ids",
        description="Scores LOGITS (.npy of shape (..., V): float16, bfloat16 as saved by "
                    "ml_dtypes, float32 or float64) against TARGETS (.npy of integer token ids of "
                    "shape LOGITS.shape[:-1]), streaming the memory-mapped logits in chunks of "
                    "rows. Prints tokens scored and ignored, mean NLL, bits per token, "
                    "perplexity, top-1 accuracy and mean predictive entropy. Bad input is "
                    "reported on one line with exit status 2; no input is ever modified, and "
                    "--per-token is replaced atomically, only when the run succeeds.")
    ev.add_argument("logits", metavar="LOGITS", help=".npy file of logits, shape (..., V)")
    ev.add_argument("targets", metavar="TARGETS", nargs="?",
                    help=".npy file of token ids, shape (...) (with --hidden, the only file "
                         "given)")
    _add_hidden_arguments(ev)
    ev.add_argument("--shift", action="store_true",
                    help="next-token scoring: position t is scored against token t+1 along the "
                         "sequence axis (the second-to-last axis of LOGITS)")
    ev.add_argument("--ignore-index", type=int64, default=-100, metavar="N",
                    help="token id that marks positions not to score (default -100)")
    ev.add_argument("--chunk-rows", type=positive_int, default=None, metavar="K",
                    help="positions per chunk (default: about 256 MB of logits)")
    ev.add_argument("--threads", type=positive_int, default=None, metavar="T",
                    help="threads (default: ce_kernels.get_num_threads())")
    ev.add_argument("--per-token", metavar="OUT.npy", default=None,
                    help="write the NLL of every scored position (float32, NaN where ignored)")
    ev.add_argument("--json", action="store_true", help="print the results as one JSON object")
    _add_sharded_eval_arguments(ev)
    _add_eval_benchmark_arguments(ev)
    _add_merge_parser(sub)
    return parser


def _add_sharded_eval_arguments(ev: argparse.ArgumentParser) -> None:
    ev.add_argument("--rows", type=row_range, default=None, metavar="A:B",
                    help="score only positions [A, B) of LOGITS (its rows, flattened to "
                         "(positions, V)): one block of a job array")
    ev.add_argument("--partial", metavar="OUT.json", default=None,
                    help="write the exact partial sums instead of printing a summary; merge "
                         "the partials of all blocks with 'ce-kernels merge'")
    engine = ev.add_mutually_exclusive_group()
    engine.add_argument("--dask", metavar="SCHEDULER", default=None,
                        help="score with Dask: a scheduler address (tcp://host:8786), or "
                             "synchronous, threads or processes. LOGITS and TARGETS may then be "
                             "glob patterns of .npy files (paired in sorted order) or zarr arrays")
    engine.add_argument("--workers", type=positive_int, default=None, metavar="K",
                        help="score with Dask on a local cluster of K worker processes")
    ev.add_argument("--block-rows", type=positive_int, default=None, metavar="K",
                    help="with --dask or --workers: positions per task (default: about 256 MB "
                         "of logits)")


def _add_eval_benchmark_arguments(ev: argparse.ArgumentParser) -> None:
    _add_group(ev, "timing the scoring",
               "--benchmark times the scoring of LOGITS against one thread reading the same "
               "file (readinto a reused buffer of 1 MiB and of the chunk size, the faster "
               "is the floor; and through a memory map, the scoring's own input path), round by round, from the page cache and cold (the file dropped "
               "from the page cache before each run), and prints GB/s and the ratios instead "
               "of the scores.", [
                   ("--benchmark", dict(action="store_true",
                                        help="time the scoring against a read of the file")),
                   ("--repeat", dict(type=positive_int, default=3, metavar="K",
                                     help="with --benchmark: timed runs of each (default 3)")),
                   ("--no-cold", dict(action="store_true",
                                      help="with --benchmark: only from the page cache"))])


def _add_merge_parser(sub) -> None:
    merge = sub.add_parser(
        "merge", one_line_errors=True, help="merge the partials of 'eval --partial' runs",
        description="Merges partial sums written by 'ce-kernels eval --rows A:B --partial "
                    "OUT.json' (one per block of positions) into the summary 'ce-kernels eval' "
                    "prints for all of them. The merge is exact: the summary is the same, bit "
                    "for bit, whatever the blocks and their order.")
    merge.add_argument("partials", metavar="PARTIAL.json", nargs="+",
                       help="partial sums from 'ce-kernels eval --partial'")
    merge.add_argument("--json", action="store_true", help="print the results as one JSON object")


def _add_group(parser: argparse.ArgumentParser, title: str, description: str,
               arguments: List[Tuple[str, dict]]) -> None:
    group = parser.add_argument_group(title, description)
    for flag, options in arguments:
        group.add_argument(flag, **options)


def _add_linear_bench_arguments(bench: argparse.ArgumentParser) -> None:
    from ._bench_linear import parse_shape3

    _add_group(bench, "linear layer + cross-entropy",
               "--linear times the fused linear layer + cross-entropy against the bare matrix "
               "products, the unfused path and PyTorch eager, and measures the peak memory of "
               "each in a fresh process.", [
                   ("--linear", dict(action="store_true", help="run the linear layer + "
                                     "cross-entropy benchmark instead")),
                   ("--linear-shape", dict(type=parse_shape3, default=None, metavar="NxDxV",
                                           help="shape timed (default 2048x1024x32000)")),
                   ("--memory-shape", dict(type=parse_shape3, default=None, metavar="NxDxV",
                                           help="shape of the peak-memory runs (default "
                                                "16384x2048x128256: the unfused paths need "
                                                "about 20 GB)")),
                   ("--no-memory", dict(action="store_true",
                                        help="skip the peak-memory runs"))])
    _add_group(bench, "scoring a file",
               "--eval-gb writes a float32 logits file of about that size (rows of 32000) to "
               "a temporary directory and times 'ce-kernels eval' on it against one thread "
               "reading the same file, from the page cache and cold; off by default.", [
                   ("--eval-gb", dict(type=positive_float, default=None, metavar="GB",
                                      help="size of the file to score (2 matches the "
                                           "performance targets)")),
                   ("--eval-dir", dict(default=None, metavar="DIR",
                                       help="where to write it (default: the system's "
                                            "temporary directory)"))])


def _add_hidden_arguments(ev: argparse.ArgumentParser) -> None:
    _add_group(ev, "scoring hidden states",
               "ce-kernels eval --hidden HIDDEN.npy --head WEIGHT.npy [--bias BIAS.npy] "
               "TARGETS.npy scores saved last hidden states (float32 or float64, shape "
               "(..., D)) through an output layer, streaming them in chunks of rows; no logits "
               "are ever stored.", [
                   ("--hidden", dict(metavar="HIDDEN.npy", default=None,
                                     help="hidden states, shape (..., D), instead of LOGITS")),
                   ("--head", dict(metavar="WEIGHT.npy", default=None,
                                   help="the output layer's weight, shape (V, D) (with "
                                        "--hidden)")),
                   ("--bias", dict(metavar="BIAS.npy", default=None,
                                   help="the output layer's bias, shape (V,) (with "
                                        "--hidden)"))])


def _evaluate(args):
    """The scoring the arguments ask for: logits, or hidden states through a head."""
    from .evaluate import EvalError, evaluate, evaluate_hidden

    common = dict(shift=args.shift, ignore_index=args.ignore_index, chunk_rows=args.chunk_rows,
                  threads=args.threads, per_token=args.per_token, rows=args.rows,
                  as_partial=args.partial is not None)
    if args.hidden is None:
        if args.targets is None or args.head is not None or args.bias is not None:
            raise EvalError("give LOGITS and TARGETS, or --hidden HIDDEN.npy --head WEIGHT.npy "
                            "[--bias BIAS.npy] and TARGETS")
        return evaluate(args.logits, args.targets, **common)
    if args.head is None or args.targets is not None:
        raise EvalError("with --hidden, give --head WEIGHT.npy and TARGETS only (no LOGITS)")
    return evaluate_hidden(args.hidden, args.head, args.logits, bias_path=args.bias, **common)


def _evaluate_with_dask(args) -> dict:
    from ._dask_eval import evaluate_dask
    from .evaluate import EvalError

    for flag, value in (("--per-token", args.per_token), ("--rows", args.rows),
                        ("--partial", args.partial), ("--hidden", args.hidden)):
        if value is not None:
            raise EvalError(f"{flag} cannot be combined with --dask or --workers")
    return evaluate_dask(args.logits, args.targets, scheduler=args.dask, workers=args.workers,
                         shift=args.shift, ignore_index=args.ignore_index,
                         chunk_rows=args.chunk_rows, threads=args.threads,
                         block_rows=args.block_rows)


def _benchmark_eval(args) -> dict:
    from . import _bench_eval
    from .evaluate import EvalError

    for flag, value in (("--per-token", args.per_token), ("--rows", args.rows),
                        ("--partial", args.partial), ("--hidden", args.hidden),
                        ("--dask", args.dask), ("--workers", args.workers)):
        if value is not None:
            raise EvalError(f"--benchmark times scoring LOGITS whole; it cannot be combined "
                            f"with {flag}")
    if args.shift or args.targets is None:
        raise EvalError("--benchmark takes LOGITS and TARGETS, without --shift")
    return _bench_eval.bench_eval_file(args.logits, args.targets, threads=args.threads,
                                       chunk_rows=args.chunk_rows, repeat=args.repeat,
                                       cold=not args.no_cold)


def run_eval(args) -> int:
    from .evaluate import EvalError

    try:
        if args.benchmark:
            return _print_eval_benchmark(_benchmark_eval(args), args.json)
        if args.dask is not None or args.workers is not None:
            result = _evaluate_with_dask(args)
        else:
            result = _evaluate(args)
        if args.partial is not None:
            return _write_partial(args.partial, result)
    except EvalError as exc:
        print(f"ce-kernels eval: error: {_escape_line_breaks(exc)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("ce-kernels eval: error: out of memory; use a smaller --chunk-rows", file=sys.stderr)
        return 2
    except OSError as exc:   # an I/O failure past the checks (a disk error while reading)
        print(f"ce-kernels eval: error: {_escape_line_breaks(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ce-kernels eval: interrupted", file=sys.stderr)
        return 130
    _print_summary(result, args.json, args.per_token)
    return 0


def _print_eval_benchmark(result: dict, as_json: bool) -> int:
    import json

    from ._bench_eval import format_eval

    print(json.dumps(result) if as_json else format_eval(result))
    return 0


def _print_summary(result: dict, as_json: bool, per_token: Optional[str]) -> None:
    import json
    import math

    if as_json:
        clean = {k: (None if isinstance(val, float) and math.isnan(val) else val)
                 for k, val in result.items()}
        print(json.dumps(clean))
    else:
        print(f"tokens scored     {result['tokens']}")
        print(f"tokens ignored    {result['ignored']}")
        print(f"mean NLL (nats)   {result['nll']:.6f}")
        print(f"bits per token    {result['bits_per_token']:.6f}")
        print(f"perplexity        {result['perplexity']:.4f}")
        print(f"top-1 accuracy    {result['accuracy']:.6f}")
        print(f"mean entropy      {result['entropy']:.6f}")
        if per_token:
            print(f"per-token NLL     {per_token}")


def _write_partial(path: str, partial: dict) -> int:
    """Write a partial as JSON, replacing ``path`` only once it is whole."""
    import json
    import os

    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(partial, f)
        os.replace(tmp, path)
    except OSError as exc:
        print(f"ce-kernels eval: error: cannot write --partial {path}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def run_merge(args) -> int:
    import json

    from ._partial import eval_merge

    partials = []
    for path in args.partials:
        try:
            with open(path) as f:
                partials.append(json.load(f))
        except (OSError, ValueError) as exc:
            print(f"ce-kernels merge: error: cannot read {path}: "
                  f"{_escape_line_breaks(getattr(exc, 'strerror', None) or exc)}", file=sys.stderr)
            return 2
    try:
        result = eval_merge(partials)
    except ValueError as exc:
        message = str(exc)
        for i, path in enumerate(args.partials):   # name the file, not its index
            message = message.replace(f"partials[{i}]", path)
        print(f"ce-kernels merge: error: {_escape_line_breaks(message)}", file=sys.stderr)
        return 2
    _print_summary(result, args.json, None)
    return 0


def _bench_vocab_parallel(bench, shapes, args) -> None:
    import json

    threads = args.threads or ck_threads()
    for n, v in shapes:
        result = bench.vocab_parallel(n, v, args.vocab_parallel, threads, args.repeat)
        print(json.dumps(result) if args.json else bench.format_vocab_parallel(result) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "eval":
        return run_eval(args)
    if args.command == "merge":
        return run_merge(args)
    if args.command == "bench" and args.linear:
        from . import _bench_linear
        _bench_linear.main_args(args)
        return 0
    if args.command == "bench":
        from . import bench

        shapes: List[Tuple[int, int]] = args.shapes or list(
            bench.QUICK_SHAPES if args.quick else bench.DEFAULT_SHAPES)
        bench.run(shapes, threads=args.threads, repeat=args.repeat,
                  with_numpy=not args.no_numpy, with_torch=not args.no_torch, as_json=args.json,
                  eval_gb=args.eval_gb, eval_dir=args.eval_dir)
        if args.vocab_parallel:
            _bench_vocab_parallel(bench, shapes, args)
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
