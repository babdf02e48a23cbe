/*
 * The distillation chunk kernels (see ce_distill_leaf.h), written once and
 * expanded per element type and instruction set by ce_leaf_types.h (whose
 * macros ce_leaf_template.h lists). Logits are read in the element type
 * and divided by the temperature in the compute type; padding lanes hold
 * -inf in both operands, whose probabilities are 0 and contribute nothing.
 * Each kernel loads a step's inputs before it stores, so the gradient may
 * overwrite the student's logits.
 */

#include "ce_lanes_template.h"

/* count tempered logits at p, -inf beyond. */
CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(tempered)(const CE_T *p, int64_t count, CE_VT inv_temp)
{
    return CE_NAME(load)(p, count, -(CE_CT)__builtin_inf()) * inv_temp;
}

/* a * b where a != 0, else 0: a probability 0 times an infinite log is 0. */
CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(weighted)(CE_VT a, CE_VT b)
{
    return CE_SELECT(a != (CE_CT)0, a * b, (CE_VT){0});
}

/* ---- sweep 1: maxima, sums of exponentials, the KL cross term ---------- */

CE_TARGET CE_ALWAYS_INLINE void CE_NAME(stats_body)(const CE_T *s, const CE_T *t, int64_t n,
                                                    CE_VT inv_temp, ce_distill_sums *out,
                                                    const int mode)
{
    const CE_VT neg_inf = CE_NAME(splat)(-(CE_CT)__builtin_inf());
    CE_VT ms = neg_inf, mt = neg_inf;
    for (int64_t i = 0; i < n; i += CE_W) {
        const int64_t count = n - i < CE_W ? n - i : CE_W;
        ms = CE_VMAX(CE_NAME(tempered)(s + i, count, inv_temp), ms);
        mt = CE_VMAX(CE_NAME(tempered)(t + i, count, inv_temp), mt);
    }
    out->s_max = CE_NAME(max_lane)(ms);
    out->t_max = CE_NAME(max_lane)(mt);
    /* a chunk of -inf only is measured from 0, so that exp(-inf) = 0 */
    const CE_VT shift_s = CE_NAME(splat)((CE_CT)(out->s_max == -__builtin_inf() ? 0.0 : out->s_max));
    const CE_VT shift_t = CE_NAME(splat)((CE_CT)(out->t_max == -__builtin_inf() ? 0.0 : out->t_max));
    CE_ACC sum_s, sum_t, cross;
    memset(&sum_s, 0, sizeof sum_s);
    memset(&sum_t, 0, sizeof sum_t);
    memset(&cross, 0, sizeof cross);
    /* the chunk is in L1 now: read it again for the exponentials */
    for (int64_t i = 0; i < n; i += CE_W) {
        const int64_t count = n - i < CE_W ? n - i : CE_W;
        const CE_VT sv = CE_NAME(tempered)(s + i, count, inv_temp);
        const CE_VT tv = CE_NAME(tempered)(t + i, count, inv_temp);
        const CE_VT es = CE_VEXP(sv - shift_s), et = CE_VEXP(tv - shift_t);
        CE_ACC_ADD(&sum_s, es);
        CE_ACC_ADD(&sum_t, et);
        if (mode == CE_DISTILL_FORWARD) CE_ACC_ADD(&cross, CE_NAME(weighted)(et, tv - sv));
        if (mode == CE_DISTILL_REVERSE) CE_ACC_ADD(&cross, CE_NAME(weighted)(es, sv - tv));
    }
    out->s_sum = CE_ACC_SUM(sum_s);
    out->t_sum = CE_ACC_SUM(sum_t);
    out->cross = mode == CE_DISTILL_JSD ? 0.0 : CE_ACC_SUM(cross);
}

CE_TARGET static void CE_NAME(stats)(ce_distill_mode mode, const void *s, const void *t,
                                     int64_t n, double inv_temp, ce_distill_sums *out)
{
    const CE_T *sp = (const CE_T *)s, *tp = (const CE_T *)t;
    const CE_VT it = CE_NAME(splat)((CE_CT)inv_temp);
    switch (mode) {
    case CE_DISTILL_FORWARD: CE_NAME(stats_body)(sp, tp, n, it, out, CE_DISTILL_FORWARD); break;
    case CE_DISTILL_REVERSE: CE_NAME(stats_body)(sp, tp, n, it, out, CE_DISTILL_REVERSE); break;
    default: CE_NAME(stats_body)(sp, tp, n, it, out, CE_DISTILL_JSD); break;
    }
}

/* ---- the mixture and the gradient --------------------------------------- */

/* The row's constants, splatted to the compute type. */
typedef struct {
    CE_VT inv_temp, lse_s, lse_t, log_beta, log_1m_beta, offset, k, coef;
} CE_NAME(row_vec);

CE_TARGET CE_ALWAYS_INLINE CE_NAME(row_vec) CE_NAME(splat_row)(const ce_distill_row *row)
{
    CE_NAME(row_vec) v;
    v.inv_temp = CE_NAME(splat)((CE_CT)row->inv_temp);
    v.lse_s = CE_NAME(splat)((CE_CT)row->lse_s);
    v.lse_t = CE_NAME(splat)((CE_CT)row->lse_t);
    v.log_beta = CE_NAME(splat)((CE_CT)row->log_beta);
    v.log_1m_beta = CE_NAME(splat)((CE_CT)row->log_1m_beta);
    v.offset = CE_NAME(splat)((CE_CT)row->offset);
    v.k = CE_NAME(splat)((CE_CT)row->k);
    v.coef = CE_NAME(splat)((CE_CT)row->coef);
    return v;
}

