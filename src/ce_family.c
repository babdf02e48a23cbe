/*
 * Entropy, cross-entropy between distributions, KL divergence, binary
 * cross-entropy, sigmoid and log-sigmoid (see ce_family.h).
 */
#include <math.h>
#include <stddef.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "ce_family.h"
#include "ce_internal.h"

static inline double load_elem(const void *base, int64_t idx, ce_dtype dtype)
{
    return dtype == CE_FLOAT32 ? (double)((const float *)base)[idx] : ((const double *)base)[idx];
}

static inline void store_elem(void *base, int64_t idx, double value, ce_dtype dtype)
{
    if (dtype == CE_FLOAT32)
        ((float *)base)[idx] = (float)value;
    else
        ((double *)base)[idx] = value;
}


/* ---- distributions ------------------------------------------------------ */

/* p * log(p / q) with the conventions 0 * log(0 / q) = 0 and
 * p * log(p / 0) = +inf for p > 0. The ratio keeps nearly equal p and q
 * from cancelling; where it overflows or underflows (a subnormal q or p)
 * the logarithms are subtracted instead, which is then exact enough. */
static inline double rel_entr(double p, double q)
{
    if (p == 0.0 && q >= 0.0) return 0.0;
    if (p > 0.0 && q > 0.0) {
        const double ratio = p / q;
        if (ratio > 0.0 && ratio < INFINITY) return p * log(ratio);
        return p * (log(p) - log(q));
    }
    if (p > 0.0 && q == 0.0) return INFINITY;
    return NAN;  /* a negative entry or NaN (validation reports it) */
}

static void dist_row(const ce_dist_problem *pr, int64_t r)
{
    const char *p = (const char *)pr->p + r * pr->p_stride * (int64_t)(pr->dtype == CE_FLOAT32 ? 4 : 8);
    const char *q = pr->q ? (const char *)pr->q + r * pr->q_stride * (int64_t)(pr->dtype == CE_FLOAT32 ? 4 : 8)
                          : NULL;
    double total = 0.0, p_sum = 0.0, q_sum = 0.0;
    int p_neg = 0, q_neg = 0;
    for (int64_t j = 0; j < pr->n_cols; ++j) {
        const double pj = load_elem(p, j, pr->dtype);
        const double qj = q ? load_elem(q, j, pr->dtype) : 0.0;
        p_sum += pj;
        q_sum += qj;
        p_neg |= pj < 0.0;
        q_neg |= qj < 0.0;
        switch (pr->mode) {
        case CE_DIST_ENTROPY:
            /* -p log p: rel_entr(p, 1) = p log p */
            total -= rel_entr(pj, 1.0);
            break;
        case CE_DIST_CROSS_ENTROPY:
            if (pj != 0.0) total -= qj > 0.0 ? pj * log(qj) : (qj == 0.0 && pj > 0.0 ? -INFINITY : NAN);
            break;
        case CE_DIST_KL:
            total += rel_entr(pj, qj);
            break;
        }
    }
    pr->row_out[r] = total;
    if (pr->p_sum) pr->p_sum[r] = p_sum;
    if (pr->q_sum) pr->q_sum[r] = q_sum;
    if (pr->p_negative) pr->p_negative[r] = (uint8_t)p_neg;
    if (pr->q_negative) pr->q_negative[r] = (uint8_t)q_neg;
}

/* Calls row(problem, r) for every row, spread over threads by rows; the
 * calling thread polls interrupt as it goes, and once a stop is asked every
 * thread skips the rows it has left. */
static int for_each_row(const void *problem, void (*row)(const void *, int64_t),
                        int64_t n_rows, int64_t n_cols, int n_threads,
                        const ce_interrupt *interrupt)
{
    if (n_rows < 0 || n_cols < 0) return CE_ERR_ARGS;
    const int nt = ce_threads_for(n_rows * n_cols, n_rows, n_threads);
    ce_stopper stopper;
    ce_stopper_init(&stopper, interrupt);
    (void)nt;
#ifdef _OPENMP
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int caller = omp_get_thread_num() == 0;
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < n_rows; ++r) {
            if (ce_stopper_stopped(&stopper)) continue;
            row(problem, r);
            if (caller) ce_stopper_tick(&stopper, n_cols);
        }
    }
#else
    for (int64_t r = 0; r < n_rows && !ce_stopper_stopped(&stopper); ++r) {
        row(problem, r);
        ce_stopper_tick(&stopper, n_cols);
    }
#endif
    return ce_stopper_stopped(&stopper) ? CE_INTERRUPTED : CE_OK;
}

static void dist_row_any(const void *pr, int64_t r) { dist_row((const ce_dist_problem *)pr, r); }

int ce_dist_run(const ce_dist_problem *pr, int n_threads)
{
    return for_each_row(pr, dist_row_any, pr->n_rows, pr->n_cols, n_threads, &pr->interrupt);
}

/* ---- binary cross-entropy ---------------------------------------------- */

/* log(1 + exp(-x)), stably for any x. */
static inline double softplus_neg(double x)
{
    return log1p(exp(-fabs(x))) + (x < 0.0 ? -x : 0.0);
}

/* log(1 + exp(x)) = softplus_neg(-x). */
static inline double softplus(double x) { return softplus_neg(-x); }

