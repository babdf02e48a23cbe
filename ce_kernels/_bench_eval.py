"""Timing ``ce-kernels eval`` against the least time reading its file takes.

The floor of scoring a file is reading it once on one thread, measured in
the same run and interleaved round by round with the scoring. Three reads
are timed: ``readinto`` a reused buffer (as ``dd`` does) of 1 MiB, which
stays in the CPU's caches, and of the scoring's chunk size (the fewest
requests), the faster of which is the read floor; and reading it block by
block through a memory map, as the scoring does, which copies nothing: the
floor of the scoring's own input path, reported beside it.

Runs "from the page cache" follow a read of the whole file. Each "cold" run
follows ``posix_fadvise(POSIX_FADV_DONTNEED)`` on the file, which drops its
clean pages from the page cache; caches below the operating system (a disk's
own, or the host's of a virtual disk) are out of its reach.
"""
from __future__ import annotations

import math
import mmap
import os
import tempfile
from typing import Dict, Optional

import numpy as np

from .bench import Timed, _paired_ratio, time_interleaved, time_rows

SMALL_BLOCK = 1 << 20
#: Vocabulary of the file ``ce-kernels bench --eval-gb`` writes.
SYNTHETIC_VOCAB = 32000


def read_file(path: str, buffer: bytearray) -> int:
    """Read the file at ``path`` once, in pieces the size of ``buffer``, each
    into ``buffer``; the number of bytes read."""
    view = memoryview(buffer)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            got = f.readinto(view)
            if not got:
                return total
            total += got


