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
typedef uint16_t ce_vu16 __attribute__((vector_size(32)));   /* 16 halves */
typedef uint32_t ce_vu32 __attribute__((vector_size(64)));

/* Bitwise select: mask lanes are all ones or all zeros. */
CE_ALWAYS_INLINE ce_vf ce_select_f(ce_vi32 mask, ce_vf a, ce_vf b)
{
    return (ce_vf)(((ce_vi32)a & mask) | ((ce_vi32)b & ~mask));
}

CE_ALWAYS_INLINE ce_vd ce_select_d(ce_vi64 mask, ce_vd a, ce_vd b)
{
    return (ce_vd)(((ce_vi64)a & mask) | ((ce_vi64)b & ~mask));
}

/* a > b ? a : b lane by lane (so a NaN in a yields b), as x86's maxps. */
CE_ALWAYS_INLINE ce_vf ce_max_f(ce_vf a, ce_vf b) { return ce_select_f(a > b, a, b); }
CE_ALWAYS_INLINE ce_vd ce_max_d(ce_vd a, ce_vd b) { return ce_select_d(a > b, a, b); }

/* a * b - c for the baseline path: two roundings on x86-64, which has no
 * FMA there (on other targets the compiler may fuse it). */
CE_ALWAYS_INLINE ce_vf ce_fms_f(ce_vf a, ce_vf b, ce_vf c) { return a * b - c; }
CE_ALWAYS_INLINE ce_vd ce_fms_d(ce_vd a, ce_vd b, ce_vd c) { return a * b - c; }

/* exp(x) / 2^k for k = round(x / ln2), given as the float kf: the
 * Cody-Waite reduction r = x - k ln2 (ln2 split so that k * high part is
 * exact), then a degree-6 fit of exp on [-ln2/2, ln2/2] (max relative
 * error 2e-9). */
CE_ALWAYS_INLINE ce_vf ce_exp_f_reduced(ce_vf x, ce_vf kf)
{
    ce_vf r = x - kf * 0.693359375f;
    r = r - kf * -2.12194440e-4f;
    ce_vf p = r * 0.0013843653723597527f + 0.00837415549904108f;
    p = p * r + 0.04166800156235695f;
    p = p * r + 0.16666431725025177f;
    p = p * r + 0.4999999403953552f;
    p = p * r + 1.0f;
    return p * r + 1.0f;
}

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
    const ce_vf p = ce_exp_f_reduced(xc, kf);
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

/* 16 floats widened to 16 doubles, split into two vectors. With
 * __builtin_shufflevector this compiles to two full-width conversions; a
 * memcpy split may go through the stack on older compilers. */
CE_ALWAYS_INLINE void ce_widen_f(ce_vf v, ce_vd *lo, ce_vd *hi)
{
    ce_vd16 wide = __builtin_convertvector(v, ce_vd16);
#if defined(__clang__) || __GNUC__ >= 12
    *lo = __builtin_shufflevector(wide, wide, 0, 1, 2, 3, 4, 5, 6, 7);
    *hi = __builtin_shufflevector(wide, wide, 8, 9, 10, 11, 12, 13, 14, 15);
#else
    memcpy(lo, &wide, sizeof *lo);
    memcpy(hi, (const char *)&wide + sizeof *lo, sizeof *hi);
#endif
}

/* Two vectors of 8 doubles narrowed to 16 floats. */
CE_ALWAYS_INLINE ce_vf ce_narrow_d(ce_vd lo, ce_vd hi)
{
    ce_vd16 wide;
#if defined(__clang__) || __GNUC__ >= 12
    wide = __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#else
    memcpy(&wide, &lo, sizeof lo);
    memcpy((char *)&wide + sizeof lo, &hi, sizeof hi);
#endif
    return __builtin_convertvector(wide, ce_vf);
}

