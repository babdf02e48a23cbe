/*
 * Chunk kernels, written once and expanded per element type and per
 * instruction set by ce_leaf_types.h. The includer defines:
 *
 *   CE_T          element type in memory (float, double, uint16_t for halves)
 *   CE_CT         compute type of a lane (float, or double for float64)
 *   CE_VT         vector of CE_W compute lanes (ce_vf_w*, ce_vd_w* of ce_vec.h)
 *   CE_VIT        matching integer vector (comparison masks)
 *   CE_W          lanes per vector: as many as the path's registers hold
 *   CE_IOTA       the CE_VIT vector {0, 1, ..., CE_W-1}
 *   CE_VLOAD(p)   CE_W elements at p -> CE_VT;  CE_VSTORE(p, v): back
 *   CE_VEXP       vector exponential (ce_math.h)
 *   CE_SOFTCAP    vector soft-capping cap * tanh(x / cap)
 *   CE_SELECT     bitwise select for CE_VT
 *   CE_VMAX(a, b) a > b ? a : b per lane (ce_max_f, ce_max_d or faster)
 *   CE_VANY_ABOVE(a, b) whether a > b in any lane
 *   CE_VFMS(a, b, c) a * b - c, rounded once where the ISA has FMA
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

#include "ce_lanes_template.h"

/* Logits as the loss sees them: soft-capped when asked. */
CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(logits)(const CE_T *p, int64_t count, CE_CT fill,
                                                 double softcap, const int has_cap)
{
    CE_VT v = CE_NAME(load)(p, count, fill);
    if (!has_cap) return v;
    v = CE_SOFTCAP(v, softcap);
    /* padding lanes hold fill after capping too (cap(-inf) would be -cap) */
    return count < CE_W ? CE_SELECT(CE_NAME(lanes_below)(count), v, CE_NAME(splat)(fill)) : v;
}

/* ---- chunk maximum ----------------------------------------------------- */

/* Largest element of x[0:n] (soft-capped if asked); NaN is passed over
 * here and surfaces in the sum of exponentials instead. */
CE_TARGET CE_ALWAYS_INLINE double CE_NAME(chunk_max_body)(const CE_T *x, int64_t n, double cap,
                                                          const int has_cap)
{
    const CE_CT neg_inf = -(CE_CT)__builtin_inf();
    /* Four independent running maxima hide the compare-select latency. */
    CE_VT m0 = CE_NAME(splat)(neg_inf), m1 = m0, m2 = m0, m3 = m0;
    int64_t i = 0;
    for (; i + 4 * CE_W <= n; i += 4 * CE_W) {
        CE_VT v0 = CE_NAME(logits)(x + i, CE_W, neg_inf, cap, has_cap);
        CE_VT v1 = CE_NAME(logits)(x + i + CE_W, CE_W, neg_inf, cap, has_cap);
        CE_VT v2 = CE_NAME(logits)(x + i + 2 * CE_W, CE_W, neg_inf, cap, has_cap);
        CE_VT v3 = CE_NAME(logits)(x + i + 3 * CE_W, CE_W, neg_inf, cap, has_cap);
        m0 = CE_VMAX(v0, m0);
        m1 = CE_VMAX(v1, m1);
        m2 = CE_VMAX(v2, m2);
        m3 = CE_VMAX(v3, m3);
    }
    for (; i < n; i += CE_W) {
        const int64_t count = n - i < CE_W ? n - i : CE_W;
        CE_VT v = CE_NAME(logits)(x + i, count, neg_inf, cap, has_cap);
        m0 = CE_VMAX(v, m0);
    }
    return CE_NAME(max_lane)(CE_VMAX(CE_VMAX(m1, m0), CE_VMAX(m3, m2)));
}

CE_TARGET static double CE_NAME(max)(const void *xv, int64_t n, double softcap)
{
    const CE_T *x = (const CE_T *)xv;
    return softcap > 0.0 ? CE_NAME(chunk_max_body)(x, n, softcap, 1)
                         : CE_NAME(chunk_max_body)(x, n, softcap, 0);
}

/* ---- the linear term's coefficients ------------------------------------ */

/* count values of the compute type from p, zero beyond count: weights and
 * soft targets, and the exponentials sweep 1 keeps for sweep 2. They are
 * stored in the compute type (float for float32 and half-precision logits),
 * so a half-precision path never rounds them to its own element type. */
CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(load_ct)(const CE_CT *p, int64_t count)
{
    if (count == CE_W) return CE_VLOAD_CT(p);
    CE_CT buf[CE_W];
    memset(buf, 0, sizeof buf);
    memcpy(buf, p, (size_t)count * sizeof(CE_CT));
    return CE_VLOAD_CT(buf);
}

CE_TARGET CE_ALWAYS_INLINE void CE_NAME(store_ct)(CE_CT *p, int64_t count, CE_VT v)
{
    CE_STORE_LANES(CE_CT, CE_VSTORE_CT, p, count, v);
}

/* a[j..j+count) of the chunk options, zero beyond count. */
CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(coef)(
    const ce_chunk_opts *opts, int64_t j, int64_t count, const int has_w, const int has_y)
{
    CE_VT a = CE_NAME(splat)((CE_CT)1);
    if (has_w) a = CE_NAME(load_ct)((const CE_CT *)opts->w + j, count);
    if (has_y) {
        CE_VT y = CE_NAME(load_ct)((const CE_CT *)opts->y + j, count);
        a = a * (y * (CE_CT)opts->y_mul + (CE_CT)opts->y_add);
    }
    if (count < CE_W) a = CE_SELECT(CE_NAME(lanes_below)(count), a, (CE_VT){0});
    return a;
}

/* ---- first sweep: max, sum of exponentials, linear sums ---------------- */

typedef struct {
    CE_ACC sum, lin, asum, ent;
} CE_NAME(sums);

/* The flags of one sweep; compile-time constants in the common cases. */
#define CE_FLAG_PARAMS const int store, const int use_lin, const int has_w, const int has_y, \
                       const int has_cap, const int use_ent
#define CE_FLAG_ARGS store, use_lin, has_w, has_y, has_cap, use_ent

/* One vector's worth of the first sweep, given its logits v: returns
 * exp(v - shift) and adds the linear and entropy sums. */
CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(stats_step)(
    CE_VT v, int64_t j, int64_t count, CE_CT *e, CE_VT shift, const ce_chunk_opts *opts,
    CE_NAME(sums) *s, CE_FLAG_PARAMS)
{
    CE_VT ex = CE_VEXP(v - shift);
    if (use_lin) {
        CE_VT a = CE_NAME(coef)(opts, j, count, has_w, has_y);
        /* a * (max - x), skipping a == 0 so that 0 * inf (a masked class
         * with no target mass) contributes 0. */
        CE_VT term = CE_SELECT(a != (CE_CT)0, a * (shift - v), (CE_VT){0});
        CE_ACC_ADD(&s->lin, term);
        CE_ACC_ADD(&s->asum, a);
    }
    if (use_ent) CE_ACC_ADD(&s->ent, CE_SELECT(ex != (CE_CT)0, ex * (shift - v), (CE_VT){0}));
    if (store) CE_NAME(store_ct)(e + j, count, ex);
    return ex;
}

/* The first sweep over x[0:n] measured from shift, added to s. With
 * guarded, it also tracks the largest element into *max_seen and stops
 * before the first block holding an element above limit, returning where
 * that block starts (else n): nothing of the block has been computed or
 * stored, so in place its logits are still there. */
