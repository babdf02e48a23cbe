# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Bridge between the Python API and the C kernels.

Nothing here validates: the Python layer (``_api.py``) has already checked
shapes, dtypes, ranges and layouts. This module only turns arrays into the
C problem description and runs it with the GIL released.
"""
cimport numpy as cnp
from cpython.exc cimport PyErr_CheckSignals
from cpython.pycapsule cimport PyCapsule_New
from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.string cimport memset
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from ce_kernels._cdefs cimport *

import threading

cnp.import_array()

#: The kernels' function table for other extensions (re-exported as
#: ``ce_kernels.capi._C_API``; see ``ce_kernels_python.h``).
_C_API = PyCapsule_New(<void *>ce_kernels_api_table(), CE_KERNELS_CAPSULE_NAME, NULL)

MODE_LOSS = CE_MODE_LOSS
MODE_LOSS_GRAD = CE_MODE_LOSS_GRAD
MODE_LOGSUMEXP = CE_MODE_LOGSUMEXP
MODE_SOFTMAX = CE_MODE_SOFTMAX
MODE_LOG_SOFTMAX = CE_MODE_LOG_SOFTMAX
MODE_TOKEN_STATS = CE_MODE_TOKEN_STATS
MODE_ROW_STATS = CE_MODE_ROW_STATS
MODE_GRAD_FROM_LSE = CE_MODE_GRAD_FROM_LSE
#: Fields of ``ce_row_stats``, in order: one row of a statistics array.
ROW_STATS_FIELDS = ("max", "sumexp", "lin", "wsum", "target_logit", "target_weight",
                    "target_found", "argmax", "frame", "frame_exp2", "sum_hi", "sum_lo",
                    "lin_hi", "lin_lo", "wsum_lo", "wshift_hi", "wshift_lo")
DTYPE_FLOAT32 = CE_FLOAT32
DTYPE_FLOAT64 = CE_FLOAT64
DTYPE_FLOAT16 = CE_FLOAT16
DTYPE_BFLOAT16 = CE_BFLOAT16

ISA_NAMES = {int(CE_ISA_BASELINE): ce_isa_name(CE_ISA_BASELINE).decode(),
             int(CE_ISA_AVX2): ce_isa_name(CE_ISA_AVX2).decode(),
             int(CE_ISA_AVX512): ce_isa_name(CE_ISA_AVX512).decode()}


# ---- interrupts -----------------------------------------------------------------

# Calls smaller than this (elements) finish quickly and are not polled.
DEF POLL_MIN_ELEMENTS = 1 << 24
# Seconds between two looks at Python's signal handlers.
DEF POLL_INTERVAL = 0.1


cdef struct signal_poll:
    double next_check        # monotonic time of the next look
    void *pending            # a Python list that receives the exception


cdef double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + 1e-9 * ts.tv_nsec


cdef int poll_signals(void *ctx) noexcept nogil:
    """ce_interrupt.poll: runs Python's signal handlers at most every
    POLL_INTERVAL seconds (the GIL is taken only then); a handler that
    raises (KeyboardInterrupt on Ctrl-C) stops the kernel."""
    cdef signal_poll *state = <signal_poll *>ctx
    cdef double now = monotonic()
    if now < state.next_check:
        return 0
    state.next_check = now + POLL_INTERVAL
    with gil:
        try:
            PyErr_CheckSignals()
        except BaseException as exc:
            (<list>state.pending).append(exc)
            return 1
    return 0


cdef class Interruptible:
    """The interrupt of one kernel call: polls Python's signal handlers from
    the calling thread when it is the main thread (the only one that runs
    them) and the call is long enough to matter; :meth:`check` re-raises
    what a handler raised once the kernel has returned."""
    cdef signal_poll state
    cdef list pending
    cdef ce_interrupt interrupt

    def __cinit__(self, int64_t elements):
        self.pending = []
        self.state.next_check = 0.0
        self.state.pending = <void *>self.pending
        self.interrupt.poll = NULL
        self.interrupt.ctx = <void *>&self.state
        if elements >= POLL_MIN_ELEMENTS and threading.current_thread() is threading.main_thread():
            self.state.next_check = monotonic() + POLL_INTERVAL
            self.interrupt.poll = poll_signals

    cdef int check(self, int status) except -1:
        if status == CE_INTERRUPTED:
            if self.pending:
                raise self.pending[0]
            raise KeyboardInterrupt
        return check_status(status)


# Shared by every call too short to poll: it never polls, so it never holds
# an exception and all threads may use it at once.
cdef Interruptible NOT_POLLED = Interruptible(0)


cdef inline Interruptible interrupt_for(int64_t elements):
    """The interrupt of a call over this many elements."""
    return NOT_POLLED if elements < POLL_MIN_ELEMENTS else Interruptible(elements)


cdef int check_status(int status) except -1:
    """Turn a kernel status into the matching Python exception."""
    if status == CE_ERR_NOMEM:
        raise MemoryError("ce_kernels: out of memory for per-thread scratch")
    if status != CE_OK:
        raise RuntimeError(f"ce_kernels: kernel rejected its arguments (status {status})")
    return 0


cdef inline const void *data_or_null(cnp.ndarray a):
    return NULL if a is None else cnp.PyArray_DATA(a)


cdef inline int64_t row_stride(cnp.ndarray a):
    """Elements between rows of a 2-D array (0 for None)."""
    if a is None:
        return 0
    return cnp.PyArray_STRIDE(a, 0) // cnp.PyArray_ITEMSIZE(a)


def run(int mode, int dtype, cnp.ndarray x, *, cnp.ndarray out=None, cnp.ndarray target=None,
        int64_t ignore_index=-100, cnp.ndarray soft=None, cnp.ndarray weight=None,
        weight_sum=None, double smoothing=0.0, double grad_scale=1.0,
        cnp.ndarray row_scale=None, cnp.ndarray row_out=None, int n_threads=0,
        double z_loss=0.0, double softcap=0.0, cnp.ndarray row_entropy=None,
        cnp.ndarray row_argmax=None, cnp.ndarray row_lse=None, int64_t vocab_start=0,
        int64_t vocab_size=0, cnp.ndarray row_stats=None, cnp.ndarray lse_in=None):
    """Run one kernel call; every option is named as the field of
    ``ce_problem`` it fills, and absent ones are NULL / 0.

    ``x`` (and ``out``) are 2-D, native, aligned, with a contiguous last
    axis and element type ``dtype`` (a DTYPE_* code); ``soft`` likewise in
    the compute type (float64 for float64 logits, else float32), as is
    ``weight``; ``target`` and ``row_argmax`` are int64, ``row_scale``,
    ``row_out``, ``row_entropy``, ``row_lse`` and ``lse_in`` float64,
    ``row_stats`` float64 of shape (rows, len(ROW_STATS_FIELDS)), all
    contiguous. ``weight_sum`` defaults to the number of classes (no
    weights); with ``vocab_size`` (a vocabulary shard) ``weight`` has
    ``vocab_size`` entries.
    """
    cdef ce_problem p
    memset(&p, 0, sizeof(p))
    p.dtype = <ce_dtype>dtype
    p.mode = <ce_mode>mode
    p.n_rows = cnp.PyArray_DIM(x, 0)
    p.n_cols = cnp.PyArray_DIM(x, 1)
    p.x = cnp.PyArray_DATA(x)
    p.x_stride = row_stride(x)
    p.out = <void *>data_or_null(out)
    p.out_stride = row_stride(out)
    p.target = <const int64_t *>data_or_null(target)
    p.ignore_index = ignore_index
    p.soft = data_or_null(soft)
    p.soft_stride = row_stride(soft)
    p.weight = data_or_null(weight)
    p.weight_sum = <double>p.n_cols if weight_sum is None else <double>weight_sum
    p.smoothing = smoothing
    p.z_loss = z_loss
    p.softcap = softcap
    p.grad_scale = grad_scale
    p.row_scale = <const double *>data_or_null(row_scale)
    p.row_out = <double *>data_or_null(row_out)
    p.row_entropy = <double *>data_or_null(row_entropy)
    p.row_argmax = <int64_t *>data_or_null(row_argmax)
    p.row_lse = <double *>data_or_null(row_lse)
    p.vocab_start = vocab_start
    p.vocab_size = vocab_size
    p.row_stats = <ce_row_stats *>data_or_null(row_stats)
    p.lse_in = <const double *>data_or_null(lse_in)
    cdef Interruptible stop = interrupt_for(p.n_rows * p.n_cols)
    p.interrupt = stop.interrupt
    cdef int status
    with nogil:
        status = ce_run(&p, n_threads)
    stop.check(status)


def merge_row_stats(cnp.ndarray parts, cnp.ndarray out):
    """Merge row statistics ``parts`` (contiguous float64, shape (parts,
    rows, len(ROW_STATS_FIELDS))) in part order into ``out`` (rows, fields)."""
    cdef int status
    cdef int64_t n_parts = cnp.PyArray_DIM(parts, 0), n_rows = cnp.PyArray_DIM(parts, 1)
    with nogil:
        status = ce_merge_row_stats(<const ce_row_stats *>cnp.PyArray_DATA(parts), n_parts,
                                    n_rows, <ce_row_stats *>cnp.PyArray_DATA(out))
    check_status(status)


def finish_row_stats(cnp.ndarray stats, cnp.ndarray target, *, int64_t ignore_index=-100,
                     double weight_sum, double smoothing=0.0, double z_loss=0.0,
                     int64_t vocab_size, cnp.ndarray row_out=None, cnp.ndarray row_lse=None,
                     cnp.ndarray row_argmax=None):
    """Per-row losses (and log-sum-exp, argmax) of merged statistics
    ``stats`` (contiguous float64, (rows, fields)); ``target`` int64."""
    cdef ce_problem p
    memset(&p, 0, sizeof(p))
    p.n_rows = cnp.PyArray_DIM(stats, 0)
    p.n_cols = vocab_size
    p.vocab_size = vocab_size
    p.target = <const int64_t *>cnp.PyArray_DATA(target)
    p.ignore_index = ignore_index
    p.weight_sum = weight_sum
    p.smoothing = smoothing
    p.z_loss = z_loss
    p.row_out = <double *>data_or_null(row_out)
    p.row_lse = <double *>data_or_null(row_lse)
    p.row_argmax = <int64_t *>data_or_null(row_argmax)
    cdef int status
    with nogil:
        status = ce_finish_row_stats(&p, <const ce_row_stats *>cnp.PyArray_DATA(stats))
    check_status(status)


def default_threads():
    """Threads OpenMP would use now (honours OMP_NUM_THREADS, threadpoolctl)."""
    return ce_default_threads()


def max_threads():
    """The most threads any call uses."""
    return ce_max_threads()


def openmp_enabled():
    return bool(ce_openmp_enabled())


def active_isa():
    return ISA_NAMES[int(ce_active_isa())]


def best_isa():
    return ISA_NAMES[int(ce_best_isa())]


def force_isa(str name):
    """Use the named instruction-set path; False if this CPU lacks it."""
    for code, isa_name in ISA_NAMES.items():
        if isa_name == name:
            return ce_force_isa(<ce_isa>code) == CE_OK
    return False


def chunk_size():
    return ce_chunk_size()


def parallel_threshold():
    return ce_parallel_threshold()


def exp_array(cnp.ndarray x, cnp.ndarray y):
    """y = exp(x) with the kernels' own exponential (contiguous, same dtype)."""
    cdef int64_t n = cnp.PyArray_SIZE(x)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            ce_exp_f32_array(<const float *>cnp.PyArray_DATA(x), <float *>cnp.PyArray_DATA(y), n)
    else:
        with nogil:
            ce_exp_f64_array(<const double *>cnp.PyArray_DATA(x), <double *>cnp.PyArray_DATA(y), n)


