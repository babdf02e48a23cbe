/*
 * The family's chunk kernels (entropy, cross-entropy between
 * distributions, KL divergence, binary cross-entropy, sigmoid and
 * log-sigmoid), written once and expanded per element type and instruction
 * set by ce_leaf_types.h (the macros are described there and in
 * ce_leaf_template.h; CE_VLOG / CE_VLOG1P are the compute type's
 * logarithms, CE_VLOG1P_CORE log1p for the arguments exp(-|x|) in [0, 1],
 * and CE_VLOAD_CT / CE_VSTORE_CT move whole vectors of the compute type).
 *
 * Everything is computed in the compute type's lanes (float for float32,
 * float16 and bfloat16; double for float64) with the vectorised exp and
 * log of ce_math.h; sums are widened to double vector by vector and folded
 * in a fixed order. A chunk's sums depend only on the chunk, so results
 * do not depend on the thread count. Each kernel loads a step's inputs
 * before it stores, so an output may be its input.
 */

/* ---- loads and stores of count <= CE_W elements ------------------------ */

#include "ce_lanes_template.h"

/* count values of the compute type at p, step elements apart (0:
 * broadcast), or double values when p_double is given instead; fill past
 * count, and everywhere when both are NULL. */
CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(fload_aux)(const CE_CT *p, const double *p_double,
                                                    int64_t step, int64_t count, CE_CT fill)
{
    if (p == NULL && p_double == NULL) return CE_NAME(splat)(fill);
    if (p != NULL && step == 1 && count == CE_W) return CE_VLOAD_CT(p);
    if (step == 0 && count == CE_W) return CE_NAME(splat)(p ? p[0] : (CE_CT)p_double[0]);
    CE_CT buf[CE_W];
    for (int64_t l = 0; l < CE_W; ++l) {
        if (l >= count) buf[l] = fill;
        else buf[l] = p ? p[l * step] : (CE_CT)p_double[l * step];
    }
    return CE_VLOAD_CT(buf);
}

CE_TARGET CE_ALWAYS_INLINE void CE_NAME(fstore_ct)(CE_CT *p, int64_t count, CE_VT v)
{
    CE_CT buf[CE_W];
    CE_VSTORE_CT(buf, v);
    memcpy(p, buf, (size_t)count * sizeof(CE_CT));
}

/* Whether any lane of the mask is set. */
CE_TARGET CE_ALWAYS_INLINE int CE_NAME(fany)(CE_VIT mask)
{
    return CE_VANY_ABOVE(CE_SELECT(mask, CE_NAME(splat)(1), (CE_VT){0}), (CE_VT){0});
}

/* ---- distributions ------------------------------------------------------ */

/* One vector's term: p log p (entropy), p log q (cross-entropy) or
 * p log(p / q) (KL), with 0 * log 0 = 0. KL takes the log of the ratio, so
 * nearly equal p and q do not cancel; where the ratio overflows or
 * underflows (a subnormal q or p) the logarithms are subtracted instead. */
CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(dist_term)(CE_VT p, CE_VT q, const int mode)
{
    const CE_VT zero = (CE_VT){0};
    if (mode == CE_DIST_ENTROPY) return CE_SELECT(p == (CE_CT)0, zero, p * CE_VLOG(p));
    if (mode == CE_DIST_CROSS_ENTROPY) return CE_SELECT(p == (CE_CT)0, zero, p * CE_VLOG(q));
    const CE_VT ratio = p / q;
    CE_VT t = p * CE_VLOG(ratio);
    const CE_VIT lost = (p > (CE_CT)0) & (q > (CE_CT)0) &
                        ((ratio == (CE_CT)0) | (ratio == (CE_CT)__builtin_inf()));
    if (CE_NAME(fany)(lost)) t = CE_SELECT(lost, p * (CE_VLOG(p) - CE_VLOG(q)), t);
    /* 0 * log(0 / q) = 0 for q >= 0 (a negative q stays NaN) */
    return CE_SELECT((p == (CE_CT)0) & (q >= (CE_CT)0), zero, t);
}

