/*
 * Vector types and vectorised exponentials (GNU C vector extensions, which
 * GCC and clang compile for any target), at each register width the
 * instruction-set paths use: ce_vec.h, instantiated below, plus single
 * instructions for x86.
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
 * Domain: the kernels evaluate exp(x - shift), where the shift is the
 * chunk's maximum or, in one-pass sums, a reference at most
 * CE_REF_HEADROOM (4) below the elements measured from it, so inputs lie
 * in (-inf, 4] (or NaN). Results below the smallest normal number are
 * flushed to exactly 0 (for float their true size is below 1.2e-38); -inf
 * gives 0; NaN gives NaN. Inputs above 88.37 (float) / 709.43 (double) are
 * outside the domain. The maximum error over [-87.33, 4] is measured by
 * the test suite over every float.
 */
#ifndef CE_MATH_H
#define CE_MATH_H

#include <stdint.h>
#include <string.h>

#define CE_ALWAYS_INLINE static inline __attribute__((always_inline))

/* Vectors never cross a non-inlined call boundary, so the warning about
 * their calling convention does not apply. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

/* The generic arithmetic at each register width: ce_<name>_w4 (16 bytes:
 * SSE2, NEON), ce_<name>_w8 (32 bytes: AVX2), ce_<name>_w16 (64 bytes:
 * AVX-512). */
#define CE_VW _w4
#define CE_VB 16
#define CE_VLANES 4
#define CE_VLO 0, 1
#define CE_VHI 2, 3
#define CE_VALL 0, 1, 2, 3
#include "ce_vec.h"
#undef CE_VW
#undef CE_VB
#undef CE_VLANES
#undef CE_VLO
#undef CE_VHI
#undef CE_VALL

#define CE_VW _w8
#define CE_VB 32
#define CE_VLANES 8
#define CE_VLO 0, 1, 2, 3
#define CE_VHI 4, 5, 6, 7
#define CE_VALL 0, 1, 2, 3, 4, 5, 6, 7
#include "ce_vec.h"
#undef CE_VW
#undef CE_VB
#undef CE_VLANES
#undef CE_VLO
#undef CE_VHI
#undef CE_VALL

#define CE_VW _w16
#define CE_VB 64
#define CE_VLANES 16
#define CE_VLO 0, 1, 2, 3, 4, 5, 6, 7
#define CE_VHI 8, 9, 10, 11, 12, 13, 14, 15
#define CE_VALL 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
#include "ce_vec.h"
#undef CE_VW
#undef CE_VB
#undef CE_VLANES
#undef CE_VLO
#undef CE_VHI
#undef CE_VALL

/* Single instructions for the x86 paths where the generic spelling takes
 * several: hardware float16 conversions (F16C, AVX-512F), lane maxima,
 * fused multiply-subtract, lane tests, bfloat16 widening. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>

#define CE_INLINE_TARGET(t) static inline __attribute__((always_inline, target(t)))

/* ---- AVX2 + FMA + F16C: 8 float lanes ------------------------------------ */

CE_INLINE_TARGET("avx,f16c") ce_vf_w8 ce_f16_load_avx2(const uint16_t *p)
{
    __m128i h;
    memcpy(&h, p, sizeof h);
    return (ce_vf_w8)_mm256_cvtph_ps(h);
}

CE_INLINE_TARGET("avx,f16c") void ce_f16_store_avx2(uint16_t *p, ce_vf_w8 v)
{
    __m128i h = _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    memcpy(p, &h, sizeof h);
}

CE_INLINE_TARGET("avx2") ce_vf_w8 ce_bf16_load_avx2(const uint16_t *p)
{
    __m128i h;
    memcpy(&h, p, sizeof h);
    return (ce_vf_w8)_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
}

/* max_f / max_d in one instruction (the generic select takes a compare and
 * a blend). */
CE_INLINE_TARGET("avx") ce_vf_w8 ce_max_f_avx2(ce_vf_w8 a, ce_vf_w8 b)
{
    return (ce_vf_w8)_mm256_max_ps((__m256)a, (__m256)b);
}