def floor_read(cnp.ndarray x, int n_threads):
    """Read a contiguous float32 array once (the read floor)."""
    cdef double total
    with nogil:
        total = ce_floor_read_f32(<const float *>cnp.PyArray_DATA(x), cnp.PyArray_SIZE(x), n_threads)
    return total


def floor_update(cnp.ndarray x, float factor, int n_threads):
    """Multiply a contiguous float32 array by factor in place (the in-place floor)."""
    with nogil:
        ce_floor_update_f32(<float *>cnp.PyArray_DATA(x), cnp.PyArray_SIZE(x), factor, n_threads)


def floor_copy(cnp.ndarray x, cnp.ndarray y, int n_threads):
    """Copy a contiguous float32 array into y (the copy floor)."""
    with nogil:
        ce_floor_copy_f32(<const float *>cnp.PyArray_DATA(x), <float *>cnp.PyArray_DATA(y),
                          cnp.PyArray_SIZE(x), n_threads)


def check_targets(cnp.ndarray target, int64_t n_classes, int64_t ignore_index, cnp.ndarray weight):
    """Scan int64 class targets once: (first bad flat index or -1, number of
    positions not ignored, summed weight of those positions).

    ``target`` is contiguous int64; ``weight`` is None or a contiguous
    float32/float64 array of length ``n_classes``.
    """
    cdef const int64_t *t = <const int64_t *>cnp.PyArray_DATA(target)
    cdef int64_t n = cnp.PyArray_SIZE(target)
    cdef int64_t i, value, bad = -1, counted = 0
    cdef double weight_sum = 0.0
    cdef const float *w32 = NULL
    cdef const double *w64 = NULL
    if weight is not None:
        if cnp.PyArray_TYPE(weight) == cnp.NPY_FLOAT32:
            w32 = <const float *>cnp.PyArray_DATA(weight)
        else:
            w64 = <const double *>cnp.PyArray_DATA(weight)
    with nogil:
        for i in range(n):
            value = t[i]
            if value == ignore_index:
                continue
            if value < 0 or value >= n_classes:
                bad = i
                break
            counted += 1
            if w32 != NULL:
                weight_sum += w32[value]
            elif w64 != NULL:
                weight_sum += w64[value]
    if weight is None:
        weight_sum = <double>counted
    return bad, counted, weight_sum