typedef struct {
    CE_ACC total, p_sum, q_sum;
    CE_VT p_min, q_min;
} CE_NAME(dist_acc);

/* Adds the terms and inputs of one or two vectors (p1, q1 zero when
 * alone): a pair is added in the compute type, one rounding at the level
 * of the terms' own, and widened once, which halves the widening work. */
CE_TARGET CE_ALWAYS_INLINE void CE_NAME(dist_step)(CE_NAME(dist_acc) *a, CE_VT p0, CE_VT q0,
                                                   CE_VT p1, CE_VT q1, const int mode)
{
    CE_ACC_ADD(&a->total, CE_NAME(dist_term)(p0, q0, mode) + CE_NAME(dist_term)(p1, q1, mode));
    CE_ACC_ADD(&a->p_sum, p0 + p1);
    /* the smallest input, NaN passed over as by `< 0` */
    a->p_min = CE_SELECT(p0 < a->p_min, p0, a->p_min);
    a->p_min = CE_SELECT(p1 < a->p_min, p1, a->p_min);
    if (mode != CE_DIST_ENTROPY) {
        CE_ACC_ADD(&a->q_sum, q0 + q1);
        a->q_min = CE_SELECT(q0 < a->q_min, q0, a->q_min);
        a->q_min = CE_SELECT(q1 < a->q_min, q1, a->q_min);
    }
}

CE_TARGET CE_ALWAYS_INLINE void CE_NAME(dist_body)(const CE_T *p, const CE_T *q, int64_t n,
                                                   ce_dist_sums *out, const int mode)
{
    CE_NAME(dist_acc) a;
    memset(&a, 0, sizeof a);
    const CE_VT zero = (CE_VT){0}, one = CE_NAME(splat)(1);
    int64_t i = 0;
    for (; i + 2 * CE_W <= n; i += 2 * CE_W) {
        const CE_VT p0 = CE_NAME(load)(p + i, CE_W, 0), p1 = CE_NAME(load)(p + i + CE_W, CE_W, 0);
        const CE_VT q0 = q ? CE_NAME(load)(q + i, CE_W, 0) : one;
        const CE_VT q1 = q ? CE_NAME(load)(q + i + CE_W, CE_W, 0) : one;
        CE_NAME(dist_step)(&a, p0, q0, p1, q1, mode);
    }
    for (; i < n; i += CE_W) {
        /* padding lanes: p = q = 0 contribute nothing */
        const int64_t count = n - i < CE_W ? n - i : CE_W;
        const CE_VT pv = CE_NAME(load)(p + i, count, 0);
        const CE_VT qv = q ? CE_NAME(load)(q + i, count, 0) : one;
        CE_NAME(dist_step)(&a, pv, qv, zero, zero, mode);
    }
    out->total = CE_ACC_SUM(a.total);
    out->p_sum = CE_ACC_SUM(a.p_sum);
    out->q_sum = mode == CE_DIST_ENTROPY ? 0.0 : CE_ACC_SUM(a.q_sum);
    out->p_negative = CE_NAME(fany)(a.p_min < (CE_CT)0);
    out->q_negative = mode == CE_DIST_ENTROPY ? 0 : CE_NAME(fany)(a.q_min < (CE_CT)0);
}

CE_TARGET static void CE_NAME(dist)(ce_dist_mode mode, const void *p, const void *q, int64_t n,
                                    ce_dist_sums *out)
{
    const CE_T *pp = (const CE_T *)p, *qq = (const CE_T *)q;
    switch (mode) {
    case CE_DIST_ENTROPY: CE_NAME(dist_body)(pp, NULL, n, out, CE_DIST_ENTROPY); break;
    case CE_DIST_CROSS_ENTROPY: CE_NAME(dist_body)(pp, qq, n, out, CE_DIST_CROSS_ENTROPY); break;
    default: CE_NAME(dist_body)(pp, qq, n, out, CE_DIST_KL); break;
    }
}

/* ---- binary cross-entropy ---------------------------------------------- */

