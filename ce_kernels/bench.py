"""Side-by-side benchmark: ce_kernels vs NumPy vs PyTorch vs the memory floor.

Every figure is measured in the same run on the same array: the minimum
(and median) of repeated calls. The floors come from the package's own C
(a multithreaded read, and a copy into a reused buffer), so anyone can
reproduce the comparison.

``ce-kernels bench --json`` prints one object: ``machine``, ``build``,
``results`` (one entry per shape) and ``eval``. Each entry of ``results``
holds ``n``, ``v``, ``threads``, ``bytes`` (of the float32 logits),
``times`` (per contender: ``min``, ``median``, ``runs``, ``times`` in
seconds), ``ratios`` (of minima) and ``paired_ratios`` (medians over rounds
of the ratio within a round), both keyed as :func:`derived_ratios` names
them, and ``family`` (the rest of the family, with its own ``ratios``).
Ratios are time over time ("forward / read floor": 1.0 is at the floor),
except the "speedup" ones (their time over ours), and are null when a
contender did not run. The ratios:

- against the floors: ``forward / read floor``, ``forward / read floor,
  from memory`` (cache-sized logits cycled through copies that exceed the
  caches), ``fwd+bwd in place / in-place floor`` (one read and one write),
  ``fwd+bwd in place / read floor``, ``fwd+bwd out=buf / copy floor``;
- half precision, against the floors of 2-byte data measured on the same
  bytes: ``float16 forward / half read floor``, ``bfloat16 forward / half
  read floor``, ``bfloat16 fwd+bwd in place / half in-place floor``
  (``cross_entropy_with_grad(x, t, out=x)``), and ``float16 forward /
  float32 forward``, ``bfloat16 forward / float32 forward``;
- few rows: ``forward / exp alone, in cache`` (logits that fit in the
  caches: the forward on one thread against the kernels' own exponential
  over as many elements, also on one thread);
- against PyTorch: ``forward speedup vs torch``, ``fwd+bwd speedup vs
  torch``, ``bfloat16 forward speedup vs torch bfloat16``, ``bfloat16
  fwd+bwd speedup vs torch bfloat16`` (``F.cross_entropy`` on bfloat16
  tensors), ``ce_kernels.torch fwd+bwd speedup vs torch``;
- against NumPy: ``forward speedup vs numpy``, ``fwd+bwd speedup vs numpy``;
- ``token_stats / forward``.

``eval`` is null unless ``--eval-gb`` asked for the scoring of a file; it is
then what :func:`ce_kernels._bench_eval.bench_eval_file` returns: ``bytes``,
``shape``, ``chunk_rows``, and for ``page_cache`` and ``cold`` the
``times``, ``gbps`` of each contender, the ``read floor`` contender and the
ratios ``eval / read floor``, ``eval / read floor, paired median`` and
``eval / read, memory-mapped``.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _core
from ._api import cross_entropy, cross_entropy_with_grad, token_stats
from ._threads import build_info, get_num_threads
from ._version import __version__

DEFAULT_SHAPES: Tuple[Tuple[int, int], ...] = ((2048, 32000), (512, 128256), (8, 256000), (1, 256000))
QUICK_SHAPES: Tuple[Tuple[int, int], ...] = ((256, 32000), (8, 128256), (1, 1000))


# ---- the NumPy baseline: careful, not naive ---------------------------------

def numpy_cross_entropy(logits: np.ndarray, target: np.ndarray) -> float:
    """Mean softmax cross-entropy in NumPy: max-subtracted log-sum-exp,
    gather, mean, with one temporary reused in place."""
    m = logits.max(axis=-1, keepdims=True)
    shifted = np.subtract(logits, m)
    np.exp(shifted, out=shifted)
    lse = np.log(shifted.sum(axis=-1)) + m[:, 0]
    rows = np.arange(logits.shape[0])
    return float(np.mean(lse - logits[rows, target]))


def numpy_cross_entropy_with_grad(logits: np.ndarray, target: np.ndarray):
    """Loss and gradient in NumPy with one temporary (softmax - onehot) / N."""
    n = logits.shape[0]
    m = logits.max(axis=-1, keepdims=True)
    grad = np.subtract(logits, m)
    np.exp(grad, out=grad)
    sums = grad.sum(axis=-1, keepdims=True)
    rows = np.arange(n)
    loss = float(np.mean(np.log(sums[:, 0]) + m[:, 0] - logits[rows, target]))
    grad /= sums
    grad[rows, target] -= 1.0
    grad /= n
    return loss, grad


# ---- timing -------------------------------------------------------------------

Timed = Tuple[Callable[[], object], Optional[Callable[[], None]]]


def _summary(times: List[float]) -> Dict[str, object]:
    return {"min": min(times), "median": statistics.median(times), "runs": len(times),
            "times": times}


def time_call(fn: Callable[[], object], repeat: int, setup: Optional[Callable[[], None]] = None,
              budget: float = 20.0) -> Dict[str, float]:
    """Min and median seconds of ``repeat`` calls (fewer if a call is slow:
    at least 2 once ``budget`` seconds are spent). ``setup`` runs untimed
    before each call."""
    return time_interleaved({"call": (fn, setup)}, repeat, budget)["call"]


def time_interleaved(contenders: Dict[str, Timed], repeat: int,
                     budget: float = 20.0) -> Dict[str, Dict[str, float]]:
    """Times every contender once per round, ``repeat`` rounds, so that a
    noisy stretch of the machine hits all of them alike; min and median of
    each. A contender stops early (after at least 2 calls) once it has spent
    ``budget`` seconds. Each entry is (call, untimed setup or None)."""
    times: Dict[str, List[float]] = {name: [] for name in contenders}
    spent = dict.fromkeys(contenders, 0.0)
    for i in range(repeat):
        for name, (fn, setup) in contenders.items():
            if spent[name] > budget and i >= 2:
                continue
            if setup is not None:
                setup()
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            times[name].append(elapsed)
            spent[name] += elapsed
    return {name: _summary(t) for name, t in times.items()}


def _torch_or_none():
    try:
        import torch  # noqa: F401  (optional comparison)
    except Exception:
        return None
    return torch


def _half_dtypes():
    """(name, dtype) of the half-precision types this installation can make."""
    halves = [("float16", np.dtype(np.float16))]
    try:
        import ml_dtypes  # optional: only needed to create bfloat16 arrays
        halves.append(("bfloat16", np.dtype(ml_dtypes.bfloat16)))
    except ImportError:
        pass
    return halves


def machine_line(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = build_info()
    return (f"ce_kernels {__version__} | {cpu} | {os.cpu_count()} CPUs | threads={threads} | "
            f"isa={info['isa']} | openmp={info['openmp']} | numpy {np.__version__}")


# ---- one shape ------------------------------------------------------------------

# Logits smaller than this fit in this kind of machine's caches when called
# repeatedly; for them the bench also times calls that read from memory, by
# cycling through copies that together exceed every cache.
COLD_BYTES = 64 << 20
COLD_TOTAL_BYTES = 256 << 20


def _cycling(arrays: Sequence[np.ndarray]) -> Callable[[], np.ndarray]:
    """A function returning the next array of ``arrays`` on each call."""
    state = {"i": -1}

    def next_array() -> np.ndarray:
        state["i"] = (state["i"] + 1) % len(arrays)
        return arrays[state["i"]]

    return next_array


def _cold_contenders(logits: np.ndarray, target: np.ndarray, buf: np.ndarray,
                     threads: int) -> Dict[str, Timed]:
    """Floor and kernels on logits that are not in any cache."""
    copies = [logits.copy() for _ in range(max(2, -(-COLD_TOTAL_BYTES // logits.nbytes)))]
    nxt_floor, nxt_fwd, nxt_grad = _cycling(copies), _cycling(copies), _cycling(copies)
    return {
        "read floor (from memory)": (lambda: _core.floor_read(nxt_floor(), threads), None),
        "ours forward (from memory)": (
            lambda: cross_entropy(nxt_fwd(), target, num_threads=threads), None),
        "ours fwd+bwd out=buf (from memory)": (
            lambda: cross_entropy_with_grad(nxt_grad(), target, out=buf, num_threads=threads), None),
    }


def _as_words(half: np.ndarray) -> np.ndarray:
    """The bytes of a contiguous 2-byte array as float32 words, for the
    floors, which only read and write bytes (an odd last element is left
    out)."""
    flat = half.reshape(-1)
    return flat[:flat.size - flat.size % 2].view(np.float32)


def _half_floors(half: np.ndarray, threads: int) -> Dict[str, Timed]:
    """The read floor of 2-byte logits (each byte read once) and their
    in-place floor (each byte read and written once, in a scratch copy)."""
    words = _as_words(half)
    scratch = words.copy()
    return {"half read floor": (lambda: _core.floor_read(words, threads), None),
            "half in-place floor": (lambda: _core.floor_update(scratch, 1.0, threads), None)}


def _copy_half(src: np.ndarray, dst: np.ndarray, threads: int) -> None:
    _core.floor_copy(_as_words(src), _as_words(dst), threads)
    if src.size % 2:
        dst.reshape(-1)[-1] = src.reshape(-1)[-1]


def _half_in_place(half: np.ndarray, target: np.ndarray, threads: int) -> Dict[str, Timed]:
    """Loss and gradient written over the logits themselves, restored from
    ``half`` untimed before each call."""
    work = np.empty_like(half)
    return {f"ours fwd+bwd {half.dtype.name} (in place)": (
        lambda: cross_entropy_with_grad(work, target, out=work, num_threads=threads),
        lambda: _copy_half(half, work, threads))}


def _torch_cross_entropy(torch, tx, tt, suffix: str = "") -> Dict[str, Timed]:
    """PyTorch's cross-entropy on the tensor ``tx``: forward, and forward
    with the backward pass (on a leaf copy), named with ``suffix``."""
    F = torch.nn.functional
    leaf = tx.clone().requires_grad_(True)

    def forward():
        with torch.no_grad():
            F.cross_entropy(tx, tt)

    def fwd_bwd():
        leaf.grad = None
        F.cross_entropy(leaf, tt).backward()

    return {f"torch forward{suffix}": (forward, None), f"torch fwd+bwd{suffix}": (fwd_bwd, None)}


def bench_shape(n: int, v: int, threads: int, repeat: int, with_numpy: bool = True,
                with_torch: bool = True, seed: int = 0) -> Dict[str, object]:
    """Time every contender on one float32 (n, v) problem, interleaved."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, v), dtype=np.float32)
    target = rng.integers(0, v, n)
    buf = np.empty_like(logits)
    work = np.empty_like(logits)
    c: Dict[str, Timed] = {}

    c["read floor"] = (lambda: _core.floor_read(logits, threads), None)
    c["copy floor"] = (lambda: _core.floor_copy(logits, buf, threads), None)
    c["in-place floor"] = (lambda: _core.floor_update(buf, 1.0, threads), None)
    c["ours forward"] = (lambda: cross_entropy(logits, target, num_threads=threads), None)
    c["ours fwd+bwd (out=buf)"] = (
        lambda: cross_entropy_with_grad(logits, target, out=buf, num_threads=threads), None)
    c["ours fwd+bwd (in place)"] = (
        lambda: cross_entropy_with_grad(work, target, out=work, num_threads=threads),
        lambda: _core.floor_copy(logits, work, threads))
    c["ours token_stats"] = (lambda: token_stats(logits, target, num_threads=threads), None)
    halves = {name: logits.astype(half) for name, half in _half_dtypes()}
    for name, half_logits in halves.items():
        half_buf = np.empty_like(half_logits)
        c[f"ours forward {name}"] = (
            lambda h=half_logits: cross_entropy(h, target, num_threads=threads), None)
        c[f"ours fwd+bwd {name} (out=buf)"] = (
            lambda h=half_logits, hb=half_buf: cross_entropy_with_grad(h, target, out=hb,
                                                                       num_threads=threads), None)
    c.update(_half_floors(halves["float16"], threads))
    if "bfloat16" in halves:
        c.update(_half_in_place(halves["bfloat16"], target, threads))
    cold = logits.nbytes < COLD_BYTES
    if cold:
        # the compute floor of cache-resident rows, like for like: one
        # thread each (the exponential alone has no threads)
        c["exp alone (one thread)"] = (lambda: _core.exp_array(logits, buf), None)
        c["ours forward (one thread)"] = (lambda: cross_entropy(logits, target, num_threads=1),
                                          None)

    if with_numpy:
        c["numpy forward"] = (lambda: numpy_cross_entropy(logits, target), None)
        c["numpy fwd+bwd"] = (lambda: numpy_cross_entropy_with_grad(logits, target), None)

    torch = _torch_or_none() if with_torch else None
    previous_torch_threads = None
    if torch is not None:
        previous_torch_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        tx = torch.from_numpy(logits)
        tt = torch.from_numpy(target)
        leaf = tx.clone().requires_grad_(True)
        from . import torch as ck_torch  # the adapter, on the same tensors

        def adapter_fwd_bwd():
            leaf.grad = None
            ck_torch.cross_entropy(leaf, tt).backward()

        c.update(_torch_cross_entropy(torch, tx, tt))
        c["ce_kernels.torch fwd+bwd"] = (adapter_fwd_bwd, None)
        c.update(_torch_cross_entropy(torch, tx.to(torch.bfloat16), tt, " bfloat16"))
    if cold:
        # Cache-sized logits: each timed call follows an untimed one on the
        # same data (so it finds them in cache, as right after they were
        # computed, whatever ran in between); then the same from memory.
        c = {name: (fn, setup or fn) for name, (fn, setup) in c.items()}
        c.update(_cold_contenders(logits, target, buf, threads))
    try:
        results = time_interleaved(c, repeat)
    finally:
        if previous_torch_threads is not None:
            torch.set_num_threads(previous_torch_threads)
    return {"n": n, "v": v, "threads": threads, "bytes": logits.nbytes, "times": results}