CE_TARGET CE_ALWAYS_INLINE int64_t CE_NAME(exp_pass)(
    const CE_T *x, int64_t n, CE_CT *e, const ce_chunk_opts *opts, double shift,
    CE_NAME(sums) *s, const int guarded, double limit, double *max_seen, CE_FLAG_PARAMS)
{
    const CE_CT neg_inf = -(CE_CT)__builtin_inf();
    const CE_VT vs = CE_NAME(splat)((CE_CT)shift), vlimit = CE_NAME(splat)((CE_CT)limit);
    CE_VT mx = CE_NAME(splat)(neg_inf);
    int64_t i = 0, stop = n;
    for (; i + 4 * CE_W <= n; i += 4 * CE_W) {
        /* While this chunk is computed from L1, bring in the next one, a
         * 64-byte line at a time, so memory and arithmetic overlap. */
        for (size_t b = 0; b < 4 * CE_W * sizeof(CE_T); b += 64)
            __builtin_prefetch((const char *)(x + i + CE_PREFETCH_AHEAD) + b, 0, 3);
        const CE_VT v0 = CE_NAME(logits)(x + i, CE_W, neg_inf, opts->softcap, has_cap);
        const CE_VT v1 = CE_NAME(logits)(x + i + CE_W, CE_W, neg_inf, opts->softcap, has_cap);
        const CE_VT v2 = CE_NAME(logits)(x + i + 2 * CE_W, CE_W, neg_inf, opts->softcap, has_cap);
        const CE_VT v3 = CE_NAME(logits)(x + i + 3 * CE_W, CE_W, neg_inf, opts->softcap, has_cap);
        if (guarded) {
            const CE_VT block_max = CE_VMAX(CE_VMAX(v0, v1), CE_VMAX(v2, v3));
            if (CE_VANY_ABOVE(block_max, vlimit)) {
                stop = i;
                break;
            }
            mx = CE_VMAX(block_max, mx);
        }
        const CE_VT e0 = CE_NAME(stats_step)(v0, i, CE_W, e, vs, opts, s, CE_FLAG_ARGS);
        const CE_VT e1 = CE_NAME(stats_step)(v1, i + CE_W, CE_W, e, vs, opts, s, CE_FLAG_ARGS);
        const CE_VT e2 = CE_NAME(stats_step)(v2, i + 2 * CE_W, CE_W, e, vs, opts, s, CE_FLAG_ARGS);
        const CE_VT e3 = CE_NAME(stats_step)(v3, i + 3 * CE_W, CE_W, e, vs, opts, s, CE_FLAG_ARGS);
        /* Four exponentials are added in the compute type, two roundings at
         * the level of exp's own error, then widened once. */
        CE_ACC_ADD(&s->sum, (e0 + e1) + (e2 + e3));
    }
    for (; stop == n && i < n; i += CE_W) {
        const int64_t count = n - i < CE_W ? n - i : CE_W;
        const CE_VT v = CE_NAME(logits)(x + i, count, neg_inf, opts->softcap, has_cap);
        if (guarded) {
            if (CE_VANY_ABOVE(v, vlimit)) {
                stop = i;
                break;
            }
            mx = CE_VMAX(v, mx);
        }
        CE_ACC_ADD(&s->sum, CE_NAME(stats_step)(v, i, count, e, vs, opts, s, CE_FLAG_ARGS));
    }
    if (guarded) *max_seen = CE_NAME(max_lane)(mx);
    return stop;
}

/* e[0:n] *= f, rounded once in the compute type. */
CE_TARGET CE_ALWAYS_INLINE void CE_NAME(scale_stored)(CE_CT *e, int64_t n, CE_CT f)
{
    const CE_VT vf = CE_NAME(splat)(f);
    for (int64_t i = 0; i < n; i += CE_W) {
        const int64_t count = n - i < CE_W ? n - i : CE_W;
        CE_NAME(store_ct)(e + i, count, CE_NAME(load_ct)(e + i, count) * vf);
    }
}

/* The exact exp(m - shift) over the value the chunk's largest exponential
 * got (ce_chunk_stats.scale). Measured from a reference below m, that
 * value carries the rounding of m - shift and of exp (about 1e-7), which
 * would be most of log(sum) in a confident row whose maximum it is: so
 * only in a chunk whose sum from shift is below 1.25 times that value
 * (about the driver's CE_EXACT_SUM_BELOW of the sum from m); elsewhere 1,
 * which leaves that term's error at the level of every other term's. */
CE_TARGET CE_ALWAYS_INLINE double CE_NAME(scale_of_largest)(double m, double shift, double sum)
{
    const CE_VT largest = CE_VEXP(CE_NAME(splat)((CE_CT)m) - CE_NAME(splat)((CE_CT)shift));
    const double got = (double)largest[0];
    return sum < 1.25 * got ? exp(m - shift) / got : 1.0;
}