/* exp(-a) for a >= 0 (or NaN), results below the smallest normal number
 * included (gradual underflow, as libm): there the argument is raised by
 * 20 (40 for double), which is exact in that range, and the result scaled
 * back by exp(-20) (exp(-40)). */
CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(exp_neg)(CE_VT a)
{
    const int single = sizeof(CE_CT) == 4;
    const CE_CT lo = single ? (CE_CT)-87.0 : (CE_CT)-708.0;
    const CE_CT lift = single ? (CE_CT)20 : (CE_CT)40;
    const CE_CT drop = single ? (CE_CT)2.06115362243855783e-09 : (CE_CT)4.24835425529158900e-18;
    const CE_VT t = -a;
    const CE_VT e = CE_VEXP(t);
    const CE_VIT small = t < lo;
    if (!CE_NAME(fany)(small)) return e;
    return CE_SELECT(small, CE_VEXP(t + lift) * drop, e);
}

/* The loss of one vector of logits x and targets y:
 *   pos softplus(-x) + neg softplus(x),  pos = pw y, neg = 1 - y,
 * two non-negative terms for y in [0, 1] (nothing cancels: x = -40, y = 0
 * gives 4.25e-18), each skipped where its factor is 0, from one exp and
 * one log1p: softplus(+-x) = max(+-x, 0) + log1p(exp(-|x|)). */
CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(bce_logits)(CE_VT x, CE_VT y, CE_VT pw)
{
    const CE_VT zero = (CE_VT){0};
    const CE_VIT negative = x < (CE_CT)0;
    const CE_VT l = CE_VLOG1P_CORE(CE_NAME(exp_neg)(CE_SELECT(negative, -x, x)));
    const CE_VT pos = pw * y, neg = CE_NAME(splat)(1) - y;
    const CE_VT sp_plus = CE_SELECT(x > (CE_CT)0, x, zero) + l;    /* softplus(x)  */
    const CE_VT sp_minus = CE_SELECT(negative, -x, zero) + l;      /* softplus(-x) */
    return CE_SELECT(pos != (CE_CT)0, pos * sp_minus, zero) +
           CE_SELECT(neg != (CE_CT)0, neg * sp_plus, zero);
}

/* -[y log p + (1 - y) log(1 - p)], each log clamped at -100 (as PyTorch). */
CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(bce_probs)(CE_VT p, CE_VT y)
{
    const CE_VT floor = CE_NAME(splat)(-100);
    const CE_VT lp = CE_VLOG(p), l1p = CE_VLOG1P(-p);
    const CE_VT a = CE_SELECT(lp > floor, lp, floor), b = CE_SELECT(l1p > floor, l1p, floor);
    return -(y * a + (CE_NAME(splat)(1) - y) * b);
}