# ---- reporting ---------------------------------------------------------------------

def _ratio(a: Optional[Dict[str, object]], b: Optional[Dict[str, object]]) -> Optional[float]:
    if a is None or b is None:
        return None
    return a["min"] / b["min"]


def _paired_ratio(a: Optional[Dict[str, object]],
                  b: Optional[Dict[str, object]]) -> Optional[float]:
    """Median over rounds of a's time / b's time in the same round: calls
    timed side by side share the machine's state, so this ratio is steadier
    than one of minima, which one lucky run of either side can move."""
    if a is None or b is None:
        return None
    return statistics.median(x / y for x, y in zip(a["times"], b["times"]))


# (name, contender timed, contender it is divided by) of each ratio the
# targets are stated in; a "speedup" divides the other's time by ours.
RATIOS: Tuple[Tuple[str, str, str], ...] = (
    ("forward / read floor", "ours forward", "read floor"),
    ("forward / read floor, from memory", "ours forward (from memory)",
     "read floor (from memory)"),
    ("float16 forward / half read floor", "ours forward float16", "half read floor"),
    ("bfloat16 forward / half read floor", "ours forward bfloat16", "half read floor"),
    ("bfloat16 fwd+bwd in place / half in-place floor", "ours fwd+bwd bfloat16 (in place)",
     "half in-place floor"),
    ("forward / exp alone, in cache", "ours forward (one thread)", "exp alone (one thread)"),
    ("float16 forward / float32 forward", "ours forward float16", "ours forward"),
    ("bfloat16 forward / float32 forward", "ours forward bfloat16", "ours forward"),
    ("token_stats / forward", "ours token_stats", "ours forward"),
    ("fwd+bwd in place / read floor", "ours fwd+bwd (in place)", "read floor"),
    ("fwd+bwd in place / in-place floor", "ours fwd+bwd (in place)", "in-place floor"),
    ("fwd+bwd out=buf / copy floor", "ours fwd+bwd (out=buf)", "copy floor"),
    ("forward speedup vs numpy", "numpy forward", "ours forward"),
    ("forward speedup vs torch", "torch forward", "ours forward"),
    ("fwd+bwd speedup vs numpy", "numpy fwd+bwd", "ours fwd+bwd (out=buf)"),
    ("fwd+bwd speedup vs torch", "torch fwd+bwd", "ours fwd+bwd (out=buf)"),
    ("ce_kernels.torch fwd+bwd speedup vs torch", "torch fwd+bwd", "ce_kernels.torch fwd+bwd"),
    ("bfloat16 forward speedup vs torch bfloat16", "torch forward bfloat16",
     "ours forward bfloat16"),
    ("bfloat16 fwd+bwd speedup vs torch bfloat16", "torch fwd+bwd bfloat16",
     "ours fwd+bwd bfloat16 (out=buf)"),
)