CE_INLINE_TARGET("avx") ce_vd_w8 ce_max_d_avx2(ce_vd_w8 a, ce_vd_w8 b)
{
    return (ce_vd_w8)_mm256_max_pd((__m256d)a, (__m256d)b);
}

/* any_above_f / any_above_d as a compare and a mask test. */
CE_INLINE_TARGET("avx") int ce_any_above_f_avx2(ce_vf_w8 a, ce_vf_w8 b)
{
    return _mm256_movemask_ps(_mm256_cmp_ps((__m256)a, (__m256)b, _CMP_GT_OQ)) != 0;
}

CE_INLINE_TARGET("avx") int ce_any_above_d_avx2(ce_vd_w8 a, ce_vd_w8 b)
{
    return _mm256_movemask_pd(_mm256_cmp_pd((__m256d)a, (__m256d)b, _CMP_GT_OQ)) != 0;
}

/* a * b - c with one rounding (the generic fms_f / fms_d round twice). */
CE_INLINE_TARGET("avx,fma") ce_vf_w8 ce_fms_f_avx2(ce_vf_w8 a, ce_vf_w8 b, ce_vf_w8 c)
{
    return (ce_vf_w8)_mm256_fmsub_ps((__m256)a, (__m256)b, (__m256)c);
}

CE_INLINE_TARGET("avx,fma") ce_vd_w8 ce_fms_d_avx2(ce_vd_w8 a, ce_vd_w8 b, ce_vd_w8 c)
{
    return (ce_vd_w8)_mm256_fmsub_pd((__m256d)a, (__m256d)b, (__m256d)c);
}

/* ---- AVX-512: 16 float lanes --------------------------------------------- */

CE_INLINE_TARGET("avx512f") ce_vf_w16 ce_f16_load_avx512(const uint16_t *p)
{
    __m256i h;
    memcpy(&h, p, sizeof h);
    return (ce_vf_w16)_mm512_cvtph_ps(h);
}

CE_INLINE_TARGET("avx512f") void ce_f16_store_avx512(uint16_t *p, ce_vf_w16 v)
{
    __m256i h = _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    memcpy(p, &h, sizeof h);
}

CE_INLINE_TARGET("avx512f") ce_vf_w16 ce_bf16_load_avx512(const uint16_t *p)
{
    __m256i h;
    memcpy(&h, p, sizeof h);
    return (ce_vf_w16)_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
}

CE_INLINE_TARGET("avx512f") ce_vf_w16 ce_max_f_avx512(ce_vf_w16 a, ce_vf_w16 b)
{
    return (ce_vf_w16)_mm512_max_ps((__m512)a, (__m512)b);
}

CE_INLINE_TARGET("avx512f") ce_vd_w16 ce_max_d_avx512(ce_vd_w16 a, ce_vd_w16 b)
{
    return (ce_vd_w16)_mm512_max_pd((__m512d)a, (__m512d)b);
}

CE_INLINE_TARGET("avx512f") int ce_any_above_f_avx512(ce_vf_w16 a, ce_vf_w16 b)
{
    return _mm512_cmp_ps_mask((__m512)a, (__m512)b, _CMP_GT_OQ) != 0;
}

CE_INLINE_TARGET("avx512f") int ce_any_above_d_avx512(ce_vd_w16 a, ce_vd_w16 b)
{
    return _mm512_cmp_pd_mask((__m512d)a, (__m512d)b, _CMP_GT_OQ) != 0;
}

CE_INLINE_TARGET("avx512f") ce_vf_w16 ce_fms_f_avx512(ce_vf_w16 a, ce_vf_w16 b, ce_vf_w16 c)
{
    return (ce_vf_w16)_mm512_fmsub_ps((__m512)a, (__m512)b, (__m512)c);
}

CE_INLINE_TARGET("avx512f") ce_vd_w16 ce_fms_d_avx512(ce_vd_w16 a, ce_vd_w16 b, ce_vd_w16 c)
{
    return (ce_vd_w16)_mm512_fmsub_pd((__m512d)a, (__m512d)b, (__m512d)c);
}