CE_TARGET CE_ALWAYS_INLINE void CE_NAME(stats_body)(
    const CE_T *x, int64_t n, CE_CT *e, const ce_chunk_opts *opts, ce_chunk_stats *st,
    CE_FLAG_PARAMS)
{
    CE_NAME(sums) s;
    memset(&s, 0, sizeof s);
    double m = -__builtin_inf(), shift = opts->ref, done_sum = 0.0, scale = 1.0;
    /* One pass, measured from the offered reference (ce_chunk_opts.ref).
     * The row driver offers one only when no linear or entropy sums are
     * asked, so those variants leave it out (and their coefficients are
     * always indexed from the chunk's start). */
    const int one_pass = !use_lin && !use_ent && shift > -__builtin_inf() &&
                         shift < __builtin_inf();
    int64_t done = 0;
    if (one_pass)
        done = CE_NAME(exp_pass)(x, n, e, opts, shift, &s, 1, shift + CE_REF_HEADROOM, &m,
                                 CE_FLAG_ARGS);
    if (done < n) {
        /* From the chunk's own maximum: the whole chunk without a
         * reference, or the rest from the first block above the headroom,
         * what is done being brought to it. A chunk of -inf only subtracts
         * 0 so that exp(-inf) = 0, not NaN. */
        const double rest_max = CE_NAME(chunk_max_body)(x + done, n - done, opts->softcap,
                                                        has_cap);
        m = rest_max > m ? rest_max : m;
        const double own = (m == -__builtin_inf()) ? 0.0 : m;
        if (done > 0) {
            const double f = exp(shift - own);
            done_sum = CE_ACC_SUM(s.sum) * f;
            if (store) CE_NAME(scale_stored)(e, done, (CE_CT)f);
            memset(&s, 0, sizeof s);
        }
        shift = own;
        CE_NAME(exp_pass)(x + done, n - done, store ? e + done : e, opts, shift, &s, 0, 0.0,
                          NULL, CE_FLAG_ARGS);
    } else if (m > shift) {
        scale = CE_NAME(scale_of_largest)(m, shift, CE_ACC_SUM(s.sum));
    }
    st->max = m;
    st->shift = shift;
    st->sumexp = done_sum + CE_ACC_SUM(s.sum);
    st->scale = scale;
    st->lin = use_lin ? CE_ACC_SUM(s.lin) : 0.0;
    st->asum = use_lin ? CE_ACC_SUM(s.asum) : 0.0;
    st->ent = use_ent ? CE_ACC_SUM(s.ent) : 0.0;
}

CE_TARGET static void CE_NAME(stats)(const void *xv, int64_t n, void *ev,
                                     const ce_chunk_opts *opts, ce_chunk_stats *st)
{
    const CE_T *x = (const CE_T *)xv;
    CE_CT *e = (CE_CT *)ev;
    const int has_w = opts->w != NULL, has_y = opts->y != NULL;
    const int has_cap = opts->softcap > 0.0, use_ent = opts->entropy != 0;
    if (use_ent && !has_cap && !opts->active && e == NULL) {
        /* token statistics */
        CE_NAME(stats_body)(x, n, e, opts, st, 0, 0, 0, 0, 0, 1);
    } else if (has_cap || use_ent) {
        /* Rarer options: one body with the flags decided at run time. */
        CE_NAME(stats_body)(x, n, e, opts, st, e != NULL, opts->active, has_w, has_y,
                            has_cap, use_ent);
    } else if (!opts->active) {
        if (e) CE_NAME(stats_body)(x, n, e, opts, st, 1, 0, 0, 0, 0, 0);
        else   CE_NAME(stats_body)(x, n, e, opts, st, 0, 0, 0, 0, 0, 0);
    } else if (e) {
        if (has_w && has_y)  CE_NAME(stats_body)(x, n, e, opts, st, 1, 1, 1, 1, 0, 0);
        else if (has_w)      CE_NAME(stats_body)(x, n, e, opts, st, 1, 1, 1, 0, 0, 0);
        else if (has_y)      CE_NAME(stats_body)(x, n, e, opts, st, 1, 1, 0, 1, 0, 0);
        else                 CE_NAME(stats_body)(x, n, e, opts, st, 1, 1, 0, 0, 0, 0);
    } else {
        if (has_w && has_y)  CE_NAME(stats_body)(x, n, e, opts, st, 0, 1, 1, 1, 0, 0);
        else if (has_w)      CE_NAME(stats_body)(x, n, e, opts, st, 0, 1, 1, 0, 0, 0);
        else if (has_y)      CE_NAME(stats_body)(x, n, e, opts, st, 0, 1, 0, 1, 0, 0);
        else                 CE_NAME(stats_body)(x, n, e, opts, st, 0, 1, 0, 0, 0, 0);
    }
}