def derived_ratios(shape_result: Dict[str, object],
                   ratio: Callable[..., Optional[float]] = _ratio) -> Dict[str, Optional[float]]:
    """The figures the targets are stated in: ratios of minima by default,
    or of any other statistic given as ``ratio``."""
    get = shape_result["times"].get
    return {name: ratio(get(timed), get(base)) for name, timed, base in RATIOS}


def format_table(shape_result: Dict[str, object]) -> str:
    n, v, nbytes = shape_result["n"], shape_result["v"], shape_result["bytes"]
    times = shape_result["times"]
    floors = {False: times["read floor"]["min"],
              True: times.get("read floor (from memory)", times["read floor"])["min"]}
    lines = [f"(N, V) = ({n}, {v})  float32 (half-precision rows: the same values rounded), "
             f"{nbytes / 1e6:.1f} MB of float32 logits",
             f"  {'':36s} {'min ms':>10s} {'median ms':>10s} {'GB/s read':>10s} {'x read floor':>13s}"]
    for name, t in times.items():
        gbps = nbytes / t["min"] / 1e9
        lines.append(f"  {name:36s} {t['min'] * 1e3:10.3f} {t['median'] * 1e3:10.3f} "
                     f"{gbps:10.1f} {t['min'] / floors['from memory' in name]:13.2f}")
    lines.append(f"  {'':48s} {'of minima':>10s} {'paired median':>14s}")
    paired = derived_ratios(shape_result, _paired_ratio)
    for name, value in derived_ratios(shape_result).items():
        if value is not None:
            unit = "x" if "speedup" in name else " "
            lines.append(f"  {name:48s} {value:9.2f}{unit} {paired[name]:13.2f}{unit}")
    return "\n".join(lines)


