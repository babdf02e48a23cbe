# cython: language_level=3, boundscheck=False, wraparound=False
"""A downstream Cython extension: scores independent batches of logits in
parallel with ce_kernels' kernel, the GIL released for the whole loop."""
import numpy as np

from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memset

from ce_kernels.capi cimport (
    CE_FLOAT32, CE_MODE_LOSS, CE_MODE_LOSS_GRAD, CE_OK, ce_problem, run,
)


cdef int score_batch(const float *logits, const int64_t *target, double *loss, float *grad,
                     int64_t n_rows, int64_t n_cols) noexcept nogil:
    """Per-row losses of one batch and, when grad is not NULL, the gradient
    of their sum, on one thread (the batches are the parallel units)."""
    cdef ce_problem p
    memset(&p, 0, sizeof(p))          # unused fields NULL / 0
    p.dtype = CE_FLOAT32
    p.mode = CE_MODE_LOSS_GRAD if grad != NULL else CE_MODE_LOSS
    p.n_rows = n_rows
    p.n_cols = n_cols
    p.x = logits
    p.x_stride = n_cols
    p.out = grad
    p.out_stride = n_cols
    p.target = target
    p.ignore_index = -100
    p.weight_sum = <double>n_cols     # no class weights
    p.grad_scale = 1.0
    p.row_out = loss
    return run(&p, 1)


def batch_losses(const float[:, :, ::1] logits, const int64_t[:, ::1] target, bint with_grad=False):
    """(losses of shape (batches, rows), gradients like logits or None)."""
    cdef Py_ssize_t b, n_batches = logits.shape[0]
    cdef int64_t n_rows = logits.shape[1], n_cols = logits.shape[2]
    loss = np.empty((n_batches, n_rows))
    grad = np.empty((n_batches, n_rows, n_cols), dtype=np.float32) if with_grad else None
    cdef double[:, ::1] loss_v = loss
    cdef float[:, :, ::1] grad_v = grad
    cdef int failures = 0
    if n_batches == 0 or n_rows == 0:
        return loss, grad
    for b in prange(n_batches, nogil=True):
        if score_batch(&logits[b, 0, 0], &target[b, 0], &loss_v[b, 0],
                       &grad_v[b, 0, 0] if with_grad else NULL, n_rows, n_cols) != CE_OK:
            failures += 1
    if failures:
        raise RuntimeError(f"ce_kernels failed on {failures} batches")
    return loss, grad


def call_overhead(const float[:, ::1] logits, const int64_t[::1] target, int repeats):
    """Seconds per call of the kernel on one small batch, called in a nogil loop."""
    import time
    cdef double loss[64]
    cdef int i
    start = time.perf_counter()
    with nogil:
        for i in range(repeats):
            score_batch(&logits[0, 0], &target[0], loss, NULL, logits.shape[0], logits.shape[1])
    return (time.perf_counter() - start) / repeats
