/*
 * Memory floors for the benchmarks: the least time any kernel needs to read
 * (or copy) an array on a given number of threads. Shipped with the
 * package so that anyone can reproduce the comparison on their machine.
 */
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "ce_internal.h"
#include "ce_math.h"

/* Sum of x[0:n] in float vectors of width w (ce_vec.h), four at a time
 * (enough independent additions to keep up with two loads per cycle): the
 * cheapest loop that touches every element once. Its value only keeps the
 * reads from being optimised away. Compiled per instruction set at its
 * register width, like the kernels, so that the floor is as fast as this
 * CPU can read, from cache as from memory. */
#define CE_DEFINE_READ_SPAN(name, target, w)                                 \
    target static double name(const float *x, int64_t n)                     \
    {                                                                        \
        enum { lanes = sizeof(ce_vf##w) / sizeof(float) };                   \
        ce_vf##w acc0 = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0};             \
        int64_t i = 0;                                                       \
        for (; i + 4 * lanes <= n; i += 4 * lanes) {                         \
            acc0 += ce_load_f32##w(x + i);                                   \
            acc1 += ce_load_f32##w(x + i + lanes);                           \
            acc2 += ce_load_f32##w(x + i + 2 * lanes);                       \
            acc3 += ce_load_f32##w(x + i + 3 * lanes);                       \
        }                                                                    \
        acc0 = (acc0 + acc1) + (acc2 + acc3);                                \
        float sums[lanes];                                                   \
        memcpy(sums, &acc0, sizeof sums);                                    \
        double total = 0.0;                                                  \
        for (int l = 0; l < lanes; ++l) total += sums[l];                    \
        for (; i < n; ++i) total += x[i];                                    \
        return total;                                                        \
    }

/* x[i] *= factor over [0, n): one read and one write of every element in
 * place, the least an in-place gradient costs. */
#define CE_DEFINE_UPDATE_SPAN(name, target, w)                               \
    target static void name(float *x, int64_t n, float factor)               \
    {                                                                        \
        enum { lanes = sizeof(ce_vf##w) / sizeof(float) };                   \
        int64_t i = 0;                                                       \
        for (; i + lanes <= n; i += lanes)                                   \
            ce_store_f32##w(x + i, ce_load_f32##w(x + i) * factor);          \
        for (; i < n; ++i) x[i] *= factor;                                   \
    }

CE_DEFINE_READ_SPAN(read_span_baseline, , _w4)
CE_DEFINE_UPDATE_SPAN(update_span_baseline, , _w4)
#if defined(CE_HAVE_X86_DISPATCH)
#define CE_FLOOR_AVX2 __attribute__((target("avx2")))
#define CE_FLOOR_AVX512 __attribute__((target("avx512f,prefer-vector-width=512")))
CE_DEFINE_READ_SPAN(read_span_avx2, CE_FLOOR_AVX2, _w8)
CE_DEFINE_UPDATE_SPAN(update_span_avx2, CE_FLOOR_AVX2, _w8)
CE_DEFINE_READ_SPAN(read_span_avx512, CE_FLOOR_AVX512, _w16)
CE_DEFINE_UPDATE_SPAN(update_span_avx512, CE_FLOOR_AVX512, _w16)
#endif

/* The widest loads this CPU has, whatever path the kernels are forced to. */
static double read_span(const float *x, int64_t n)
{
#if defined(CE_HAVE_X86_DISPATCH)
    const ce_isa best = ce_best_isa();
    if (best == CE_ISA_AVX512) return read_span_avx512(x, n);
    if (best == CE_ISA_AVX2) return read_span_avx2(x, n);
#endif
    return read_span_baseline(x, n);
}

static void update_span(float *x, int64_t n, float factor)
{
#if defined(CE_HAVE_X86_DISPATCH)
    const ce_isa best = ce_best_isa();
    if (best == CE_ISA_AVX512) { update_span_avx512(x, n, factor); return; }
    if (best == CE_ISA_AVX2) { update_span_avx2(x, n, factor); return; }
#endif
    update_span_baseline(x, n, factor);
}

#ifdef _OPENMP
/* [begin, end) of part k of n split into parts equal to within one. */
static void split_range(int64_t n, int parts, int k, int64_t *begin, int64_t *end)
{
    *begin = n * k / parts;
    *end = n * (k + 1) / parts;
}
#endif

double ce_floor_read_f32(const float *x, int64_t n, int n_threads)
{
    double total = 0.0;
#ifdef _OPENMP
    if (n_threads < 1) n_threads = 1;
    #pragma omp parallel num_threads(n_threads) reduction(+ : total)
    {
        int64_t b, e;
        split_range(n, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        total += read_span(x + b, e - b);
    }
#else
    (void)n_threads;
    total = read_span(x, n);
#endif
    return total;
}

void ce_floor_copy_f32(const float *x, float *y, int64_t n, int n_threads)
{
#ifdef _OPENMP
    if (n_threads < 1) n_threads = 1;
    #pragma omp parallel num_threads(n_threads)
    {
        int64_t b, e;
        split_range(n, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        memcpy(y + b, x + b, (size_t)(e - b) * sizeof *y);
    }
#else
    (void)n_threads;
    memcpy(y, x, (size_t)n * sizeof *y);
#endif
}

void ce_floor_update_f32(float *x, int64_t n, float factor, int n_threads)
{
#ifdef _OPENMP
    if (n_threads < 1) n_threads = 1;
    #pragma omp parallel num_threads(n_threads)
    {
        int64_t b, e;
        split_range(n, omp_get_num_threads(), omp_get_thread_num(), &b, &e);
        update_span(x + b, e - b, factor);
    }
#else
    (void)n_threads;
    update_span(x, n, factor);
#endif
}
