/*
 * The rest of the cross-entropy family: entropy, cross-entropy between
 * distributions, KL divergence, binary (sigmoid) cross-entropy, sigmoid and
 * log-sigmoid. Plain C, no Python; the caller has validated its arguments.
 *
 * These are elementwise or short per-row reductions of log/exp/log1p and
 * use libm in double precision for every element (accuracy first; the
 * work is spread over OpenMP threads). Per-row sums are taken in a fixed
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
 * elem_out (may be NULL) gets each loss in the dtype of x; row_out (may be
 * NULL) each row's sum in double; grad (may be NULL, may equal x) the
 * gradient, scaled by grad_scale and the broadcast grad_output g. */
typedef struct {
    ce_dtype dtype;
    ce_bce_mode mode;
    int64_t n_rows, n_cols;
    const void *x; int64_t x_stride;
    const void *y; int64_t y_stride;
    ce_strided weight;       /* same dtype as x */
    ce_strided pos_weight;   /* same dtype as x */
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

#ifdef __cplusplus
}
#endif

#endif /* CE_FAMILY_H */
