/*
 * ce_kernels: fused, numerically stable softmax cross-entropy in plain C.
 *
 * This header is the whole C interface. It knows nothing of Python: the
 * caller describes a batch of rows (a "problem") and the kernels compute
 * per-row losses (or log-sum-exp values) and, optionally, a second output
 * of the same shape as the input (gradient, softmax or log-softmax).
 *
 * The caller is trusted: shapes, target ranges and option values are
 * validated before these functions are called.
 *
 * Other extensions reach these functions without linking against
 * ce_kernels: through the table of function pointers at the end of this
 * header, which the installed package exports as a capsule (see
 * ce_kernels_python.h for C, and ce_kernels/capi.pxd for Cython). The
 * directory holding both headers is ce_kernels.get_include().
 */
#ifndef CE_KERNELS_H
#define CE_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element types of the logits (and of soft targets and of the output). */
typedef enum {
    CE_FLOAT32 = 0,
    CE_FLOAT64 = 1,
    CE_FLOAT16 = 2,   /* IEEE binary16; computed in float32         */
    CE_BFLOAT16 = 3   /* bfloat16 (ml_dtypes); computed in float32  */
} ce_dtype;

/* What one call computes. */
typedef enum {
    CE_MODE_LOSS = 0,        /* row_out = per-row loss                         */
    CE_MODE_LOSS_GRAD = 1,   /* row_out = per-row loss, out = d loss / d logits */
    CE_MODE_LOGSUMEXP = 2,   /* row_out = log(sum(exp(x)))                      */
    CE_MODE_SOFTMAX = 3,     /* out = exp(x - logsumexp(x))                     */
    CE_MODE_LOG_SOFTMAX = 4, /* out = x - logsumexp(x)                          */
    CE_MODE_TOKEN_STATS = 5, /* row_out = NLL of the target (NaN if ignored),
                                row_entropy, row_argmax                        */
    CE_MODE_ROW_STATS = 6,   /* row_stats = statistics of a vocabulary shard    */
    CE_MODE_GRAD_FROM_LSE = 7 /* out = d loss / d logits of a vocabulary shard,
                                 from the row's log-sum-exp lse_in              */
} ce_mode;

/*
 * What one row's logits in one vocabulary shard contribute to the row's
 * loss (CE_MODE_ROW_STATS). The first eight fields describe the shard:
 * sums measured from the shard's maximum, so every term is non-negative and
 * nothing cancels. The rest is the exact form ce_merge_row_stats merges:
 * sums of exponentials measured from exp(frame) where frame is a multiple
 * of ln 2, so that bringing two shards to one frame multiplies by a power
 * of two (exact), and every sum kept as an unevaluated pair hi + lo of
 * doubles. Merging in any grouping then rounds to the same doubles (up to
 * sums within 2^-100 of a rounding boundary): a row merged from shards
 * that cut its vocabulary at chunk boundaries (ce_chunk_size()) is bitwise
 * the row of the unsharded call. Shards of one row merge with
 * ce_merge_row_stats; ce_finish_row_stats turns merged statistics into
 * losses. All fields are doubles so that a row is 17 doubles to send.
 */
typedef struct {
    double max;           /* largest (soft-capped) logit; -inf if none        */
    double sumexp;        /* sum_j exp(x_j - max)                              */
    double lin;           /* label smoothing: sum_j w_j * (max - x_j); else 0  */
    double wsum;          /* label smoothing: sum_j w_j; else 0                */
    double target_logit;  /* the target's (soft-capped) logit; 0 if elsewhere  */
    double target_weight; /* its class weight (1 without weights); 0 if elsewhere */
    double target_found;  /* 1 if the target is in the shard, else 0           */
    double argmax;        /* global class id of the first largest logit        */
    /* the exact form: */
    double frame;         /* exp(frame) is the unit of sum_hi/lo; -inf: none   */
    double frame_exp2;    /* frame / ln 2, an integer; NaN when the maximum is
                             beyond +-2^30 and frame is the maximum itself     */
    double sum_hi, sum_lo;        /* sum_j exp(x_j - frame)                    */
    double lin_hi, lin_lo;        /* sum over chunks of sum_j w_j (s_c - x_j),
                                     s_c the shift the chunk was measured from */
    double wsum_lo;               /* wsum = wsum + wsum_lo                     */
    double wshift_hi, wshift_lo;  /* sum over chunks of s_c * sum_j w_j        */
} ce_row_stats;