/* 1 / (1 + exp(x)) = sigmoid(-x), stably. */
static inline double sigmoid_neg(double x)
{
    if (x >= 0.0) {
        const double e = exp(-x);
        return e / (1.0 + e);
    }
    return 1.0 / (1.0 + exp(x));
}

static inline double strided_value(const ce_strided *s, int64_t r, int64_t j, ce_dtype dtype)
{
    if (s->data == NULL) return 1.0;
    return load_elem(s->data, r * s->row_stride + j * s->col_stride, dtype);
}

static void bce_row(const ce_bce_problem *pr, int64_t r)
{
    const size_t es = pr->dtype == CE_FLOAT32 ? 4 : 8;
    const char *x = (const char *)pr->x + r * pr->x_stride * (int64_t)es;
    const char *y = (const char *)pr->y + r * pr->y_stride * (int64_t)es;
    char *elem = pr->elem_out ? (char *)pr->elem_out + r * pr->elem_out_stride * (int64_t)es : NULL;
    char *grad = pr->grad ? (char *)pr->grad + r * pr->grad_stride * (int64_t)es : NULL;
    double row_sum = 0.0;
    for (int64_t j = 0; j < pr->n_cols; ++j) {
        const double xj = load_elem(x, j, pr->dtype);
        const double yj = load_elem(y, j, pr->dtype);
        const double w = strided_value(&pr->weight, r, j, pr->dtype);
        double loss;
        if (pr->mode == CE_BCE_LOGITS) {
            const double pw = strided_value(&pr->pos_weight, r, j, pr->dtype);
            /* -[pw y log sigmoid(x) + (1 - y) log sigmoid(-x)] as a sum of
             * two non-negative terms (for y in [0, 1]): nothing cancels, so
             * a loss of 4e-18 at x = -40, y = 0 keeps every digit. The
             * gradient likewise: (1 - y) sigmoid(x) - pw y sigmoid(-x). */
            const double pos = pw * yj, neg = 1.0 - yj;
            loss = w * ((pos != 0.0 ? pos * softplus_neg(xj) : 0.0) +
                        (neg != 0.0 ? neg * softplus(xj) : 0.0));
            if (grad) {
                const double g = pr->grad_output.data
                                     ? ((const double *)pr->grad_output.data)[r * pr->grad_output.row_stride +
                                                                             j * pr->grad_output.col_stride]
                                     : 1.0;
                const double d = w * ((neg != 0.0 ? neg * sigmoid_neg(-xj) : 0.0) -
                                      (pos != 0.0 ? pos * sigmoid_neg(xj) : 0.0));
                store_elem(grad, j, d * pr->grad_scale * g, pr->dtype);
            }
        } else {
            /* PyTorch clamps each log at -100 so that p = 0 or 1 stays finite. */
            const double log_p = fmax(log(xj), -100.0);
            const double log_1mp = fmax(log1p(-xj), -100.0);
            loss = -w * (yj * log_p + (1.0 - yj) * log_1mp);
        }
        if (elem) store_elem(elem, j, loss, pr->dtype);
        row_sum += loss;
    }
    if (pr->row_out) pr->row_out[r] = row_sum;
}

static void bce_row_any(const void *pr, int64_t r) { bce_row((const ce_bce_problem *)pr, r); }

int ce_bce_run(const ce_bce_problem *pr, int n_threads)
{
    return for_each_row(pr, bce_row_any, pr->n_rows, pr->n_cols, n_threads, &pr->interrupt);
}

/* ---- sigmoid ------------------------------------------------------------ */

/* Elements of sigmoid per unit of work: a row for for_each_row. */
#define CE_SIGMOID_BLOCK 65536

typedef struct {
    ce_dtype dtype;
    ce_sigmoid_mode mode;
    const void *x;
    void *out;
    int64_t n;
} ce_sigmoid_problem;

static void sigmoid_block(const void *problem, int64_t b)
{
    const ce_sigmoid_problem *pr = (const ce_sigmoid_problem *)problem;
    const int64_t start = b * CE_SIGMOID_BLOCK;
    const int64_t stop = pr->n - start < CE_SIGMOID_BLOCK ? pr->n : start + CE_SIGMOID_BLOCK;
    for (int64_t i = start; i < stop; ++i) {
        const double v = load_elem(pr->x, i, pr->dtype);
        double result;
        if (pr->mode == CE_SIGMOID)
            result = sigmoid_neg(-v);
        else
            result = -softplus_neg(v);   /* log sigmoid(v) = -log(1 + exp(-v)) */
        store_elem(pr->out, i, result, pr->dtype);
    }
}

int ce_sigmoid_run(ce_dtype dtype, ce_sigmoid_mode mode, const void *x, void *out,
                   int64_t n, int n_threads, const ce_interrupt *interrupt)
{
    if (n < 0) return CE_ERR_ARGS;
    const ce_sigmoid_problem pr = {dtype, mode, x, out, n};
    const int64_t n_blocks = (n + CE_SIGMOID_BLOCK - 1) / CE_SIGMOID_BLOCK;
    return for_each_row(&pr, sigmoid_block, n_blocks, CE_SIGMOID_BLOCK, n_threads, interrupt);
}