# ---- the rest of the loss family (src/ce_family.h) ----------------------------

cdef extern from "ce_family.h":
    ctypedef enum ce_dist_mode:
        CE_DIST_ENTROPY
        CE_DIST_CROSS_ENTROPY
        CE_DIST_KL
    ctypedef struct ce_dist_problem:
        ce_dtype dtype
        ce_dist_mode mode
        int64_t n_rows
        int64_t n_cols
        const void *p
        int64_t p_stride
        const void *q
        int64_t q_stride
        double *row_out
        double *p_sum
        double *q_sum
        uint8_t *p_negative
        uint8_t *q_negative
        ce_interrupt interrupt
    int ce_dist_run(const ce_dist_problem *problem, int n_threads) nogil
    ctypedef enum ce_bce_mode:
        CE_BCE_LOGITS
        CE_BCE_PROBS
    ctypedef struct ce_strided:
        const void *data
        int64_t row_stride
        int64_t col_stride
    ctypedef struct ce_bce_problem:
        ce_dtype dtype
        ce_bce_mode mode
        int64_t n_rows
        int64_t n_cols
        const void *x
        int64_t x_stride
        const void *y
        int64_t y_stride
        ce_strided weight
        ce_strided pos_weight
        ce_strided grad_output
        double grad_scale
        void *elem_out
        int64_t elem_out_stride
        double *row_out
        void *grad
        int64_t grad_stride
        ce_interrupt interrupt
    int ce_bce_run(const ce_bce_problem *problem, int n_threads) nogil
    ctypedef enum ce_sigmoid_mode:
        CE_SIGMOID
        CE_LOG_SIGMOID
    int ce_sigmoid_run(ce_dtype dtype, ce_sigmoid_mode mode, const void *x, void *out,
                       int64_t n, int n_threads, const ce_interrupt *interrupt) nogil
    void ce_log_f32_array(const float *x, float *y, int64_t n) nogil
    void ce_log_f64_array(const double *x, double *y, int64_t n) nogil
    double ce_log_f32_max_ulp(uint32_t first, uint32_t last) nogil