def run(shapes: Sequence[Tuple[int, int]] = DEFAULT_SHAPES, threads: Optional[int] = None,
        repeat: int = 7, with_numpy: bool = True, with_torch: bool = True,
        as_json: bool = False, out=None, eval_gb: Optional[float] = None,
        eval_dir: Optional[str] = None) -> List[Dict[str, object]]:
    """Run the benchmark over ``shapes`` and print a table per shape (or JSON);
    with ``eval_gb``, also time the scoring of a file of that many GB
    written in ``eval_dir`` (:func:`ce_kernels._bench_eval.bench_eval_synthetic`)."""
    import sys
    out = out or sys.stdout
    threads = threads or get_num_threads()
    if not as_json:
        print(machine_line(threads), file=out)
        if with_torch and _torch_or_none() is None:
            print("(PyTorch not installed: torch columns skipped; pip install torch to compare)", file=out)
        print(file=out)
    results = []
    for n, v in shapes:
        r = bench_shape(n, v, threads, repeat, with_numpy=with_numpy, with_torch=with_torch)
        r["ratios"] = derived_ratios(r)
        r["paired_ratios"] = derived_ratios(r, _paired_ratio)
        r["family"] = bench_family(n, v, threads, repeat, with_torch=with_torch)
        r["family"]["ratios"] = family_ratios(r["family"])
        r["distill"] = bench_distill(n, v, threads, repeat, with_torch=with_torch)
        r["distill"]["ratios"] = distill_ratios(r["distill"])
        results.append(r)
        if not as_json:
            print(format_table(r), file=out)
            print(format_family_table(r["family"]), file=out)
            print(format_distill_table(r["distill"]), file=out)
            print(file=out, flush=True)
    evaluated = None
    if eval_gb is not None:
        from ._bench_eval import bench_eval_synthetic, format_eval
        evaluated = bench_eval_synthetic(eval_gb, threads=threads, repeat=repeat,
                                         directory=eval_dir)
        if not as_json:
            print(format_eval(evaluated), file=out, flush=True)
    if as_json:
        doc = {"machine": machine_line(threads), "build": build_info(), "results": results,
               "eval": evaluated}
        print(json.dumps(doc, indent=2), file=out)
    return results