CE_ALWAYS_INLINE void ce_acc_add_f(ce_acc_f *acc, ce_vf v)
{
    ce_vd lo, hi;
    ce_widen_f(v, &lo, &hi);
    acc->lo += lo;
    acc->hi += hi;
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

/* ---- whole-vector loads and stores of each storage type ------------------ */

CE_ALWAYS_INLINE ce_vf ce_load_f32(const float *p) { ce_vf v; memcpy(&v, p, sizeof v); return v; }
CE_ALWAYS_INLINE ce_vd ce_load_f64(const double *p) { ce_vd v; memcpy(&v, p, sizeof v); return v; }
CE_ALWAYS_INLINE void ce_store_f32(float *p, ce_vf v) { memcpy(p, &v, sizeof v); }
CE_ALWAYS_INLINE void ce_store_f64(double *p, ce_vd v) { memcpy(p, &v, sizeof v); }
CE_ALWAYS_INLINE ce_vu16 ce_load_u16(const uint16_t *p) { ce_vu16 v; memcpy(&v, p, sizeof v); return v; }

/* ---- half-precision storage (float16, bfloat16) <-> float ---------------- */

/* bfloat16 is the top half of a float32. */
CE_ALWAYS_INLINE ce_vf ce_bf16_to_f32(ce_vu16 h)
{
    return (ce_vf)(__builtin_convertvector(h, ce_vu32) << 16);
}

/* Round to nearest even; NaN stays NaN (quiet). */
CE_ALWAYS_INLINE ce_vu16 ce_f32_to_bf16(ce_vf v)
{
    const ce_vu32 u = (ce_vu32)v;
    const ce_vu32 rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    const ce_vu32 quiet_nan = (u >> 16) | 0x40u;
    const ce_vi32 is_nan = v != v;
    const ce_vu32 r = (ce_vu32)(((ce_vi32)quiet_nan & is_nan) | ((ce_vi32)rounded & ~is_nan));
    return __builtin_convertvector(r, ce_vu16);
}

/* IEEE binary16 -> float: exponent and mantissa moved into place and
 * rescaled by 2^112 (which also normalises subnormals); inf/NaN kept. */
CE_ALWAYS_INLINE ce_vf ce_f16_to_f32(ce_vu16 h)
{
    const ce_vu32 w = __builtin_convertvector(h, ce_vu32);
    const ce_vu32 sign = (w & 0x8000u) << 16;
    const ce_vu32 em = w & 0x7FFFu;
    const ce_vf finite = (ce_vf)(em << 13) * 0x1p112f;
    const ce_vi32 special = (ce_vi32)(em >= 0x7C00u);
    const ce_vi32 special_bits = (ce_vi32)((em << 13) | 0x7F800000u);
    const ce_vi32 mag = (special & special_bits) | (~special & (ce_vi32)finite);
    return (ce_vf)((ce_vu32)mag | sign);
}

/* float -> IEEE binary16, round to nearest even, overflow to inf, NaN kept. */
CE_ALWAYS_INLINE ce_vu16 ce_f32_to_f16(ce_vf v)
{
    const ce_vu32 u = (ce_vu32)v;
    const ce_vu32 sign = (u >> 16) & 0x8000u;
    const ce_vu32 a = u & 0x7FFFFFFFu;
    /* normal halves: rebias the exponent, round the 13 dropped bits */
    const ce_vu32 normal = (a + 0xC8000FFFu + ((a >> 13) & 1u)) >> 13;  /* (15-127)<<23 + 0xFFF */
    /* subnormal halves: adding 0.5 lines the value up with 2^-24 units and
     * rounds it; the result's low bits are the half's mantissa */
    const ce_vu32 subnormal = (ce_vu32)((ce_vf)a + 0.5f) - 0x3F000000u;
    ce_vi32 r = (ce_vi32)(a < 0x38800000u);
    r = (r & (ce_vi32)subnormal) | (~r & (ce_vi32)normal);
    const ce_vi32 big = (ce_vi32)(a >= 0x477FF000u);   /* rounds to >= 65520: inf */
    r = (big & 0x7C00) | (~big & r);
    const ce_vi32 nan = (ce_vi32)(a > 0x7F800000u);
    r = (nan & 0x7E00) | (~nan & r);
    return __builtin_convertvector((ce_vu32)r | sign, ce_vu16);
}

CE_ALWAYS_INLINE ce_vf ce_load_bf16(const uint16_t *p) { return ce_bf16_to_f32(ce_load_u16(p)); }
CE_ALWAYS_INLINE ce_vf ce_load_f16(const uint16_t *p) { return ce_f16_to_f32(ce_load_u16(p)); }
CE_ALWAYS_INLINE void ce_store_bf16(uint16_t *p, ce_vf v)
{
    ce_vu16 h = ce_f32_to_bf16(v);
    memcpy(p, &h, sizeof h);
}
CE_ALWAYS_INLINE void ce_store_f16(uint16_t *p, ce_vf v)
{
    ce_vu16 h = ce_f32_to_f16(v);
    memcpy(p, &h, sizeof h);
}

/* Hardware float16 conversions (F16C, AVX-512F), for the paths compiled
 * for those instruction sets: one instruction per 8 or 16 lanes instead of
 * the integer sequence above. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>

#define CE_HAVE_F16C_PATHS 1
#define CE_INLINE_TARGET(t) static inline __attribute__((always_inline, target(t)))

CE_INLINE_TARGET("avx512f") ce_vf ce_f16_load_x512(const uint16_t *p)
{
    __m256i h;
    memcpy(&h, p, sizeof h);
    return (ce_vf)_mm512_cvtph_ps(h);
}

CE_INLINE_TARGET("avx512f") void ce_f16_store_x512(uint16_t *p, ce_vf v)
{
    __m256i h = _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    memcpy(p, &h, sizeof h);
}

/* ce_max_f / ce_max_d in one instruction (the generic select takes a
 * compare and a blend, which GCC spells as four). */
CE_INLINE_TARGET("avx512f") ce_vf ce_max_f_x512(ce_vf a, ce_vf b)
{
    return (ce_vf)_mm512_max_ps((__m512)a, (__m512)b);
}

CE_INLINE_TARGET("avx512f") ce_vd ce_max_d_x512(ce_vd a, ce_vd b)
{
    return (ce_vd)_mm512_max_pd((__m512d)a, (__m512d)b);
}

/* a * b - c with one rounding (ce_fms_f / ce_fms_d round twice). */
CE_INLINE_TARGET("avx512f") ce_vf ce_fms_f_x512(ce_vf a, ce_vf b, ce_vf c)
{
    return (ce_vf)_mm512_fmsub_ps((__m512)a, (__m512)b, (__m512)c);
}

CE_INLINE_TARGET("avx512f") ce_vd ce_fms_d_x512(ce_vd a, ce_vd b, ce_vd c)
{
    return (ce_vd)_mm512_fmsub_pd((__m512d)a, (__m512d)b, (__m512d)c);
}

CE_INLINE_TARGET("avx,fma") ce_vf ce_fms_f_fma(ce_vf a, ce_vf b, ce_vf c)
{
    __m256 ah[2], bh[2], ch[2];
    memcpy(ah, &a, sizeof a);
    memcpy(bh, &b, sizeof b);
    memcpy(ch, &c, sizeof c);
    ah[0] = _mm256_fmsub_ps(ah[0], bh[0], ch[0]);
    ah[1] = _mm256_fmsub_ps(ah[1], bh[1], ch[1]);
    memcpy(&a, ah, sizeof a);
    return a;
}

CE_INLINE_TARGET("avx,fma") ce_vd ce_fms_d_fma(ce_vd a, ce_vd b, ce_vd c)
{
    __m256d ah[2], bh[2], ch[2];
    memcpy(ah, &a, sizeof a);
    memcpy(bh, &b, sizeof b);
    memcpy(ch, &c, sizeof c);
    ah[0] = _mm256_fmsub_pd(ah[0], bh[0], ch[0]);
    ah[1] = _mm256_fmsub_pd(ah[1], bh[1], ch[1]);
    memcpy(&a, ah, sizeof a);
    return a;
}

/* bfloat16 loads: one zero-extension instruction and a shift. */
CE_INLINE_TARGET("avx512f") ce_vf ce_bf16_load_x512(const uint16_t *p)
{
    __m256i h;
    memcpy(&h, p, sizeof h);
    return (ce_vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
}

CE_INLINE_TARGET("avx2") ce_vf ce_bf16_load_avx2(const uint16_t *p)
{
    __m128i lo, hi;
    memcpy(&lo, p, sizeof lo);
    memcpy(&hi, p + 8, sizeof hi);
    __m256i wlo = _mm256_slli_epi32(_mm256_cvtepu16_epi32(lo), 16);
    __m256i whi = _mm256_slli_epi32(_mm256_cvtepu16_epi32(hi), 16);
    ce_vf v;
    memcpy(&v, &wlo, sizeof wlo);
    memcpy((char *)&v + sizeof wlo, &whi, sizeof whi);
    return v;
}

/* 2^(j/16), j = 0..15, rounded to float: one AVX-512 register. */
static const float ce_exp2_sixteenths[16] = {
    0x1.000000p+0f, 0x1.0b5586p+0f, 0x1.172b84p+0f, 0x1.2387a6p+0f,
    0x1.306fe0p+0f, 0x1.3dea64p+0f, 0x1.4bfdaep+0f, 0x1.5ab07ep+0f,
    0x1.6a09e6p+0f, 0x1.7a1148p+0f, 0x1.8ace54p+0f, 0x1.9c4918p+0f,
    0x1.ae89fap+0f, 0x1.c199bep+0f, 0x1.d5818ep+0f, 0x1.ea4afap+0f,
};

/* ce_exp_f for AVX-512, with fewer multiplies (the part of the work that
 * limits throughput): x = (k + j/16) ln2 + r, |r| <= ln2/32, so
 * exp(x) = 2^k * 2^(j/16) * exp(r), with 2^(j/16) from a 16-entry table
 * in one register (vpermps), exp(r) - 1 by the cubic Taylor polynomial
 * (error below 1e-8 relative) and 2^k by vscalefps. */
CE_INLINE_TARGET("avx512f") ce_vf ce_exp_f_x512(ce_vf x)
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
    return (ce_vf)_mm512_maskz_scalef_ps(keep, y, kj);
}

CE_INLINE_TARGET("avx,f16c") ce_vf ce_f16_load_f16c(const uint16_t *p)
{
    __m128i lo, hi;
    memcpy(&lo, p, sizeof lo);
    memcpy(&hi, p + 8, sizeof hi);
    __m256 flo = _mm256_cvtph_ps(lo), fhi = _mm256_cvtph_ps(hi);
    ce_vf v;
    memcpy(&v, &flo, sizeof flo);
    memcpy((char *)&v + sizeof flo, &fhi, sizeof fhi);
    return v;
}

CE_INLINE_TARGET("avx,f16c") void ce_f16_store_f16c(uint16_t *p, ce_vf v)
{
    __m256 flo, fhi;
    memcpy(&flo, &v, sizeof flo);
    memcpy(&fhi, (const char *)&v + sizeof flo, sizeof fhi);
    __m128i lo = _mm256_cvtps_ph(flo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m128i hi = _mm256_cvtps_ph(fhi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    memcpy(p, &lo, sizeof lo);
    memcpy(p + 8, &hi, sizeof hi);
}
#endif

/* tanh in double, for soft-capping: 1 - 2 / (exp(2y) + 1) has an absolute
 * error of a few 1e-16, which is what x' = cap * tanh(x / cap) needs. The
 * argument is clamped so exp stays in its domain (tanh(20) = 1 in double). */
CE_ALWAYS_INLINE ce_vd ce_tanh_d(ce_vd y)
{
    const ce_vi64 big = y > 20.0, small = y < -20.0;
    ce_vd yc = ce_select_d(big, (ce_vd){0} + 20.0, y);
    yc = ce_select_d(small, (ce_vd){0} - 20.0, yc);
    const ce_vd t = 1.0 - 2.0 / (ce_exp_d(2.0 * yc) + 1.0);
    return ce_select_d(yc != yc, yc, t);   /* NaN stays NaN */
}

/* cap * tanh(x / cap), evaluated in double. */
CE_ALWAYS_INLINE ce_vd ce_softcap_d(ce_vd x, double cap)
{
    return cap * ce_tanh_d(x / cap);
}

CE_ALWAYS_INLINE ce_vf ce_softcap_f(ce_vf x, double cap)
{
    ce_vd lo, hi;
    ce_widen_f(x, &lo, &hi);
    return ce_narrow_d(ce_softcap_d(lo, cap), ce_softcap_d(hi, cap));
}

#endif /* CE_MATH_H */