/* Instruction-set paths the kernels are compiled for. */
typedef enum {
    CE_ISA_BASELINE = 0,  /* the compiler's default target (SSE2 on x86-64) */
    CE_ISA_AVX2 = 1,      /* AVX2 + FMA                                     */
    CE_ISA_AVX512 = 2     /* AVX-512 F/VL/BW/DQ + FMA                       */
} ce_isa;

/*
 * A way for the caller to stop a long call early (for instance to let an
 * interactive interrupt through). poll(ctx) is called only on the thread
 * that called the run function, between rows (and, for elementwise
 * kernels, between blocks of elements), after every few million elements
 * of work; a non-zero return stops the call, which then returns
 * CE_INTERRUPTED with its outputs partly written. poll NULL: never polled.
 */
typedef struct {
    int (*poll)(void *ctx);
    void *ctx;
} ce_interrupt;

/*
 * A batch of rows. Every row has n_cols elements that are contiguous in
 * memory; rows are separated by a stride given in elements (any value,
 * including one that reuses memory). All counts are 64-bit.
 *
 * Loss definitions follow torch.nn.functional.cross_entropy:
 *   hard targets: loss = (1-eps) * w[t] * (lse - x[t])
 *                        + eps/V * sum_j w[j] * (lse - x[j])
 *   soft targets: loss = sum_j w[j] * q[j] * (lse - x[j]),
 *                 q = (1-eps) * y + eps/V, terms with w[j]*q[j] == 0 skipped
 * where w is all ones when weight is NULL and eps is the label smoothing.
 * With softcap > 0 every logit x is first replaced by softcap*tanh(x/softcap);
 * z_loss adds z_loss * lse^2 to the loss of every row that is not ignored.
 */
typedef struct {
    ce_dtype dtype;
    ce_mode mode;
    int64_t n_rows;
    int64_t n_cols;

    const void *x;          /* logits                                        */
    int64_t x_stride;       /* elements between rows of x                    */
    void *out;              /* second output (may equal x), or NULL          */
    int64_t out_stride;

    const int64_t *target;  /* class index per row, or NULL                  */
    int64_t ignore_index;   /* rows whose target equals this contribute 0    */
    /* Soft targets and class weights are float64 for float64 logits and
     * float32 for every other dtype (never rounded to half precision). */
    const void *soft;       /* soft targets, or NULL                         */
    int64_t soft_stride;
    const void *weight;     /* class weights (n_cols), or NULL               */
    double weight_sum;      /* sum of weight (n_cols when weight is NULL)    */
    double smoothing;       /* label smoothing eps in [0, 1]                 */
    double z_loss;          /* coefficient of lse^2 (0: none)                */
    double softcap;         /* logit soft-cap (0: none)                      */

    double grad_scale;          /* gradient multiplier for every row         */
    const double *row_scale;    /* extra per-row multiplier, or NULL         */

    double *row_out;        /* n_rows results: loss or log-sum-exp           */
    double *row_entropy;    /* token stats: entropy of the softmax (nats)    */
    int64_t *row_argmax;    /* token stats, and optionally the loss modes:
                               first index of the largest logit             */

    ce_interrupt interrupt; /* optional early stop (poll NULL: none)       */

    /* Optional output of the loss modes: each row's log-sum-exp of the
     * (soft-capped) logits, ignored rows included; NULL: none. */
    double *row_lse;

    /* Vocabulary shards (CE_MODE_ROW_STATS, CE_MODE_GRAD_FROM_LSE): x holds
     * the classes [vocab_start, vocab_start + n_cols) of vocab_size
     * (0: n_cols); targets are global class ids, weight has vocab_size
     * entries indexed by them and weight_sum sums all of them. */
    int64_t vocab_start;
    int64_t vocab_size;
    ce_row_stats *row_stats;  /* CE_MODE_ROW_STATS output, n_rows          */
    const double *lse_in;     /* CE_MODE_GRAD_FROM_LSE: each row's log-sum-exp
                                 over the whole vocabulary                   */
} ce_problem;

/* Status codes. */
#define CE_OK 0
#define CE_ERR_NOMEM 1
#define CE_ERR_ARGS 2
#define CE_INTERRUPTED 3   /* interrupt.poll asked to stop; outputs partial */
#define CE_ERR_ABI 4       /* called through the capsule with another ABI */