# ---- the rest of the family -------------------------------------------------------

# (ours, PyTorch's equivalent, floor) for each family row: the figures the
# family's targets are stated in.
FAMILY_ROWS: Tuple[Tuple[str, str, str], ...] = (
    ("entropy", "torch special.entr().sum", "read floor"),
    ("logsumexp", "torch logsumexp", "read floor"),
    ("kl_divergence", "torch kl_div", "two-input read floor"),
    ("cross_entropy_probs", "torch -xlogy().sum", "two-input read floor"),
    ("binary_cross_entropy", "torch bce_with_logits", "two-input read floor"),
    ("binary_cross_entropy_with_grad (out=buf)", "torch bce_with_logits fwd+bwd", "copy floor"),
    ("sigmoid (out=buf)", "torch sigmoid (out=)", "copy floor"),
    ("log_sigmoid (out=buf)", "torch logsigmoid", "copy floor"),
)


def bench_family(n: int, v: int, threads: int, repeat: int, with_torch: bool = True,
                 seed: int = 0) -> Dict[str, object]:
    """Time the distribution and binary cross-entropy functions on one
    float32 (n, v) problem against PyTorch and the memory floors,
    interleaved: one read (entropy, logsumexp), two reads (KL,
    cross-entropy between distributions, BCE) and a copy (elementwise
    results and gradients into a reused buffer)."""
    from . import _family
    from ._api import logsumexp

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, v), dtype=np.float32)
    y = rng.random((n, v), dtype=np.float32)
    p = rng.random((n, v), dtype=np.float32)
    p /= p.sum(axis=-1, keepdims=True)
    q = np.roll(p, 1, axis=-1)
    buf = np.empty_like(x)
    kw = {"num_threads": threads}
    c: Dict[str, Timed] = {
        "read floor": (lambda: _core.floor_read(x, threads), None),
        "two-input read floor": (lambda: (_core.floor_read(p, threads), _core.floor_read(q, threads)), None),
        "copy floor": (lambda: _core.floor_copy(x, buf, threads), None),
        "entropy": (lambda: _family.entropy(p, **kw), None),
        "entropy (validate=False)": (lambda: _family.entropy(p, validate=False, **kw), None),
        "logsumexp": (lambda: logsumexp(x), None),
        "kl_divergence": (lambda: _family.kl_divergence(p, q, **kw), None),
        "kl_divergence (validate=False)": (
            lambda: _family.kl_divergence(p, q, validate=False, **kw), None),
        "cross_entropy_probs": (lambda: _family.cross_entropy_probs(p, q, **kw), None),
        "binary_cross_entropy": (lambda: _family.binary_cross_entropy(x, y, **kw), None),
        "binary_cross_entropy_with_grad (out=buf)": (
            lambda: _family.binary_cross_entropy_with_grad(x, y, out=buf, **kw), None),
        "sigmoid (out=buf)": (lambda: _family.sigmoid(x, out=buf), None),
        "log_sigmoid (out=buf)": (lambda: _family.log_sigmoid(x, out=buf), None),
    }
    torch = _torch_or_none() if with_torch else None
    previous_torch_threads = None
    if torch is not None:
        previous_torch_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        F = torch.nn.functional
        tx, ty, tp, tq = (torch.from_numpy(a) for a in (x, y, p, q))
        tlogq = tq.log()   # kl_div takes log q: computed once, untimed
        tbuf = torch.from_numpy(buf)
        leaf = tx.clone().requires_grad_(True)

        def bce_fwd_bwd():
            leaf.grad = None
            F.binary_cross_entropy_with_logits(leaf, ty).backward()

        c.update({
            "torch special.entr().sum": (lambda: torch.special.entr(tp).sum(-1), None),
            "torch logsumexp": (lambda: torch.logsumexp(tx, -1), None),
            "torch kl_div": (lambda: F.kl_div(tlogq, tp, reduction="none").sum(-1), None),
            "torch -xlogy().sum": (lambda: -torch.special.xlogy(tp, tq).sum(-1), None),
            "torch bce_with_logits": (lambda: F.binary_cross_entropy_with_logits(tx, ty), None),
            "torch bce_with_logits fwd+bwd": (bce_fwd_bwd, None),
            "torch sigmoid (out=)": (lambda: torch.sigmoid(tx, out=tbuf), None),
            "torch logsigmoid": (lambda: F.logsigmoid(tx), None),
        })
    try:
        results = time_interleaved(c, repeat)
    finally:
        if previous_torch_threads is not None:
            torch.set_num_threads(previous_torch_threads)
    return {"n": n, "v": v, "threads": threads, "times": results}


