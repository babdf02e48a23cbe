/*
 * The family's driver (see ce_family.h): splits each problem into rows and
 * fixed chunks of CE_CHUNK elements, hands the chunks to the family's
 * chunk kernels of the active instruction set (ce_family_template.h) and
 * merges chunk results row by row in chunk order, so that results do not
 * depend on the thread count. Threads: ce_threads_for; early stop: the
 * stopper of ce_internal.h.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "ce_family_leaf.h"

static const ce_family_leaf *family_leaf(ce_dtype dtype)
{
    return CE_PICK(ce_family, ce_active_isa(), dtype);
}

static size_t element_size(ce_dtype dtype)
{
    return dtype == CE_FLOAT64 ? 8 : dtype == CE_FLOAT32 ? 4 : 2;
}

/* The compute type's size: targets, weights and per-element losses. */
static size_t compute_size(ce_dtype dtype) { return dtype == CE_FLOAT64 ? 8 : 4; }

/* One chunk of work: chunk c (of n elements from column j0) of row r,
 * unit r * n_chunks + c. */
typedef void (*chunk_fn)(const void *problem, int64_t r, int64_t j0, int64_t n, int64_t unit);

/* Calls chunk() for every chunk of every row, spread over threads by
 * chunks in a fixed static split; the calling thread polls interrupt as
 * it goes, and once a stop is asked every thread skips what it has left. */
static int for_each_chunk(const void *problem, chunk_fn chunk, int64_t n_rows, int64_t n_cols,
                          int n_threads, const ce_interrupt *interrupt)
{
    if (n_rows < 0 || n_cols < 0) return CE_ERR_ARGS;
    const int64_t n_chunks = n_cols > 0 ? (n_cols + CE_CHUNK - 1) / CE_CHUNK : 0;
    const int64_t units = n_rows * n_chunks;
    const int nt = ce_threads_for(n_rows * n_cols, units, n_threads);
    ce_stopper stopper;
    ce_stopper_init(&stopper, interrupt);
    (void)nt;
#ifdef _OPENMP
    #pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int caller = omp_get_thread_num() == 0;
        #pragma omp for schedule(static)
        for (int64_t u = 0; u < units; ++u) {
            if (ce_stopper_stopped(&stopper)) continue;
            const int64_t r = u / n_chunks, j0 = (u % n_chunks) * CE_CHUNK;
            const int64_t n = n_cols - j0 < CE_CHUNK ? n_cols - j0 : CE_CHUNK;
            chunk(problem, r, j0, n, u);
            if (caller) ce_stopper_tick(&stopper, n);
        }
    }
#else
    for (int64_t u = 0; u < units && !ce_stopper_stopped(&stopper); ++u) {
        const int64_t r = u / n_chunks, j0 = (u % n_chunks) * CE_CHUNK;
        const int64_t n = n_cols - j0 < CE_CHUNK ? n_cols - j0 : CE_CHUNK;
        chunk(problem, r, j0, n, u);
        ce_stopper_tick(&stopper, n);
    }
#endif
    return ce_stopper_stopped(&stopper) ? CE_INTERRUPTED : CE_OK;
}

static int64_t chunks_per_row(int64_t n_cols) { return (n_cols + CE_CHUNK - 1) / CE_CHUNK; }

static const char *at(const void *base, int64_t elements, size_t size)
{
    return (const char *)base + elements * (int64_t)size;
}

/* ---- distributions ------------------------------------------------------ */

typedef struct {
    const ce_dist_problem *pr;
    const ce_family_leaf *leaf;
    size_t esize;
    ce_dist_sums *sums;   /* one per chunk */
} dist_job;

static void dist_chunk(const void *job, int64_t r, int64_t j0, int64_t n, int64_t unit)
{
    const dist_job *jb = (const dist_job *)job;
    const ce_dist_problem *pr = jb->pr;
    const char *p = at(pr->p, r * pr->p_stride + j0, jb->esize);
    const char *q = pr->q ? at(pr->q, r * pr->q_stride + j0, jb->esize) : NULL;
    jb->leaf->dist(pr->mode, p, q, n, &jb->sums[unit]);
}

