"""Thread count, OpenMP status and the instruction-set path.

``num_threads=None`` everywhere means: the count given to
:func:`set_num_threads` if any, else what OpenMP would use right now
(``OMP_NUM_THREADS``, threadpoolctl's limits). Calls on inputs too small
to gain from threads run on one whatever is asked.

OpenMP (libgomp) is not fork-safe: a process forked after ce_kernels has
run multi-threaded should call ``set_num_threads(1)`` in the child, or use
the "spawn"/"forkserver" start methods of multiprocessing.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

from . import _core
from . import _validation as v

_user_threads: Optional[int] = None
_warned_serial = False


def resolve(num_threads: Optional[int]) -> int:
    """Thread count for one call; 0 lets the C side ask OpenMP."""
    n = v.check_num_threads(num_threads)
    if n == 0 and _user_threads is not None:
        n = _user_threads
    if n > 1 and not _core.openmp_enabled():
        _warn_serial()
    return n


def _warn_serial() -> None:
    global _warned_serial
    if not _warned_serial:
        _warned_serial = True
        warnings.warn(
            "ce_kernels was built without OpenMP; running on one thread",
            RuntimeWarning,
            stacklevel=4,
        )


def get_num_threads() -> int:
    """Number of threads a call with ``num_threads=None`` will use for large inputs.

    Returns
    -------
    int
        The value set by :func:`set_num_threads`, else OpenMP's current
        default (1 when built without OpenMP), capped at
        ``max(8, 4 * processors available)``.
    """
    if _user_threads is not None:
        return min(_user_threads, _core.max_threads()) if _core.openmp_enabled() else 1
    return min(_core.default_threads(), _core.max_threads())


def set_num_threads(n: Optional[int]) -> None:
    """Set the default thread count of ce_kernels calls.

    Parameters
    ----------
    n : int or None
        A positive count, or ``None`` to go back to OpenMP's default.
        Counts above ``max(8, 4 * processors)`` are accepted and capped
        there (see :func:`get_num_threads`): more threads cannot speed up
        these kernels, and each costs an OS thread.
    """
    global _user_threads
    _user_threads = None if n is None else v.check_num_threads(n)
    if _user_threads is not None and _user_threads > 1 and not _core.openmp_enabled():
        _warn_serial()


def openmp_enabled() -> bool:
    """True if the compiled kernels were built with OpenMP."""
    return _core.openmp_enabled()


def build_info() -> dict:
    """What this build of ce_kernels runs with.

    Returns
    -------
    dict
        ``openmp`` (bool), ``isa`` (the instruction-set path in use:
        "avx512", "avx2", "sse2" or "baseline"), ``best_isa`` (the best this
        CPU supports), ``threads`` (:func:`get_num_threads`), ``chunk_size``
        (vocabulary elements per unit of work) and ``parallel_threshold``
        (smaller inputs stay on one thread).
    """
    return {
        "openmp": _core.openmp_enabled(),
        "isa": _core.active_isa(),
        "best_isa": _core.best_isa(),
        "threads": get_num_threads(),
        "chunk_size": _core.chunk_size(),
        "parallel_threshold": _core.parallel_threshold(),
    }


def set_isa(name: str) -> None:
    """Use the named instruction-set path ("avx512", "avx2", "sse2"/"baseline").

    Meant for testing and benchmarking; the best path is chosen by default.
    The environment variable ``CE_KERNELS_ISA`` does the same at import.

    Raises
    ------
    ValueError
        If the name is unknown or this CPU lacks that instruction set.
    """
    if not _core.force_isa(name):
        raise ValueError(
            f"instruction set {name!r} is unknown or not supported by this CPU "
            f"(best available: {_core.best_isa()!r})"
        )


def _apply_isa_from_environment() -> None:
    name = os.environ.get("CE_KERNELS_ISA")
    if name:
        try:
            set_isa(name)
        except ValueError as exc:
            warnings.warn(f"CE_KERNELS_ISA ignored: {exc}", RuntimeWarning, stacklevel=3)