def family_ratios(family: Dict[str, object]) -> Dict[str, Optional[float]]:
    """Each family row against its floor and PyTorch (speedup), and what
    the distribution checks cost (with / without validation)."""
    t = family["times"]
    out: Dict[str, Optional[float]] = {}
    for ours, theirs, floor in FAMILY_ROWS:
        out[f"{ours} / {floor}"] = _ratio(t.get(ours), t.get(floor))
        out[f"{ours} speedup vs torch"] = _ratio(t.get(theirs), t.get(ours))
    for name in ("entropy", "kl_divergence"):
        out[f"{name} validated / validate=False"] = _ratio(t.get(name), t.get(f"{name} (validate=False)"))
    return out


def time_rows(times: Dict[str, Dict[str, float]], width: int, digits: int) -> List[str]:
    """A header and one line per contender: its minimum and median in ms."""
    lines = [f"  {'':{width}s} {'min ms':>10s} {'median ms':>10s}"]
    for name, t in times.items():
        lines.append(f"  {name:{width}s} {t['min'] * 1e3:10.{digits}f} "
                     f"{t['median'] * 1e3:10.{digits}f}")
    return lines


def format_family_table(family: Dict[str, object]) -> str:
    lines = [f"The family on (N, V) = ({family['n']}, {family['v']}) float32, "
             f"{family['threads']} threads", *time_rows(family["times"], 42, 3)]
    for name, value in family_ratios(family).items():
        if value is not None:
            lines.append(f"  {name:60s} {value:8.2f}{'x' if 'speedup' in name else ''}")
    return "\n".join(lines)


# ---- sweeps for the picture -------------------------------------------------------

SWEEP_VOCABS: Tuple[int, ...] = (1000, 4000, 16000, 32000, 64000, 128256, 256000)
SWEEP_ELEMENTS = 1 << 24  # about 64 MB of float32 logits per point


def _gbps(nbytes: int, t: Dict[str, float]) -> float:
    return nbytes / t["min"] / 1e9


