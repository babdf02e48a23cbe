/*
 * The row driver: splits a problem into rows and chunks, hands chunks to
 * the chunk kernels of the active instruction set, merges chunk results in
 * a fixed order, and spreads the work over OpenMP threads.
 *
 * Each row is two sweeps over its chunks:
 *   1. per chunk: max, sum of exp(x - shift) (stored to the output when a
 *      gradient or softmax is wanted) and the sums of ce_chunk_opts, where
 *      shift is the chunk's maximum or, so that the chunk is read only
 *      once, the maximum of the chunk's first elements;
 *      the chunk results are merged exactly (ce_exact), in chunk order;
 *   2. per chunk: the stored exponentials rescaled by one factor per chunk
 *      into the gradient or softmax (or x - logsumexp for log-softmax).
 * So exp is evaluated once per element, and the second sweep reads what
 * the first one left in cache.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "ce_internal.h"

/* ---- instruction-set dispatch ----------------------------------------- */

static const ce_leaf *leaf_for(ce_isa isa, ce_dtype dtype)
{
    return CE_PICK(ce_leaf, isa, dtype);
}

ce_isa ce_best_isa(void)
{
#if defined(CE_HAVE_X86_DISPATCH)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("fma"))
        return CE_ISA_AVX512;
    /* every CPU with AVX2 and FMA also has F16C */
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return CE_ISA_AVX2;
#endif
    return CE_ISA_BASELINE;
}

/* -1 until first use; then the path every call takes. */
static int active_isa = -1;

ce_isa ce_active_isa(void)
{
    if (active_isa < 0) active_isa = (int)ce_best_isa();
    return (ce_isa)active_isa;
}

int ce_force_isa(ce_isa isa)
{
    if ((int)isa < 0 || (int)isa > (int)ce_best_isa()) return CE_ERR_ARGS;
    active_isa = (int)isa;
    return CE_OK;
}

const char *ce_isa_name(ce_isa isa)
{
    switch (isa) {
    case CE_ISA_AVX512: return "avx512";
    case CE_ISA_AVX2: return "avx2";
    default: break;
    }
#if defined(__x86_64__)
    return "sse2";
#else
    return "baseline";
#endif
}

/* ---- threads ------------------------------------------------------------ */

int ce_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int ce_default_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int ce_max_threads(void)
{
#ifdef _OPENMP
    /* Asked once: omp_get_num_procs() is a system call. Racing first
     * callers all store the same value. */
    static int most = 0;
    int cached;
    #pragma omp atomic read
    cached = most;
    if (cached > 0) return cached;
    const int procs = omp_get_num_procs();
    const int limit = omp_get_thread_limit();
    cached = procs > 2 ? 4 * procs : 8;
    if (limit > 0 && cached > limit) cached = limit;
    #pragma omp atomic write
    most = cached;
    return cached;
#else
    return 1;
#endif
}

int ce_threads_for(int64_t elements, int64_t work_units, int n_threads)
{
    int64_t nt = n_threads > 0 ? n_threads : ce_default_threads();
    const int64_t most = ce_max_threads();
    if (nt > most) nt = most;
    if (nt > work_units) nt = work_units;
    if (elements < CE_PARALLEL_THRESHOLD || !ce_openmp_enabled() || nt < 1) nt = 1;
    return (int)nt;
}

/* ---- stopping early ----------------------------------------------------- */

void ce_stopper_init(ce_stopper *s, const ce_interrupt *interrupt)
{
    s->interrupt = interrupt != NULL && interrupt->poll != NULL ? interrupt : NULL;
    s->since = 0;
    s->stop = 0;
}

void ce_stopper_tick(ce_stopper *s, int64_t elements)
{
    if (s->interrupt == NULL) return;
    s->since += elements;
    if (s->since < CE_POLL_ELEMENTS) return;
    s->since = 0;
    if (s->interrupt->poll(s->interrupt->ctx)) {
#ifdef _OPENMP
        #pragma omp atomic write
#endif
        s->stop = 1;
    }
}

int ce_stopper_stopped(const ce_stopper *s)
{
    int stop;
#ifdef _OPENMP
    #pragma omp atomic read
#endif
    stop = s->stop;
    return stop;
}

int64_t ce_chunk_size(void) { return CE_CHUNK; }
int64_t ce_parallel_threshold(void) { return CE_PARALLEL_THRESHOLD; }

/* ---- one call's fixed facts -------------------------------------------- */

typedef struct ce_plan {
    const ce_problem *p;
    const ce_leaf *leaf;
    size_t esize;            /* bytes per element                          */
    ce_dtype aux_dtype;      /* of weights and soft targets: the compute type */
    size_t aux_size;
    int64_t n_chunks;        /* chunks per row                             */
    double n_classes;        /* the whole vocabulary: vocab_size or n_cols */
    int stats_of_ignored;    /* ignored rows still give their lse / argmax */
    int store_exp;           /* sweep 1 stores exp(x - shift) for sweep 2  */
    char *exp_buf;           /* where, for half-precision outputs: a row of
                              * the compute type, one per thread (NULL: in
                              * the output itself)                         */
    int second_sweep;        /* the output is written                      */
    int one_pass;            /* chunks are offered a reference shift       */
    ce_chunk_opts opts;      /* chunk options (w, y set per chunk)         */
    const struct ce_plan *quiet; /* this plan storing nothing: for ignored rows */
} ce_plan;

/* A row's statistics merged from its chunks, or from its shards. */
typedef struct {
    double max;              /* row maximum                                */
    double sum;              /* sum_j exp(x_j - max)                       */
    double lin;              /* linear sums (ce_chunk_opts), from max      */
    double asum;
    double ent;              /* entropy term, from max                     */
} ce_merged;

/* Everything sweep 2 needs about a row once sweep 1 is merged. */
typedef struct {
    int ignored;
    double max;              /* row maximum                                */
    double log_sum;          /* log(sum_j exp(x_j - max))                  */
    double g;                /* gradient/softmax factor before exp(shift - max) */
    double c;                /* coefficient of a_j in the gradient         */
    double target_delta;     /* added to out[target] after rescaling      */
    int reread;              /* the merge read the row again (for a NaN)   */
} ce_row;

static size_t dtype_size(ce_dtype dtype)
{
    return dtype == CE_FLOAT64 ? 8 : dtype == CE_FLOAT32 ? 4 : 2;
}

