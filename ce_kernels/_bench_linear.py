"""``ce-kernels bench --linear``: the fused linear layer + cross-entropy
against the bare matrix products, the unfused NumPy path and PyTorch eager,
in time (side by side in one run) and in peak memory (each path alone in a
fresh process, its peak resident set size over the inputs)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, Optional, Tuple

import numpy as np

from .bench import _paired_ratio, _ratio, _torch_or_none, numpy_cross_entropy_with_grad, \
    time_interleaved, time_rows
from ._api import cross_entropy_with_grad
from .linear import linear_cross_entropy, linear_cross_entropy_with_grad

#: (N, D, V): tokens, hidden width, vocabulary.
DEFAULT_SHAPE: Tuple[int, int, int] = (2048, 1024, 32000)
MEMORY_SHAPE: Tuple[int, int, int] = (16384, 2048, 128256)


def _inputs(n: int, d: int, v: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((n, d), dtype=np.float32)
    weight = rng.standard_normal((v, d), dtype=np.float32)
    weight *= np.float32(d ** -0.5)
    target = rng.integers(0, v, n)
    return hidden, weight, target


# ---- the paths compared -------------------------------------------------------------

def unfused_ours(hidden, weight, target):
    """The logits in full, our kernel in place on them, the two products."""
    logits = hidden @ weight.T
    loss, grad = cross_entropy_with_grad(logits, target, out=logits)
    return loss, grad @ weight, grad.T @ hidden


def unfused_numpy(hidden, weight, target):
    """The logits in full, the NumPy loss and gradient, the two products."""
    logits = hidden @ weight.T
    loss, grad = numpy_cross_entropy_with_grad(logits, target)
    return loss, grad @ weight, grad.T @ hidden


def _torch_paths(hidden, weight, target):
    torch = _torch_or_none()
    if torch is None:
        return {}
    import torch.nn.functional as F
    h, w, t = torch.from_numpy(hidden), torch.from_numpy(weight), torch.from_numpy(target)

    def forward():
        with torch.no_grad():
            return F.cross_entropy(F.linear(h, w), t)

    def fwd_bwd():
        hh, ww = h.detach().requires_grad_(), w.detach().requires_grad_()
        loss = F.cross_entropy(F.linear(hh, ww), t)
        return torch.autograd.grad(loss, (hh, ww))

    return {"torch eager forward": forward, "torch eager fwd+bwd": fwd_bwd}


def time_linear(n: int, d: int, v: int, repeat: int, with_torch: bool = True
                ) -> Dict[str, object]:
    """Times, side by side: the bare products (as expressions, which
    allocate their results, and into buffers allocated once), ours fused,
    ours unfused, PyTorch eager."""
    hidden, weight, target = _inputs(n, d, v)
    logits = np.empty((n, v), dtype=np.float32)
    d_hidden, d_weight = np.empty_like(hidden), np.empty_like(weight)

    def three_products():
        logits = hidden @ weight.T
        return logits @ weight, logits.T @ hidden

    def three_products_into_buffers():
        np.matmul(hidden, weight.T, out=logits)
        np.matmul(logits, weight, out=d_hidden)
        np.matmul(logits.T, hidden, out=d_weight)

    contenders = {
        "bare product h @ W.T": lambda: hidden @ weight.T,
        "bare product, out=buffer": lambda: np.matmul(hidden, weight.T, out=logits),
        "ours fused forward": lambda: linear_cross_entropy(hidden, weight, target),
        "bare three products": three_products,
        "bare three, out=buffers": three_products_into_buffers,
        "ours fused fwd+bwd": lambda: linear_cross_entropy_with_grad(
            hidden, weight, target, out_hidden=d_hidden, out_weight=d_weight),
        "ours unfused fwd+bwd": lambda: unfused_ours(hidden, weight, target),
    }
    if with_torch:
        contenders.update(_torch_paths(hidden, weight, target))
    times = time_interleaved({k: (f, None) for k, f in contenders.items()}, repeat)
    return {"n": n, "d": d, "v": v, "times": times}


# (ratio, numerator, denominator) of linear_ratios, by contender name
_LINEAR_RATIOS = (
    ("fused forward / bare product", "ours fused forward", "bare product h @ W.T"),
    ("fused forward / product out=buffer", "ours fused forward", "bare product, out=buffer"),
    ("fused fwd+bwd / bare three products", "ours fused fwd+bwd", "bare three products"),
    ("fused fwd+bwd / three out=buffers", "ours fused fwd+bwd", "bare three, out=buffers"),
    ("fused fwd+bwd / unfused fwd+bwd", "ours fused fwd+bwd", "ours unfused fwd+bwd"),
    ("fused fwd+bwd / torch eager fwd+bwd", "ours fused fwd+bwd", "torch eager fwd+bwd"),
    ("fused forward / torch eager forward", "ours fused forward", "torch eager forward"),
)


def linear_ratios(result: Dict[str, object], ratio=_ratio) -> Dict[str, Optional[float]]:
    get = result["times"].get
    return {name: ratio(get(a), get(b)) for name, a, b in _LINEAR_RATIOS}


# ---- peak memory ------------------------------------------------------------------------

_MEMORY_SCRIPT = """
import json, resource, sys, time
import numpy as np
from ce_kernels import _bench_linear as b
kind, n, d, v = sys.argv[1], *map(int, sys.argv[2:5])
if kind.startswith("torch"):
    import torch.nn.functional   # its import is not the path's memory
