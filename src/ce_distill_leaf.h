/*
 * Private interface between the distillation driver (ce_distill.c) and its
 * chunk kernels (ce_distill_template.h, compiled once per element type and
 * instruction set by ce_distill_leaves.c).
 */
#ifndef CE_DISTILL_LEAF_H
#define CE_DISTILL_LEAF_H

#include <stdint.h>

#include "ce_distill.h"
#include "ce_internal.h"

/* What sweep 1 learns of a chunk, s and t being the tempered logits:
 * their maxima, their sums of exponentials measured from them (shift: the
 * maximum, 0 when it is -inf), and the cross term of the KL direction
 *   forward: sum_j exp(t_j - shift_t) (t_j - s_j)
 *   reverse: sum_j exp(s_j - shift_s) (s_j - t_j)
 * with 0 where the exponential is 0. */
typedef struct {
    double s_max, s_sum;
    double t_max, t_sum;
    double cross;
} ce_distill_sums;

/* What sweeps 2 and 3 need of their row. */
typedef struct {
    double inv_temp;
    /* The log-sum-exps of the tempered logits as the compute type holds
     * them, and exp(held - exact): p = exp(x - held) * scale, so that the
     * rounding of a log-sum-exp to float does not reach the probabilities
     * (x - held is as exact as x - max). */
    double lse_s, lse_t;
    double scale_s, scale_t;
    double log_beta, log_1m_beta;  /* JSD */
    /* subtracted from a difference of tempered logits:
     *   reverse: from s - t, lse_s - lse_t + KL (the gradient's log ratio
     *            less the row's KL);
     *   JSD:     from t - s, lse_t - lse_s - log(beta / (1 - beta)) (u of
     *            ce_distill_template.h) */
    double offset;
    double k;     /* JSD: KL(p_s || m) + log(1 - beta) */
    double coef;  /* factor of the gradient */
} ce_distill_row;

/* The distillation chunk kernels of one element type on one instruction
 * set, over n elements of a student row s and teacher row t. */
typedef struct {
    /* Sweep 1: the sums of ce_distill_sums (mode forward or reverse
     * decides the cross term; JSD asks for none). */
    void (*stats)(ce_distill_mode mode, const void *s, const void *t, int64_t n,
                  double inv_temp, ce_distill_sums *out);
    /* JSD sweep: sum_j p_t log(p_t / m) and sum_j p_s log(p_s / m). */
    void (*jsd)(const void *s, const void *t, int64_t n, const ce_distill_row *row,
                double *kt, double *ks);
    /* The gradient into grad (may equal s):
     *   forward: coef (p_s - p_t)
     *   reverse: coef p_s (log p_s - log p_t - KL)
     *   jsd:     coef p_s (log(p_s / m) - KL(p_s || m)) */
    void (*grad)(ce_distill_mode mode, const void *s, const void *t, void *grad, int64_t n,
                 const ce_distill_row *row);
} ce_distill_leaf;

#define CE_DECLARE_DISTILL(isa) CE_DECLARE_KERNELS(ce_distill_leaf, ce_distill, isa)
CE_FOR_EACH_ISA(CE_DECLARE_DISTILL)

#endif /* CE_DISTILL_LEAF_H */
