"""Scoring saved model outputs: the engine of ``ce-kernels eval``.

The logits file is memory-mapped and streamed in chunks of rows; pages of a
finished chunk are handed back to the operating system, so the resident
memory stays near one chunk whatever the size of the file. Each chunk goes
through the token-statistics kernel once (NLL, argmax, entropy in one pass).

Inputs are untrusted: only regular files are opened, the .npy header is
parsed without unpickling or evaluating anything and checked against the
size of the file before it is mapped, and inputs are only ever mapped
read-only. The per-token output goes to a temporary file that replaces the
destination only when the run has succeeded.
"""
from __future__ import annotations

import errno
import math
import mmap
import os
import stat
import sys
import tempfile
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from . import _core
from . import _partial
from . import _validation as v
from ._rows import Problem, Targets
from .linear import Layer, NumpyProducts

#: Default rows per chunk: about 256 MB of float32 logits at V = 32000.
DEFAULT_CHUNK_BYTES = 256 * 2**20


class EvalError(Exception):
    """A problem with the user's input, reported as one line (exit status 2)."""


# ---- loading ------------------------------------------------------------------------

def _oneline(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one short line (headers of hostile files can
    put anything in it)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "a special file"


def _regular_file(path: str, what: str) -> os.stat_result:
    """stat() of an input that must be a regular file. Nothing is opened: a
    FIFO would block the open, and a device such as /dev/zero never ends."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise EvalError(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise EvalError(f"cannot read {what} file {path}: {exc.strerror or _oneline(exc)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise EvalError(f"{what} is a directory, not a .npy file: {path}")
    if not stat.S_ISREG(st.st_mode):
        raise EvalError(f"{what} is not a regular file ({_file_kind(st.st_mode)}): {path}")
    return st


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def _open_npy(path: str, what: str, expected: os.stat_result) -> Tuple[np.ndarray, bool]:
    """(read-only memory map of the .npy at ``path``, whether it is stored in
    Fortran order). The header is parsed without evaluating code and checked
    against the size of the file before anything is mapped; object and
    structured dtypes and 0-d arrays are refused."""
    # O_NONBLOCK: should the path have been swapped for a FIFO since stat(),
    # the open returns at once and the fstat() below refuses it.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise EvalError(f"cannot read {what} file {path}: {exc.strerror or _oneline(exc)}") from None
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _same_file(st, expected):
            raise EvalError(f"{what} was replaced while it was being opened: {path}")
        if st.st_size == 0:
            raise EvalError(f"{what} file is empty: {path}")
        try:
            version = np.lib.format.read_magic(f)
        except ValueError:
            raise EvalError(f"{what} is not a .npy file (no NumPy header): {path}") from None
        reader = _HEADER_READERS.get(version)
        if reader is None:
            raise EvalError(f"{what} uses .npy format version {version[0]}.{version[1]}, which is "
                            f"not supported (1.0 and 2.0 are): {path}")
        try:
            shape, fortran_order, dtype = reader(f)
        except Exception as exc:  # whatever a malformed header makes the parser raise
            raise EvalError(f"{what} has a bad .npy header: {path} ({_oneline(exc)})") from None
        if not all(type(n) is int and n >= 0 for n in shape):
            raise EvalError(f"{what} has a bad .npy header: {path} (shape {shape})")
        if dtype.hasobject:
            raise EvalError(f"{what} holds Python objects (dtype object), which are never "
                            f"unpickled; save numbers: {path}")
        if dtype.fields is not None or dtype.subdtype is not None:
            raise EvalError(f"{what} has a structured dtype {dtype}; save a plain numeric array: "
                            f"{path}")
        if not shape:
            raise EvalError(f"{what} is a 0-d array; save a single position as LOGITS of shape "
                            f"(1, V) and TARGETS of shape (1,): {path}")
        offset = f.tell()
        needed = math.prod(shape) * dtype.itemsize    # Python ints: no overflow
        held = st.st_size - offset
        if needed > held:
            raise EvalError(f"{what} is truncated: its header promises {needed} bytes of data "
                            f"(shape {shape}, {dtype}), the file holds {held}: {path}")
        order = "F" if fortran_order else "C"
        if needed == 0:
            return np.empty(shape, dtype=dtype, order=order), fortran_order
        return (np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape, order=order),
                fortran_order)


def _logits_dtype_code(arr: np.ndarray, path: str, name: str = "LOGITS") -> int:
    """Kernel dtype code; a 2-byte void array is bfloat16 as ml_dtypes saves it."""
    dt = arr.dtype
    if dt.kind == "V" and dt.itemsize == 2 and dt.fields is None:
        return _core.DTYPE_BFLOAT16
    if v.is_bfloat16(dt):
        return _core.DTYPE_BFLOAT16
    for code, ok in ((_core.DTYPE_FLOAT16, np.float16), (_core.DTYPE_FLOAT32, np.float32),
                     (_core.DTYPE_FLOAT64, np.float64)):
        if dt.kind == "f" and dt.itemsize == np.dtype(ok).itemsize:
            return code
    raise EvalError(f"{name} has unsupported dtype {dt} ({path}); expected float16, bfloat16, "
                    f"float32 or float64")


def _input_stats(logits_path: str, targets_path: str,
                 name: str = "LOGITS") -> Dict[str, os.stat_result]:
    return {name: _regular_file(logits_path, name),
            "TARGETS": _regular_file(targets_path, "TARGETS")}


def load_inputs(logits_path: str, targets_path: str,
                stats: Optional[Dict[str, os.stat_result]] = None, name: str = "LOGITS"
                ) -> Tuple[np.ndarray, int, np.ndarray]:
    """(logits memmap, kernel dtype code, targets memmap), checked; errors
    call the first file ``name``."""
    if stats is None:
        stats = _input_stats(logits_path, targets_path, name)
    opened = {}
    for what, path in ((name, logits_path), ("TARGETS", targets_path)):
        try:
            opened[what] = _open_npy(path, what, stats[what])
        except (OSError, ValueError) as exc:   # what the checks above did not foresee
            raise EvalError(f"cannot read {what} file {path}: {_oneline(exc)}") from None
    (logits, logits_fortran), (targets, _) = opened[name], opened["TARGETS"]
    code = _logits_dtype_code(logits, logits_path, name)
    if logits_fortran and logits.ndim >= 2:
        # Rows of a column-major file are scattered over all of it: streaming
        # by rows would touch every page for every chunk.
        raise EvalError(f"{name} is stored in Fortran (column-major) order and cannot be "
                        f"streamed by rows; rewrite it once in C order with np.save(path, "
                        f"np.ascontiguousarray(a)): {logits_path}")
    if logits.shape[-1] == 0:
        raise EvalError(f"{name} must have shape (..., V) with V >= 1, got {logits.shape}")
    if targets.dtype.kind not in "iu":
        raise EvalError(f"TARGETS must hold integer token ids, got dtype {targets.dtype}")
    if targets.shape != logits.shape[:-1]:
        raise EvalError(f"TARGETS has shape {targets.shape}, expected {logits.shape[:-1]} "
                        f"(the shape of {name} without its last axis)")
    if logits.size == 0:
        raise EvalError(f"{name} holds no positions (shape {logits.shape})")
    return logits, code, targets


# ---- the output file ------------------------------------------------------------------

def _output_destination(per_token: str,
                        inputs: Dict[str, os.stat_result]) -> Tuple[str, Optional[int], str]:
    """(path the output is renamed to, permission bits of the file it
    replaces or None, the name as given). Writing through a symbolic link
    writes its target."""
    dest = os.path.realpath(per_token)
    try:
        st = os.stat(dest)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise EvalError(f"cannot write --per-token file {per_token}: "
                        f"{exc.strerror or _oneline(exc)}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise EvalError(f"--per-token {per_token} is a directory; give a file name")
        for name, input_stat in inputs.items():
            if _same_file(st, input_stat):
                raise EvalError(f"--per-token {per_token} is the same file as {name}; "
                                f"writing it would destroy the input")
        if not stat.S_ISREG(st.st_mode):
            raise EvalError(f"--per-token {per_token} is not a regular file "
                            f"({_file_kind(st.st_mode)})")
        # A rename would replace a file the user may not write: keep its protection.
        if not os.access(dest, os.W_OK):
            raise EvalError(f"cannot write --per-token file {per_token}: Permission denied")
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise EvalError(f"cannot write --per-token file {per_token}: directory {parent} "
                        f"does not exist")
    return dest, (stat.S_IMODE(st.st_mode) if st is not None else None), per_token


class _AtomicOutput:
    """A float32 .npy written front to back into a temporary file beside its
    destination and renamed over it only by ``commit``: a run that fails or
    is interrupted leaves the destination as it was and no temporary file."""

    def __init__(self, dest: str, shape: Tuple[int, ...], mode: Optional[int], shown: str):
        self.dest, self.shown = dest, shown
        self.expected = math.prod(shape)
        self.written = 0
        directory, name = os.path.split(dest)
        try:
            fd, self.tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        except OSError as exc:
            raise self._error(exc) from None
        try:
            self.file = open(fd, "wb")
            if mode is None:
                umask = os.umask(0)
                os.umask(umask)
                mode = 0o666 & ~umask
            os.fchmod(fd, mode)      # mkstemp's 0600 is for the temporary file only
            np.lib.format.write_array_header_1_0(
                self.file, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                            "fortran_order": False, "shape": tuple(shape)})
            self._reserve(self.file.tell() + 4 * self.expected)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, OSError):
                raise self._error(exc) from None
            raise

    def _error(self, exc: OSError) -> EvalError:
        return EvalError(f"cannot write --per-token file {self.shown}: "
                         f"{exc.strerror or _oneline(exc)}")

    def _reserve(self, size: int) -> None:
        """Claim the disk space now, so a full disk stops the run before the work."""
        if not hasattr(os, "posix_fallocate"):
            return
        try:
            os.posix_fallocate(self.file.fileno(), 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise

    def write(self, start: int, values: np.ndarray) -> None:
        if start != self.written:
            raise RuntimeError(f"per-token output written out of order ({start}, {self.written})")
        try:
            self.file.write(np.ascontiguousarray(values, dtype="<f4").data)
        except OSError as exc:
            raise self._error(exc) from None
        self.written += values.size

    def commit(self) -> None:
        if self.written != self.expected:
            raise RuntimeError(f"per-token output has {self.written} of {self.expected} values")
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.dest)
        except OSError as exc:
            raise self._error(exc) from None

    def abort(self) -> None:
        file = getattr(self, "file", None)
        if file is not None:
            try:
                file.close()
            except OSError:
                pass
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


# ---- streaming ----------------------------------------------------------------------

def _segments(logits: np.ndarray, shift: bool) -> Iterator[Tuple[np.ndarray, int, int]]:
    """(2-D rows of logits, flat index into TARGETS of the token scored by
    their first row, flat index of their first position in the output) for
    each contiguous run of scored positions. With ``shift``, position t of
    each sequence (the second-to-last axis) is scored against token t + 1,
    and the last position of each sequence is not scored. Checked when
    called, before any output exists."""
    v_size = logits.shape[-1]
    if not shift:
        return iter([(logits.reshape(-1, v_size), 0, 0)])
    if logits.ndim < 2:
        raise EvalError("--shift needs a sequence axis: LOGITS of shape (..., T, V)")
    seq = logits.shape[-2]
    if seq < 2:
        raise EvalError("--shift needs sequences of at least 2 positions")
    lead = logits.reshape(-1, seq, v_size)
    return ((lead[b, :-1], b * seq + 1, b * (seq - 1)) for b in range(lead.shape[0]))


def _flat_targets(targets: np.ndarray):
    """TARGETS sliceable by flat position in logical (C) order without
    reading all of it: a view when it is C-ordered, else its flat iterator
    (a Fortran-ordered file), whose slices gather just those positions."""
    if targets.flags.c_contiguous:
        return targets.reshape(-1)
    return targets.flat


def _checked_targets(raw: np.ndarray, n_classes: int, ignore_index: int) -> Tuple[np.ndarray, int]:
    """(contiguous int64 token ids, index of the first id that is neither in
    [0, n_classes) nor ignore_index, or -1)."""
    t = np.ascontiguousarray(raw, dtype=np.int64)
    limit = t.size
    if raw.dtype.kind == "u" and raw.dtype.itemsize >= 8:
        # Ids from 2**63 wrap to negative int64 values, one of which may be
        # ignore_index: they must be caught before the cast hides them.
        huge = np.flatnonzero(raw >= np.uint64(2**63))
        if huge.size:
            limit = int(huge[0])
    bad, _, _ = _core.check_targets(t[:limit], n_classes, ignore_index, None)
    if bad < 0 and limit < t.size:
        bad = limit
    return t, int(bad)


def _kernel_ready(rows: np.ndarray) -> bool:
    """True if the kernels read ``rows`` as they are: 2-D, native byte order,
    aligned, a contiguous last axis and a whole, non-negative number of
    elements between rows."""
    if rows.ndim != 2:
        return False
    itemsize = rows.dtype.itemsize
    return (rows.dtype.isnative and rows.flags.aligned
            and (rows.shape[1] <= 1 or rows.strides[1] == itemsize)
            and (rows.shape[0] <= 1 or (rows.strides[0] >= 0 and rows.strides[0] % itemsize == 0)))


def _kernel_rows(chunk: np.ndarray) -> np.ndarray:
    """``chunk`` itself when the kernels can read it, else a contiguous
    native copy of this chunk only (big-endian or misaligned files)."""
    if not _kernel_ready(chunk):
        chunk = np.array(chunk, dtype=chunk.dtype.newbyteorder("="), order="C")
    if not _kernel_ready(chunk):
        raise RuntimeError(f"internal error: rows of shape {chunk.shape}, strides "
                           f"{chunk.strides}, dtype {chunk.dtype} cannot go to the kernels")
    return chunk


def _release(arr: np.ndarray) -> None:
    """Tell the OS the pages of a memory-mapped chunk are no longer needed."""
    base = arr
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is None or not hasattr(base, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = arr.__array_interface__["data"][0]
    buffer_start = np.frombuffer(base, dtype=np.uint8, count=0).__array_interface__["data"][0]
    offset = start - buffer_start
    page = mmap.PAGESIZE
    lo = (offset // page) * page
    hi = offset + arr.nbytes
    if hi > lo:
        try:
            base.madvise(mmap.MADV_DONTNEED, lo, min(hi, len(base)) - lo)
        except (OSError, ValueError):
            pass


def _chunks(lo: int, hi: int, chunk_rows: int) -> Iterator[Tuple[int, int]]:
    for start in range(lo, hi, chunk_rows):
        yield start, min(start + chunk_rows, hi)


def _row_range(rows: Optional[Tuple[int, int]], n_positions: int, per_token: Optional[str]
               ) -> Tuple[int, int]:
    """The positions of LOGITS to score, [A, B), checked (``rows`` None: all)."""
    if rows is None:
        return 0, n_positions
    a, b = rows
    if not 0 <= a < b <= n_positions:
        raise EvalError(f"--rows {a}:{b} is not a non-empty range within the {n_positions} "
                        f"positions of LOGITS")
    if per_token is not None:
        raise EvalError("--per-token writes every position; it cannot be combined with --rows")
    return a, b


def _progress(total: int, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="tok", unit_scale=True, file=sys.stderr, mininterval=0.5,
                delay=1.0)


def evaluate(logits_path: str, targets_path: str, *, shift: bool = False,
             ignore_index: int = -100, chunk_rows: Optional[int] = None,
             threads: Optional[int] = None, per_token: Optional[str] = None,
             progress: bool = True, rows: Optional[Tuple[int, int]] = None,
             as_partial: bool = False) -> Dict[str, Any]:
    """Score a saved logits file against token ids.

    Returns a dict with ``tokens`` (positions scored), ``ignored``, ``nll``
    (mean, nats), ``bits_per_token``, ``perplexity``, ``accuracy`` (top-1),
    ``entropy`` (mean predictive entropy over scored positions, nats),
    ``vocab``, ``chunk_rows`` and ``positions``: the
    :func:`ce_kernels.eval_merge` of the chunks' partial sums, so the same
    bits whatever ``chunk_rows``.

    ``rows=(A, B)`` scores only the positions ``[A, B)`` of LOGITS (its rows
    once flattened to (positions, V)); ``as_partial`` returns the partial
    sums (:func:`ce_kernels.eval_partial`) instead of the summary, with
    ``rows``, for :func:`ce_kernels.eval_merge` to merge with others.

    ``per_token`` is written atomically: into a temporary file in the same
    directory, renamed over the destination only when the whole run succeeds.
    """
    _check_ignore_index(ignore_index)
    inputs = _input_stats(logits_path, targets_path)
    output = _output_destination(per_token, inputs) if per_token is not None else None
    logits, _, targets = load_inputs(logits_path, targets_path, inputs)
    problem = Problem(logits.dtype, logits.shape[-1], ignore_index=ignore_index,
                      num_threads=threads)

    def stats_of(chunk: np.ndarray, t: np.ndarray):
        return problem.token_stats_rows(_kernel_rows(chunk), Targets(t, None, math.nan))

    return _score(logits, targets, logits.shape[-1], stats_of, shift=shift,
                  ignore_index=ignore_index, chunk_rows=chunk_rows, output=output,
                  progress=progress, rows=_row_range(rows, math.prod(logits.shape[:-1]),
                                                     per_token), as_partial=as_partial)


def _check_ignore_index(ignore_index: int) -> None:
    if not -(2**63) <= ignore_index < 2**63:
        raise EvalError(f"--ignore-index {ignore_index} is outside the int64 range")


def _score(positions: np.ndarray, targets: np.ndarray, v_size: int, stats_of, *, shift: bool,
           ignore_index: int, chunk_rows: Optional[int],
           output: Optional[Tuple[str, Optional[int], str]], progress: bool,
           rows: Optional[Tuple[int, int]] = None, as_partial: bool = False) -> Dict[str, Any]:
    """Stream ``positions`` (logits, or whatever ``stats_of(chunk, ids)``
    turns into token statistics of ``v_size`` classes) in chunks of rows
    against ``targets``; ``output`` is the per-token destination (path,
    mode, name as given) or None; ``rows`` the checked range [A, B) of
    positions to score (None: all); ``as_partial`` returns the partial sums."""
    if chunk_rows is None:
        chunk_rows = max(1, DEFAULT_CHUNK_BYTES // (v_size * positions.dtype.itemsize))
    out_shape = positions.shape[:-1]
    if shift:
        out_shape = out_shape[:-1] + (out_shape[-1] - 1,) if len(out_shape) >= 1 else out_shape
    segments = _segments(positions, shift)
    flat_targets = _flat_targets(targets)

    partial = _partial.empty_partial(v_size)
    total_positions = int(np.prod(out_shape)) if len(out_shape) else 1
    first, last = (0, math.prod(positions.shape[:-1])) if rows is None else rows
    out = _AtomicOutput(output[0], out_shape, output[1], output[2]) if output else None
    bar = None
    try:
        bar = _progress(total_positions if rows is None else last - first, progress)
        for seg_rows, target_start, out_start in segments:
            at = target_start - 1 if shift else 0      # position of the segment's first row
            lo = min(max(first - at, 0), seg_rows.shape[0])
            hi = min(max(last - at, lo), seg_rows.shape[0])
            for start, stop in _chunks(lo, hi, chunk_rows):
                chunk = seg_rows[start:stop]
                raw = flat_targets[target_start + start: target_start + stop]
                t, bad = _checked_targets(raw, v_size, ignore_index)
                if bad >= 0:
                    where = np.unravel_index(target_start + start + bad, targets.shape)
                    raise EvalError(f"token id {int(raw[bad])} at TARGETS{[int(i) for i in where]} "
                                    f"is out of range [0, {v_size}) and is not --ignore-index "
                                    f"({ignore_index})")
                stats = stats_of(chunk, t)
                _partial.add_block(partial, t, stats, ignore_index)
                if out is not None:
                    out.write(out_start + start, stats.nll)
                _release(chunk)
                if bar is not None:
                    bar.update(stop - start)
        if out is not None:
            out.commit()
    except BaseException:
        if out is not None:
            out.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    if as_partial:
        return dict(partial, rows=[first, last])
    summary = _partial.eval_merge([partial])
    summary.update(positions=total_positions, chunk_rows=chunk_rows)
    return summary


# ---- from hidden states ------------------------------------------------------------------

def evaluate_hidden(hidden_path: str, head_path: str, targets_path: str, *,
                    bias_path: Optional[str] = None, shift: bool = False,
                    ignore_index: int = -100, chunk_rows: Optional[int] = None,
                    threads: Optional[int] = None, per_token: Optional[str] = None,
                    progress: bool = True, rows: Optional[Tuple[int, int]] = None,
                    as_partial: bool = False) -> Dict[str, Any]:
    """Score saved last hidden states (..., D) through an output layer (HEAD
    of shape (V, D), optional BIAS of shape (V,)) against token ids, as
    :func:`evaluate` scores logits: the hidden states are streamed in chunks
    of rows, and each chunk's logits exist only in one reused buffer.
    Returns the same dict; ``rows`` and ``as_partial`` as for :func:`evaluate`."""
    _check_ignore_index(ignore_index)
    inputs = _input_stats(hidden_path, targets_path, "HIDDEN")
    inputs["HEAD"] = _regular_file(head_path, "HEAD")
    if bias_path is not None:
        inputs["BIAS"] = _regular_file(bias_path, "BIAS")
    output = _output_destination(per_token, inputs) if per_token is not None else None
    hidden, _, targets = load_inputs(hidden_path, targets_path, inputs, "HIDDEN")
    if hidden.dtype.kind != "f" or hidden.dtype.itemsize < 4:
        raise EvalError(f"HIDDEN has dtype {hidden.dtype}; scoring through --head takes float32 "
                        f"or float64 hidden states ({hidden_path})")
    dtype = v.native(hidden.dtype)
    head = _load_small(head_path, "HEAD", inputs["HEAD"], dtype)
    bias = None if bias_path is None else _load_small(bias_path, "BIAS", inputs["BIAS"], dtype)
    width = hidden.shape[-1]
    if head.ndim != 2 or head.shape[1] != width or head.shape[0] == 0:
        raise EvalError(f"HEAD has shape {head.shape}, expected (V, {width}) with V >= 1 (one "
                        f"row per token, the width of HIDDEN)")
    if bias is not None and bias.shape != (head.shape[0],):
        raise EvalError(f"BIAS has shape {bias.shape}, expected ({head.shape[0]},) (one per row "
                        f"of HEAD)")
    layer = Layer(np.empty((0, width), dtype=dtype), head, bias)
    problem = Problem(dtype, layer.n_classes, ignore_index=ignore_index, num_threads=threads)
    chunk = chunk_rows or max(1, DEFAULT_CHUNK_BYTES // (layer.n_classes * dtype.itemsize))
    products = NumpyProducts(layer, min(chunk, max(1, math.prod(hidden.shape[:-1]))))

    def stats_of(chunk: np.ndarray, t: np.ndarray):
        logits = products.logits(_kernel_rows(chunk))
        return problem.token_stats_rows(logits, Targets(t, None, math.nan))

    return _score(hidden, targets, layer.n_classes, stats_of, shift=shift,
                  ignore_index=ignore_index, chunk_rows=chunk, output=output, progress=progress,
                  rows=_row_range(rows, math.prod(hidden.shape[:-1]), per_token),
                  as_partial=as_partial)


def _load_small(path: str, what: str, expected: os.stat_result, dtype: np.dtype) -> np.ndarray:
    """A float input read whole (the output layer), in ``dtype``."""
    try:
        arr, _ = _open_npy(path, what, expected)
    except (OSError, ValueError) as exc:
        raise EvalError(f"cannot read {what} file {path}: {_oneline(exc)}") from None
    if arr.dtype.kind not in "fiu":
        raise EvalError(f"{what} has unsupported dtype {arr.dtype} ({path}); expected floats")
    return np.array(arr, dtype=dtype)