hidden, weight, target = b._inputs(n, d, v)
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20
before = resident_mb()
start = time.perf_counter()
b.MEMORY_PATHS[kind](hidden, weight, target)
seconds = time.perf_counter() - start
print(json.dumps({"inputs_mb": before, "peak_mb": rss_mb(), "seconds": seconds}))
"""


def _fused(hidden, weight, target):
    return linear_cross_entropy_with_grad(hidden, weight, target)


def _torch_eager(hidden, weight, target):
    return _torch_paths(hidden, weight, target)["torch eager fwd+bwd"]()


MEMORY_PATHS = {"ours fused": _fused, "ours unfused": unfused_ours,
                "numpy unfused": unfused_numpy, "torch eager": _torch_eager}


_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_memory(kind: str, n: int, d: int, v: int) -> Dict[str, float]:
    """Peak resident memory (MB) of one forward+backward of ``kind`` in a
    fresh process: of the inputs alone, and in all; the difference is what
    the path itself holds at its peak."""
    # run from the directory holding this package, so that the child
    # imports it and not another copy in the caller's working directory
    # (such as an unbuilt source checkout)
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, kind, str(n), str(d), str(v)],
                          capture_output=True, text=True, cwd=_PACKAGE_PARENT)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    r = json.loads(proc.stdout)
    r["extra_mb"] = r["peak_mb"] - r["inputs_mb"]
    return r


def expected_fused_mb(n: int, d: int, v: int) -> float:
    """The bound the fused path's extra memory should stay under: the
    chunk's logits buffer + d_hidden + d_weight, plus 10%."""
    from .linear import chunk_rows_for
    buffer = min(chunk_rows_for(None, v, 4), n) * v * 4
    return 1.1 * (buffer + 4 * n * d + 4 * v * d) / 2**20


# ---- the command --------------------------------------------------------------------------

def run(shape: Tuple[int, int, int] = DEFAULT_SHAPE, repeat: int = 5, with_torch: bool = True,
        memory_shape: Optional[Tuple[int, int, int]] = MEMORY_SHAPE, as_json: bool = False,
        out=None) -> Dict[str, object]:
    out = out or sys.stdout
    with_torch = with_torch and _torch_or_none() is not None
    result = time_linear(*shape, repeat, with_torch)
    result["ratios"] = linear_ratios(result)
    result["paired_ratios"] = linear_ratios(result, _paired_ratio)
    if memory_shape is not None:
        kinds = [k for k in MEMORY_PATHS if with_torch or k != "torch eager"]
        result["memory"] = {"shape": memory_shape, "bound_mb": expected_fused_mb(*memory_shape),
                            "paths": {k: peak_memory(k, *memory_shape) for k in kinds}}
    if as_json:
        print(json.dumps(result, indent=2), file=out)
    else:
        print(format_linear(result), file=out)
    return result


def format_linear(result: Dict[str, object]) -> str:
    lines = [f"linear + cross-entropy, (N, D, V) = ({result['n']}, {result['d']}, "
             f"{result['v']}) float32", *time_rows(result["times"], 28, 1)]
    lines.append(f"  {'':40s} {'of minima':>10s} {'paired median':>14s}")
    for name, value in result["ratios"].items():
        if value is not None:
            lines.append(f"  {name:40s} {value:10.3f} {result['paired_ratios'][name]:14.3f}")
    memory = result.get("memory")
    if memory:
        lines.append(f"peak memory of one forward+backward, (N, D, V) = {tuple(memory['shape'])}"
                     f" (fused bound: {memory['bound_mb']:.0f} MB over the inputs)")
        lines.append(f"  {'':16s} {'inputs MB':>10s} {'peak MB':>10s} {'extra MB':>10s} "
                     f"{'seconds':>9s}")
        for name, r in memory["paths"].items():
            if "error" in r:
                lines.append(f"  {name:16s} failed: {r['error']}")
            else:
                lines.append(f"  {name:16s} {r['inputs_mb']:10.0f} {r['peak_mb']:10.0f} "
                             f"{r['extra_mb']:10.0f} {r['seconds']:9.1f}")
    return "\n".join(lines)


def parse_shape3(text: str) -> Tuple[int, int, int]:
    """'16384x2048x128256' -> (16384, 2048, 128256)."""
    import argparse
    try:
        n, d, v = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 2048x1024x32000 (N x D x V), "
                                         f"got {text!r}") from None
    if min(n, d, v) < 1:
        raise argparse.ArgumentTypeError(f"shape sizes must be positive, got {text!r}")
    return n, d, v


def main_args(args) -> None:
    """Run from the parsed ``bench --linear`` arguments."""
    run(args.linear_shape or DEFAULT_SHAPE, repeat=args.repeat, with_torch=not args.no_torch,
        memory_shape=None if args.no_memory else (args.memory_shape or MEMORY_SHAPE),
        as_json=args.json)
