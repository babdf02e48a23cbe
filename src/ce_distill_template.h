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

/* The largest tempered logits of s[0:n] and t[0:n], per lane; brings the
 * next chunk of both into cache meanwhile, a 64-byte line at a time (the
 * rows' next chunk, or the next rows' first), so that memory and
 * arithmetic overlap. */
CE_TARGET CE_ALWAYS_INLINE void CE_NAME(chunk_maxima)(const CE_T *s, const CE_T *t, int64_t n,
                                                      CE_VT inv_temp, CE_VT *ms, CE_VT *mt)
{
    const CE_VT neg_inf = CE_NAME(splat)(-(CE_CT)__builtin_inf());
    /* two running maxima per operand hide the compare-select latency */
    CE_VT s0 = neg_inf, s1 = neg_inf, t0 = neg_inf, t1 = neg_inf;
    int64_t i = 0;
    for (; i + 2 * CE_W <= n; i += 2 * CE_W) {
        for (size_t b = 0; b < 2 * CE_W * sizeof(CE_T); b += 64) {
            __builtin_prefetch((const char *)(s + i + CE_PREFETCH_AHEAD) + b, 0, 3);
            __builtin_prefetch((const char *)(t + i + CE_PREFETCH_AHEAD) + b, 0, 3);
        }
        s0 = CE_VMAX(CE_NAME(tempered)(s + i, CE_W, inv_temp), s0);
        s1 = CE_VMAX(CE_NAME(tempered)(s + i + CE_W, CE_W, inv_temp), s1);
        t0 = CE_VMAX(CE_NAME(tempered)(t + i, CE_W, inv_temp), t0);
        t1 = CE_VMAX(CE_NAME(tempered)(t + i + CE_W, CE_W, inv_temp), t1);
    }
    for (; i < n; i += CE_W) {
        const int64_t count = n - i < CE_W ? n - i : CE_W;
        s0 = CE_VMAX(CE_NAME(tempered)(s + i, count, inv_temp), s0);
        t0 = CE_VMAX(CE_NAME(tempered)(t + i, count, inv_temp), t0);
    }
    *ms = CE_VMAX(s0, s1);
    *mt = CE_VMAX(t0, t1);
}

/* One vector of sweep 1: the exponentials of both and the cross term. */
typedef struct {
    CE_VT es, et, cross;
} CE_NAME(stats_terms);

CE_TARGET CE_ALWAYS_INLINE CE_NAME(stats_terms) CE_NAME(stats_step)(
    const CE_T *s, const CE_T *t, int64_t count, CE_VT inv_temp, CE_VT shift_s, CE_VT shift_t,
    const int mode)
{
    CE_NAME(stats_terms) r;
    const CE_VT sv = CE_NAME(tempered)(s, count, inv_temp);
    const CE_VT tv = CE_NAME(tempered)(t, count, inv_temp);
    r.es = CE_VEXP(sv - shift_s);
    r.et = CE_VEXP(tv - shift_t);
    if (mode == CE_DISTILL_FORWARD) r.cross = CE_NAME(weighted)(r.et, tv - sv);
    else if (mode == CE_DISTILL_REVERSE) r.cross = CE_NAME(weighted)(r.es, sv - tv);
    else r.cross = (CE_VT){0};
    return r;
}