#undef CE_FLAG_PARAMS
#undef CE_FLAG_ARGS

/* ---- second sweep: out = out * f - c * a (+ delta at the target) -------- */

/* delta added to lane (t - j) of v when the target t falls in [j, j+count). */
CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(add_at_target)(CE_VT v, int64_t j, int64_t count,
                                                        int64_t t, CE_CT delta)
{
    if (t < j || t >= j + count) return v;
    const CE_VIT at = CE_IOTA == (CE_VIT){0} + (__typeof__(CE_IOTA[0]))(t - j);
    return v + CE_SELECT(at, CE_NAME(splat)(delta), (CE_VT){0});
}

/* e * f - c * a: the gradient (or softmax) from the exponentials. Both
 * second sweeps go through here with the rounding spelled out (no
 * compiler-chosen contraction), so a gradient computed from stored
 * exponentials and one recomputed from the logits agree bit for bit. */
CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(grad_of_exp)(
    CE_VT e, CE_VT f, CE_VT c, const ce_chunk_opts *opts, int64_t j, int64_t count,
    const int use_lin, const int has_w, const int has_y)
{
    if (!use_lin) return e * f;
    return CE_VFMS(e, f, c * CE_NAME(coef)(opts, j, count, has_w, has_y));
}

CE_TARGET CE_ALWAYS_INLINE void CE_NAME(rescale_step)(
    const CE_CT *e, CE_T *out, int64_t j, int64_t count, CE_VT f, CE_VT c,
    const ce_chunk_opts *opts, int64_t t, CE_CT delta, const int use_lin, const int has_w,
    const int has_y)
{
    CE_VT v = CE_NAME(grad_of_exp)(CE_NAME(load_ct)(e + j, count), f, c, opts, j, count,
                                   use_lin, has_w, has_y);
    CE_NAME(store)(out + j, count, CE_NAME(add_at_target)(v, j, count, t, delta));
}

CE_TARGET CE_ALWAYS_INLINE void CE_NAME(rescale_body)(
    const CE_CT *e, CE_T *out, int64_t n, CE_VT f, CE_VT c, const ce_chunk_opts *opts,
    int64_t t, CE_CT delta, const int use_lin, const int has_w, const int has_y)
{
    int64_t i = 0;
    for (; i + CE_W <= n; i += CE_W)
        CE_NAME(rescale_step)(e, out, i, CE_W, f, c, opts, t, delta, use_lin, has_w, has_y);
    if (i < n)
        CE_NAME(rescale_step)(e, out, i, n - i, f, c, opts, t, delta, use_lin, has_w, has_y);
}

CE_TARGET static void CE_NAME(rescale)(const void *ev, void *outv, int64_t n, double f,
                                       double c, const ce_chunk_opts *opts, int64_t t,
                                       double delta)
{
    const CE_CT *e = (const CE_CT *)ev;
    CE_T *out = (CE_T *)outv;
    const CE_VT vf = CE_NAME(splat)((CE_CT)f), vc = CE_NAME(splat)((CE_CT)c);
    const CE_CT d = (CE_CT)delta;
    const int has_w = opts->w != NULL, has_y = opts->y != NULL;
    if (c == 0.0 || !opts->active) CE_NAME(rescale_body)(e, out, n, vf, vc, opts, t, d, 0, 0, 0);
    else if (has_w && has_y)       CE_NAME(rescale_body)(e, out, n, vf, vc, opts, t, d, 1, 1, 1);
    else if (has_w)                CE_NAME(rescale_body)(e, out, n, vf, vc, opts, t, d, 1, 1, 0);
    else if (has_y)                CE_NAME(rescale_body)(e, out, n, vf, vc, opts, t, d, 1, 0, 1);
    else                           CE_NAME(rescale_body)(e, out, n, vf, vc, opts, t, d, 1, 0, 0);
}

/* The second sweep when the first stored nothing (soft-capping, or an
 * output type too narrow to hold the exponentials exactly): recomputes
 * exp(x' - shift) from x, and with soft-capping multiplies by the cap's
 * derivative 1 - (x' / cap)^2. out may equal x. */
