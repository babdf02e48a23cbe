/*
 * The distillation driver (see ce_distill.h). Each row is done by one
 * thread, chunk by chunk (CE_CHUNK elements of both operands):
 *   1. per chunk: maxima and sums of exponentials of the tempered student
 *      and teacher logits and, for a KL, its cross term; merged in chunk
 *      order into the row's log-sum-exps and, for a KL, the loss;
 *   2. JSD only: per chunk, the two KL terms against the mixture, which
 *      need the log-sum-exps;
 *   3. with a gradient: per chunk, the gradient from the logits.
 * A row's later sweeps read what the earlier ones left in cache. Threads:
 * ce_threads_for, rows in a fixed static split; early stop: the stopper of
 * ce_internal.h.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "ce_distill_leaf.h"

typedef struct {
    const ce_distill_problem *pr;
    const ce_distill_leaf *leaf;
    size_t esize;
    int64_t n_chunks;
} distill_job;

static const char *element(const void *base, int64_t row, int64_t stride, int64_t col,
                           size_t esize)
{
    return (const char *)base + (row * stride + col) * (int64_t)esize;
}

static int64_t chunk_length(const distill_job *jb, int64_t c)
{
    const int64_t left = jb->pr->n_cols - c * CE_CHUNK;
    return left < CE_CHUNK ? left : CE_CHUNK;
}

/* Merges one operand's chunk maxima and sums of exponentials in chunk
 * order into its log-sum-exp; the cross terms measured from the same
 * shifts are merged into *cross. */
static double merge_lse(const ce_distill_sums *st, int64_t n, int student, double *cross)
{
    double m = -INFINITY;
    for (int64_t c = 0; c < n; ++c) {
        const double cm = student ? st[c].s_max : st[c].t_max;
        m = cm > m ? cm : m;
    }
    double sum = 0.0, x = 0.0;
    for (int64_t c = 0; c < n; ++c) {
        const double cm = student ? st[c].s_max : st[c].t_max;
        if (cm == -INFINITY) continue;  /* a chunk of -inf only adds nothing */
        const double w = exp(cm - m);
        sum += (student ? st[c].s_sum : st[c].t_sum) * w;
        x += st[c].cross * w;
    }
    *cross = x / sum;
    return m + log(sum);
}

/* A log-sum-exp as the kernels' compute type holds it, and the factor
 * exp(held - lse) that makes up for the rounding (ce_distill_row). */
static void held_lse(const distill_job *jb, double lse, double *held, double *scale)
{
    *held = jb->pr->dtype == CE_FLOAT64 ? lse : (double)(float)lse;
    *scale = isfinite(lse) ? exp(*held - lse) : 1.0;
}

