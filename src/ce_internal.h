/*
 * Private interface between the row driver (ce_kernels.c) and the chunk
 * kernels (ce_leaf_template.h, compiled once per element type and
 * instruction set).
 */
#ifndef CE_INTERNAL_H
#define CE_INTERNAL_H

#include <stdint.h>
#include "ce_kernels.h"

/* Run-time instruction-set dispatch needs GCC or clang on x86-64. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define CE_HAVE_X86_DISPATCH 1
#endif

/* Fixed number of vocabulary elements per chunk. Every row is reduced chunk
 * by chunk and the chunk results are merged in chunk order, whatever the
 * thread count: that is what makes results independent of it. 2048 floats
 * (8 KiB) keep a chunk and its output in L1 between the two sweeps. */
#define CE_CHUNK 2048

/* Software prefetch distance of the first sweep, in elements: one chunk
 * ahead, so the next chunk arrives while this one is being computed. */
#define CE_PREFETCH_AHEAD CE_CHUNK

/* Below this many elements in total a call stays on one thread: waking a
 * second thread costs more than the work. */
#define CE_PARALLEL_THRESHOLD 32768

/* The weighted linear term of a row: a[j] = w[j] * (y_mul * y[j] + y_add),
 * where a missing w or y counts as 1; w and y have the element type of x.
 * The chunk kernels accumulate sum_j a[j] * (shift - x[j]) (skipping
 * a[j] == 0) and sum_j a[j]: measured from the chunk's maximum, every term
 * is non-negative and nothing cancels. */
typedef struct {
    int active;          /* 0: do not compute the linear sums          */
    const void *w;       /* weights of this chunk's classes, or NULL   */
    const void *y;       /* soft targets of this chunk, or NULL        */
    double y_mul;
    double y_add;
} ce_lin;

/* What one chunk contributes to its row. */
typedef struct {
    double max;      /* largest element (-inf if every element is -inf/NaN) */
    double shift;    /* max, or 0 when max is -inf                         */
    double sumexp;   /* sum_j exp(x[j] - shift)                            */
    double lin;      /* sum_j a[j] * (shift - x[j]), a[j] == 0 terms skipped */
    double asum;     /* sum_j a[j]                                         */
} ce_chunk_stats;

/* The chunk kernels of one element type on one instruction set. */
typedef struct {
    /* First sweep: stats of x[0:n]; stores exp(x - max) into e when e is
     * not NULL (e may equal x). */
    void (*stats)(const void *x, int64_t n, void *e, const ce_lin *lin,
                  ce_chunk_stats *st);
    /* Second sweep for gradients and softmax: out = out * f - c * a. */
    void (*rescale)(void *out, int64_t n, double f, double c, const ce_lin *lin);
    /* Second sweep for log-softmax: out = (x - max) - log_sum (out may equal x). */
    void (*shift)(const void *x, int64_t n, void *out, double max, double log_sum);
    /* exp on an array, for measuring its accuracy. */
    void (*exp_array)(const void *x, void *y, int64_t n);
} ce_leaf;

#define CE_DECLARE_LEAF(name) extern const ce_leaf name;
CE_DECLARE_LEAF(ce_leaf_f32_baseline)
CE_DECLARE_LEAF(ce_leaf_f64_baseline)
#if defined(CE_HAVE_X86_DISPATCH)
CE_DECLARE_LEAF(ce_leaf_f32_avx2)
CE_DECLARE_LEAF(ce_leaf_f64_avx2)
CE_DECLARE_LEAF(ce_leaf_f32_avx512)
CE_DECLARE_LEAF(ce_leaf_f64_avx512)
#endif

#endif /* CE_INTERNAL_H */