CE_TARGET static void CE_NAME(rescale_from_x)(const void *xv, void *outv, int64_t n,
                                              double shift, double f, double c,
                                              const ce_chunk_opts *opts, int64_t t, double delta)
{
    const CE_T *x = (const CE_T *)xv;
    CE_T *out = (CE_T *)outv;
    const int has_w = opts->w != NULL, has_y = opts->y != NULL;
    const int has_cap = opts->softcap > 0.0;
    const int use_lin = opts->active && c != 0.0;
    const CE_VT vs = CE_NAME(splat)((CE_CT)shift), vf = CE_NAME(splat)((CE_CT)f);
    const CE_VT vc = CE_NAME(splat)((CE_CT)c);
    const CE_VT inv_cap = CE_NAME(splat)((CE_CT)(has_cap ? 1.0 / opts->softcap : 0.0));
    for (int64_t i = 0; i < n; i += CE_W) {
        const int64_t count = n - i < CE_W ? n - i : CE_W;
        CE_VT v = CE_NAME(logits)(x + i, count, -(CE_CT)__builtin_inf(), opts->softcap, has_cap);
        CE_VT g = CE_NAME(grad_of_exp)(CE_VEXP(v - vs), vf, vc, opts, i, count, use_lin, has_w,
                                      has_y);
        g = CE_NAME(add_at_target)(g, i, count, t, (CE_CT)delta);
        if (has_cap) {
            CE_VT u = v * inv_cap;
            g = g * ((CE_CT)1 - u * u);
        }
        CE_NAME(store)(out + i, count, g);
    }
}

/* ---- the sum of exponentials, without rounding in the compute type ---- */

CE_TARGET static double CE_NAME(exact_sumexp)(const void *vv, int64_t n, int stored,
                                              double shift, const ce_chunk_opts *opts)
{
    const CE_T *v = (const CE_T *)vv;
    const CE_CT *e = (const CE_CT *)vv;
    const int has_cap = opts->softcap > 0.0;
    const CE_VT vs = CE_NAME(splat)((CE_CT)shift);
    CE_ACC acc;
    memset(&acc, 0, sizeof acc);
    for (int64_t i = 0; i < n; i += CE_W) {
        const int64_t count = n - i < CE_W ? n - i : CE_W;
        /* the same values sweep 1 computed, lane for lane */
        CE_ACC_ADD(&acc, stored ? CE_NAME(load_ct)(e + i, count)
                                : CE_VEXP(CE_NAME(logits)(v + i, count, -(CE_CT)__builtin_inf(),
                                                          opts->softcap, has_cap) - vs));
    }
    return CE_ACC_SUM(acc);
}

/* ---- second sweep for log-softmax: out = (x - max) - log_sum ----------- */

CE_TARGET CE_ALWAYS_INLINE void CE_NAME(shift_step)(
    const CE_T *x, CE_T *out, int64_t j, int64_t count, CE_VT m, CE_VT ls)
{
    CE_VT v = CE_NAME(load)(x + j, count, (CE_CT)0);
    CE_NAME(store)(out + j, count, (v - m) - ls);
}

CE_TARGET static void CE_NAME(shift)(const void *xv, int64_t n, void *outv,
                                     double max, double log_sum)
{
    const CE_T *x = (const CE_T *)xv;
    CE_T *out = (CE_T *)outv;
    const CE_VT m = CE_NAME(splat)((CE_CT)max), ls = CE_NAME(splat)((CE_CT)log_sum);
    int64_t i = 0;
    for (; i + CE_W <= n; i += CE_W) CE_NAME(shift_step)(x, out, i, CE_W, m, ls);
    if (i < n) CE_NAME(shift_step)(x, out, i, n - i, m, ls);
}

/* ---- the exponential itself, for accuracy measurements ----------------- */

CE_TARGET static void CE_NAME(exp_array)(const void *xv, void *yv, int64_t n)
{
    const CE_T *x = (const CE_T *)xv;
    CE_T *y = (CE_T *)yv;
    for (int64_t i = 0; i < n; i += CE_W) {
        const int64_t count = n - i < CE_W ? n - i : CE_W;
        CE_NAME(store)(y + i, count, CE_VEXP(CE_NAME(load)(x + i, count, (CE_CT)0)));
    }
}

const ce_leaf CE_NAME(leaf) = {
    CE_NAME(max), CE_NAME(stats), CE_NAME(rescale), CE_NAME(rescale_from_x), CE_NAME(exact_sumexp),
    CE_NAME(shift), CE_NAME(exp_array)
};
