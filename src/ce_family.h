/*
 * The rest of the cross-entropy family: entropy, cross-entropy between
 * distributions, KL divergence, binary (sigmoid) cross-entropy, sigmoid and
 * log-sigmoid. Plain C, no Python; the caller has validated its arguments.
 *
 * Every element type of ce_dtype is accepted; arithmetic is in float
 * (double for float64) with the vectorised exp and log of ce_math.h, sums
 * in double. Rows are cut into fixed chunks whose sums are merged in chunk
 * order, so results do not depend on the thread count.
 */
#ifndef CE_FAMILY_H
#define CE_FAMILY_H

#include <stdint.h>

#include "ce_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    CE_DIST_ENTROPY = 0,        /* -sum p log p                       */
    CE_DIST_CROSS_ENTROPY = 1,  /* -sum p log q                       */
    CE_DIST_KL = 2              /* sum p log(p / q)                   */
} ce_dist_mode;

/* Row reductions over distributions (rows of n_cols, last axis contiguous).
 * 0 * log 0 counts as 0; p > 0 with q = 0 gives +inf. row_out gets the
 * value in nats; p_sum / q_sum (may be NULL) get each row's total and
 * p_negative / q_negative (may be NULL) 1 where a row holds an entry < 0. */
typedef struct {
    ce_dtype dtype;
    ce_dist_mode mode;
    int64_t n_rows, n_cols;
    const void *p; int64_t p_stride;
    const void *q; int64_t q_stride;   /* NULL for entropy */
    double *row_out;
    double *p_sum, *q_sum;
    uint8_t *p_negative, *q_negative;
    ce_interrupt interrupt;            /* optional early stop */
} ce_dist_problem;

int ce_dist_run(const ce_dist_problem *problem, int n_threads);

typedef enum {
    CE_BCE_LOGITS = 0,   /* binary_cross_entropy_with_logits          */
    CE_BCE_PROBS = 1     /* binary_cross_entropy on probabilities     */
} ce_bce_mode;

/* A 2-D operand broadcast to (n_rows, n_cols) by strides in elements
 * (either may be 0); data NULL means "all ones". */
typedef struct {
    const void *data;
    int64_t row_stride, col_stride;
} ce_strided;

/* Binary cross-entropy, elementwise over (n_rows, n_cols) with contiguous
 * rows of x (logits or probabilities), target y and outputs.
 *   logits: loss = w * [(1 - y) x + (1 + (pw - 1) y) softplus(-x)]
 *           grad = w * [(1 - y) - (1 + (pw - 1) y) sigmoid(-x)] * scale * g
 *   probs:  loss = -w * [y max(log p, -100) + (1 - y) max(log(1 - p), -100)]
 * y, weight, pos_weight and elem_out are of the compute type (float32, or
 * float64 for float64 x), so they are never rounded below float32.
 * elem_out (may be NULL) gets each loss; row_out (may be NULL) each row's
 * sum in double; grad (may be NULL, may equal x; dtype of x) the gradient,
 * scaled by grad_scale and the broadcast grad_output g. */
typedef struct {
    ce_dtype dtype;
    ce_bce_mode mode;
    int64_t n_rows, n_cols;
    const void *x; int64_t x_stride;
    const void *y; int64_t y_stride;
    ce_strided weight;       /* compute type */
    ce_strided pos_weight;   /* compute type */
    ce_strided grad_output;  /* float64 */
    double grad_scale;
    void *elem_out; int64_t elem_out_stride;
    double *row_out;
    void *grad; int64_t grad_stride;
    ce_interrupt interrupt;  /* optional early stop */
} ce_bce_problem;

int ce_bce_run(const ce_bce_problem *problem, int n_threads);

typedef enum {
    CE_SIGMOID = 0,
    CE_LOG_SIGMOID = 1
} ce_sigmoid_mode;

/* out[i] = sigmoid(x[i]) or log(sigmoid(x[i])) for contiguous arrays of n
 * elements (out may equal x). interrupt may be NULL. */
int ce_sigmoid_run(ce_dtype dtype, ce_sigmoid_mode mode, const void *x, void *out,
                   int64_t n, int n_threads, const ce_interrupt *interrupt);

/* The vectorised natural logarithm of the active path on an array (y may
 * equal x), for measuring its error over every float. */
void ce_log_f32_array(const float *x, float *y, int64_t n);
void ce_log_f64_array(const double *x, double *y, int64_t n);

/* The largest error, in float ulps, of the active path's float32 log over
 * the float bit patterns first..last, against its float64 log (exact to
 * float's precision); inf where a special value (0, inf, NaN, a negative
 * number) comes out wrong. */
double ce_log_f32_max_ulp(uint32_t first, uint32_t last);

#ifdef __cplusplus
}
#endif

#endif /* CE_FAMILY_H */