CE_TARGET CE_ALWAYS_INLINE double CE_NAME(bce_body)(const ce_bce_chunk *c, int64_t n,
                                                    const int logits, const int want_grad)
{
    /* everything in locals: the stores below could alias *c */
    const CE_T *x = (const CE_T *)c->x;
    const CE_CT *y = (const CE_CT *)c->y, *w = (const CE_CT *)c->w, *pw = (const CE_CT *)c->pw;
    const double *g = c->g;
    const int64_t w_step = c->w_step, pw_step = c->pw_step, g_step = c->g_step;
    CE_CT *elem = (CE_CT *)c->elem;
    CE_T *grad = (CE_T *)c->grad;
    const CE_VT scale = CE_NAME(splat)((CE_CT)c->scale);
    CE_ACC sum;
    memset(&sum, 0, sizeof sum);
    for (int64_t i = 0; i < n; i += CE_W) {
        const int64_t count = n - i < CE_W ? n - i : CE_W;
        const CE_VT xv = CE_NAME(load)(x + i, count, 0);
        const CE_VT yv = CE_NAME(fload_aux)(y + i, NULL, 1, count, 0);
        CE_VT wv = CE_NAME(fload_aux)(w ? w + i * w_step : NULL, NULL, w_step, count, 1);
        if (count < CE_W) wv = CE_SELECT(CE_NAME(lanes_below)(count), wv, (CE_VT){0});
        CE_VT loss, dx = (CE_VT){0};
        if (logits) {
            const CE_VT pwv = CE_NAME(fload_aux)(pw ? pw + i * pw_step : NULL, NULL, pw_step, count, 1);
            loss = wv * CE_NAME(bce_logits)(xv, yv, pwv);
            if (want_grad) dx = CE_BCE_DX(xv, yv, pwv);
        } else {
            loss = wv * CE_NAME(bce_probs)(xv, yv);
        }
        /* padding lanes: w = 0; a loss of 0 * inf there is dropped too */
        if (count < CE_W) loss = CE_SELECT(CE_NAME(lanes_below)(count), loss, (CE_VT){0});
        CE_ACC_ADD(&sum, loss);
        if (elem) CE_NAME(fstore_ct)(elem + i, count, loss);
        if (want_grad) {
            const CE_VT gv = CE_NAME(fload_aux)(NULL, g ? g + i * g_step : NULL, g_step, count, 1);
            CE_NAME(store)(grad + i, count, wv * dx * scale * gv);
        }
    }
    return CE_ACC_SUM(sum);
}

CE_TARGET static double CE_NAME(bce)(const ce_bce_chunk *c, int64_t n)
{
    if (c->mode == CE_BCE_PROBS) return CE_NAME(bce_body)(c, n, 0, 0);
    if (c->grad != NULL)         return CE_NAME(bce_body)(c, n, 1, 1);
    return CE_NAME(bce_body)(c, n, 1, 0);
}

/* ---- sigmoid and log-sigmoid ------------------------------------------ */

/* sigmoid(x) = 1 / (1 + exp(-x)) from e = exp(-|x|): 1 / (1 + e) for
 * x >= 0, e / (1 + e) below; log sigmoid(x) = min(x, 0) - log1p(e). */
CE_TARGET CE_ALWAYS_INLINE void CE_NAME(sigmoid_body)(const CE_T *x, CE_T *out, int64_t n,
                                                      const int log_form)
{
    const CE_VT one = CE_NAME(splat)(1);
    for (int64_t i = 0; i < n; i += CE_W) {
        const int64_t count = n - i < CE_W ? n - i : CE_W;
        const CE_VT v = CE_NAME(load)(x + i, count, 0);
        const CE_VIT negative = v < (CE_CT)0;
        const CE_VT e = CE_NAME(exp_neg)(CE_SELECT(negative, -v, v));
        CE_VT r;
        if (log_form) {
            r = CE_SELECT(negative, v, (CE_VT){0}) - CE_VLOG1P_CORE(e);
        } else {
            const CE_VT s = one / (one + e);
            r = CE_SELECT(negative, e * s, s);
        }
        CE_NAME(store)(out + i, count, r);
    }
}

CE_TARGET static void CE_NAME(sigmoid)(ce_sigmoid_mode mode, const void *x, void *out, int64_t n)
{
    if (mode == CE_LOG_SIGMOID) CE_NAME(sigmoid_body)((const CE_T *)x, (CE_T *)out, n, 1);
    else                        CE_NAME(sigmoid_body)((const CE_T *)x, (CE_T *)out, n, 0);
}

/* ---- the logarithm itself, for accuracy measurements ------------------- */

CE_TARGET static void CE_NAME(log_array)(const void *xv, void *yv, int64_t n)
{
    const CE_T *x = (const CE_T *)xv;
    CE_T *y = (CE_T *)yv;
    for (int64_t i = 0; i < n; i += CE_W) {
        const int64_t count = n - i < CE_W ? n - i : CE_W;
        CE_NAME(store)(y + i, count, CE_VLOG(CE_NAME(load)(x + i, count, 1)));
    }
}

const ce_family_leaf CE_NAME(family) = {
    CE_NAME(dist), CE_NAME(bce), CE_NAME(sigmoid), CE_NAME(log_array)
};