int ce_dist_run(const ce_dist_problem *pr, int n_threads)
{
    if (pr->n_rows < 0 || pr->n_cols < 0) return CE_ERR_ARGS;
    const int64_t n_chunks = chunks_per_row(pr->n_cols);
    dist_job jb = {pr, family_leaf(pr->dtype), element_size(pr->dtype), NULL};
    jb.sums = (ce_dist_sums *)calloc((size_t)(pr->n_rows * n_chunks) + 1, sizeof *jb.sums);
    if (jb.sums == NULL) return CE_ERR_NOMEM;
    const int status = for_each_chunk(&jb, dist_chunk, pr->n_rows, pr->n_cols, n_threads,
                                      &pr->interrupt);
    /* merge each row's chunks in chunk order; the entropy and cross-entropy
     * are the negated sums of p log p and p log q */
    const double sign = pr->mode == CE_DIST_KL ? 1.0 : -1.0;
    for (int64_t r = 0; r < pr->n_rows; ++r) {
        ce_dist_sums row = {0.0, 0.0, 0.0, 0, 0};
        for (int64_t c = 0; c < n_chunks; ++c) {
            const ce_dist_sums *s = &jb.sums[r * n_chunks + c];
            row.total += s->total;
            row.p_sum += s->p_sum;
            row.q_sum += s->q_sum;
            row.p_negative |= s->p_negative;
            row.q_negative |= s->q_negative;
        }
        pr->row_out[r] = sign * row.total;
        if (pr->p_sum) pr->p_sum[r] = row.p_sum;
        if (pr->q_sum) pr->q_sum[r] = row.q_sum;
        if (pr->p_negative) pr->p_negative[r] = (uint8_t)row.p_negative;
        if (pr->q_negative) pr->q_negative[r] = (uint8_t)row.q_negative;
    }
    free(jb.sums);
    return status;
}

/* ---- binary cross-entropy ---------------------------------------------- */

typedef struct {
    const ce_bce_problem *pr;
    const ce_family_leaf *leaf;
    size_t esize, csize;
    double *sums;         /* one per chunk, or NULL */
} bce_job;

/* The operand s at (r, j0), NULL for "all ones". */
static const void *strided_at(const ce_strided *s, int64_t r, int64_t j0, size_t size)
{
    return s->data ? at(s->data, r * s->row_stride + j0 * s->col_stride, size) : NULL;
}

static void bce_chunk(const void *job, int64_t r, int64_t j0, int64_t n, int64_t unit)
{
    const bce_job *jb = (const bce_job *)job;
    const ce_bce_problem *pr = jb->pr;
    ce_bce_chunk c;
    c.mode = pr->mode;
    c.x = at(pr->x, r * pr->x_stride + j0, jb->esize);
    c.y = at(pr->y, r * pr->y_stride + j0, jb->csize);
    c.w = strided_at(&pr->weight, r, j0, jb->csize);
    c.pw = strided_at(&pr->pos_weight, r, j0, jb->csize);
    c.g = (const double *)strided_at(&pr->grad_output, r, j0, sizeof(double));
    c.w_step = pr->weight.col_stride;
    c.pw_step = pr->pos_weight.col_stride;
    c.g_step = pr->grad_output.col_stride;
    c.scale = pr->grad_scale;
    c.elem = pr->elem_out ? (void *)at(pr->elem_out, r * pr->elem_out_stride + j0, jb->csize) : NULL;
    c.grad = pr->grad ? (void *)at(pr->grad, r * pr->grad_stride + j0, jb->esize) : NULL;
    const double sum = jb->leaf->bce(&c, n);
    if (jb->sums) jb->sums[unit] = sum;
}

int ce_bce_run(const ce_bce_problem *pr, int n_threads)
{
    if (pr->n_rows < 0 || pr->n_cols < 0) return CE_ERR_ARGS;
    const int64_t n_chunks = chunks_per_row(pr->n_cols);
    bce_job jb = {pr, family_leaf(pr->dtype), element_size(pr->dtype), compute_size(pr->dtype),
                  NULL};
    if (pr->row_out) {
        jb.sums = (double *)calloc((size_t)(pr->n_rows * n_chunks) + 1, sizeof *jb.sums);
        if (jb.sums == NULL) return CE_ERR_NOMEM;
    }
    const int status = for_each_chunk(&jb, bce_chunk, pr->n_rows, pr->n_cols, n_threads,
                                      &pr->interrupt);
    if (pr->row_out) {
        for (int64_t r = 0; r < pr->n_rows; ++r) {
            double total = 0.0;
            for (int64_t c = 0; c < n_chunks; ++c) total += jb.sums[r * n_chunks + c];
            pr->row_out[r] = total;
        }
        free(jb.sums);
    }
    return status;
}