CE_TARGET CE_ALWAYS_INLINE void CE_NAME(stats_body)(const CE_T *s, const CE_T *t, int64_t n,
                                                    CE_VT inv_temp, ce_distill_sums *out,
                                                    const int mode)
{
    CE_VT ms, mt;
    CE_NAME(chunk_maxima)(s, t, n, inv_temp, &ms, &mt);
    out->s_max = CE_NAME(max_lane)(ms);
    out->t_max = CE_NAME(max_lane)(mt);
    /* a chunk of -inf only is measured from 0, so that exp(-inf) = 0 */
    const CE_VT shift_s = CE_NAME(splat)((CE_CT)(out->s_max == -__builtin_inf() ? 0.0 : out->s_max));
    const CE_VT shift_t = CE_NAME(splat)((CE_CT)(out->t_max == -__builtin_inf() ? 0.0 : out->t_max));
    CE_ACC sum_s, sum_t, cross;
    memset(&sum_s, 0, sizeof sum_s);
    memset(&sum_t, 0, sizeof sum_t);
    memset(&cross, 0, sizeof cross);
    /* the chunk is in L1 now: read it again for the exponentials. Four
     * vectors' terms are added in the compute type (two roundings, at the
     * level of exp's own error), then widened once. */
    int64_t i = 0;
    for (; i + 4 * CE_W <= n; i += 4 * CE_W) {
        CE_NAME(stats_terms) a[4];
        for (int k = 0; k < 4; ++k)
            a[k] = CE_NAME(stats_step)(s + i + k * CE_W, t + i + k * CE_W, CE_W, inv_temp, shift_s,
                                       shift_t, mode);
        CE_ACC_ADD(&sum_s, (a[0].es + a[1].es) + (a[2].es + a[3].es));
        CE_ACC_ADD(&sum_t, (a[0].et + a[1].et) + (a[2].et + a[3].et));
        if (mode != CE_DISTILL_JSD)
            CE_ACC_ADD(&cross, (a[0].cross + a[1].cross) + (a[2].cross + a[3].cross));
    }
    for (; i < n; i += CE_W) {
        const int64_t count = n - i < CE_W ? n - i : CE_W;
        const CE_NAME(stats_terms) a = CE_NAME(stats_step)(s + i, t + i, count, inv_temp, shift_s,
                                                           shift_t, mode);
        CE_ACC_ADD(&sum_s, a.es);
        CE_ACC_ADD(&sum_t, a.et);
        if (mode != CE_DISTILL_JSD) CE_ACC_ADD(&cross, a.cross);
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
    CE_VT inv_temp, lse_s, lse_t, scale_s, scale_t, log_beta, log_1m_beta, offset, k, coef;
} CE_NAME(row_vec);

CE_TARGET CE_ALWAYS_INLINE CE_NAME(row_vec) CE_NAME(splat_row)(const ce_distill_row *row)
{
    CE_NAME(row_vec) v;
    v.inv_temp = CE_NAME(splat)((CE_CT)row->inv_temp);
    v.lse_s = CE_NAME(splat)((CE_CT)row->lse_s);
    v.lse_t = CE_NAME(splat)((CE_CT)row->lse_t);
    v.scale_s = CE_NAME(splat)((CE_CT)row->scale_s);
    v.scale_t = CE_NAME(splat)((CE_CT)row->scale_t);
    v.log_beta = CE_NAME(splat)((CE_CT)row->log_beta);
    v.log_1m_beta = CE_NAME(splat)((CE_CT)row->log_1m_beta);
    v.offset = CE_NAME(splat)((CE_CT)row->offset);
    v.k = CE_NAME(splat)((CE_CT)row->k);
    v.coef = CE_NAME(splat)((CE_CT)row->coef);
    return v;
}

/* log(1 + exp(-|u|)): softplus(u) = max(u, 0) + it and softplus(-u) =
 * max(-u, 0) + it, both from one exponential and one logarithm. */
CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(softplus_rest)(CE_VT u)
{
    return CE_VLOG1P(CE_VEXP(-CE_SELECT(u < (CE_CT)0, -u, u)));
}

CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(positive_part)(CE_VT u)
{
    return CE_SELECT(u > (CE_CT)0, u, (CE_VT){0});
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
    p.ps = CE_VEXP(p.s - r->lse_s) * r->scale_s;
    p.pt = CE_VEXP(p.t - r->lse_t) * r->scale_t;
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
        const CE_VT rest = CE_NAME(softplus_rest)(u);
        const CE_VT sp_minus = CE_NAME(positive_part)(-u) + rest;   /* softplus(-u) */
        const CE_VT sp_plus = CE_NAME(positive_part)(u) + rest;     /* softplus(u)  */
        CE_ACC_ADD(&acc_t, CE_NAME(weighted)(p.pt, -r.log_beta - sp_minus));
        CE_ACC_ADD(&acc_s, CE_NAME(weighted)(p.ps, -r.log_1m_beta - sp_plus));
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
        if (mode == CE_DISTILL_FORWARD) {
            d = r.coef * (p.ps - p.pt);
        } else if (mode == CE_DISTILL_REVERSE) {
            /* log p_s - log p_t - KL */
            d = CE_NAME(weighted)(p.ps, r.coef * ((p.s - p.t) - r.offset));
        } else {
            /* log(p_s / m) - KL(p_s || m) = -(softplus(u) + k) */
            const CE_VT u = (p.t - p.s) - r.offset;
            const CE_VT sp_plus = CE_NAME(positive_part)(u) + CE_NAME(softplus_rest)(u);
            d = CE_NAME(weighted)(p.ps, r.coef * -(sp_plus + r.k));
        }
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
