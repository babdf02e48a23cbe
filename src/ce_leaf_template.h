/*
 * Chunk kernels, written once and expanded per element type and per
 * instruction set by ce_leaf_types.h. The includer defines:
 *
 *   CE_T          element type in memory (float, double)
 *   CE_VT         vector of CE_W compute lanes (ce_vf, ce_vd)
 *   CE_VIT        matching integer vector (comparison masks)
 *   CE_W          lanes per vector (16 floats, 8 doubles)
 *   CE_IOTA       the CE_VIT vector {0, 1, ..., CE_W-1}
 *   CE_VEXP       vector exponential (ce_math.h)
 *   CE_SELECT     bitwise select for CE_VT
 *   CE_ACC        double accumulator type, with CE_ACC_ADD and CE_ACC_SUM
 *   CE_NAME(x)    unique name for x (type and instruction-set suffix)
 *   CE_TARGET     function attribute selecting the instruction set (or empty)
 *
 * Each sweep processes whole vectors and then one partial vector padded
 * with a neutral value, so the tail runs the same arithmetic as the body.
 * Every load of a step happens before its store, so an output that is the
 * input (in-place gradient) is safe.
 */

/* ---- loads and stores of count <= CE_W elements ------------------------ */

CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(load)(const CE_T *p, int64_t count, CE_T fill)
{
    CE_T buf[CE_W];
    if (count == CE_W) {
        memcpy(buf, p, sizeof buf);
    } else {
        for (int l = 0; l < CE_W; ++l) buf[l] = l < count ? p[l] : fill;
    }
    CE_VT v;
    memcpy(&v, buf, sizeof v);
    return v;
}

CE_TARGET CE_ALWAYS_INLINE void CE_NAME(store)(CE_T *p, int64_t count, CE_VT v)
{
    if (count == CE_W) {
        memcpy(p, &v, sizeof v);
    } else {
        CE_T buf[CE_W];
        memcpy(buf, &v, sizeof buf);
        for (int64_t l = 0; l < count; ++l) p[l] = buf[l];
    }
}

CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(splat)(CE_T s)
{
    return (CE_VT){0} + s;
}

/* ---- chunk maximum ----------------------------------------------------- */

/* Largest element of x[0:n]; NaN is passed over here and surfaces in the
 * sum of exponentials instead. */
CE_TARGET static double CE_NAME(chunk_max)(const CE_T *x, int64_t n)
{
    const CE_T neg_inf = -(CE_T)__builtin_inf();
    /* Four independent running maxima hide the compare-select latency. */
    CE_VT m0 = CE_NAME(splat)(neg_inf), m1 = m0, m2 = m0, m3 = m0;
    int64_t i = 0;
    for (; i + 4 * CE_W <= n; i += 4 * CE_W) {
        CE_VT v0 = CE_NAME(load)(x + i, CE_W, neg_inf);
        CE_VT v1 = CE_NAME(load)(x + i + CE_W, CE_W, neg_inf);
        CE_VT v2 = CE_NAME(load)(x + i + 2 * CE_W, CE_W, neg_inf);
        CE_VT v3 = CE_NAME(load)(x + i + 3 * CE_W, CE_W, neg_inf);
        m0 = CE_SELECT(v0 > m0, v0, m0);
        m1 = CE_SELECT(v1 > m1, v1, m1);
        m2 = CE_SELECT(v2 > m2, v2, m2);
        m3 = CE_SELECT(v3 > m3, v3, m3);
    }
    for (; i < n; i += CE_W) {
        const int64_t count = n - i < CE_W ? n - i : CE_W;
        CE_VT v = CE_NAME(load)(x + i, count, neg_inf);
        m0 = CE_SELECT(v > m0, v, m0);
    }
    m0 = CE_SELECT(m1 > m0, m1, m0);
    m2 = CE_SELECT(m3 > m2, m3, m2);
    m0 = CE_SELECT(m2 > m0, m2, m0);
    CE_T lanes[CE_W];
    memcpy(lanes, &m0, sizeof lanes);
    CE_T best = lanes[0];
    for (int l = 1; l < CE_W; ++l) best = lanes[l] > best ? lanes[l] : best;
    return (double)best;
}

/* ---- the linear term's coefficients ------------------------------------ */

/* a[j..j+count) of ce_lin, zero beyond count. */
CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(coef)(
    const ce_lin *lin, int64_t j, int64_t count, const int has_w, const int has_y)
{
    CE_VT a = CE_NAME(splat)((CE_T)1);
    if (has_w) a = CE_NAME(load)((const CE_T *)lin->w + j, count, (CE_T)0);
    if (has_y) {
        CE_VT y = CE_NAME(load)((const CE_T *)lin->y + j, count, (CE_T)0);
        a = a * (y * (CE_T)lin->y_mul + (CE_T)lin->y_add);
    }
    if (count < CE_W)
        a = CE_SELECT(CE_IOTA < (CE_VIT){0} + (__typeof__(CE_IOTA[0]))count, a, (CE_VT){0});
    return a;
}