static float bits_to_float(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
static uint32_t float_to_bits(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }

/* Scalar versions of the vector loads in ce_math.h (for single elements). */
static float half_to_float(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, em = h & 0x7FFFu;
    if (em >= 0x7C00u) return bits_to_float((em << 13) | 0x7F800000u | sign);
    return bits_to_float(float_to_bits(bits_to_float(em << 13) * 0x1p112f) | sign);
}

static float bf16_to_float(uint16_t h) { return bits_to_float((uint32_t)h << 16); }

static double load_as_double(const void *base, int64_t idx, ce_dtype dtype)
{
    switch (dtype) {
    case CE_FLOAT32: return (double)((const float *)base)[idx];
    case CE_FLOAT64: return ((const double *)base)[idx];
    case CE_FLOAT16: return (double)half_to_float(((const uint16_t *)base)[idx]);
    default: return (double)bf16_to_float(((const uint16_t *)base)[idx]);
    }
}


/* Start of a row; strides may be zero or negative. */
static const char *row_of(const void *base, int64_t row, int64_t stride, size_t esize)
{
    return (const char *)base + row * stride * (int64_t)esize;
}

/* Rows skipped entirely (loss 0, gradient 0). Token statistics still
 * describe the distribution at an ignored position and only flag its NLL. */
static int row_ignored(const ce_plan *pl, int64_t r)
{
    return pl->p->mode != CE_MODE_TOKEN_STATS && pl->p->mode != CE_MODE_ROW_STATS &&
           pl->p->target != NULL && pl->p->target[r] == pl->p->ignore_index;
}

static double row_weight(const ce_plan *pl, int64_t r)
{
    const ce_problem *p = pl->p;
    return p->weight ? load_as_double(p->weight, p->target[r], pl->aux_dtype) : 1.0;
}

static double row_scale(const ce_plan *pl, int64_t r)
{
    const ce_problem *p = pl->p;
    return p->grad_scale * (p->row_scale ? p->row_scale[r] : 1.0);
}

/* Whether out shares memory with x (in place, or overlapping views). */
static int out_overlaps_x(const ce_problem *p, size_t esize)
{
    if (p->out == NULL) return 0;
    const int64_t last = p->n_rows - 1;
    const char *x0 = row_of(p->x, p->x_stride < 0 ? last : 0, p->x_stride, esize);
    const char *x1 = row_of(p->x, p->x_stride < 0 ? 0 : last, p->x_stride, esize);
    const char *o0 = row_of(p->out, p->out_stride < 0 ? last : 0, p->out_stride, esize);
    const char *o1 = row_of(p->out, p->out_stride < 0 ? 0 : last, p->out_stride, esize);
    const size_t row_bytes = (size_t)p->n_cols * esize;
    return o0 < x1 + row_bytes && x0 < o1 + row_bytes;
}

static void plan_init(ce_plan *pl, const ce_problem *p)
{
    memset(pl, 0, sizeof *pl);
    pl->p = p;
    pl->leaf = leaf_for(ce_active_isa(), p->dtype);
    pl->esize = dtype_size(p->dtype);
    pl->aux_dtype = p->dtype == CE_FLOAT64 ? CE_FLOAT64 : CE_FLOAT32;
    pl->aux_size = dtype_size(pl->aux_dtype);
    pl->n_chunks = (p->n_cols + CE_CHUNK - 1) / CE_CHUNK;
    pl->n_classes = (double)(p->vocab_size > 0 ? p->vocab_size : p->n_cols);
    const int is_loss = p->mode == CE_MODE_LOSS || p->mode == CE_MODE_LOSS_GRAD;
    const int is_shard = p->mode == CE_MODE_ROW_STATS || p->mode == CE_MODE_GRAD_FROM_LSE;
    pl->opts.softcap = is_loss || is_shard ? p->softcap : 0.0;
    pl->stats_of_ignored = is_loss && (p->row_lse != NULL || p->row_argmax != NULL);
    /* Sweep 1 stores exp(x - shift) for sweep 2 to rescale, except with
     * soft-capping (the cap's derivative needs the logits, which in place
     * are gone): then sweep 2 recomputes them from x. A half-precision
     * output would round the exponentials twice, so for it they go to a
     * float row beside it (exp_buf, set by the driver), which also leaves
     * the logits in place. */
    pl->store_exp = p->out != NULL && pl->opts.softcap == 0.0 &&
                    (p->mode == CE_MODE_LOSS_GRAD || p->mode == CE_MODE_SOFTMAX);
    /* ...nor into the output where the argmax, found after sweep 1, must
     * read the logits there. */
    if (pl->store_exp && pl->esize >= 4 && p->row_argmax != NULL && out_overlaps_x(p, pl->esize))
        pl->store_exp = 0;
    pl->second_sweep = p->out != NULL &&
                       (p->mode == CE_MODE_LOSS_GRAD || p->mode == CE_MODE_SOFTMAX ||
                        p->mode == CE_MODE_LOG_SOFTMAX);
    pl->opts.entropy = p->mode == CE_MODE_TOKEN_STATS;
    pl->opts.ref = -INFINITY;
    if (is_loss || is_shard) {
        if (p->soft) {
            pl->opts.active = 1;
            pl->opts.y_mul = 1.0 - p->smoothing;
            pl->opts.y_add = p->smoothing / pl->n_classes;
        } else {
            pl->opts.active = p->smoothing > 0.0;
        }
    }
    /* A chunk is read once, its exponentials measured from the row's
     * reference, unless linear or entropy sums are asked: measured from the
     * chunk's maximum, those have no terms that cancel. */
    pl->one_pass = !pl->opts.active && !pl->opts.entropy;
}

/* Chunk options for chunk c of row r. */
static ce_chunk_opts chunk_opts(const ce_plan *pl, int64_t r, int64_t c)
{
    const ce_problem *p = pl->p;
    ce_chunk_opts opts = pl->opts;
    const int64_t j0 = c * CE_CHUNK;
    if (opts.active) {
        if (p->weight)
            opts.w = (const char *)p->weight + (size_t)(p->vocab_start + j0) * pl->aux_size;
        if (p->soft)
            opts.y = row_of(p->soft, r, p->soft_stride, pl->aux_size) + (size_t)j0 * pl->aux_size;
    }
    return opts;
}

/* Whether sweep 1 keeps the exponentials beside the output (exp_buf). */
static int exp_aside(const ce_plan *pl) { return pl->store_exp && pl->esize == 2; }

/* Row r's stored exponentials, in the compute type (aux_size bytes each). */
static char *exp_row(const ce_plan *pl, int64_t r)
{
    const ce_problem *p = pl->p;
    return pl->exp_buf ? pl->exp_buf : (char *)row_of(p->out, r, p->out_stride, pl->esize);
}

static int64_t chunk_len(const ce_plan *pl, int64_t c)
{
    const int64_t left = pl->p->n_cols - c * CE_CHUNK;
    return left < CE_CHUNK ? left : CE_CHUNK;
}

/* The target's logit as the loss sees it: soft-capped if asked, then
 * rounded as the kernels round capped logits (to float below float64), so
 * that a target at the row maximum m gives m - x_t = 0 exactly. */
static double capped(const ce_plan *pl, double x)
{
    const double cap = pl->opts.softcap;
    if (cap <= 0.0) return x;
    const double y = cap * tanh(x / cap);
    return pl->esize == sizeof(double) ? y : (double)(float)y;
}

/* ---- the exact merge ----------------------------------------------------- */

/* A sum kept as an unevaluated pair hi + lo: each addition's rounding
 * error is gathered in lo (not renormalised at every step, so that adding
 * is a short dependency chain), and the pair is normalised when it is read
 * (dd_value, dd_normalized). Its error is about 2^-104 of the terms, so
 * the same terms added in any grouping round to the same double, save when
 * the sum lies within about 2^-100 of a rounding boundary. */
typedef struct {
    double hi, lo;
} ce_dd;

static void dd_add(ce_dd *a, double b)
{
    const double s = a->hi + b;
    const double bb = s - a->hi;
    a->lo += (a->hi - (s - bb)) + (b - bb);
    a->hi = s;
}

/* hi + lo with |lo| <= ulp(hi) / 2; a sum that is not finite is hi alone
 * (its lo may be NaN). */
static ce_dd dd_normalized(ce_dd a)
{
    if (!isfinite(a.hi)) return (ce_dd){a.hi, 0.0};
    const double s = a.hi + a.lo;
    return (ce_dd){s, a.lo - (s - a.hi)};
}

static double dd_value(ce_dd a) { return dd_normalized(a).hi; }

static void dd_add_dd(ce_dd *a, ce_dd b)
{
    dd_add(a, b.hi);
    a->lo += b.lo;
}

/* a += x * y, the product taken exactly. */
static void dd_add_product(ce_dd *a, double x, double y)
{
    const double p = x * y;
    dd_add(a, p);
    if (isfinite(p)) dd_add(a, fma(x, y, -p));
}

static void dd_scale(ce_dd *a, double f)
{
    a->hi *= f;
    a->lo *= f;
}

/* Beyond this maximum a row's frame is the maximum itself (frame_exp2
 * NaN): frame / ln 2 would no longer be an integer that a double holds
 * with room to spare. */
#define CE_FRAME_LIMIT 0x1p30

/* The statistics of a part of a row (a chunk, or a merged run of chunks
 * or shards) in the form that merges exactly (see ce_row_stats): sums of
 * exponentials measured from exp(frame), frame = k ln 2 at or just above
 * the part's maximum, so that two parts come to one frame by a power of
 * two; and the linear sums kept from each chunk's own shift s_c,
 * sum_c lin_c and sum_c s_c asum_c, turned into distances from the row
 * maximum m only at the end: lin = sum_c lin_c + m asum - sum_c s_c asum_c. */
typedef struct {
    double max;
    double frame, k;         /* -inf and 0 while no exponential is in sum */
    ce_dd sum, lin, asum, ashift;
} ce_exact;

static void exact_init(ce_exact *e)
{
    memset(e, 0, sizeof *e);
    e->max = -INFINITY;
    e->frame = -INFINITY;
}

/* The frame of a part whose maximum is m (finite). */
static void frame_of(double m, double *frame, double *k)
{
    if (fabs(m) < CE_FRAME_LIMIT) {
        *k = ceil(m * (1.0 / M_LN2));
        *frame = *k * M_LN2;
    } else {
        *k = NAN;
        *frame = m;
    }
}

/* exp(from - to) for the frames from <= to: a power of two between frames
 * of multiples of ln 2, so applying it is exact. */
static double frame_factor(double from, double k_from, double to, double k_to)
{
    if (from == -INFINITY) return 0.0;
    if (isnan(k_from) || isnan(k_to)) return exp(from - to);
    const double d = k_from - k_to;
    if (d < -1022.0) return d < -1100.0 ? 0.0 : ldexp(1.0, (int)d);
    const uint64_t bits = (uint64_t)(1023 + (int64_t)d) << 52;
    double f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* e.sum += value, measured from exp(frame). */
static void exact_add_sum(ce_exact *e, ce_dd value, double frame, double k)
{
    if (isnan(value.hi) || isnan(e->sum.hi)) {
        e->sum = (ce_dd){NAN, 0.0};
        return;
    }
    if (frame == -INFINITY) return;
    if (frame > e->frame) {
        dd_scale(&e->sum, frame_factor(e->frame, e->k, frame, k));
        e->frame = frame;
        e->k = k;
    } else {
        dd_scale(&value, frame_factor(frame, k, e->frame, e->k));
    }
    dd_add_dd(&e->sum, value);
}

/* The linear sums of a part, and its maximum. */
static void exact_add_linear(ce_exact *e, double max, ce_dd lin, ce_dd asum, ce_dd ashift)
{
    e->max = max > e->max ? max : e->max;
    dd_add_dd(&e->lin, lin);
    dd_add_dd(&e->asum, asum);
    dd_add_dd(&e->ashift, ashift);
}

/* Sets the frame of chunk stats st and its sum of exponentials from it. */
static void chunk_frame(ce_chunk_stats *st)
{
    if (!isfinite(st->max)) {
        /* no exponential (but a NaN among -inf), or +inf: the row's sum
         * means nothing (see merge_row) */
        st->frame = -INFINITY;
        st->k = 0.0;
        st->framed = st->max == -INFINITY && isnan(st->sumexp) ? NAN : 0.0;
        return;
    }
    frame_of(st->max, &st->frame, &st->k);
    st->framed = st->sumexp * st->scale * exp(st->shift - st->frame);
}

/* Chunk stats st into e. */
static void exact_add_chunk(ce_exact *e, const ce_chunk_stats *st)
{
    if (st->lin != 0.0 || st->asum != 0.0) {
        ce_dd ashift = {0.0, 0.0};
        if (st->asum != 0.0) dd_add_product(&ashift, st->asum, st->shift);
        exact_add_linear(e, st->max, (ce_dd){st->lin, 0.0}, (ce_dd){st->asum, 0.0}, ashift);
    } else {
        e->max = st->max > e->max ? st->max : e->max;
    }
    exact_add_sum(e, (ce_dd){st->framed, 0.0}, st->frame, st->k);
}

/* Merged statistics e into mg: sums measured from the maximum. */
static void exact_finish(const ce_exact *e, ce_merged *mg)
{
    const double m = e->max;
    mg->max = m;
    mg->sum = dd_value(e->sum);
    if (e->frame != -INFINITY && isfinite(m)) mg->sum *= exp(e->frame - m);
    ce_dd lin = dd_normalized(e->lin);
    const ce_dd asum = dd_normalized(e->asum), ashift = dd_normalized(e->ashift);
    if (asum.hi != 0.0) {
        dd_add_product(&lin, m, asum.hi);
        dd_add_product(&lin, m, asum.lo);
        dd_add(&lin, -ashift.hi);
        dd_add(&lin, -ashift.lo);
    }
    mg->lin = dd_value(lin);
    mg->asum = asum.hi;
}

/* The exact form of a row's statistics, as ce_row_stats holds it. */
static void exact_store(const ce_exact *e, ce_row_stats *rs)
{
    const ce_dd sum = dd_normalized(e->sum), lin = dd_normalized(e->lin);
    const ce_dd asum = dd_normalized(e->asum), ashift = dd_normalized(e->ashift);
    rs->frame = e->frame;
    rs->frame_exp2 = e->k;
    rs->sum_hi = sum.hi;
    rs->sum_lo = sum.lo;
    rs->lin_hi = lin.hi;
    rs->lin_lo = lin.lo;
    rs->wsum_lo = asum.lo;
    rs->wshift_hi = ashift.hi;
    rs->wshift_lo = ashift.lo;
}

/* A shard's statistics rs into e. */
static void exact_add_shard(ce_exact *e, const ce_row_stats *rs)
{
    exact_add_linear(e, rs->max, (ce_dd){rs->lin_hi, rs->lin_lo}, (ce_dd){rs->wsum, rs->wsum_lo},
                     (ce_dd){rs->wshift_hi, rs->wshift_lo});
    if (rs->max != INFINITY)
        exact_add_sum(e, (ce_dd){rs->sum_hi, rs->sum_lo}, rs->frame, rs->frame_exp2);
}

/* ---- sweep 1 ------------------------------------------------------------ */

/* Elements at the start of a chunk whose maximum is the reference shift
 * offered to the chunk (ce_chunk_opts.ref): taken from the chunk itself, so
 * that a chunk's statistics depend on its own elements only, and a shard of
 * the vocabulary cut at chunk boundaries sees the same chunks as the whole
 * row. */
#define CE_REF_BLOCK 64

/* Below this, a chunk's sum of exponentials relative to its own maximum is
 * taken again exactly (see chunk_sumexp_exact): the sum of a row is at
 * least the sum of the chunk holding its maximum, and log(sum) < 0.118,
 * where an absolute error of 1e-7 would exceed 1e-6 of it. */
#define CE_EXACT_SUM_BELOW 1.125

/* The reference shift offered to a chunk of n elements at x: the largest
 * of its first CE_REF_BLOCK; -inf without one pass. */
static double chunk_reference(const ce_plan *pl, const char *x, int64_t n)
{
    if (!pl->one_pass) return -INFINITY;
    return pl->leaf->max(x, n < CE_REF_BLOCK ? n : CE_REF_BLOCK, pl->opts.softcap);
}

/* The chunk's sum of exponentials, as sweep 1 computed them, re-added
 * without rounding in the compute type when the chunk is dominated by its
 * maximum: sweep 1 adds a few exponentials per lane in float before
 * widening, and next to the maximum's exp(0) = 1 each such addition loses
 * up to 6e-8, which is most of log(sum) when the sum is barely above 1 (a
 * confident row, whose loss is small). Other chunks' rounding is relative
 * to their own, smaller, share of the row. The exponentials re-added are
 * the ones sweep 1 computed (stored at e, or recomputed from the logits
 * with the same shift), so that a loss does not depend on whether a
 * gradient was asked. */
static void chunk_sumexp_exact(const ce_plan *pl, const char *x, const char *e, int64_t n,
                               const ce_chunk_opts *opts, ce_chunk_stats *st)
{
    /* framed <= the sum from max < 2 framed, as frame - max < ln 2 */
    if (!isfinite(st->max) || !(st->framed < CE_EXACT_SUM_BELOW)) return;
    if (!(st->framed * exp(st->frame - st->max) < CE_EXACT_SUM_BELOW)) return;
    st->sumexp = pl->leaf->exact_sumexp(e ? e : x, n, e != NULL, st->shift, opts);
    chunk_frame(st);
}

/* Stats of chunk c of row r. Reads the target's logit first if the chunk
 * holds it, because storing exponentials may overwrite it (in place). */
static void sweep1_chunk(const ce_plan *pl, int64_t r, int64_t c, ce_chunk_stats *st,
                         double *target_logit)
{
    const ce_problem *p = pl->p;
    const int64_t j0 = c * CE_CHUNK, n = chunk_len(pl, c);
    const char *x = row_of(p->x, r, p->x_stride, pl->esize) + (size_t)j0 * pl->esize;
    if (p->target) {
        const int64_t t = p->target[r] - p->vocab_start - j0;
        if (t >= 0 && t < n) *target_logit = capped(pl, load_as_double(x, t, p->dtype));
    }
    char *e = pl->store_exp ? exp_row(pl, r) + (size_t)j0 * pl->aux_size : NULL;
    ce_chunk_opts opts = chunk_opts(pl, r, c);
    opts.ref = chunk_reference(pl, x, n);
    pl->leaf->stats(x, n, e, &opts, st);
    chunk_frame(st);
    chunk_sumexp_exact(pl, x, e, n, &opts, st);
}

/* ---- merge -------------------------------------------------------------- */

/* First index of the row maximum (the first NaN if the row has one, as
 * numpy.argmax), found in the first chunk that holds it. With soft-capping
 * m is capped: the chunks' own maxima are then taken again uncapped, so
 * that the answer is the argmax of the logits (the cap keeps their order,
 * up to the ties its rounding makes). */
static int64_t row_argmax(const ce_plan *pl, int64_t r, const ce_chunk_stats *st, double m,
                          int has_nan)
{
    const ce_problem *p = pl->p;
    const char *x = row_of(p->x, r, p->x_stride, pl->esize);
    if (has_nan) {
        for (int64_t j = 0; j < p->n_cols; ++j)
            if (isnan(load_as_double(x, j, p->dtype))) return j;
    }
    int64_t best = -1;
    if (pl->opts.softcap > 0.0) {
        for (int64_t c = 0; c < pl->n_chunks; ++c) {
            const double raw = pl->leaf->max(x + (size_t)(c * CE_CHUNK) * pl->esize,
                                             chunk_len(pl, c), 0.0);
            if (best < 0 || raw > m) {
                m = raw;
                best = c;
            }
        }
    } else {
        for (best = 0; best < pl->n_chunks - 1 && st[best].max != m; ++best) continue;
    }
    const int64_t j0 = best * CE_CHUNK, n = chunk_len(pl, best);
    for (int64_t j = j0; j < j0 + n; ++j)
        if (load_as_double(x, j, p->dtype) == m) return j;
    return 0;
}

/* exp(shift - m) * scale: what a chunk's exponentials are worth against
 * the row maximum m; 0 for a chunk of -inf only (whose sums are 0, or
 * NaN). */
static double chunk_weight(const ce_chunk_stats *s, double m)
{
    return s->max == -INFINITY ? 0.0 : exp(s->shift - m) * s->scale;
}

/* The merge of a row's chunk stats st[0:n], in order, into mg (and into
 * exact, when not NULL). The entropy term, which token statistics alone
 * ask for, is merged directly from the row maximum. The sum of
 * exponentials means nothing when the maximum is +inf: the callers set it. */
static void merge_parts(const ce_chunk_stats *st, int64_t n, int with_entropy, ce_merged *mg,
                        ce_exact *exact)
{
    ce_exact e;
    exact_init(&e);
    for (int64_t c = 0; c < n; ++c) exact_add_chunk(&e, &st[c]);
    exact_finish(&e, mg);
    if (exact) *exact = e;
    double ent = 0.0;
    for (int64_t c = 0; with_entropy && c < n; ++c) {
        const double rel = chunk_weight(&st[c], mg->max);
        if (rel != 0.0) ent += rel * (st[c].ent + (mg->max - st[c].shift) * st[c].sumexp);
    }
    mg->ent = ent;
}

static int row_has_nan(const ce_plan *pl, int64_t r)
{
    const ce_problem *p = pl->p;
    const char *x = row_of(p->x, r, p->x_stride, pl->esize);
    for (int64_t j = 0; j < p->n_cols; ++j)
        if (isnan(load_as_double(x, j, p->dtype))) return 1;
    return 0;
}

/* Merges the chunk stats of row r; returns whether the row was read again
 * after sweep 1 (to look for NaN). */
static int merge_row(const ce_plan *pl, int64_t r, const ce_chunk_stats *st, ce_merged *mg,
                     ce_exact *exact)
{
    merge_parts(st, pl->n_chunks, pl->opts.entropy, mg, exact);
    if (mg->max != INFINITY) return 0;
    /* exp(x - inf) means nothing: a row holding +inf has log-sum-exp +inf
     * (NaN if it also holds a NaN), as in NumPy and SciPy. */
    mg->sum = row_has_nan(pl, r) ? NAN : 1.0;
    return 1;
}

/* ---- finishing ---------------------------------------------------------- */

/* The loss of a row (hard or soft targets) from its merged statistics,
 * target logit and weight wt, and in row what sweep 2 needs for its
 * gradient (times scale). Written as sums of non-negative parts measured
 * from the row maximum so that nothing cancels:
 * lse - x_j = (m - x_j) + log_sum. */
static double finish_loss(const ce_problem *p, double n_classes, const ce_merged *mg,
                          double target_logit, double wt, double scale, ce_row *row)
{
    const double eps = p->smoothing, V = n_classes;
    const double m = mg->max, log_sum = row->log_sum;
    double loss, a_total;
    if (p->soft) {
        loss = mg->lin + mg->asum * log_sum;
        a_total = mg->asum;
        row->c = scale;
    } else {
        /* a target of weight 0 adds nothing, even at a logit of -inf (as
         * soft targets' terms with w_j q_j == 0) */
        const double a_t = (1.0 - eps) * wt;
        loss = a_t != 0.0 ? a_t * ((m - target_logit) + log_sum) : 0.0;
        if (eps > 0.0) loss += eps / V * (mg->lin + p->weight_sum * log_sum);
        a_total = (1.0 - eps) * wt + eps / V * p->weight_sum;
        row->c = scale * eps / V;
        row->target_delta = -scale * (1.0 - eps) * wt;
    }
    if (p->z_loss != 0.0) {
        /* z_loss * lse^2, whose gradient is 2 z_loss lse softmax */
        const double lse = m + log_sum;
        loss += p->z_loss * lse * lse;
        a_total += 2.0 * p->z_loss * lse;
    }
    row->g = scale * a_total / mg->sum;
    /* A row holding +inf has no distribution: its loss is NaN, as
     * PyTorch's (inf - inf), whatever the target. */
    return m == INFINITY ? NAN : loss;
}

/* The statistics of row r of a vocabulary shard (CE_MODE_ROW_STATS). */
static ce_row_stats shard_stats(const ce_plan *pl, int64_t r, const ce_chunk_stats *st,
                                const ce_merged *mg, const ce_exact *exact,
                                double target_logit)
{
    const ce_problem *p = pl->p;
    ce_row_stats rs;
    memset(&rs, 0, sizeof rs);
    exact_store(exact, &rs);
    rs.max = mg->max;
    rs.sumexp = mg->sum;
    rs.lin = mg->lin;
    rs.wsum = mg->asum;
    const int64_t t = p->target ? p->target[r] - p->vocab_start : -1;
    if (t >= 0 && t < p->n_cols) {
        rs.target_logit = target_logit;
        rs.target_weight = row_weight(pl, r);
        rs.target_found = 1.0;
    }
    rs.argmax = (double)(p->vocab_start + row_argmax(pl, r, st, mg->max, isnan(mg->sum)));
    return rs;
}

/* Merges the chunk stats of row r in chunk order and finishes it for the
 * mode: prepares sweep 2 and, when writer, stores the row's results. An
 * ignored row (ignored) only stores its log-sum-exp and argmax. */
static void summarize_row(const ce_plan *pl, int64_t r, const ce_chunk_stats *st,
                          double target_logit, ce_row *row, int writer, int ignored)
{
    const ce_problem *p = pl->p;
    ce_merged mg;
    ce_exact exact;
    row->reread = merge_row(pl, r, st, &mg, &exact);
    const double m = mg.max, sum = mg.sum;
    const double log_sum = log(sum);
    row->ignored = ignored;
    row->max = m;
    row->log_sum = log_sum;
    row->g = 0.0;
    row->c = 0.0;
    row->target_delta = 0.0;

    switch (p->mode) {
    case CE_MODE_LOGSUMEXP:
        if (writer && p->row_out) p->row_out[r] = m + log_sum;
        return;
    case CE_MODE_SOFTMAX:
        row->g = 1.0 / sum;
        return;
    case CE_MODE_LOG_SOFTMAX:
        return;
    case CE_MODE_TOKEN_STATS:
        if (writer && p->row_out) {
            const int counted = p->target != NULL && p->target[r] != p->ignore_index;
            /* a row holding +inf has no distribution: NaN, as its loss */
            p->row_out[r] = counted && m != INFINITY ? (m - target_logit) + log_sum : NAN;
            /* H = sum_j p_j (lse - x_j) = log_sum + sum_j p_j (m - x_j) */
            p->row_entropy[r] = log_sum + mg.ent / sum;
            p->row_argmax[r] = row_argmax(pl, r, st, m, isnan(sum));
        }
        return;
    case CE_MODE_ROW_STATS:
        if (writer) p->row_stats[r] = shard_stats(pl, r, st, &mg, &exact, target_logit);
        return;
    default:
        break;
    }

    if (writer) {
        if (p->row_lse) p->row_lse[r] = m + log_sum;
        if (p->row_argmax) p->row_argmax[r] = row_argmax(pl, r, st, m, isnan(sum));
    }
    if (ignored) return;
    const double wt = p->soft ? 1.0 : row_weight(pl, r);
    const double loss = finish_loss(p, pl->n_classes, &mg, target_logit, wt, row_scale(pl, r), row);
    if (writer && p->row_out) p->row_out[r] = loss;
}

/* ---- statistics of vocabulary shards ------------------------------------ */

int ce_merge_row_stats(const ce_row_stats *parts, int64_t n_parts, int64_t n_rows,
                       ce_row_stats *out)
{
    if (n_parts < 1 || n_rows < 0 || parts == NULL || out == NULL) return CE_ERR_ARGS;
    for (int64_t r = 0; r < n_rows; ++r) {
        ce_row_stats rs;
        memset(&rs, 0, sizeof rs);
        ce_exact e;
        exact_init(&e);
        int has_nan = 0;
        for (int64_t k = 0; k < n_parts; ++k) {
            const ce_row_stats *s = &parts[k * n_rows + r];
            exact_add_shard(&e, s);
            has_nan |= isnan(s->sumexp);
            rs.target_logit += s->target_logit;
            rs.target_weight += s->target_weight;
            rs.target_found += s->target_found;
        }
        ce_merged mg;
        exact_finish(&e, &mg);
        if (mg.max == INFINITY) mg.sum = has_nan ? NAN : 1.0;
        /* the first NaN, else the first maximum, as row_argmax */
        int64_t first = 0;
        while (first < n_parts - 1 &&
               (has_nan ? !isnan(parts[first * n_rows + r].sumexp)
                        : parts[first * n_rows + r].max != mg.max))
            ++first;
        exact_store(&e, &rs);
        rs.max = mg.max;
        rs.sumexp = mg.sum;
        rs.lin = mg.lin;
        rs.wsum = mg.asum;
        rs.argmax = parts[first * n_rows + r].argmax;
        out[r] = rs;
    }
    return CE_OK;
}

int ce_finish_row_stats(const ce_problem *p, const ce_row_stats *stats)
{
    if (p->n_rows < 0 || p->target == NULL || stats == NULL) return CE_ERR_ARGS;
    const double n_classes = (double)(p->vocab_size > 0 ? p->vocab_size : p->n_cols);
    for (int64_t r = 0; r < p->n_rows; ++r) {
        const ce_row_stats *s = &stats[r];
        const ce_merged mg = {s->max, s->sumexp, s->lin, s->wsum, 0.0};
        ce_row row;
        memset(&row, 0, sizeof row);
        row.log_sum = log(s->sumexp);
        if (p->row_lse) p->row_lse[r] = s->max + row.log_sum;
        if (p->row_argmax) p->row_argmax[r] = (int64_t)s->argmax;
        if (p->row_out == NULL) continue;
        p->row_out[r] = p->target[r] == p->ignore_index
                            ? 0.0
                            : finish_loss(p, n_classes, &mg, s->target_logit, s->target_weight,
                                          1.0, &row);
    }
    return CE_OK;
}

/* ---- sweep 2 ------------------------------------------------------------ */

static void zero_chunk(const ce_plan *pl, int64_t r, int64_t c)
{
    const ce_problem *p = pl->p;
    char *out = (char *)row_of(p->out, r, p->out_stride, pl->esize);
    memset(out + (size_t)(c * CE_CHUNK) * pl->esize, 0, (size_t)chunk_len(pl, c) * pl->esize);
}

/* The factor of a chunk's exponentials exp(x - shift) in sweep 2. */
static double chunk_factor(const ce_chunk_stats *st, const ce_row *row)
{
    /* A row of -inf only has no distribution, nor has a row holding +inf
     * (inf / inf): their softmax and gradient are NaN, as in SciPy and
     * PyTorch. */
    if (row->max == -INFINITY || row->max == INFINITY) return NAN;
    /* A chunk of -inf only contributes 0 (not g * its weight: g may be inf). */
    if (st->max == -INFINITY) return 0.0;
    return row->g * exp(st->shift - row->max) * st->scale;
}

static void sweep2_chunk(const ce_plan *pl, int64_t r, int64_t c,
                         const ce_chunk_stats *st, const ce_row *row)
{
    const ce_problem *p = pl->p;
    const int64_t j0 = c * CE_CHUNK, n = chunk_len(pl, c);
    char *out = (char *)row_of(p->out, r, p->out_stride, pl->esize);
    if (p->mode == CE_MODE_LOG_SOFTMAX) {
        const char *x = row_of(p->x, r, p->x_stride, pl->esize);
        pl->leaf->shift(x + (size_t)j0 * pl->esize, n, out + (size_t)j0 * pl->esize,
                        row->max, row->log_sum);
        return;
    }
    const double f = chunk_factor(&st[c], row);
    const ce_chunk_opts opts = chunk_opts(pl, r, c);
    /* the target's own term, added in the kernel before the output rounds */
    const int64_t t_local =
        p->target && row->target_delta != 0.0 ? p->target[r] - p->vocab_start - j0 : -1;
    if (pl->store_exp) {
        pl->leaf->rescale(exp_row(pl, r) + (size_t)j0 * pl->aux_size,
                          out + (size_t)j0 * pl->esize, n, f, row->c, &opts, t_local,
                          row->target_delta);
    } else {
        const char *x = row_of(p->x, r, p->x_stride, pl->esize);
        pl->leaf->rescale_from_x(x + (size_t)j0 * pl->esize, out + (size_t)j0 * pl->esize, n,
                                 st[c].shift, f, row->c, &opts, t_local, row->target_delta);
    }
}

/* ---- the gradient of a shard from its row's log-sum-exp ------------------ */

/* Chunk c of row r in CE_MODE_GRAD_FROM_LSE: the gradient straight from
 * the logits, in one sweep and without any statistics of the row. The
 * softmax exp(x - lse) is taken as exp(x - s) * exp(s - lse), where s is
 * lse rounded to the compute type, so that x - s is as exact as the x - max
 * of sweep 1. Each element depends on its own logit only: the result is
 * the same however the vocabulary is split. */
static void lse_grad_chunk(const ce_plan *pl, int64_t r, int64_t c)
{
    const ce_problem *p = pl->p;
    if (row_ignored(pl, r)) {
        zero_chunk(pl, r, c);
        return;
    }
    const double lse = p->lse_in[r], eps = p->smoothing, V = pl->n_classes;
    const double scale = row_scale(pl, r), wt = row_weight(pl, r);
    double a_total = (1.0 - eps) * wt + eps / V * p->weight_sum;
    if (p->z_loss != 0.0) a_total += 2.0 * p->z_loss * lse;
    const double s = pl->esize == sizeof(double) ? lse : (double)(float)lse;
    /* a row of -inf only, or holding +inf or NaN, has no distribution */
    const double f = isfinite(lse) ? scale * a_total * exp(s - lse) : NAN;
    const int64_t j0 = c * CE_CHUNK;
    const ce_chunk_opts opts = chunk_opts(pl, r, c);
    const char *x = row_of(p->x, r, p->x_stride, pl->esize);
    char *out = (char *)row_of(p->out, r, p->out_stride, pl->esize);
    pl->leaf->rescale_from_x(x + (size_t)j0 * pl->esize, out + (size_t)j0 * pl->esize,
                             chunk_len(pl, c), s, f, scale * eps / V, &opts,
                             p->target[r] - p->vocab_start - j0, -scale * (1.0 - eps) * wt);
}

/* Every chunk of every row, spread evenly over the threads. */
static void run_lse_grad(const ce_plan *pl, int n_threads, ce_stopper *stopper)
{
    const int64_t nc = pl->n_chunks, units = pl->p->n_rows * nc;
#ifdef _OPENMP
    #pragma omp parallel num_threads(n_threads)
    {
        const int caller = omp_get_thread_num() == 0;
        #pragma omp for schedule(static)
        for (int64_t u = 0; u < units; ++u) {
            if (ce_stopper_stopped(stopper)) continue;
            lse_grad_chunk(pl, u / nc, u % nc);
            if (caller) ce_stopper_tick(stopper, chunk_len(pl, u % nc));
        }
    }
#else
    (void)n_threads;
    for (int64_t u = 0; u < units && !ce_stopper_stopped(stopper); ++u) {
        lse_grad_chunk(pl, u / nc, u % nc);
        ce_stopper_tick(stopper, chunk_len(pl, u % nc));
    }
#endif
}

/* ---- drivers ------------------------------------------------------------- */

/* Row r from start to end on the calling thread. An ignored row gives 0
 * (and a zero gradient), and its statistics only when they are asked. */
static void run_row(const ce_plan *pl, int64_t r, ce_chunk_stats *st)
{
    const ce_problem *p = pl->p;
    const int ignored = row_ignored(pl, r);
    if (ignored && p->row_out) p->row_out[r] = 0.0;
    if (!ignored || pl->stats_of_ignored) {
        const ce_plan *q = ignored ? pl->quiet : pl;
        double target_logit = 0.0;
        ce_row row;
        for (int64_t c = 0; c < q->n_chunks; ++c) sweep1_chunk(q, r, c, &st[c], &target_logit);
        summarize_row(q, r, st, target_logit, &row, 1, ignored);
        if (!ignored && pl->second_sweep)
            for (int64_t c = 0; c < pl->n_chunks; ++c) sweep2_chunk(pl, r, c, st, &row);
    }
    if (ignored && pl->second_sweep)
        for (int64_t c = 0; c < pl->n_chunks; ++c) zero_chunk(pl, r, c);
}

/* Whole rows per thread: the common case of many rows. The calling thread
 * polls for a stop as it goes; once one is asked every thread skips the
 * rows it has left. */
static void run_by_rows(const ce_plan *pl, ce_chunk_stats *scratch, int n_threads,
                        ce_stopper *stopper)
{
    const int64_t n_rows = pl->p->n_rows, n_cols = pl->p->n_cols;
#ifdef _OPENMP
    #pragma omp parallel num_threads(n_threads)
    {
        const int caller = omp_get_thread_num() == 0;
        ce_chunk_stats *st = scratch + (size_t)omp_get_thread_num() * (size_t)pl->n_chunks;
        /* this thread's row of exponentials, if they are kept aside */
        ce_plan mine = *pl;
        if (mine.exp_buf)
            mine.exp_buf += (size_t)omp_get_thread_num() * (size_t)n_cols * pl->aux_size;
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < n_rows; ++r) {
            if (ce_stopper_stopped(stopper)) continue;
            run_row(&mine, r, st);
            if (caller) ce_stopper_tick(stopper, n_cols);
        }
    }
#else
    (void)n_threads;
    for (int64_t r = 0; r < n_rows && !ce_stopper_stopped(stopper); ++r) {
        run_row(pl, r, scratch);
        ce_stopper_tick(stopper, n_cols);
    }
#endif
}

#ifdef _OPENMP
/* Every row split across all threads by chunks: for fewer rows than
 * threads can keep busy. The chunk stats are merged by every thread in
 * the same order, so all agree without another barrier. */
static void run_by_chunks(const ce_plan *pl, ce_chunk_stats *st, int n_threads,
                          ce_stopper *stopper)
{
    const ce_problem *p = pl->p;
    const int64_t nc = pl->n_chunks;
    double target_logit = 0.0;
    #pragma omp parallel num_threads(n_threads)
    {
        const int master = omp_get_thread_num() == 0;
        for (int64_t r = 0; r < p->n_rows; ++r) {
            /* The stop is polled between rows, so that every thread reads
             * the same answer: all have read the last one, the caller
             * polls, then all read. */
            #pragma omp barrier
            if (master && r > 0) ce_stopper_tick(stopper, p->n_cols);
            #pragma omp barrier
            if (ce_stopper_stopped(stopper)) break;
            const int ignored = row_ignored(pl, r);
            if (ignored && master && p->row_out) p->row_out[r] = 0.0;
            if (!ignored || pl->stats_of_ignored) {
                const ce_plan *q = ignored ? pl->quiet : pl;
                #pragma omp for schedule(static)
                for (int64_t c = 0; c < nc; ++c) sweep1_chunk(q, r, c, &st[c], &target_logit);
                ce_row row;
                summarize_row(q, r, st, target_logit, &row, master, ignored);
                if (!ignored && pl->second_sweep) {
                    /* every thread must have finished reading the row
                     * before any overwrites it (in place, or the stored
                     * exponentials) */
                    if (row.reread || p->row_argmax != NULL) {
                        #pragma omp barrier
                    }
                    #pragma omp for schedule(static)
                    for (int64_t c = 0; c < nc; ++c) sweep2_chunk(pl, r, c, st, &row);
                    continue;
                }
                #pragma omp barrier
            }
            if (ignored && pl->second_sweep) {
                #pragma omp for schedule(static)
                for (int64_t c = 0; c < nc; ++c) zero_chunk(pl, r, c);
            }
        }
    }
}
#endif

/* The outputs a mode needs are there. */
static int outputs_given(const ce_problem *p)
{
    switch (p->mode) {
    case CE_MODE_ROW_STATS: return p->row_stats != NULL;
    case CE_MODE_GRAD_FROM_LSE: return p->out != NULL && p->lse_in != NULL && p->target != NULL;
    default: return 1;
    }
}

int ce_run(const ce_problem *p, int n_threads)
{
    if (p->n_rows < 0 || p->n_cols < 1 || p->x == NULL || p->vocab_start < 0 ||
        !outputs_given(p))
        return CE_ERR_ARGS;
    if (p->n_rows == 0) return CE_OK;
    ce_plan pl, quiet;
    plan_init(&pl, p);
    /* ignored rows' statistics: sweep 1 storing nothing into the output */
    quiet = pl;
    quiet.store_exp = 0;
    pl.quiet = quiet.quiet = &quiet;

    const int nt = ce_threads_for(p->n_rows * p->n_cols, p->n_rows * pl.n_chunks, n_threads);
    ce_stopper stopper;
    ce_stopper_init(&stopper, &p->interrupt);
    if (p->mode == CE_MODE_GRAD_FROM_LSE) {
        run_lse_grad(&pl, nt, &stopper);
        return ce_stopper_stopped(&stopper) ? CE_INTERRUPTED : CE_OK;
    }

    /* Few rows: split each row's vocabulary so every thread has work. */
    const int by_chunks = nt > 1 && p->n_rows < 4 * (int64_t)nt && pl.n_chunks >= nt;
    const size_t n_stats = (size_t)pl.n_chunks * (size_t)(by_chunks ? 1 : nt);
    ce_chunk_stats *scratch = (ce_chunk_stats *)malloc(n_stats * sizeof *scratch);
    /* one row of exponentials per thread working on whole rows; one shared
     * row when the threads split each row */
    const size_t n_exp_rows = !exp_aside(&pl) ? 0 : by_chunks ? 1 : (size_t)nt;
    pl.exp_buf = n_exp_rows ? (char *)malloc(n_exp_rows * (size_t)p->n_cols * pl.aux_size) : NULL;
    if (scratch == NULL || (n_exp_rows && pl.exp_buf == NULL)) {
        free(scratch);
        free(pl.exp_buf);
        return CE_ERR_NOMEM;
    }
#ifdef _OPENMP
    if (by_chunks)
        run_by_chunks(&pl, scratch, nt, &stopper);
    else
#endif
        run_by_rows(&pl, scratch, nt, &stopper);
    free(scratch);
    free(pl.exp_buf);
    return ce_stopper_stopped(&stopper) ? CE_INTERRUPTED : CE_OK;
}

/* ---- the table other extensions call through --------------------------- */

static const ce_kernels_api api_table = {
    CE_KERNELS_ABI_VERSION,
    ce_run,
    ce_default_threads,
    ce_max_threads,
    ce_openmp_enabled,
    ce_active_isa,
    ce_isa_name,
    ce_chunk_size,
};

const ce_kernels_api *ce_kernels_api_table(void) { return &api_table; }

/* ---- the exponential, exposed for accuracy tests ---------------------- */

void ce_exp_f32_array(const float *x, float *y, int64_t n)
{
    leaf_for(ce_active_isa(), CE_FLOAT32)->exp_array(x, y, n);
}

void ce_exp_f64_array(const double *x, double *y, int64_t n)
{
    leaf_for(ce_active_isa(), CE_FLOAT64)->exp_array(x, y, n);
}