DIST_ENTROPY = CE_DIST_ENTROPY
DIST_CROSS_ENTROPY = CE_DIST_CROSS_ENTROPY
DIST_KL = CE_DIST_KL
BCE_LOGITS = CE_BCE_LOGITS
BCE_PROBS = CE_BCE_PROBS
SIGMOID = CE_SIGMOID
LOG_SIGMOID = CE_LOG_SIGMOID


cdef inline ce_strided strided_of(cnp.ndarray a):
    """A 2-D (possibly zero-strided) operand, or "all ones" for None."""
    cdef ce_strided s
    s.data = NULL
    s.row_stride = 0
    s.col_stride = 0
    if a is not None:
        s.data = cnp.PyArray_DATA(a)
        s.row_stride = cnp.PyArray_STRIDE(a, 0) // cnp.PyArray_ITEMSIZE(a)
        s.col_stride = cnp.PyArray_STRIDE(a, 1) // cnp.PyArray_ITEMSIZE(a)
    return s


def dist_run(int mode, int dtype, cnp.ndarray p, cnp.ndarray q=None, *, cnp.ndarray row_out,
             cnp.ndarray p_sum=None, cnp.ndarray q_sum=None, cnp.ndarray p_negative=None,
             cnp.ndarray q_negative=None, int n_threads=0):
    """Row reductions over distributions: p, q 2-D rows of the kernels'
    dtype code ``dtype`` (last axis contiguous); the other arrays
    contiguous, one entry per row (float64 sums, uint8 flags)."""
    cdef ce_dist_problem pr
    pr.dtype = <ce_dtype>dtype
    pr.mode = <ce_dist_mode>mode
    pr.n_rows = cnp.PyArray_DIM(p, 0)
    pr.n_cols = cnp.PyArray_DIM(p, 1)
    pr.p = cnp.PyArray_DATA(p)
    pr.p_stride = row_stride(p)
    pr.q = data_or_null(q)
    pr.q_stride = row_stride(q)
    pr.row_out = <double *>cnp.PyArray_DATA(row_out)
    pr.p_sum = <double *>data_or_null(p_sum)
    pr.q_sum = <double *>data_or_null(q_sum)
    pr.p_negative = <uint8_t *>data_or_null(p_negative)
    pr.q_negative = <uint8_t *>data_or_null(q_negative)
    cdef Interruptible stop = interrupt_for(pr.n_rows * pr.n_cols)
    pr.interrupt = stop.interrupt
    cdef int status
    with nogil:
        status = ce_dist_run(&pr, n_threads)
    stop.check(status)