/* ---- first sweep: max, sum of exponentials, linear sums ---------------- */

typedef struct {
    CE_ACC sum, lin, asum;
} CE_NAME(sums);

/* One vector's worth of the first sweep: returns exp(x - shift) and adds
 * the linear sums; flags are compile-time constants. */
CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(stats_step)(
    const CE_T *x, int64_t j, int64_t count, CE_T *e, CE_VT shift,
    const ce_lin *lin, CE_NAME(sums) *s,
    const int store, const int use_lin, const int has_w, const int has_y)
{
    CE_VT v = CE_NAME(load)(x + j, count, -(CE_T)__builtin_inf());
    CE_VT ex = CE_VEXP(v - shift);
    if (use_lin) {
        CE_VT a = CE_NAME(coef)(lin, j, count, has_w, has_y);
        /* a * (max - x), skipping a == 0 so that 0 * inf (a masked class
         * with no target mass) contributes 0. */
        CE_VT term = CE_SELECT(a != (CE_T)0, a * (shift - v), (CE_VT){0});
        CE_ACC_ADD(&s->lin, term);
        CE_ACC_ADD(&s->asum, a);
    }
    if (store) CE_NAME(store)(e + j, count, ex);
    return ex;
}

CE_TARGET CE_ALWAYS_INLINE void CE_NAME(stats_body)(
    const CE_T *x, int64_t n, CE_T *e, const ce_lin *lin, ce_chunk_stats *st,
    const int store, const int use_lin, const int has_w, const int has_y)
{
    const double m = CE_NAME(chunk_max)(x, n);
    /* A chunk of -inf only: subtract 0 so that exp(-inf) = 0, not NaN. */
    const double shift = (m == -__builtin_inf()) ? 0.0 : m;
    const CE_VT vs = CE_NAME(splat)((CE_T)shift);
    CE_NAME(sums) s;
    memset(&s, 0, sizeof s);
    int64_t i = 0;
    for (; i + 4 * CE_W <= n; i += 4 * CE_W) {
        /* While this chunk is computed from L1, bring in the next one (a
         * cache line per vector), so memory and arithmetic overlap. */
        for (int k = 0; k < 4; ++k)
            __builtin_prefetch(x + i + k * CE_W + CE_PREFETCH_AHEAD, 0, 3);
        CE_VT e0 = CE_NAME(stats_step)(x, i, CE_W, e, vs, lin, &s, store, use_lin, has_w, has_y);
        CE_VT e1 = CE_NAME(stats_step)(x, i + CE_W, CE_W, e, vs, lin, &s, store, use_lin, has_w, has_y);
        CE_VT e2 = CE_NAME(stats_step)(x, i + 2 * CE_W, CE_W, e, vs, lin, &s, store, use_lin, has_w, has_y);
        CE_VT e3 = CE_NAME(stats_step)(x, i + 3 * CE_W, CE_W, e, vs, lin, &s, store, use_lin, has_w, has_y);
        /* Four exponentials (each <= 1) are added in the compute type, two
         * roundings at the level of exp's own error, then widened once. */
        CE_ACC_ADD(&s.sum, (e0 + e1) + (e2 + e3));
    }
    for (; i < n; i += CE_W) {
        const int64_t count = n - i < CE_W ? n - i : CE_W;
        CE_ACC_ADD(&s.sum, CE_NAME(stats_step)(x, i, count, e, vs, lin, &s, store, use_lin, has_w, has_y));
    }
    st->max = m;
    st->shift = shift;
    st->sumexp = CE_ACC_SUM(s.sum);
    st->lin = use_lin ? CE_ACC_SUM(s.lin) : 0.0;
    st->asum = use_lin ? CE_ACC_SUM(s.asum) : 0.0;
}

CE_TARGET static void CE_NAME(stats)(const void *xv, int64_t n, void *ev,
                                     const ce_lin *lin, ce_chunk_stats *st)
{
    const CE_T *x = (const CE_T *)xv;
    CE_T *e = (CE_T *)ev;
    const int has_w = lin->w != NULL, has_y = lin->y != NULL;
    if (!lin->active) {
        if (e) CE_NAME(stats_body)(x, n, e, lin, st, 1, 0, 0, 0);
        else   CE_NAME(stats_body)(x, n, e, lin, st, 0, 0, 0, 0);
    } else if (e) {
        if (has_w && has_y)  CE_NAME(stats_body)(x, n, e, lin, st, 1, 1, 1, 1);
        else if (has_w)      CE_NAME(stats_body)(x, n, e, lin, st, 1, 1, 1, 0);
        else if (has_y)      CE_NAME(stats_body)(x, n, e, lin, st, 1, 1, 0, 1);
        else                 CE_NAME(stats_body)(x, n, e, lin, st, 1, 1, 0, 0);
    } else {
        if (has_w && has_y)  CE_NAME(stats_body)(x, n, e, lin, st, 0, 1, 1, 1);
        else if (has_w)      CE_NAME(stats_body)(x, n, e, lin, st, 0, 1, 1, 0);
        else if (has_y)      CE_NAME(stats_body)(x, n, e, lin, st, 0, 1, 0, 1);
        else                 CE_NAME(stats_body)(x, n, e, lin, st, 0, 1, 0, 0);
    }
}