/* Runs a problem on up to n_threads threads (<= 0 means OpenMP's default).
 * Results do not depend on the number of threads. */
int ce_run(const ce_problem *problem, int n_threads);

/* Merges the statistics of n_parts shards of the same n_rows rows, stored
 * part after part (parts[k * n_rows + r]), in part order, into out
 * (n_rows). The row driver merges its chunks with the same arithmetic. */
int ce_merge_row_stats(const ce_row_stats *parts, int64_t n_parts, int64_t n_rows,
                       ce_row_stats *out);

/* The per-row results of merged statistics, as CE_MODE_LOSS gives them on
 * the whole vocabulary: row_out (loss, 0 for ignored rows) and, when not
 * NULL, row_lse and row_argmax. Reads n_rows, target, ignore_index,
 * weight_sum, smoothing, z_loss and vocab_size (0: n_cols) of problem. */
int ce_finish_row_stats(const ce_problem *problem, const ce_row_stats *stats);

/* The number of threads OpenMP would use by default (1 without OpenMP). */
int ce_default_threads(void);

/* The most threads a call uses, whatever it asks: four per processor
 * available to the process, at least 8 (more cannot speed up a kernel that
 * is bound by memory or arithmetic, and each costs an OS thread). Calls
 * also never use more threads than they have units of work. */
int ce_max_threads(void);

/* 1 if compiled with OpenMP, else 0. */
int ce_openmp_enabled(void);

/* The instruction-set path in use, the best one this CPU supports, and a
 * way to force a path (for testing); forcing one the CPU lacks fails. */
ce_isa ce_active_isa(void);
ce_isa ce_best_isa(void);
int ce_force_isa(ce_isa isa);
const char *ce_isa_name(ce_isa isa);

/* Vocabulary elements per chunk: the fixed unit of work and of reduction
 * order inside a row. */
int64_t ce_chunk_size(void);

/* Rows x cols below this many elements run on one thread. */
int64_t ce_parallel_threshold(void);

/* Reference exponentials of the active path, one value at a time; used to
 * measure their error over every float in a range. */
void ce_exp_f32_array(const float *x, float *y, int64_t n);
void ce_exp_f64_array(const double *x, double *y, int64_t n);

/* Memory floors for benchmarks: read n elements once (a sum), and copy n
 * elements, on n_threads threads. */
double ce_floor_read_f32(const float *x, int64_t n, int n_threads);
void ce_floor_copy_f32(const float *x, float *y, int64_t n, int n_threads);
/* ...and update n elements in place (x *= factor): the in-place floor. */
void ce_floor_update_f32(float *x, int64_t n, float factor, int n_threads);

/* ---- the table other extensions call through ---------------------------
 *
 * ABI version policy: CE_KERNELS_ABI_VERSION changes whenever a structure
 * or enum above, or this table, changes in a way that breaks code compiled
 * against an earlier header; it stays the same across releases otherwise.
 * Code compiled against one version refuses to run with another (at import
 * for C, see ce_kernels_python.h; with CE_ERR_ABI per call for Cython) so
 * nothing reads a structure laid out differently. Zero a ce_problem before
 * setting its fields, so that fields you do not use are NULL or 0.
 *
 * Every function is thread-safe: call it from any thread, without the GIL,
 * concurrently. n_threads is honoured as documented for ce_run. */
#define CE_KERNELS_ABI_VERSION 1   /* not yet in a release: still growing */

/* The capsule's name, also where it lives: ce_kernels.capi._C_API. */
#define CE_KERNELS_CAPSULE_NAME "ce_kernels.capi._C_API"

typedef struct {
    int abi_version;                    /* CE_KERNELS_ABI_VERSION of the library */
    int (*run)(const ce_problem *problem, int n_threads);
    int (*default_threads)(void);
    int (*max_threads)(void);
    int (*openmp_enabled)(void);
    ce_isa (*active_isa)(void);
    const char *(*isa_name)(ce_isa isa);
    int64_t (*chunk_size)(void);
} ce_kernels_api;

/* The library's table (static storage, never freed). */
const ce_kernels_api *ce_kernels_api_table(void);

#ifdef __cplusplus
}
#endif

#endif /* CE_KERNELS_H */
