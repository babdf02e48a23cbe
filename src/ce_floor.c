/*
 * Memory floors for the benchmarks: the least time any kernel needs to read
 * (or copy) an array on a given number of threads. Shipped with the
 * package so that anyone can reproduce the comparison on their machine.
 */
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "ce_kernels.h"
#include "ce_math.h"

/* Sum of x[0:n] in 16 float lanes: the cheapest loop that touches every
 * element once. Its value only keeps the reads from being optimised away. */
static double read_span(const float *x, int64_t n)
{
    ce_vf acc0 = {0}, acc1 = {0};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        ce_vf a, b;
        memcpy(&a, x + i, sizeof a);
        memcpy(&b, x + i + 16, sizeof b);
        acc0 += a;
        acc1 += b;
    }
    float lanes[16];
    acc0 += acc1;
    memcpy(lanes, &acc0, sizeof lanes);
    double total = 0.0;
    for (int l = 0; l < 16; ++l) total += lanes[l];
    for (; i < n; ++i) total += x[i];
    return total;
}

/* [begin, end) of part k of n split into parts equal to within one. */
static void split_range(int64_t n, int parts, int k, int64_t *begin, int64_t *end)
{
    *begin = n * k / parts;
    *end = n * (k + 1) / parts;
}

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

/* x[i] *= factor over [0, n): one read and one write of every element in
 * place, the least an in-place gradient costs. */
static void update_span(float *x, int64_t n, float factor)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        ce_vf v;
        memcpy(&v, x + i, sizeof v);
        v *= factor;
        memcpy(x + i, &v, sizeof v);
    }
    for (; i < n; ++i) x[i] *= factor;
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