def read_mapped(path: str, block: int) -> float:
    """Read the file at ``path`` once through a memory map, as the scoring
    does, ``block`` bytes at a time on one thread, handing back each block's
    pages when it is read (the file's bytes taken as float32 words)."""
    from . import _core

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        words = np.frombuffer(m, dtype=np.float32, count=len(m) // 4)
        step = max(1, block // 4)
        total = 0.0
        for start in range(0, words.size, step):
            total += _core.floor_read(words[start:start + step], 1)
            lo = start * 4 // mmap.PAGESIZE * mmap.PAGESIZE
            m.madvise(mmap.MADV_DONTNEED, lo, min(len(m), (start + step) * 4) - lo)
        del words
    return total


def can_evict() -> bool:
    return hasattr(os, "posix_fadvise") and hasattr(os, "POSIX_FADV_DONTNEED")


def evict(path: str) -> None:
    """Drop the file's pages from the page cache (written ones once they are
    on the disk: only clean pages can be dropped)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _contenders(logits_path: str, targets_path: str, chunk_bytes: int, score,
                setup) -> Dict[str, Timed]:
    small, chunk = bytearray(SMALL_BLOCK), bytearray(chunk_bytes)
    return {"read, 1 MiB blocks": (lambda: read_file(logits_path, small), setup),
            "read, chunk-size blocks": (lambda: read_file(logits_path, chunk), setup),
            "read, memory-mapped": (lambda: read_mapped(logits_path, chunk_bytes), setup),
            "eval": (score, setup)}


READS = ("read, 1 MiB blocks", "read, chunk-size blocks")


def _figures(times: Dict[str, Dict[str, object]], nbytes: int) -> Dict[str, object]:
    """GB/s of each contender; the eval against the faster ``readinto`` (the
    read floor) and against reading through a memory map (the scoring's own
    way in, with no copy: the floor of its input path)."""
    floor = min(READS, key=lambda k: times[k]["min"])
    return {"times": times,
            "gbps": {name: nbytes / t["min"] / 1e9 for name, t in times.items()},
            "read floor": floor,
            "eval / read floor": times["eval"]["min"] / times[floor]["min"],
            "eval / read floor, paired median": _paired_ratio(times["eval"], times[floor]),
            "eval / read, memory-mapped": (times["eval"]["min"]
                                           / times["read, memory-mapped"]["min"])}


def bench_eval_file(logits_path: str, targets_path: str, *, threads: Optional[int] = None,
                    chunk_rows: Optional[int] = None, repeat: int = 3,
                    cold: bool = True) -> Dict[str, object]:
    """Time :func:`ce_kernels.evaluate` on a logits file against reading the
    file, from the page cache and (``cold`` and where the page cache can be
    emptied of one file) from the disk."""
    from .evaluate import evaluate, load_inputs

    logits, _, _ = load_inputs(logits_path, targets_path)
    shape, dtype = logits.shape, logits.dtype
    del logits
    nbytes = os.path.getsize(logits_path)

    def score():
        return evaluate(logits_path, targets_path, chunk_rows=chunk_rows, threads=threads,
                        progress=False)

    summary = score()                                   # also fills the page cache
    chunk_bytes = summary["chunk_rows"] * shape[-1] * dtype.itemsize
    result: Dict[str, object] = {
        "file": logits_path, "bytes": nbytes, "shape": list(shape), "dtype": str(dtype),
        "threads": threads, "chunk_rows": summary["chunk_rows"], "chunk_bytes": chunk_bytes,
        "page_cache": _figures(time_interleaved(
            _contenders(logits_path, targets_path, chunk_bytes, score, None), repeat), nbytes),
        "cold": None}
    if cold and can_evict():
        result["cold"] = _figures(time_interleaved(
            _contenders(logits_path, targets_path, chunk_bytes, score,
                        lambda: evict(logits_path)), repeat), nbytes)
    return result


def format_eval(result: Dict[str, object]) -> str:
    shape = "x".join(str(n) for n in result["shape"])
    lines = [f"ce-kernels eval on {result['file']}: {result['bytes'] / 1e9:.2f} GB of "
             f"{result['dtype']} {shape}, chunks of {result['chunk_rows']} rows "
             f"({result['chunk_bytes'] / 1e6:.0f} MB), threads={result['threads'] or 'default'}"]
    for key, title in (("page_cache", "from the page cache"),
                       ("cold", "cold (the file dropped from the page cache before each run)")):
        part = result[key]
        if part is None:
            lines.append(f"  {key}: not measured")
            continue
        rows = time_rows(part["times"], 26, 1)
        lines.append(f"  {title}")
        lines.append(f"  {rows[0]} {'GB/s':>8s}")
        lines.extend(f"  {row} {part['gbps'][name]:8.2f}"
                     for row, name in zip(rows[1:], part["times"]))
        lines.append(f"    eval / read floor ({part['read floor']}): "
                     f"{part['eval / read floor']:.2f} of minima, "
                     f"{part['eval / read floor, paired median']:.2f} paired median; "
                     f"eval / read, memory-mapped: {part['eval / read, memory-mapped']:.2f}")
    return "\n".join(lines)


def bench_eval_synthetic(gigabytes: float, *, threads: Optional[int] = None, repeat: int = 3,
                         directory: Optional[str] = None, seed: int = 0) -> Dict[str, object]:
    """:func:`bench_eval_file` on a float32 file of about ``gigabytes`` GB
    (rows of :data:`SYNTHETIC_VOCAB` logits) written to a temporary directory
    in ``directory`` (default: the system's) and deleted afterwards."""
    rows = max(1, math.ceil(gigabytes * 1e9 / (4 * SYNTHETIC_VOCAB)))
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="ce_kernels_eval_bench_", dir=directory) as tmp:
        logits_path = os.path.join(tmp, "logits.npy")
        targets_path = os.path.join(tmp, "targets.npy")
        logits = np.lib.format.open_memmap(logits_path, mode="w+", dtype=np.float32,
                                           shape=(rows, SYNTHETIC_VOCAB))
        block = max(1, (64 << 20) // (4 * SYNTHETIC_VOCAB))
        for start in range(0, rows, block):
            stop = min(start + block, rows)
            logits[start:stop] = rng.standard_normal((stop - start, SYNTHETIC_VOCAB),
                                                     dtype=np.float32)
        logits.flush()
        del logits
        np.save(targets_path, rng.integers(0, SYNTHETIC_VOCAB, rows))
        return bench_eval_file(logits_path, targets_path, threads=threads, repeat=repeat)