/* ---- second sweep: out = out * f - c * a -------------------------------- */

CE_TARGET CE_ALWAYS_INLINE void CE_NAME(rescale_step)(
    CE_T *out, int64_t j, int64_t count, CE_VT f, CE_VT c, const ce_lin *lin,
    const int use_lin, const int has_w, const int has_y)
{
    CE_VT v = CE_NAME(load)(out + j, count, (CE_T)0) * f;
    if (use_lin) v = v - c * CE_NAME(coef)(lin, j, count, has_w, has_y);
    CE_NAME(store)(out + j, count, v);
}

CE_TARGET CE_ALWAYS_INLINE void CE_NAME(rescale_body)(
    CE_T *out, int64_t n, CE_VT f, CE_VT c, const ce_lin *lin,
    const int use_lin, const int has_w, const int has_y)
{
    int64_t i = 0;
    for (; i + CE_W <= n; i += CE_W)
        CE_NAME(rescale_step)(out, i, CE_W, f, c, lin, use_lin, has_w, has_y);
    if (i < n)
        CE_NAME(rescale_step)(out, i, n - i, f, c, lin, use_lin, has_w, has_y);
}

CE_TARGET static void CE_NAME(rescale)(void *outv, int64_t n, double f, double c,
                                       const ce_lin *lin)
{
    CE_T *out = (CE_T *)outv;
    const CE_VT vf = CE_NAME(splat)((CE_T)f), vc = CE_NAME(splat)((CE_T)c);
    const int has_w = lin->w != NULL, has_y = lin->y != NULL;
    if (c == 0.0 || !lin->active) CE_NAME(rescale_body)(out, n, vf, vc, lin, 0, 0, 0);
    else if (has_w && has_y)      CE_NAME(rescale_body)(out, n, vf, vc, lin, 1, 1, 1);
    else if (has_w)               CE_NAME(rescale_body)(out, n, vf, vc, lin, 1, 1, 0);
    else if (has_y)               CE_NAME(rescale_body)(out, n, vf, vc, lin, 1, 0, 1);
    else                          CE_NAME(rescale_body)(out, n, vf, vc, lin, 1, 0, 0);
}

/* ---- second sweep for log-softmax: out = (x - max) - log_sum ----------- */

CE_TARGET CE_ALWAYS_INLINE void CE_NAME(shift_step)(
    const CE_T *x, CE_T *out, int64_t j, int64_t count, CE_VT m, CE_VT ls)
{
    CE_VT v = CE_NAME(load)(x + j, count, (CE_T)0);
    CE_NAME(store)(out + j, count, (v - m) - ls);
}

CE_TARGET static void CE_NAME(shift)(const void *xv, int64_t n, void *outv,
                                     double max, double log_sum)
{
    const CE_T *x = (const CE_T *)xv;
    CE_T *out = (CE_T *)outv;
    const CE_VT m = CE_NAME(splat)((CE_T)max), ls = CE_NAME(splat)((CE_T)log_sum);
    int64_t i = 0;
    for (; i + CE_W <= n; i += CE_W) CE_NAME(shift_step)(x, out, i, CE_W, m, ls);
    if (i < n) CE_NAME(shift_step)(x, out, i, n - i, m, ls);
}

/* ---- the exponential itself, for accuracy measurements ----------------- */

CE_TARGET static void CE_NAME(exp_array)(const void *xv, void *yv, int64_t n)
{
    const CE_T *x = (const CE_T *)xv;
    CE_T *y = (CE_T *)yv;
    int64_t i = 0;
    for (; i + CE_W <= n; i += CE_W)
        CE_NAME(store)(y + i, CE_W, CE_VEXP(CE_NAME(load)(x + i, CE_W, 0)));
    if (i < n) CE_NAME(store)(y + i, n - i, CE_VEXP(CE_NAME(load)(x + i, n - i, 0)));
}

const ce_leaf CE_NAME(leaf) = {
    CE_NAME(stats), CE_NAME(rescale), CE_NAME(shift), CE_NAME(exp_array)
};