def sweep(threads: int, repeat: int, with_torch: bool = True) -> Dict[str, object]:
    """Throughput (GB/s of logits) against vocabulary size at ``threads``
    threads, and against thread count at V = 32000."""
    torch = _torch_or_none() if with_torch else None
    by_vocab: Dict[str, List[float]] = {"read floor": [], "ours forward": [], "ours fwd+bwd": [],
                                        "numpy forward": []}
    if torch is not None:
        by_vocab["torch forward"] = []
    for v in SWEEP_VOCABS:
        n = max(1, SWEEP_ELEMENTS // v)
        r = bench_shape(n, v, threads, repeat, with_torch=torch is not None)
        t, nbytes = r["times"], r["bytes"]
        by_vocab["read floor"].append(_gbps(nbytes, t["read floor"]))
        by_vocab["ours forward"].append(_gbps(nbytes, t["ours forward"]))
        by_vocab["ours fwd+bwd"].append(_gbps(nbytes, t["ours fwd+bwd (out=buf)"]))
        by_vocab["numpy forward"].append(_gbps(nbytes, t["numpy forward"]))
        if torch is not None:
            by_vocab["torch forward"].append(_gbps(nbytes, t["torch forward"]))
    thread_counts = list(range(1, max(threads, 1) + 1))
    by_threads: Dict[str, List[float]] = {"read floor": [], "ours forward": [], "ours fwd+bwd": []}
    for nt in thread_counts:
        r = bench_shape(SWEEP_ELEMENTS // 32000, 32000, nt, repeat, with_numpy=False, with_torch=False)
        t, nbytes = r["times"], r["bytes"]
        by_threads["read floor"].append(_gbps(nbytes, t["read floor"]))
        by_threads["ours forward"].append(_gbps(nbytes, t["ours forward"]))
        by_threads["ours fwd+bwd"].append(_gbps(nbytes, t["ours fwd+bwd (out=buf)"]))
    return {"vocabs": list(SWEEP_VOCABS), "by_vocab": by_vocab,
            "thread_counts": thread_counts, "by_threads": by_threads}


def plot(path: str, threads: int, repeat: int, with_torch: bool = True) -> Dict[str, object]:
    """Draw throughput vs vocabulary size and vs thread count into ``path``."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'ce_kernels[plot]'") from None
    data = sweep(threads, repeat, with_torch)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, values in data["by_vocab"].items():
        left.plot(data["vocabs"], values, marker="o", label=name,
                  linestyle="--" if name == "read floor" else "-")
    left.set_xscale("log")
    left.set_xlabel("vocabulary size V (N x V = 16M float32)")
    left.set_ylabel("GB/s of logits")
    left.set_title(f"throughput vs vocabulary, {threads} thread(s)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    for name, values in data["by_threads"].items():
        right.plot(data["thread_counts"], values, marker="o", label=name,
                   linestyle="--" if name == "read floor" else "-")
    right.set_xlabel("threads")
    right.set_ylabel("GB/s of logits")
    right.set_xticks(data["thread_counts"])
    right.set_title("throughput vs threads, V = 32000")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(machine_line(threads), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return data


# ---- vocabulary parallelism over processes ------------------------------------------

def _vocab_parallel_rank(rank: int, world: int, init_method: str, n: int, v: int,
                         threads: int, repeat: int, path: str) -> None:
    """One rank of :func:`vocab_parallel`: forward and backward of its shard,
    each round started together; rank 0 writes the slowest rank's times."""
    import torch
    import torch.distributed as dist

    from ._threads import set_num_threads
    from .distributed import vocab_parallel_cross_entropy

    set_num_threads(threads)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n, v), dtype=np.float32)
    target = torch.from_numpy(rng.integers(0, v, n))
    bounds = np.linspace(0, v, world + 1).astype(int)
    shard = torch.from_numpy(np.ascontiguousarray(logits[:, bounds[rank]:bounds[rank + 1]]))
    times = []
    for _ in range(repeat + 1):                    # the first round warms up
        x = shard.clone().requires_grad_()
        dist.barrier()
        start = time.perf_counter()
        vocab_parallel_cross_entropy(x, target).backward()
        elapsed = torch.tensor([time.perf_counter() - start])
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        times.append(float(elapsed))
    if rank == 0:
        with open(path, "w") as f:
            json.dump(times[1:], f)
    dist.destroy_process_group()


