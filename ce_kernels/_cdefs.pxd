# Cython declarations of the public C header (ce_kernels.get_include()/ce_kernels.h).
# Types, constants and functions only: cimporting them loads no module.
from libc.stdint cimport int64_t

cdef extern from "ce_kernels.h":
    ctypedef enum ce_dtype:
        CE_FLOAT32
        CE_FLOAT64
        CE_FLOAT16
        CE_BFLOAT16
    ctypedef enum ce_mode:
        CE_MODE_LOSS
        CE_MODE_LOSS_GRAD
        CE_MODE_LOGSUMEXP
        CE_MODE_SOFTMAX
        CE_MODE_LOG_SOFTMAX
        CE_MODE_TOKEN_STATS
        CE_MODE_ROW_STATS
        CE_MODE_GRAD_FROM_LSE
    ctypedef enum ce_isa:
        CE_ISA_BASELINE
        CE_ISA_AVX2
        CE_ISA_AVX512
    ctypedef struct ce_interrupt:
        int (*poll)(void *ctx) noexcept nogil
        void *ctx
    ctypedef struct ce_row_stats:
        double max
        double sumexp
        double lin
        double wsum
        double target_logit
        double target_weight
        double target_found
        double argmax
        double frame
        double frame_exp2
        double sum_hi
        double sum_lo
        double lin_hi
        double lin_lo
        double wsum_lo
        double wshift_hi
        double wshift_lo
    ctypedef struct ce_problem:
        ce_dtype dtype
        ce_mode mode
        int64_t n_rows
        int64_t n_cols
        const void *x
        int64_t x_stride
        void *out
        int64_t out_stride
        const int64_t *target
        int64_t ignore_index
        const void *soft
        int64_t soft_stride
        const void *weight
        double weight_sum
        double smoothing
        double z_loss
        double softcap
        double grad_scale
        const double *row_scale
        double *row_out
        double *row_entropy
        int64_t *row_argmax
        ce_interrupt interrupt
        double *row_lse
        int64_t vocab_start
        int64_t vocab_size
        ce_row_stats *row_stats
        const double *lse_in
    int CE_OK
    int CE_ERR_NOMEM
    int CE_ERR_ARGS
    int CE_INTERRUPTED
    int CE_ERR_ABI
    int CE_KERNELS_ABI_VERSION
    const char *CE_KERNELS_CAPSULE_NAME
    ctypedef struct ce_kernels_api:
        int abi_version
        int (*run)(const ce_problem *problem, int n_threads) noexcept nogil
        int (*default_threads)() noexcept nogil
        int (*max_threads)() noexcept nogil
        int (*openmp_enabled)() noexcept nogil
        ce_isa (*active_isa)() noexcept nogil
        const char *(*isa_name)(ce_isa isa) noexcept nogil
        int64_t (*chunk_size)() noexcept nogil
    const ce_kernels_api *ce_kernels_api_table() noexcept nogil

    int ce_run(const ce_problem *problem, int n_threads) nogil
    int ce_merge_row_stats(const ce_row_stats *parts, int64_t n_parts, int64_t n_rows,
                           ce_row_stats *out) nogil
    int ce_finish_row_stats(const ce_problem *problem, const ce_row_stats *stats) nogil
    int ce_default_threads()
    int ce_max_threads()
    int ce_openmp_enabled()
    ce_isa ce_active_isa()
    ce_isa ce_best_isa()
    int ce_force_isa(ce_isa isa)
    const char *ce_isa_name(ce_isa isa)
    int64_t ce_chunk_size()
    int64_t ce_parallel_threshold()
    void ce_exp_f32_array(const float *x, float *y, int64_t n) nogil
    void ce_exp_f64_array(const double *x, double *y, int64_t n) nogil
    double ce_floor_read_f32(const float *x, int64_t n, int n_threads) nogil
    void ce_floor_copy_f32(const float *x, float *y, int64_t n, int n_threads) nogil
    void ce_floor_update_f32(float *x, int64_t n, float factor, int n_threads) nogil
