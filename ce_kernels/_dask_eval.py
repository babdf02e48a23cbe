"""``ce-kernels eval --dask / --workers``: scoring sets of saved logits with Dask.

The input is cut into blocks of rows; each Dask task opens its own block
(a read-only memory map of its .npy file, or a read of its rows of a zarr
array) and returns the block's exact partial sums, which are merged in
block order (:func:`ce_kernels.eval_merge`): the summary is bitwise the
same as ``ce-kernels eval`` of the same positions on one machine. Nothing
the size of the logits travels between processes.
"""
from __future__ import annotations

import glob
import os
from typing import Any, Dict, List, Optional, Tuple

from . import _partial
from .evaluate import DEFAULT_CHUNK_BYTES, EvalError, evaluate, load_inputs

#: A block: (kind, logits path, targets path, first row, end row).
Block = Tuple[str, str, str, int, int]


def _is_zarr(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, name)) for name in (".zarray", "zarr.json"))


def _expand(pattern: str, what: str) -> List[str]:
    """The files a LOGITS or TARGETS argument names: itself, or the sorted
    matches of a glob pattern."""
    if not any(c in pattern for c in "*?["):
        return [pattern]
    found = sorted(glob.glob(pattern))
    if not found:
        raise EvalError(f"{what} pattern {pattern!r} matches no file")
    return found


def _open_zarr(path: str, what: str):
    try:
        import zarr
    except ImportError:
        raise EvalError(f"{what} is a zarr array, which needs the zarr package: "
                        f"pip install ce_kernels[dask]") from None
    try:
        return zarr.open_array(path, mode="r")
    except Exception as exc:  # whatever a broken store makes zarr raise
        raise EvalError(f"cannot open {what} zarr array {path}: {exc}") from None


def _block_rows(n_cols: int, itemsize: int, block_rows: Optional[int]) -> int:
    return block_rows or max(1, DEFAULT_CHUNK_BYTES // (n_cols * itemsize))


def plan_blocks(logits: str, targets: str, *, shift: bool,
                block_rows: Optional[int] = None) -> List[Block]:
    """The blocks of rows to score, in order, checked on the client."""
    logit_files, target_files = _expand(logits, "LOGITS"), _expand(targets, "TARGETS")
    if len(logit_files) != len(target_files):
        raise EvalError(f"LOGITS names {len(logit_files)} files and TARGETS {len(target_files)}; "
                        f"they are paired in sorted order and must match")
    blocks: List[Block] = []
    for lpath, tpath in zip(logit_files, target_files):
        if _is_zarr(lpath):
            if shift:
                raise EvalError("--shift is not supported for zarr arrays; save shifted targets")
            x, t = _open_zarr(lpath, "LOGITS"), _open_zarr(tpath, "TARGETS")
            if x.ndim != 2 or t.shape != x.shape[:1]:
                raise EvalError(f"zarr LOGITS must be (positions, V) and TARGETS (positions,), "
                                f"got {x.shape} and {t.shape}")
            kind, n_rows, n_cols, itemsize = "zarr", x.shape[0], x.shape[1], x.dtype.itemsize
        else:
            x, _, _ = load_inputs(lpath, tpath)
            kind, n_cols, itemsize = "npy", x.shape[-1], x.dtype.itemsize
            n_rows = int(x.size // n_cols)
        step = _block_rows(n_cols, itemsize, block_rows)
        blocks += [(kind, lpath, tpath, a, min(a + step, n_rows)) for a in range(0, n_rows, step)]
    return blocks


def score_block(block: Block, *, shift: bool, ignore_index: int, threads: Optional[int],
                chunk_rows: Optional[int]) -> Dict[str, Any]:
    """The partial sums of one block; runs in a Dask task, which opens its
    own block of the input."""
    kind, lpath, tpath, a, b = block
    if kind == "npy":
        return evaluate(lpath, tpath, shift=shift, ignore_index=ignore_index,
                        chunk_rows=chunk_rows, threads=threads, progress=False, rows=(a, b),
                        as_partial=True)
    x, t = _open_zarr(lpath, "LOGITS"), _open_zarr(tpath, "TARGETS")
    return dict(_partial.eval_partial(x[a:b], t[a:b], ignore_index=ignore_index,
                                      num_threads=threads), rows=[a, b])


def _client(scheduler: Optional[str], workers: Optional[int]):
    """(dask.compute keyword arguments, something to close after)."""
    try:
        import dask  # noqa: F401
    except ImportError:
        raise EvalError("--dask and --workers need dask: pip install ce_kernels[dask]") from None
    if scheduler in ("synchronous", "threads", "processes"):
        return {"scheduler": scheduler}, None
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise EvalError("a Dask cluster needs dask.distributed: pip install "
                        "ce_kernels[dask]") from None
    if scheduler is not None:
        client = Client(scheduler)
        return {"scheduler": client}, client
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    return {"scheduler": client}, _Both(client, cluster)


class _Both:
    def __init__(self, client, cluster):
        self.client, self.cluster = client, cluster

    def close(self):
        self.client.close()
        self.cluster.close()


def evaluate_dask(logits: str, targets: str, *, scheduler: Optional[str] = None,
                  workers: Optional[int] = None, shift: bool = False, ignore_index: int = -100,
                  chunk_rows: Optional[int] = None, threads: Optional[int] = None,
                  block_rows: Optional[int] = None) -> Dict[str, Any]:
    """Score LOGITS against TARGETS (a .npy file, a glob of .npy files
    paired in sorted order, or zarr arrays) with Dask: on the scheduler at
    address ``scheduler`` ("synchronous", "threads" and "processes" name
    Dask's local schedulers), or on a local cluster of ``workers`` processes.
    Returns the summary of :func:`ce_kernels.evaluate.evaluate`, with the
    number of ``blocks``."""
    import dask

    blocks = plan_blocks(logits, targets, shift=shift, block_rows=block_rows)
    options, closer = _client(scheduler, workers)
    try:
        tasks = [dask.delayed(score_block)(b, shift=shift, ignore_index=ignore_index,
                                           threads=threads, chunk_rows=chunk_rows)
                 for b in blocks]
        partials = dask.compute(*tasks, **options)
    finally:
        if closer is not None:
            closer.close()
    summary = _partial.eval_merge(partials)     # in block order
    summary["blocks"] = len(blocks)
    return summary