def vocab_parallel(n: int, v: int, ranks: int, threads: int, repeat: int) -> Dict[str, object]:
    """Forward + backward of ``ce_kernels.distributed.vocab_parallel_cross_entropy``
    on ``ranks`` local processes (gloo; threads split among them) against
    ``cross_entropy_with_grad`` in one process on the whole vocabulary, and
    the bytes each rank sends per row (the same for any V)."""
    import socket
    import tempfile

    import torch.multiprocessing as mp

    from .distributed import BYTES_PER_ROW

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n, v), dtype=np.float32)
    target = rng.integers(0, v, n)
    single = time_call(lambda: cross_entropy_with_grad(logits, target, num_threads=threads),
                       repeat)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    per_rank = max(1, threads // ranks)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "times.json")
        mp.start_processes(_vocab_parallel_rank, nprocs=ranks, start_method="spawn",
                           args=(ranks, f"tcp://127.0.0.1:{port}", n, v, per_rank, repeat,
                                 path))
        with open(path) as f:
            parallel = _summary(json.load(f))
    return {"shape": [n, v], "ranks": ranks, "threads_per_rank": per_rank, "threads": threads,
            "single_process": single, "vocab_parallel": parallel,
            "ratio": parallel["min"] / single["min"],
            "bytes_sent_per_row_per_rank": BYTES_PER_ROW,
            "bytes_received_per_row_per_rank": BYTES_PER_ROW * (ranks - 1)}


def format_vocab_parallel(r: Dict[str, object]) -> str:
    n, v = r["shape"]
    single, parallel = r["single_process"], r["vocab_parallel"]
    return "\n".join([
        f"vocab-parallel forward+backward, {n}x{v} float32, {r['ranks']} processes x "
        f"{r['threads_per_rank']} threads vs 1 process x {r['threads']} threads",
        f"  {'1 process (whole vocabulary)':<30} min {single['min'] * 1e3:9.2f} ms   median "
        f"{single['median'] * 1e3:9.2f} ms",
        f"  {str(r['ranks']) + ' processes (gloo)':<30} min {parallel['min'] * 1e3:9.2f} ms   "
        f"median {parallel['median'] * 1e3:9.2f} ms   ratio {r['ratio']:.2f}",
        f"  communicated per row: {r['bytes_sent_per_row_per_rank']} bytes sent and "
        f"{r['bytes_received_per_row_per_rank']} received by each process (independent of V)",
    ])


# ---- distillation -----------------------------------------------------------------

DISTILL_TEMPERATURE = 2.0
# (ours, PyTorch's equivalent or None, floor) for each distillation row
DISTILL_ROWS: Tuple[Tuple[str, Optional[str], str], ...] = (
    ("distill_kl", "torch kl_div(log_softmax)", "two-input read floor"),
    ("distill_kl_with_grad (out=buf)", "torch kl_div(log_softmax) fwd+bwd", "two-input read floor"),
    ("distill_jsd", None, "two-input read floor"),
    ("distill_jsd_with_grad (out=buf)", None, "two-input read floor"),
)


@contextlib.contextmanager
def _torch_threads(torch, threads: int):
    """PyTorch (if not None) on ``threads`` threads for the block."""
    if torch is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _ratio_lines(ratios: Dict[str, Optional[float]]) -> List[str]:
    return [f"  {name:60s} {value:8.2f}{'x' if 'speedup' in name else ''}"
            for name, value in ratios.items() if value is not None]


def bench_distill(n: int, v: int, threads: int, repeat: int, with_torch: bool = True,
                  seed: int = 0) -> Dict[str, object]:
    """Time the distillation losses on float32 (n, v) student and teacher
    logits at temperature 2 against PyTorch's composition
    ``kl_div(log_softmax(s / T), log_softmax(t / T), log_target=True,
    reduction="batchmean") * T * T`` (forward, and forward + backward) and
    the floor of reading both inputs once, interleaved."""
    from . import _distill

    rng = np.random.default_rng(seed)
    s = rng.standard_normal((n, v), dtype=np.float32)
    t = rng.standard_normal((n, v), dtype=np.float32)
    buf = np.empty_like(s)
    T = DISTILL_TEMPERATURE
    kw = {"temperature": T, "num_threads": threads}
    c: Dict[str, Timed] = {
        "two-input read floor": (lambda: (_core.floor_read(s, threads), _core.floor_read(t, threads)), None),
        "distill_kl": (lambda: _distill.distill_kl(s, t, **kw), None),
        "distill_kl_with_grad (out=buf)": (lambda: _distill.distill_kl_with_grad(s, t, out=buf, **kw), None),
        "distill_jsd": (lambda: _distill.distill_jsd(s, t, **kw), None),
        "distill_jsd_with_grad (out=buf)": (lambda: _distill.distill_jsd_with_grad(s, t, out=buf, **kw), None),
    }
    torch = _torch_or_none() if with_torch else None
    if torch is not None:
        F = torch.nn.functional
        ts, tt = torch.from_numpy(s), torch.from_numpy(t)
        leaf = ts.clone().requires_grad_(True)

        def torch_kl(x):
            return F.kl_div(F.log_softmax(x / T, -1), F.log_softmax(tt / T, -1), log_target=True,
                            reduction="batchmean") * T * T

        def torch_fwd_bwd():
            leaf.grad = None
            torch_kl(leaf).backward()

        c.update({
            "torch kl_div(log_softmax)": (lambda: torch_kl(ts), None),
            "torch kl_div(log_softmax) fwd+bwd": (torch_fwd_bwd, None),
        })
    with _torch_threads(torch, threads):
        results = time_interleaved(c, repeat)
    return {"n": n, "v": v, "threads": threads, "times": results}


def distill_ratios(distill: Dict[str, object]) -> Dict[str, Optional[float]]:
    """Each distillation row against its floor and PyTorch (speedup)."""
    t = distill["times"]
    out: Dict[str, Optional[float]] = {}
    for ours, theirs, floor in DISTILL_ROWS:
        out[f"{ours} / {floor}"] = _ratio(t.get(ours), t.get(floor))
        if theirs is not None:
            out[f"{ours} speedup vs torch"] = _ratio(t.get(theirs), t.get(ours))
    return out


def format_distill_table(distill: Dict[str, object]) -> str:
    return "\n".join([f"Distillation on (N, V) = ({distill['n']}, {distill['v']}) float32, T = "
                      f"{DISTILL_TEMPERATURE:g}, {distill['threads']} threads",
                      *time_rows(distill["times"], 42, 3), *_ratio_lines(distill_ratios(distill))])