def bce_run(int mode, int dtype, cnp.ndarray x, cnp.ndarray y, *, cnp.ndarray weight=None,
            cnp.ndarray pos_weight=None, cnp.ndarray grad_output=None, double grad_scale=1.0,
            cnp.ndarray elem_out=None, cnp.ndarray row_out=None, cnp.ndarray grad=None,
            int n_threads=0):
    """Binary cross-entropy over 2-D rows x (dtype code ``dtype``) and y
    (last axis contiguous); y, weight, pos_weight and elem_out of the
    compute type, grad_output float64; weight, pos_weight and grad_output
    are 2-D and may have zero strides."""
    cdef ce_bce_problem pr
    pr.dtype = <ce_dtype>dtype
    pr.mode = <ce_bce_mode>mode
    pr.n_rows = cnp.PyArray_DIM(x, 0)
    pr.n_cols = cnp.PyArray_DIM(x, 1)
    pr.x = cnp.PyArray_DATA(x)
    pr.x_stride = row_stride(x)
    pr.y = cnp.PyArray_DATA(y)
    pr.y_stride = row_stride(y)
    pr.weight = strided_of(weight)
    pr.pos_weight = strided_of(pos_weight)
    pr.grad_output = strided_of(grad_output)
    pr.grad_scale = grad_scale
    pr.elem_out = <void *>data_or_null(elem_out)
    pr.elem_out_stride = row_stride(elem_out)
    pr.row_out = <double *>data_or_null(row_out)
    pr.grad = <void *>data_or_null(grad)
    pr.grad_stride = row_stride(grad)
    cdef Interruptible stop = interrupt_for(pr.n_rows * pr.n_cols)
    pr.interrupt = stop.interrupt
    cdef int status
    with nogil:
        status = ce_bce_run(&pr, n_threads)
    stop.check(status)


