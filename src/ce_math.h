/*
 * Vector types and vectorised exponentials (GNU C vector extensions, which
 * GCC and clang compile for any target: four SSE registers, two AVX ones or
 * one AVX-512 one per vector, NEON on ARM).
 *
 * libm's exp cannot be vectorised without -ffast-math, which we do not use:
 * NaN and inf keep their meaning everywhere.
 *
 * Method: x = k*ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), exp(r)
 * by a polynomial (a degree-6 fit for float, the degree-13 Taylor
 * polynomial for double; approximation error below 0.1 ulp), and 2^k
 * written directly into the exponent bits. k is read from the bits of the
 * rounding constant, so no float-to-integer conversion is needed (AVX2 has
 * none for 64-bit lanes).
 *
 * Domain: the kernels evaluate exp(x - max), x - max <= 0 (or NaN), and
 * these functions are exact-range only for that use: results below the
 * smallest normal number are flushed to exactly 0 (for float their true
 * size is below 1.2e-38); -inf gives 0; NaN gives NaN. Inputs above
 * 88.37 (float) / 709.43 (double) are outside the domain. The maximum
 * error over [-87.33, 0] is measured by the test suite over every float.
 */
#ifndef CE_MATH_H
#define CE_MATH_H

#include <stdint.h>
#include <string.h>

#define CE_ALWAYS_INLINE static inline __attribute__((always_inline))

/* The 64-byte vectors never cross a non-inlined call boundary, so the
 * warning about their calling convention does not apply. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

/* 64-byte vectors: 16 floats or 8 doubles, and integer vectors to match. */
typedef float ce_vf __attribute__((vector_size(64)));
typedef int32_t ce_vi32 __attribute__((vector_size(64)));
typedef double ce_vd __attribute__((vector_size(64)));
typedef int64_t ce_vi64 __attribute__((vector_size(64)));
typedef float ce_vf8 __attribute__((vector_size(32)));
typedef double ce_vd16 __attribute__((vector_size(128)));

/* Bitwise select: mask lanes are all ones or all zeros. */
CE_ALWAYS_INLINE ce_vf ce_select_f(ce_vi32 mask, ce_vf a, ce_vf b)
{
    return (ce_vf)(((ce_vi32)a & mask) | ((ce_vi32)b & ~mask));
}

CE_ALWAYS_INLINE ce_vd ce_select_d(ce_vi64 mask, ce_vd a, ce_vd b)
{
    return (ce_vd)(((ce_vi64)a & mask) | ((ce_vi64)b & ~mask));
}

CE_ALWAYS_INLINE ce_vf ce_max_f(ce_vf a, ce_vf b) { return ce_select_f(a > b, a, b); }
CE_ALWAYS_INLINE ce_vd ce_max_d(ce_vd a, ce_vd b) { return ce_select_d(a > b, a, b); }

/* exp of 16 floats with x <= 88.37 (the kernels pass x - max <= 0). */
CE_ALWAYS_INLINE ce_vf ce_exp_f(ce_vf x)
{
    const float lo = -87.33654475f;        /* ln(FLT_MIN): below it the result is 0 */
    const float round_magic = 12582912.0f; /* 1.5 * 2^23 */
    /* Below lo (and for -inf) the lanes compute garbage that the final mask
     * clears; NaN compares false and propagates. */
    const ce_vi32 under = x < lo;
    const ce_vf xc = x;
    const ce_vf t = xc * 1.44269504088896341f + round_magic;
    const ce_vf kf = t - round_magic;
    ce_vf r = xc - kf * 0.693359375f;      /* ln2 high part: exact product */
    r = r - kf * -2.12194440e-4f;          /* ln2 low part                 */
    /* Degree-6 fit of exp on [-ln2/2, ln2/2] (max relative error 2e-9). */
    ce_vf p = r * 0.0013843653723597527f + 0.00837415549904108f;
    p = p * r + 0.04166800156235695f;
    p = p * r + 0.16666431725025177f;
    p = p * r + 0.4999999403953552f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* The low 9 bits of t's pattern hold k: shifted into the exponent field
     * they wrap to k << 23; adding the bias gives 2^k. */
    const ce_vi32 scale = ((ce_vi32)t << 23) + (127 << 23);
    const ce_vf y = p * (ce_vf)scale;
    return (ce_vf)((ce_vi32)y & ~under);
}

/* exp of 8 doubles with x <= 709.43 (the kernels pass x - max <= 0). */
CE_ALWAYS_INLINE ce_vd ce_exp_d(ce_vd x)
{
    const double lo = -708.3964185322641;  /* ln(DBL_MIN) */
    const double round_magic = 6755399441055744.0;  /* 1.5 * 2^52 */
    const ce_vi64 under = x < lo;   /* garbage lanes cleared at the end, as in ce_exp_f */
    const ce_vd xc = x;
    const ce_vd t = xc * 1.4426950408889634 + round_magic;
    const ce_vd kf = t - round_magic;
    ce_vd r = xc - kf * 6.93147180369123816490e-01;   /* ln2 high (exact product) */
    r = r - kf * 1.90821492927058770002e-10;          /* ln2 low                  */
    /* Taylor polynomial of degree 13: truncation error below 0.1 ulp. */
    ce_vd p = r * (1.0 / 6227020800.0) + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    /* Low 12 bits of t's pattern hold k (see ce_exp_f). */
    const ce_vi64 scale = ((ce_vi64)t << 52) + ((int64_t)1023 << 52);
    const ce_vd y = p * (ce_vd)scale;
    return (ce_vd)((ce_vi64)y & ~under);
}

/* Sums kept in double: a float vector's lanes go into two double vectors. */
typedef struct { ce_vd lo, hi; } ce_acc_f;
typedef struct { ce_vd v; } ce_acc_d;

CE_ALWAYS_INLINE void ce_acc_add_f(ce_acc_f *acc, ce_vf v)
{
#if defined(__clang__) || __GNUC__ >= 12
    /* Widen all 16 lanes at once, then split in registers: this compiles to
     * two full-width conversions (a union or a per-half conversion goes
     * through memory or through 128-bit pieces). */
    ce_vd16 wide = __builtin_convertvector(v, ce_vd16);
    acc->lo += __builtin_shufflevector(wide, wide, 0, 1, 2, 3, 4, 5, 6, 7);
    acc->hi += __builtin_shufflevector(wide, wide, 8, 9, 10, 11, 12, 13, 14, 15);
#else
    union { ce_vf whole; ce_vf8 half[2]; } u = { v };
    acc->lo += __builtin_convertvector(u.half[0], ce_vd);
    acc->hi += __builtin_convertvector(u.half[1], ce_vd);
#endif
}

CE_ALWAYS_INLINE void ce_acc_add_d(ce_acc_d *acc, ce_vd v) { acc->v += v; }

/* Fixed-order pairwise fold of eight doubles. */
CE_ALWAYS_INLINE double ce_fold8(ce_vd v)
{
    double a[8];
    memcpy(a, &v, sizeof a);
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

CE_ALWAYS_INLINE double ce_acc_sum_f(ce_acc_f acc) { return ce_fold8(acc.lo + acc.hi); }
CE_ALWAYS_INLINE double ce_acc_sum_d(ce_acc_d acc) { return ce_fold8(acc.v); }

#endif /* CE_MATH_H */