/* 2^(j/16), j = 0..15, rounded to float: one AVX-512 register. */
static const float ce_exp2_sixteenths[16] = {
    0x1.000000p+0f, 0x1.0b5586p+0f, 0x1.172b84p+0f, 0x1.2387a6p+0f,
    0x1.306fe0p+0f, 0x1.3dea64p+0f, 0x1.4bfdaep+0f, 0x1.5ab07ep+0f,
    0x1.6a09e6p+0f, 0x1.7a1148p+0f, 0x1.8ace54p+0f, 0x1.9c4918p+0f,
    0x1.ae89fap+0f, 0x1.c199bep+0f, 0x1.d5818ep+0f, 0x1.ea4afap+0f,
};

/* exp_f for AVX-512, with fewer multiplies (the part of the work that
 * limits throughput): x = (k + j/16) ln2 + r, |r| <= ln2/32, so
 * exp(x) = 2^k * 2^(j/16) * exp(r), with 2^(j/16) from a 16-entry table
 * in one register (vpermps), exp(r) - 1 by the cubic Taylor polynomial
 * (error below 1e-8 relative) and 2^k by vscalefps. */
CE_INLINE_TARGET("avx512f") ce_vf_w16 ce_exp_f_avx512(ce_vf_w16 x)
{
    const float lo = -87.33654475f;   /* ln(FLT_MIN): below it the result is 0 */
    /* Lanes below lo and -inf compute garbage that the mask clears; NaN
     * compares "not less" and propagates. */
    const __mmask16 keep = _mm512_cmp_ps_mask((__m512)x, _mm512_set1_ps(lo), _CMP_NLT_UQ);
    /* Adding 1.5 * 2^19 rounds x / ln2 to a multiple of 1/16 (for |x / ln2|
     * < 2^18); the low 4 bits of the sum's pattern are then j. */
    const __m512 round_magic = _mm512_set1_ps(786432.0f);
    const __m512 sum = _mm512_fmadd_ps((__m512)x, _mm512_set1_ps(1.44269504088896341f), round_magic);
    const __m512 kj = _mm512_sub_ps(sum, round_magic);          /* k + j/16 */
    /* r = x - (k + j/16) ln2, ln2 split so that the first product is exact */
    __m512 r = _mm512_fnmadd_ps(kj, _mm512_set1_ps(0.693145751953125f), (__m512)x);
    r = _mm512_fnmadd_ps(kj, _mm512_set1_ps(1.42860676533018708e-06f), r);
    const __m512 table = _mm512_loadu_ps(ce_exp2_sixteenths);
    const __m512 t = _mm512_permutexvar_ps(_mm512_castps_si512(sum), table);
    /* exp(r) - 1 = r + r^2 (1/2 + r/6), then 2^(j/16) exp(r) = t + t (exp(r) - 1) */
    const __m512 c = _mm512_fmadd_ps(r, _mm512_set1_ps(1.0f / 6.0f), _mm512_set1_ps(0.5f));
    const __m512 q = _mm512_fmadd_ps(_mm512_mul_ps(r, r), c, r);
    const __m512 y = _mm512_fmadd_ps(t, q, t);
    /* times 2^floor(k + j/16) = 2^k */
    return (ce_vf_w16)_mm512_maskz_scalef_ps(keep, y, kj);
}


/* Tables of log_f for AVX-512, one register each, indexed by the top four
 * fraction bits of m in [0.75, 1.5): cells [1 + j/16, 1 + (j+1)/16) for
 * j < 8 and [0.75 + (j-8)/32, 0.75 + (j-7)/32) above. inv is a 5-bit
 * approximation of the cell's reciprocal (1 in the two cells around 1), so
 * r = m inv - 1 is exact; -log(inv) = hi + lo with hi a multiple of 2^-17,
 * so that k ln2_hi + hi is exact for every float's exponent k. */
