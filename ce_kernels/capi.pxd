# The Cython interface of ce_kernels, for other extensions:
#
#     from ce_kernels.capi cimport ce_problem, run, CE_FLOAT32, CE_MODE_LOSS, CE_OK
#
# gives nogil access to the kernels. The functions are resolved when the
# cimporting module is imported, through this module's exported C-API
# (no link against ce_kernels' shared object); compile with
# include_dirs=[ce_kernels.get_include()]. See ce_kernels.h for the problem
# description, and for the ABI version policy: run() passes the version of
# the header it was compiled against, and returns CE_ERR_ABI (doing nothing)
# if the installed library has another one.
from libc.stdint cimport int64_t

from ce_kernels._cdefs cimport (
    ce_dtype, CE_FLOAT32, CE_FLOAT64, CE_FLOAT16, CE_BFLOAT16,
    ce_mode, CE_MODE_LOSS, CE_MODE_LOSS_GRAD, CE_MODE_LOGSUMEXP, CE_MODE_SOFTMAX,
    CE_MODE_LOG_SOFTMAX, CE_MODE_TOKEN_STATS, CE_MODE_ROW_STATS, CE_MODE_GRAD_FROM_LSE,
    ce_row_stats,
    ce_isa, CE_ISA_BASELINE, CE_ISA_AVX2, CE_ISA_AVX512,
    ce_interrupt, ce_problem,
    CE_OK, CE_ERR_NOMEM, CE_ERR_ARGS, CE_INTERRUPTED, CE_ERR_ABI,
    CE_KERNELS_ABI_VERSION, ce_kernels_api,
)

# Runs a problem on up to n_threads threads (<= 0: OpenMP's default) if
# abi_version is the library's; returns a status code (CE_OK, ...).
cdef int run_abi(int abi_version, const ce_problem *problem, int n_threads) noexcept nogil
# Threads a call with n_threads <= 0 uses, and the most any call uses.
cdef int default_threads() noexcept nogil
cdef int max_threads() noexcept nogil
# The library's ABI version.
cdef int abi_version() noexcept nogil


cdef inline int run(const ce_problem *problem, int n_threads) noexcept nogil:
    """ce_run through the exported table, checked against the ABI version
    of the header this code was compiled with."""
    return run_abi(CE_KERNELS_ABI_VERSION, problem, n_threads)
