/*
 * Private interface between the family's driver (ce_family.c) and its
 * chunk kernels (ce_family_template.h, compiled once per element type and
 * instruction set by ce_family_leaves.c).
 */
#ifndef CE_FAMILY_LEAF_H
#define CE_FAMILY_LEAF_H

#include <stdint.h>

#include "ce_family.h"
#include "ce_internal.h"

/* What a chunk of a distribution row contributes: the sum of its terms
 * (p log p, p log q or p log(p / q): the caller sets the sign), the sums
 * of p and q, and whether either holds a negative entry. */
typedef struct {
    double total, p_sum, q_sum;
    int p_negative, q_negative;
} ce_dist_sums;

/* n elements of one row of binary cross-entropy. x and grad are of the
 * element type; y, w, pw and elem of the compute type (float, or double
 * for float64), so targets and weights are never rounded below float32;
 * g is float64. w, pw, g step by *_step elements (0: broadcast) and may be
 * NULL (all ones); elem and grad may be NULL (not wanted). */
typedef struct {
    ce_bce_mode mode;
    const void *x, *y;
    const void *w, *pw;
    const double *g;
    int64_t w_step, pw_step, g_step;
    double scale;            /* gradient factor of the reduction */
    void *elem, *grad;
} ce_bce_chunk;

/* The family's chunk kernels of one element type on one instruction set. */
typedef struct {
    void (*dist)(ce_dist_mode mode, const void *p, const void *q, int64_t n, ce_dist_sums *out);
    /* Returns the chunk's summed loss (in double). */
    double (*bce)(const ce_bce_chunk *chunk, int64_t n);
    void (*sigmoid)(ce_sigmoid_mode mode, const void *x, void *out, int64_t n);
    /* log on an array, for measuring its accuracy (float32/float64 only). */
    void (*log_array)(const void *x, void *y, int64_t n);
} ce_family_leaf;

#define CE_DECLARE_FAMILY(isa) CE_DECLARE_KERNELS(ce_family_leaf, ce_family, isa)
CE_FOR_EACH_ISA(CE_DECLARE_FAMILY)

#endif /* CE_FAMILY_LEAF_H */