static const float ce_log_inv16[16] = {
    0x1p+0f,   0x1.dp-1f, 0x1.cp-1f, 0x1.ap-1f, 0x1.9p-1f, 0x1.8p-1f, 0x1.7p-1f, 0x1.6p-1f,
    0x1.5p+0f, 0x1.4p+0f, 0x1.3p+0f, 0x1.3p+0f, 0x1.2p+0f, 0x1.1p+0f, 0x1.1p+0f, 0x1p+0f,
};
static const float ce_log_hi16[16] = {
    0.0f,         0x1.9338p-4f, 0x1.1178p-3f, 0x1.a94p-3f,  0x1.f99p-3f,  0x1.2696p-2f,
    0x1.522ap-2f, 0x1.7fbp-2f,  -0x1.1676p-2f, -0x1.c9p-3f, -0x1.5ff4p-3f, -0x1.5ff4p-3f,
    -0x1.e27p-4f, -0x1.f0ap-5f, -0x1.f0ap-5f, 0.0f,
};
static const float ce_log_lo16[16] = {
    0.0f,           -0x1.0d1536p-19f, 0x1.d044fcp-20f,  -0x1.2c3752p-19f,
    0x1.c6cb3cp-19f, 0x1.089a6ep-21f, 0x1.c0e714p-19f,  -0x1.7109fap-20f,
    0x1.aa2a2cp-21f, 0x1.070cacp-20f, 0x1.f1eb0ep-20f,  0x1.f1eb0ep-20f,
    -0x1.db8abcp-22f, -0x1.86008cp-20f, -0x1.86008cp-20f, 0.0f,
};

/* log_f for AVX-512, in about two thirds of the operations of the generic
 * one: x = 2^k m with m in [0.75, 1.5) from vgetexpps / vgetmantps
 * (subnormals included), m = (1 + r) / inv from a 16-entry table, and
 * log x = (k ln2_hi + hi) + r + (r^2 P(r) + k ln2_lo + lo), P a cubic fit
 * of (log1p(r) - r) / r^2 on r in [-0.0372, 0.0626] (relative error of
 * log1p below 4.3e-9). The first two terms are added with their rounding
 * error kept (|hi| >= |r| wherever hi is not 0), so the result is rounded
 * about once: measured over every positive float, 0.591 ulp at most.
 * Zero, infinities, negatives and NaN are set by vfixupimmps. */
CE_INLINE_TARGET("avx512f") ce_vf_w16 ce_log_f_avx512(ce_vf_w16 xv)
{
    const __m512 x = (__m512)xv, one = _mm512_set1_ps(1.0f);
    const __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_p75_1p5, _MM_MANT_SIGN_zero);
    __m512 k = _mm512_getexp_ps(x);
    k = _mm512_mask_add_ps(k, _mm512_cmp_ps_mask(m, one, _CMP_LT_OQ), k, one);
    /* m's top four fraction bits; vpermps reads only the low four of each lane */
    const __m512i j = _mm512_srli_epi32(_mm512_castps_si512(m), 19);
    const __m512 inv = _mm512_permutexvar_ps(j, _mm512_loadu_ps(ce_log_inv16));
    const __m512 hi = _mm512_fmadd_ps(k, _mm512_set1_ps(0.693145751953125f),
                                      _mm512_permutexvar_ps(j, _mm512_loadu_ps(ce_log_hi16)));
    const __m512 lo = _mm512_fmadd_ps(k, _mm512_set1_ps(1.42860676533018708e-06f),
                                      _mm512_permutexvar_ps(j, _mm512_loadu_ps(ce_log_lo16)));
    const __m512 r = _mm512_fmsub_ps(m, inv, one);
    const __m512 s = _mm512_add_ps(hi, r);
    const __m512 t = _mm512_add_ps(_mm512_sub_ps(hi, s), r);   /* hi + r = s + t */
    __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(0x1.87893cp-3f), _mm512_set1_ps(-0x1.0046f2p-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0x1.555868p-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(-0x1.fffff8p-2f));
    const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(r, r), p, lo);
    const __m512 y = _mm512_add_ps(s, _mm512_add_ps(t, small));
    /* per input class: QNaN, SNaN -> NaN; +-0 -> -inf; 1 -> +0; -inf -> NaN;
     * +inf -> +inf; negative -> NaN; positive -> y */
    return (ce_vf_w16)_mm512_fixupimm_ps(y, x, _mm512_set1_epi32(0x03538422), 0);
}
#endif

#endif /* CE_MATH_H */