def sigmoid_run(int mode, int dtype, cnp.ndarray x, cnp.ndarray out, *, int n_threads=0):
    """Elementwise sigmoid / log-sigmoid of contiguous x into contiguous out
    (both of dtype code ``dtype``)."""
    cdef int status
    cdef const void *src = cnp.PyArray_DATA(x)
    cdef void *dst = cnp.PyArray_DATA(out)
    cdef int64_t n = cnp.PyArray_SIZE(x)
    cdef Interruptible stop = interrupt_for(n)
    with nogil:
        status = ce_sigmoid_run(<ce_dtype>dtype, <ce_sigmoid_mode>mode, src, dst, n, n_threads,
                                &stop.interrupt)
    stop.check(status)


# ---- distillation losses (src/ce_distill.h) -----------------------------------

cdef extern from "ce_distill.h":
    ctypedef enum ce_distill_mode:
        CE_DISTILL_FORWARD
        CE_DISTILL_REVERSE
        CE_DISTILL_JSD
    ctypedef struct ce_distill_problem:
        ce_dtype dtype
        ce_distill_mode mode
        int64_t n_rows
        int64_t n_cols
        const void *student
        int64_t student_stride
        const void *teacher
        int64_t teacher_stride
        double temperature
        double beta
        const int64_t *target
        int64_t ignore_index
        double *row_out
        void *grad
        int64_t grad_stride
        double grad_scale
        ce_interrupt interrupt
    int ce_distill_run(const ce_distill_problem *problem, int n_threads) nogil


DISTILL_FORWARD = CE_DISTILL_FORWARD
DISTILL_REVERSE = CE_DISTILL_REVERSE
DISTILL_JSD = CE_DISTILL_JSD


