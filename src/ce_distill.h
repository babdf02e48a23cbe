/*
 * Distillation losses between a student's and a teacher's logits: the
 * Kullback-Leibler divergence in either direction and the generalised
 * Jensen-Shannon divergence, at a temperature, with the gradient with
 * respect to the student's logits from the same pass. Plain C, no Python;
 * the caller has validated its arguments.
 *
 * With s = student / T and t = teacher / T, p_s = softmax(s) and
 * p_t = softmax(t), each row's loss is T^2 times
 *   forward: KL(p_t || p_s)      reverse: KL(p_s || p_t)
 *   jsd:     beta KL(p_t || m) + (1 - beta) KL(p_s || m),
 *            m = beta p_t + (1 - beta) p_s, 0 < beta < 1.
 * Student and teacher share one element type of ce_dtype; arithmetic is in
 * float (double for float64) with the vectorised exp and log of ce_math.h,
 * sums in double. Rows are cut into fixed chunks whose sums are merged in
 * chunk order and every row is done by one thread, so results do not
 * depend on the thread count.
 */
#ifndef CE_DISTILL_H
#define CE_DISTILL_H

#include <stdint.h>

#include "ce_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    CE_DISTILL_FORWARD = 0,   /* KL(teacher || student)                  */
    CE_DISTILL_REVERSE = 1,   /* KL(student || teacher)                  */
    CE_DISTILL_JSD = 2        /* generalised Jensen-Shannon, 0 < beta < 1 */
} ce_distill_mode;

/* Rows of n_cols logits (last axis contiguous; row strides in elements).
 * Rows whose target (if target is not NULL) equals ignore_index get loss 0
 * and a zero gradient. row_out gets each row's loss (T^2 scaled); grad (may
 * be NULL, may equal student; dtype of the logits) d loss / d student
 * times grad_scale. A row whose student or teacher has no distribution
 * (every entry -inf, or an entry +inf or NaN) gives NaN. */
typedef struct {
    ce_dtype dtype;
    ce_distill_mode mode;
    int64_t n_rows, n_cols;
    const void *student; int64_t student_stride;
    const void *teacher; int64_t teacher_stride;
    double temperature;      /* > 0 */
    double beta;             /* JSD mixture weight of the teacher */
    const int64_t *target;   /* one per row, or NULL */
    int64_t ignore_index;
    double *row_out;
    void *grad; int64_t grad_stride;
    double grad_scale;
    ce_interrupt interrupt;  /* optional early stop */
} ce_distill_problem;

int ce_distill_run(const ce_distill_problem *problem, int n_threads);

#ifdef __cplusplus
}
#endif

#endif /* CE_DISTILL_H */