/* Row r: its loss (T^2 scaled) into row_out and its gradient into grad. */
static void distill_row(const distill_job *jb, int64_t r, ce_distill_sums *st)
{
    const ce_distill_problem *pr = jb->pr;
    const size_t es = jb->esize;
    char *g = pr->grad ? (char *)element(pr->grad, r, pr->grad_stride, 0, es) : NULL;
    if (pr->target && pr->target[r] == pr->ignore_index) {
        pr->row_out[r] = 0.0;
        if (g) memset(g, 0, (size_t)pr->n_cols * es);
        return;
    }
    const char *s = element(pr->student, r, pr->student_stride, 0, es);
    const char *t = element(pr->teacher, r, pr->teacher_stride, 0, es);
    const double T = pr->temperature;
    const ce_distill_mode mode = pr->mode;
    ce_distill_row row;
    memset(&row, 0, sizeof row);
    row.inv_temp = 1.0 / T;
    for (int64_t c = 0; c < jb->n_chunks; ++c)
        jb->leaf->stats(mode, s + c * CE_CHUNK * es, t + c * CE_CHUNK * es, chunk_length(jb, c),
                        row.inv_temp, &st[c]);
    double cross_s, cross_t;
    const double lse_s = merge_lse(st, jb->n_chunks, 1, &cross_s);
    const double lse_t = merge_lse(st, jb->n_chunks, 0, &cross_t);
    held_lse(jb, lse_s, &row.lse_s, &row.scale_s);
    held_lse(jb, lse_t, &row.lse_t, &row.scale_t);
    double loss;
    if (!isfinite(lse_s) || !isfinite(lse_t)) {
        /* no distribution: every exponential would be 0 or NaN */
        loss = NAN;
        row.coef = NAN;
    } else if (mode == CE_DISTILL_FORWARD) {
        /* sum p_t (t - s) - lse_t + lse_s */
        loss = cross_t - lse_t + lse_s;
        row.coef = T * pr->grad_scale;
    } else if (mode == CE_DISTILL_REVERSE) {
        loss = cross_s - lse_s + lse_t;
        row.offset = lse_s - lse_t + loss;
        row.coef = T * pr->grad_scale;
    } else {
        row.log_beta = log(pr->beta);
        row.log_1m_beta = log1p(-pr->beta);
        row.offset = lse_t - lse_s - (row.log_beta - row.log_1m_beta);
        double kt = 0.0, ks = 0.0;
        for (int64_t c = 0; c < jb->n_chunks; ++c) {
            double ckt, cks;
            jb->leaf->jsd(s + c * CE_CHUNK * es, t + c * CE_CHUNK * es, chunk_length(jb, c),
                          &row, &ckt, &cks);
            kt += ckt;
            ks += cks;
        }
        loss = pr->beta * kt + (1.0 - pr->beta) * ks;
        row.k = ks + row.log_1m_beta;
        row.coef = (1.0 - pr->beta) * T * pr->grad_scale;
    }
    pr->row_out[r] = T * T * loss;
    if (g == NULL) return;
    for (int64_t c = 0; c < jb->n_chunks; ++c)
        jb->leaf->grad(mode, s + c * CE_CHUNK * es, t + c * CE_CHUNK * es, g + c * CE_CHUNK * es,
                       chunk_length(jb, c), &row);
}

int ce_distill_run(const ce_distill_problem *pr, int n_threads)
{
    if (pr->n_rows < 0 || pr->n_cols < 1 || !(pr->temperature > 0.0)) return CE_ERR_ARGS;
    if (pr->mode == CE_DISTILL_JSD && !(pr->beta > 0.0 && pr->beta < 1.0)) return CE_ERR_ARGS;
    distill_job jb;
    jb.pr = pr;
    jb.leaf = CE_PICK(ce_distill, ce_active_isa(), pr->dtype);
    jb.esize = pr->dtype == CE_FLOAT64 ? 8 : pr->dtype == CE_FLOAT32 ? 4 : 2;
    jb.n_chunks = (pr->n_cols + CE_CHUNK - 1) / CE_CHUNK;
    const int nt = ce_threads_for(pr->n_rows * pr->n_cols, pr->n_rows, n_threads);
    ce_distill_sums *scratch =
        (ce_distill_sums *)malloc((size_t)nt * (size_t)jb.n_chunks * sizeof *scratch);
    if (scratch == NULL) return CE_ERR_NOMEM;
    ce_stopper stopper;
    ce_stopper_init(&stopper, &pr->interrupt);
#ifdef _OPENMP
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int caller = omp_get_thread_num() == 0;
        ce_distill_sums *st = scratch + (size_t)omp_get_thread_num() * (size_t)jb.n_chunks;
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < pr->n_rows; ++r) {
            if (ce_stopper_stopped(&stopper)) continue;
            distill_row(&jb, r, st);
            if (caller) ce_stopper_tick(&stopper, pr->n_cols);
        }
    }
#else
    for (int64_t r = 0; r < pr->n_rows && !ce_stopper_stopped(&stopper); ++r) {
        distill_row(&jb, r, scratch);
        ce_stopper_tick(&stopper, pr->n_cols);
    }
#endif
    free(scratch);
    return ce_stopper_stopped(&stopper) ? CE_INTERRUPTED : CE_OK;
}