def distill_run(int mode, int dtype, cnp.ndarray student, cnp.ndarray teacher, *,
                double temperature, double beta=0.5, cnp.ndarray target=None,
                int64_t ignore_index=-100, cnp.ndarray row_out, cnp.ndarray grad=None,
                double grad_scale=1.0, int n_threads=0):
    """Distillation losses over 2-D rows of student and teacher logits (both
    of dtype code ``dtype``, last axis contiguous): each row's loss into
    float64 ``row_out``, and d loss / d student times ``grad_scale`` into
    ``grad`` (rows of the same dtype; may be ``student``). ``target``:
    contiguous int64, one per row, or None."""
    cdef ce_distill_problem pr
    pr.dtype = <ce_dtype>dtype
    pr.mode = <ce_distill_mode>mode
    pr.n_rows = cnp.PyArray_DIM(student, 0)
    pr.n_cols = cnp.PyArray_DIM(student, 1)
    pr.student = cnp.PyArray_DATA(student)
    pr.student_stride = row_stride(student)
    pr.teacher = cnp.PyArray_DATA(teacher)
    pr.teacher_stride = row_stride(teacher)
    pr.temperature = temperature
    pr.beta = beta
    pr.target = <const int64_t *>data_or_null(target)
    pr.ignore_index = ignore_index
    pr.row_out = <double *>cnp.PyArray_DATA(row_out)
    pr.grad = <void *>data_or_null(grad)
    pr.grad_stride = row_stride(grad)
    pr.grad_scale = grad_scale
    cdef Interruptible stop = interrupt_for(pr.n_rows * pr.n_cols)
    pr.interrupt = stop.interrupt
    cdef int status
    with nogil:
        status = ce_distill_run(&pr, n_threads)
    stop.check(status)


def log_array(cnp.ndarray x, cnp.ndarray y):
    """y = log(x) with the kernels' own logarithm (contiguous, same dtype)."""
    cdef int64_t n = cnp.PyArray_SIZE(x)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            ce_log_f32_array(<const float *>cnp.PyArray_DATA(x), <float *>cnp.PyArray_DATA(y), n)
    else:
        with nogil:
            ce_log_f64_array(<const double *>cnp.PyArray_DATA(x), <double *>cnp.PyArray_DATA(y), n)


def log_f32_max_ulp(uint32_t first, uint32_t last):
    """Largest float32 log error in ulps over the bit patterns first..last
    (see ce_log_f32_max_ulp)."""
    cdef double worst
    with nogil:
        worst = ce_log_f32_max_ulp(first, last)
    return worst


def small_mean_loss(cnp.ndarray x, cnp.ndarray target, int64_t ignore_index, int dtype, int n_threads):
    """Mean cross-entropy of fewer than 8 C-contiguous rows with int64 class
    targets, without allocating: the per-call fast path of cross_entropy.

    Returns the mean as a float (NaN if every position is ignored), or None
    if a target is out of range (the general path then raises the error).
    The rows are summed in order, as NumPy sums fewer than 8 values, so the
    result is identical to the general path's.
    """
    cdef double row_loss[8]
    cdef const int64_t *t = <const int64_t *>cnp.PyArray_DATA(target)
    cdef int64_t n_rows = cnp.PyArray_DIM(x, 0), n_cols = cnp.PyArray_DIM(x, 1)
    cdef int64_t i, counted = 0
    cdef double total = 0.0
    for i in range(n_rows):
        if t[i] == ignore_index:
            continue
        if t[i] < 0 or t[i] >= n_cols:
            return None
        counted += 1
    cdef ce_problem p
    memset(&p, 0, sizeof(p))
    p.dtype = <ce_dtype>dtype
    p.mode = CE_MODE_LOSS
    p.n_rows = n_rows
    p.n_cols = n_cols
    p.x = cnp.PyArray_DATA(x)
    p.x_stride = n_cols
    p.out = NULL
    p.out_stride = 0
    p.target = t
    p.ignore_index = ignore_index
    p.soft = NULL
    p.soft_stride = 0
    p.weight = NULL
    p.weight_sum = <double>n_cols
    p.smoothing = 0.0
    p.z_loss = 0.0
    p.softcap = 0.0
    p.grad_scale = 1.0
    p.row_scale = NULL
    p.row_out = row_loss
    p.row_entropy = NULL
    p.row_argmax = NULL
    p.interrupt.poll = NULL
    p.interrupt.ctx = NULL
    cdef int status
    with nogil:
        status = ce_run(&p, n_threads)
    check_status(status)
    for i in range(n_rows):
        total += row_loss[i]
    if counted == 0:
        return float("nan")
    return total / <double>counted
