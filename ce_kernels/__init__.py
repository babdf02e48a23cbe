"""ce_kernels: fused, numerically stable softmax cross-entropy for NumPy.

The loss and its gradient come from one pass over each row of logits, in C
with OpenMP threads and SIMD chosen at run time for the CPU.

>>> import numpy as np, ce_kernels as ck
>>> logits = np.random.default_rng(0).standard_normal((4, 10), dtype=np.float32)
>>> target = np.array([1, 0, 9, 3])
>>> loss, grad = ck.cross_entropy_with_grad(logits, target)
"""
from ._api import (
    TokenStats,
    cross_entropy,
    cross_entropy_with_grad,
    log_softmax,
    logsumexp,
    softmax,
    token_stats,
)
from ._partial import eval_merge, eval_partial
from ._sharded import RowStats, loss_from_row_stats, merge_row_stats, row_stats
from ._family import (
    binary_cross_entropy,
    binary_cross_entropy_probs,
    binary_cross_entropy_with_grad,
    cross_entropy_probs,
    entropy,
    kl_divergence,
    log_sigmoid,
    sigmoid,
)
from ._distill import (
    distill_jsd,
    distill_jsd_with_grad,
    distill_kl,
    distill_kl_with_grad,
)
from .linear import (
    linear_cross_entropy,
    linear_cross_entropy_with_grad,
    linear_token_stats,
)
from ._threads import (
    build_info,
    get_num_threads,
    openmp_enabled,
    set_isa,
    set_num_threads,
    _apply_isa_from_environment,
)
from ._version import __version__


def get_include() -> str:
    """The directory of ce_kernels' public C headers, for other extensions.

    ``ce_kernels.h`` describes the problem, ``ce_run``, the dtype, mode and
    instruction-set enums, the status codes and the versioned function
    table; ``ce_kernels_python.h`` fetches that table from the installed
    package (``ce_kernels_import()``). Cython code ``cimport``s
    ``ce_kernels.capi`` instead and needs this directory too.

    Returns
    -------
    str
        An absolute path; pass it in ``include_dirs`` of an ``Extension``.

    Examples
    --------
    >>> import os, ce_kernels as ck
    >>> os.path.exists(os.path.join(ck.get_include(), "ce_kernels.h"))
    True
    """
    import os

    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")


_apply_isa_from_environment()
del _apply_isa_from_environment

__all__ = [
    "RowStats",
    "TokenStats",
    "__version__",
    "binary_cross_entropy",
    "binary_cross_entropy_probs",
    "binary_cross_entropy_with_grad",
    "build_info",
    "cross_entropy_probs",
    "distill_jsd",
    "distill_jsd_with_grad",
    "distill_kl",
    "distill_kl_with_grad",
    "entropy",
    "eval_merge",
    "eval_partial",
    "kl_divergence",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "linear_token_stats",
    "log_sigmoid",
    "sigmoid",
    "cross_entropy",
    "cross_entropy_with_grad",
    "get_include",
    "get_num_threads",
    "log_softmax",
    "logsumexp",
    "loss_from_row_stats",
    "merge_row_stats",
    "openmp_enabled",
    "row_stats",
    "set_isa",
    "set_num_threads",
    "softmax",
    "token_stats",
]