/* log(1 + exp(u)), for any u (+-inf included). */
CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(softplus)(CE_VT u)
{
    const CE_VIT negative = u < (CE_CT)0;
    const CE_VT a = CE_SELECT(negative, -u, u);
    return CE_SELECT(negative, (CE_VT){0}, u) + CE_VLOG1P(CE_VEXP(-a));
}

/* One vector of both rows: the tempered logits' log-probabilities' parts
 * the kernels need. u = log(beta p_t) - log((1 - beta) p_s), from the
 * difference of the logits less one per-row constant (rounded once), so
 * that nearly equal distributions do not cancel; then
 *   log p_s - log m = -log(1 - beta) - softplus(u)
 *   log p_t - log m = -log(beta) - softplus(-u). */
typedef struct {
    CE_VT s, t, ps, pt;
} CE_NAME(pair);

CE_TARGET CE_ALWAYS_INLINE CE_NAME(pair) CE_NAME(load_pair)(const CE_T *s, const CE_T *t,
                                                            int64_t count,
                                                            const CE_NAME(row_vec) *r)
{
    CE_NAME(pair) p;
    p.s = CE_NAME(tempered)(s, count, r->inv_temp);
    p.t = CE_NAME(tempered)(t, count, r->inv_temp);
    p.ps = CE_VEXP(p.s - r->lse_s);
    p.pt = CE_VEXP(p.t - r->lse_t);
    return p;
}

/* ---- the JSD sweep ---------------------------------------------------- */

CE_TARGET static void CE_NAME(jsd)(const void *sv_, const void *tv_, int64_t n,
                                   const ce_distill_row *row, double *kt, double *ks)
{
    const CE_T *s = (const CE_T *)sv_, *t = (const CE_T *)tv_;
    const CE_NAME(row_vec) r = CE_NAME(splat_row)(row);
    CE_ACC acc_t, acc_s;
    memset(&acc_t, 0, sizeof acc_t);
    memset(&acc_s, 0, sizeof acc_s);
    for (int64_t i = 0; i < n; i += CE_W) {
        const int64_t count = n - i < CE_W ? n - i : CE_W;
        const CE_NAME(pair) p = CE_NAME(load_pair)(s + i, t + i, count, &r);
        const CE_VT u = (p.t - p.s) - r.offset;
        CE_ACC_ADD(&acc_t, CE_NAME(weighted)(p.pt, -r.log_beta - CE_NAME(softplus)(-u)));
        CE_ACC_ADD(&acc_s, CE_NAME(weighted)(p.ps, -r.log_1m_beta - CE_NAME(softplus)(u)));
    }
    *kt = CE_ACC_SUM(acc_t);
    *ks = CE_ACC_SUM(acc_s);
}

/* ---- the gradient ------------------------------------------------------ */

CE_TARGET CE_ALWAYS_INLINE void CE_NAME(grad_body)(const CE_T *s, const CE_T *t, CE_T *g,
                                                   int64_t n, const ce_distill_row *row,
                                                   const int mode)
{
    const CE_NAME(row_vec) r = CE_NAME(splat_row)(row);
    for (int64_t i = 0; i < n; i += CE_W) {
        const int64_t count = n - i < CE_W ? n - i : CE_W;
        const CE_NAME(pair) p = CE_NAME(load_pair)(s + i, t + i, count, &r);
        CE_VT d;
        if (mode == CE_DISTILL_FORWARD)
            d = r.coef * (p.ps - p.pt);
        else if (mode == CE_DISTILL_REVERSE)   /* log p_s - log p_t - KL */
            d = CE_NAME(weighted)(p.ps, r.coef * ((p.s - p.t) - r.offset));
        else                                   /* log(p_s / m) - KL(p_s || m) */
            d = CE_NAME(weighted)(p.ps, r.coef * -(CE_NAME(softplus)((p.t - p.s) - r.offset) + r.k));
        CE_NAME(store)(g + i, count, d);
    }
}

CE_TARGET static void CE_NAME(grad)(ce_distill_mode mode, const void *s, const void *t,
                                    void *g, int64_t n, const ce_distill_row *row)
{
    const CE_T *sp = (const CE_T *)s, *tp = (const CE_T *)t;
    CE_T *gp = (CE_T *)g;
    switch (mode) {
    case CE_DISTILL_FORWARD: CE_NAME(grad_body)(sp, tp, gp, n, row, CE_DISTILL_FORWARD); break;
    case CE_DISTILL_REVERSE: CE_NAME(grad_body)(sp, tp, gp, n, row, CE_DISTILL_REVERSE); break;
    default: CE_NAME(grad_body)(sp, tp, gp, n, row, CE_DISTILL_JSD); break;
    }
}

const ce_distill_leaf CE_NAME(distill) = {CE_NAME(stats), CE_NAME(jsd), CE_NAME(grad)};