/* ---- sigmoid ------------------------------------------------------------ */

typedef struct {
    ce_sigmoid_mode mode;
    const ce_family_leaf *leaf;
    size_t esize;
    const void *x;
    void *out;
} sigmoid_job;

static void sigmoid_chunk(const void *job, int64_t r, int64_t j0, int64_t n, int64_t unit)
{
    const sigmoid_job *jb = (const sigmoid_job *)job;
    (void)r;
    (void)unit;
    jb->leaf->sigmoid(jb->mode, at(jb->x, j0, jb->esize), (void *)at(jb->out, j0, jb->esize), n);
}

int ce_sigmoid_run(ce_dtype dtype, ce_sigmoid_mode mode, const void *x, void *out,
                   int64_t n, int n_threads, const ce_interrupt *interrupt)
{
    const sigmoid_job jb = {mode, family_leaf(dtype), element_size(dtype), x, out};
    return for_each_chunk(&jb, sigmoid_chunk, 1, n, n_threads, interrupt);
}

/* ---- the logarithm, exposed for accuracy tests -------------------------- */

void ce_log_f32_array(const float *x, float *y, int64_t n)
{
    family_leaf(CE_FLOAT32)->log_array(x, y, n);
}

void ce_log_f64_array(const double *x, double *y, int64_t n)
{
    family_leaf(CE_FLOAT64)->log_array(x, y, n);
}

/* One float's error against the double reference d, in ulps of the float
 * nearest d (2^(e - 150) for its biased exponent e, 2^-149 below the
 * normal range); inf where d is not finite and f differs (a special
 * value), or f is NaN where d is not. */
static inline double ulp_error(float f, double d)
{
    if (!isfinite(d)) return (f == d || (isnan(f) && isnan(d))) ? 0.0 : INFINITY;
    if (isnan(f)) return INFINITY;
    const float nearest = (float)d;
    uint32_t bits;
    memcpy(&bits, &nearest, sizeof bits);
    const int64_t e = (int64_t)((bits >> 23) & 0xFFu);
    const uint64_t ulp_bits = (uint64_t)((e > 1 ? e : 1) - 150 + 1023) << 52;
    double ulp;
    memcpy(&ulp, &ulp_bits, sizeof ulp);
    return fabs((double)f - d) / ulp;
}

enum { LOG_BLOCK = 4096 };

typedef struct {
    float x[LOG_BLOCK], y[LOG_BLOCK];
    double xd[LOG_BLOCK], yd[LOG_BLOCK];
} log_block;

/* The worst error over the bit patterns begin .. begin + n - 1, the
 * reference computed on the widest path (its float64 log is exact to
 * float's precision on every path; the test suite checks it). */
static double log_block_max_ulp(log_block *b, uint64_t begin, int64_t n)
{
    for (int64_t i = 0; i < n; ++i) {
        const uint32_t bits = (uint32_t)(begin + (uint64_t)i);
        memcpy(&b->x[i], &bits, sizeof bits);
        b->xd[i] = (double)b->x[i];
    }
    ce_log_f32_array(b->x, b->y, n);
    CE_PICK(ce_family, ce_best_isa(), CE_FLOAT64)->log_array(b->xd, b->yd, n);
    double worst = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        const double e = ulp_error(b->y[i], b->yd[i]);
        worst = e > worst ? e : worst;
    }
    return worst;
}

double ce_log_f32_max_ulp(uint32_t first, uint32_t last)
{
    const int64_t n_blocks = (int64_t)(((uint64_t)last - first) / LOG_BLOCK + 1);
    const int nt = ce_threads_for(n_blocks * LOG_BLOCK, n_blocks, 0);
    double worst = 0.0;
    (void)nt;
#ifdef _OPENMP
    #pragma omp parallel num_threads(nt) if (nt > 1) reduction(max : worst)
#endif
    {
        log_block *b = (log_block *)malloc(sizeof *b);
#ifdef _OPENMP
        #pragma omp for schedule(static)
#endif
        for (int64_t k = 0; k < n_blocks; ++k) {
            const uint64_t begin = (uint64_t)first + (uint64_t)k * LOG_BLOCK;
            const uint64_t left = (uint64_t)last - begin + 1;
            const double e = b ? log_block_max_ulp(b, begin, (int64_t)(left < LOG_BLOCK ? left : LOG_BLOCK))
                               : INFINITY;
            if (e > worst) worst = e;
        }
        free(b);
    }
    return worst;
}
