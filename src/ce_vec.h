/*
 * Vector types and the arithmetic built on them, for one register width.
 * ce_math.h includes this file once per width, with
 *
 *   CE_VW       name suffix: _w4, _w8 or _w16 (float lanes per vector)
 *   CE_VB       bytes per vector: 16 (SSE2, NEON), 32 (AVX2), 64 (AVX-512)
 *   CE_VLANES   CE_VB / 4, spelled as a literal
 *   CE_VLO, CE_VHI, CE_VALL   lane indices of the lower and upper half and
 *               of the whole float vector, for __builtin_shufflevector
 *
 * Each instruction-set path computes on vectors exactly as wide as its
 * registers. Wider vectors would work in principle, but GCC lowers their
 * comparisons lane by lane in scalar code and keeps values carried across
 * loop iterations on the stack, which costs several times the arithmetic.
 */

#define CE_VCAT_(a, b, c) a##b##c
#define CE_VCAT(a, b, c) CE_VCAT_(a, b, c)
#define CE_V(name) CE_VCAT(ce_, name, CE_VW)

typedef float CE_V(vf) __attribute__((vector_size(CE_VB)));
typedef int32_t CE_V(vi32) __attribute__((vector_size(CE_VB)));
typedef uint32_t CE_V(vu32) __attribute__((vector_size(CE_VB)));
typedef double CE_V(vd) __attribute__((vector_size(CE_VB)));
typedef int64_t CE_V(vi64) __attribute__((vector_size(CE_VB)));
typedef uint64_t CE_V(vu64) __attribute__((vector_size(CE_VB)));
typedef float CE_V(vf_half) __attribute__((vector_size(CE_VB / 2)));
typedef double CE_V(vd_wide) __attribute__((vector_size(CE_VB * 2)));  /* a vf widened */
typedef uint16_t CE_V(vu16) __attribute__((vector_size(CE_VB / 2)));  /* a vf's halves */

/* {0, 1, ..., lanes - 1}, for lane masks of partial vectors. */
CE_ALWAYS_INLINE CE_V(vi32) CE_V(iota_i32)(void)
{
    CE_V(vi32) v;
    for (int l = 0; l < CE_VLANES; ++l) v[l] = l;
    return v;
}

CE_ALWAYS_INLINE CE_V(vi64) CE_V(iota_i64)(void)
{
    CE_V(vi64) v;
    for (int l = 0; l < CE_VLANES / 2; ++l) v[l] = l;
    return v;
}

/* Bitwise select: mask lanes are all ones or all zeros. */
CE_ALWAYS_INLINE CE_V(vf) CE_V(select_f)(CE_V(vi32) mask, CE_V(vf) a, CE_V(vf) b)
{
    return (CE_V(vf))(((CE_V(vi32))a & mask) | ((CE_V(vi32))b & ~mask));
}

CE_ALWAYS_INLINE CE_V(vd) CE_V(select_d)(CE_V(vi64) mask, CE_V(vd) a, CE_V(vd) b)
{
    return (CE_V(vd))(((CE_V(vi64))a & mask) | ((CE_V(vi64))b & ~mask));
}

/* a > b ? a : b lane by lane (so a NaN in a yields b), as x86's maxps. */
CE_ALWAYS_INLINE CE_V(vf) CE_V(max_f)(CE_V(vf) a, CE_V(vf) b)
{
    return CE_V(select_f)(a > b, a, b);
}

CE_ALWAYS_INLINE CE_V(vd) CE_V(max_d)(CE_V(vd) a, CE_V(vd) b)
{
    return CE_V(select_d)(a > b, a, b);
}

/* Whether a > b in any lane (so NaN lanes count as not above). */
CE_ALWAYS_INLINE int CE_V(any_above_f)(CE_V(vf) a, CE_V(vf) b)
{
    const CE_V(vi32) above = a > b;
    int32_t any = 0;
    for (int l = 0; l < CE_VLANES; ++l) any |= above[l];
    return any != 0;
}

CE_ALWAYS_INLINE int CE_V(any_above_d)(CE_V(vd) a, CE_V(vd) b)
{
    const CE_V(vi64) above = a > b;
    int64_t any = 0;
    for (int l = 0; l < CE_VLANES / 2; ++l) any |= above[l];
    return any != 0;
}

/* a * b - c where the instruction set has no fused form: two roundings on
 * x86-64 (on other targets the compiler may fuse it). */
CE_ALWAYS_INLINE CE_V(vf) CE_V(fms_f)(CE_V(vf) a, CE_V(vf) b, CE_V(vf) c) { return a * b - c; }
CE_ALWAYS_INLINE CE_V(vd) CE_V(fms_d)(CE_V(vd) a, CE_V(vd) b, CE_V(vd) c) { return a * b - c; }

/* ---- exponentials (method and domain: ce_math.h) ------------------------ */

/* exp(x) / 2^k for k = round(x / ln2), given as the float kf: the
 * Cody-Waite reduction r = x - k ln2 (ln2 split so that k * high part is
 * exact), then a degree-6 fit of exp on [-ln2/2, ln2/2] (max relative
 * error 2e-9). */
CE_ALWAYS_INLINE CE_V(vf) CE_V(exp_f_reduced)(CE_V(vf) x, CE_V(vf) kf)
{
    CE_V(vf) r = x - kf * 0.693359375f;
    r = r - kf * -2.12194440e-4f;
    CE_V(vf) p = r * 0.0013843653723597527f + 0.00837415549904108f;
    p = p * r + 0.04166800156235695f;
    p = p * r + 0.16666431725025177f;
    p = p * r + 0.4999999403953552f;
    p = p * r + 1.0f;
    return p * r + 1.0f;
}

/* exp of floats x <= 88.37 (the kernels pass x <= 2). */
CE_ALWAYS_INLINE CE_V(vf) CE_V(exp_f)(CE_V(vf) x)
{
    const float lo = -87.33654475f;        /* ln(FLT_MIN): below it the result is 0 */
    const float round_magic = 12582912.0f; /* 1.5 * 2^23 */
    /* Below lo (and for -inf) the lanes compute garbage that the final mask
     * clears; NaN compares false and propagates. */
    const CE_V(vi32) under = x < lo;
    const CE_V(vf) t = x * 1.44269504088896341f + round_magic;
    const CE_V(vf) kf = t - round_magic;
    const CE_V(vf) p = CE_V(exp_f_reduced)(x, kf);
    /* The low 9 bits of t's pattern hold k: shifted into the exponent field
     * they wrap to k << 23; adding the bias gives 2^k. */
    const CE_V(vi32) scale = ((CE_V(vi32))t << 23) + (127 << 23);
    const CE_V(vf) y = p * (CE_V(vf))scale;
    return (CE_V(vf))((CE_V(vi32))y & ~under);
}

/* exp of doubles x <= 709.43 (the kernels pass x <= 2). */
CE_ALWAYS_INLINE CE_V(vd) CE_V(exp_d)(CE_V(vd) x)
{
    const double lo = -708.3964185322641;  /* ln(DBL_MIN) */
    const double round_magic = 6755399441055744.0;  /* 1.5 * 2^52 */
    const CE_V(vi64) under = x < lo;   /* garbage lanes cleared at the end, as in exp_f */
    const CE_V(vd) t = x * 1.4426950408889634 + round_magic;
    const CE_V(vd) kf = t - round_magic;
    CE_V(vd) r = x - kf * 6.93147180369123816490e-01;   /* ln2 high (exact product) */
    r = r - kf * 1.90821492927058770002e-10;           /* ln2 low                  */
    /* Taylor polynomial of degree 13: truncation error below 0.1 ulp. */
    CE_V(vd) p = r * (1.0 / 6227020800.0) + 1.0 / 479001600.0;
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
    /* Low 12 bits of t's pattern hold k (see exp_f). */
    const CE_V(vi64) scale = ((CE_V(vi64))t << 52) + ((int64_t)1023 << 52);
    const CE_V(vd) y = p * (CE_V(vd))scale;
    return (CE_V(vd))((CE_V(vi64))y & ~under);
}

/* ---- logarithms (method and accuracy: ce_math.h) ----------------------- */

/* log(1 + f) for f in [sqrt(1/2) - 1, sqrt(2) - 1], without a division
 * (slow in vector units): f - f^2 / 2 + f^3 P(f), P a degree-8 fit of
 * (log(1 + f) - f + f^2 / 2) / f^3 minimising the relative error of the
 * result (0.02 float ulp with these float coefficients), evaluated as
 * f + z (f P(f) - 1/2) with z = f^2: f is exact and the correction, at
 * most a fifth of the result, carries the roundings. */
CE_ALWAYS_INLINE CE_V(vf) CE_V(log1p_reduced_f)(CE_V(vf) f)
{
    const CE_V(vf) z = f * f;
    CE_V(vf) p = f * 6.019159779e-02f - 1.128108576e-01f;
    p = p * f + 1.199950427e-01f;
    p = p * f - 1.247936040e-01f;
    p = p * f + 1.421479434e-01f;
    p = p * f - 1.666366756e-01f;
    p = p * f + 2.000215203e-01f;
    p = p * f - 2.500008643e-01f;
    p = p * f + 3.333331347e-01f;
    return f + z * (f * p - 0.5f);
}

/* The same for double, where the division stays: with s = f / (2 + f)
 * and z = s^2, log(1 + f) = 2 atanh(s) = 2s + s z P(z), P the atanh
 * series 2/3 + 2z/5 + ... (z <= 0.0295), and 2s = f - s f, so
 * log(1 + f) = f - s (f - z P(z)). */
CE_ALWAYS_INLINE CE_V(vd) CE_V(log1p_reduced_d)(CE_V(vd) f)
{
    const CE_V(vd) s = f / (f + 2.0);
    const CE_V(vd) z = s * s;
    /* Taylor terms to z^10: truncation below 1e-18 of the result */
    CE_V(vd) p = z * (2.0 / 23.0) + 2.0 / 21.0;
    p = p * z + 2.0 / 19.0;
    p = p * z + 2.0 / 17.0;
    p = p * z + 2.0 / 15.0;
    p = p * z + 2.0 / 13.0;
    p = p * z + 2.0 / 11.0;
    p = p * z + 2.0 / 9.0;
    p = p * z + 2.0 / 7.0;
    p = p * z + 2.0 / 5.0;
    p = p * z + 2.0 / 3.0;
    return f - s * (f - z * p);
}

/* IEEE special cases of log: 0 -> -inf, +inf -> +inf, negative or NaN ->
 * NaN; r elsewhere. */
CE_ALWAYS_INLINE CE_V(vf) CE_V(log_special_f)(CE_V(vf) x, CE_V(vf) r)
{
    const float inf = __builtin_inff();
    r = CE_V(select_f)(x == 0.0f, (CE_V(vf)){0} - inf, r);
    r = CE_V(select_f)(x == inf, (CE_V(vf)){0} + inf, r);
    return CE_V(select_f)(~(x >= 0.0f), (CE_V(vf)){0} + __builtin_nanf(""), r);
}

CE_ALWAYS_INLINE CE_V(vd) CE_V(log_special_d)(CE_V(vd) x, CE_V(vd) r)
{
    const double inf = __builtin_inf();
    r = CE_V(select_d)(x == 0.0, (CE_V(vd)){0} - inf, r);
    r = CE_V(select_d)(x == inf, (CE_V(vd)){0} + inf, r);
    return CE_V(select_d)(~(x >= 0.0), (CE_V(vd)){0} + __builtin_nan(""), r);
}

/* Natural logarithm of floats: x = 2^k m with m in [sqrt(1/2), sqrt(2))
 * (subnormals scaled by 2^23 first), log x = k ln2 + log(1 + (m - 1)),
 * ln2 split so that k times its high part is exact. */
CE_ALWAYS_INLINE CE_V(vf) CE_V(log_f)(CE_V(vf) x)
{
    const CE_V(vi32) tiny = x < 0x1p-126f;
    const CE_V(vi32) bits = (CE_V(vi32))CE_V(select_f)(tiny, x * 0x1p23f, x);
    /* exponent relative to sqrt(1/2) (pattern 0x3F3504F3), rounded down */
    const CE_V(vi32) k = (bits - 0x3F3504F3) >> 23;
    const CE_V(vf) f = (CE_V(vf))(bits - (CE_V(vi32))((CE_V(vu32))k << 23)) - 1.0f;
    const CE_V(vf) kf = __builtin_convertvector(k - (tiny & 23), CE_V(vf));
    const CE_V(vf) r = (kf * 1.42860676533018708e-06f + CE_V(log1p_reduced_f)(f)) +
                       kf * 0.693145751953125f;
    return CE_V(log_special_f)(x, r);
}

/* Natural logarithm of doubles, as log_f (subnormals scaled by 2^52). k
 * becomes a double through the bits of 1.5 * 2^52 + k (no 64-bit integer
 * conversion is needed). */
CE_ALWAYS_INLINE CE_V(vd) CE_V(log_d)(CE_V(vd) x)
{
    const CE_V(vi64) tiny = x < 0x1p-1022;
    const CE_V(vi64) bits = (CE_V(vi64))CE_V(select_d)(tiny, x * 0x1p52, x);
    const CE_V(vi64) k = (bits - INT64_C(0x3FE6A09E667F3BCD)) >> 52;
    const CE_V(vd) f = (CE_V(vd))(bits - (CE_V(vi64))((CE_V(vu64))k << 52)) - 1.0;
    const double round_magic = 6755399441055744.0;  /* 1.5 * 2^52 */
    const CE_V(vi64) magic_bits = (CE_V(vi64))((CE_V(vd)){0} + round_magic);
    const CE_V(vd) kf = (CE_V(vd))(k - (tiny & 52) + magic_bits) - round_magic;
    const CE_V(vd) r = (kf * 1.90821492927058770002e-10 + CE_V(log1p_reduced_d)(f)) +
                       kf * 6.93147180369123816490e-01;
    return CE_V(log_special_d)(x, r);
}

/* log(1 + e) for e in (-1, 1] or NaN, where no special value arises
 * (NaN stays NaN), accurate for small e, without a division: u = 1 + e
 * rounded and c = e - (u - 1) its rounding error (exact, as |e| <= 1), so
 * 1 + e = u + c = 2^k (m + c 2^-k) and
 * log(1 + e) = k ln2 + log(1 + (m - 1 + c 2^-k)). */
CE_ALWAYS_INLINE CE_V(vf) CE_V(log1p_core_f)(CE_V(vf) e)
{
    const CE_V(vf) u = e + 1.0f;
    const CE_V(vf) c = e - (u - 1.0f);
    const CE_V(vi32) bits = (CE_V(vi32))u;
    const CE_V(vi32) k = (bits - 0x3F3504F3) >> 23;
    const CE_V(vf) m = (CE_V(vf))(bits - (CE_V(vi32))((CE_V(vu32))k << 23));
    /* 2^-k, for the k of u in [2^-25, 2] */
    const CE_V(vf) down = (CE_V(vf))((CE_V(vi32))((CE_V(vu32))(127 - k) << 23));
    const CE_V(vf) kf = __builtin_convertvector(k, CE_V(vf));
    return (kf * 1.42860676533018708e-06f + CE_V(log1p_reduced_f)((m - 1.0f) + c * down)) +
           kf * 0.693145751953125f;
}

CE_ALWAYS_INLINE CE_V(vd) CE_V(log1p_core_d)(CE_V(vd) e)
{
    const CE_V(vd) u = e + 1.0;
    const CE_V(vd) c = e - (u - 1.0);
    const CE_V(vi64) bits = (CE_V(vi64))u;
    const CE_V(vi64) k = (bits - INT64_C(0x3FE6A09E667F3BCD)) >> 52;
    const CE_V(vd) m = (CE_V(vd))(bits - (CE_V(vi64))((CE_V(vu64))k << 52));
    const CE_V(vd) down = (CE_V(vd))((CE_V(vi64))((CE_V(vu64))(1023 - k) << 52));
    const double round_magic = 6755399441055744.0;  /* 1.5 * 2^52: k as a double (log_d) */
    const CE_V(vi64) magic_bits = (CE_V(vi64))((CE_V(vd)){0} + round_magic);
    const CE_V(vd) kf = (CE_V(vd))(k + magic_bits) - round_magic;
    return (kf * 1.90821492927058770002e-10 + CE_V(log1p_reduced_d)((m - 1.0) + c * down)) +
           kf * 6.93147180369123816490e-01;
}

/* log(1 + e) for e in [-1, 1]: e = -1 gives -inf; NaN stays NaN. */
CE_ALWAYS_INLINE CE_V(vf) CE_V(log1p_f)(CE_V(vf) e)
{
    return CE_V(log_special_f)(e + 1.0f, CE_V(log1p_core_f)(e));
}

CE_ALWAYS_INLINE CE_V(vd) CE_V(log1p_d)(CE_V(vd) e)
{
    return CE_V(log_special_d)(e + 1.0, CE_V(log1p_core_d)(e));
}

/* ---- float <-> double ----------------------------------------------------- */

/* A float vector widened to doubles, as its lower and upper half. Converting
 * the whole vector and then splitting it compiles to full-width conversions
 * on every path (splitting first makes GCC convert two lanes at a time). */
CE_ALWAYS_INLINE void CE_V(widen_f)(CE_V(vf) v, CE_V(vd) *lo, CE_V(vd) *hi)
{
    const CE_V(vd_wide) wide = __builtin_convertvector(v, CE_V(vd_wide));
#if defined(__clang__) || __GNUC__ >= 12
    *lo = __builtin_shufflevector(wide, wide, CE_VLO);
    *hi = __builtin_shufflevector(wide, wide, CE_VHI);
#else
    memcpy(lo, &wide, sizeof *lo);
    memcpy(hi, (const char *)&wide + sizeof *lo, sizeof *hi);
#endif
}

/* Two double vectors narrowed to one float vector. */
CE_ALWAYS_INLINE CE_V(vf) CE_V(narrow_d)(CE_V(vd) lo, CE_V(vd) hi)
{
#if defined(__clang__) || __GNUC__ >= 12
    const CE_V(vf_half) a = __builtin_convertvector(lo, CE_V(vf_half));
    const CE_V(vf_half) b = __builtin_convertvector(hi, CE_V(vf_half));
    return __builtin_shufflevector(a, b, CE_VALL);
#else
    CE_V(vd_wide) wide;
    memcpy(&wide, &lo, sizeof lo);
    memcpy((char *)&wide + sizeof lo, &hi, sizeof hi);
    return __builtin_convertvector(wide, CE_V(vf));
#endif
}

/* ---- accumulators ------------------------------------------------------- */

/* Sums kept in double: a float vector's lanes go into two double vectors. */
typedef struct { CE_V(vd) lo, hi; } CE_V(acc_f);
typedef struct { CE_V(vd) v; } CE_V(acc_d);

CE_ALWAYS_INLINE void CE_V(acc_add_f)(CE_V(acc_f) *acc, CE_V(vf) v)
{
    CE_V(vd) lo, hi;
    CE_V(widen_f)(v, &lo, &hi);
    acc->lo += lo;
    acc->hi += hi;
}

CE_ALWAYS_INLINE void CE_V(acc_add_d)(CE_V(acc_d) *acc, CE_V(vd) v) { acc->v += v; }

/* Fixed-order pairwise fold of the lanes: lane l meets lane l + n/2, and so
 * on down to one. */
CE_ALWAYS_INLINE double CE_V(fold_d)(CE_V(vd) v)
{
    double a[CE_VLANES / 2];
    memcpy(a, &v, sizeof a);
    for (int half = CE_VLANES / 4; half >= 1; half /= 2)
        for (int l = 0; l < half; ++l) a[l] += a[l + half];
    return a[0];
}

CE_ALWAYS_INLINE double CE_V(acc_sum_f)(CE_V(acc_f) acc) { return CE_V(fold_d)(acc.lo + acc.hi); }
CE_ALWAYS_INLINE double CE_V(acc_sum_d)(CE_V(acc_d) acc) { return CE_V(fold_d)(acc.v); }

/* ---- whole-vector loads and stores of each storage type ------------------ */

CE_ALWAYS_INLINE CE_V(vf) CE_V(load_f32)(const float *p)
{
    CE_V(vf) v;
    memcpy(&v, p, sizeof v);
    return v;
}

CE_ALWAYS_INLINE CE_V(vd) CE_V(load_f64)(const double *p)
{
    CE_V(vd) v;
    memcpy(&v, p, sizeof v);
    return v;
}

CE_ALWAYS_INLINE void CE_V(store_f32)(float *p, CE_V(vf) v) { memcpy(p, &v, sizeof v); }
CE_ALWAYS_INLINE void CE_V(store_f64)(double *p, CE_V(vd) v) { memcpy(p, &v, sizeof v); }

CE_ALWAYS_INLINE CE_V(vu16) CE_V(load_u16)(const uint16_t *p)
{
    CE_V(vu16) v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* ---- half-precision storage (float16, bfloat16) <-> float ---------------- *
 * Written with integer arithmetic only: "a < b" on unsigned patterns below
 * 2^31 is the sign of a - b, which every target computes at full width. */

/* All ones where the signed lane is negative. */
CE_ALWAYS_INLINE CE_V(vi32) CE_V(negative_mask)(CE_V(vi32) v) { return v >> 31; }

/* bfloat16 is the top half of a float32. */
CE_ALWAYS_INLINE CE_V(vf) CE_V(bf16_to_f32)(CE_V(vu16) h)
{
    return (CE_V(vf))(__builtin_convertvector(h, CE_V(vu32)) << 16);
}

/* Round to nearest even; NaN stays NaN (quiet). */
CE_ALWAYS_INLINE CE_V(vu16) CE_V(f32_to_bf16)(CE_V(vf) v)
{
    const CE_V(vu32) u = (CE_V(vu32))v;
    const CE_V(vu32) rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    const CE_V(vu32) quiet_nan = (u >> 16) | 0x40u;
    /* NaN: magnitude pattern above that of inf */
    const CE_V(vi32) is_nan =
        CE_V(negative_mask)((CE_V(vi32))(0x7F800000u - (u & 0x7FFFFFFFu)));
    const CE_V(vu32) r =
        (CE_V(vu32))(((CE_V(vi32))quiet_nan & is_nan) | ((CE_V(vi32))rounded & ~is_nan));
    return __builtin_convertvector(r, CE_V(vu16));
}

/* IEEE binary16 -> float: exponent and mantissa moved into place and
 * rescaled by 2^112 (which also normalises subnormals); inf/NaN kept. */
CE_ALWAYS_INLINE CE_V(vf) CE_V(f16_to_f32)(CE_V(vu16) h)
{
    const CE_V(vu32) w = __builtin_convertvector(h, CE_V(vu32));
    const CE_V(vu32) sign = (w & 0x8000u) << 16;
    const CE_V(vu32) em = w & 0x7FFFu;
    const CE_V(vf) finite = (CE_V(vf))(em << 13) * 0x1p112f;
    const CE_V(vi32) special = CE_V(negative_mask)((CE_V(vi32))(0x7BFFu - em));  /* em >= 0x7C00 */
    const CE_V(vi32) special_bits = (CE_V(vi32))((em << 13) | 0x7F800000u);
    const CE_V(vi32) mag = (special & special_bits) | (~special & (CE_V(vi32))finite);
    return (CE_V(vf))((CE_V(vu32))mag | sign);
}

/* float -> IEEE binary16, round to nearest even, overflow to inf, NaN kept. */
CE_ALWAYS_INLINE CE_V(vu16) CE_V(f32_to_f16)(CE_V(vf) v)
{
    const CE_V(vu32) u = (CE_V(vu32))v;
    const CE_V(vu32) sign = (u >> 16) & 0x8000u;
    const CE_V(vu32) a = u & 0x7FFFFFFFu;
    /* normal halves: rebias the exponent, round the 13 dropped bits */
    const CE_V(vu32) normal = (a + 0xC8000FFFu + ((a >> 13) & 1u)) >> 13;  /* (15-127)<<23 + 0xFFF */
    /* subnormal halves: adding 0.5 lines the value up with 2^-24 units and
     * rounds it; the result's low bits are the half's mantissa */
    const CE_V(vu32) subnormal = (CE_V(vu32))((CE_V(vf))a + 0.5f) - 0x3F000000u;
    CE_V(vi32) r = CE_V(negative_mask)((CE_V(vi32))(a - 0x38800000u));        /* a < 0x38800000 */
    r = (r & (CE_V(vi32))subnormal) | (~r & (CE_V(vi32))normal);
    /* rounds to >= 65520: inf */
    const CE_V(vi32) big = CE_V(negative_mask)((CE_V(vi32))(0x477FEFFFu - a)); /* a >= 0x477FF000 */
    r = (big & 0x7C00) | (~big & r);
    const CE_V(vi32) nan = CE_V(negative_mask)((CE_V(vi32))(0x7F800000u - a)); /* a > 0x7F800000 */
    r = (nan & 0x7E00) | (~nan & r);
    return __builtin_convertvector((CE_V(vu32))r | sign, CE_V(vu16));
}

CE_ALWAYS_INLINE CE_V(vf) CE_V(load_bf16)(const uint16_t *p)
{
    return CE_V(bf16_to_f32)(CE_V(load_u16)(p));
}

CE_ALWAYS_INLINE CE_V(vf) CE_V(load_f16)(const uint16_t *p)
{
    return CE_V(f16_to_f32)(CE_V(load_u16)(p));
}

CE_ALWAYS_INLINE void CE_V(store_bf16)(uint16_t *p, CE_V(vf) v)
{
    CE_V(vu16) h = CE_V(f32_to_bf16)(v);
    memcpy(p, &h, sizeof h);
}

CE_ALWAYS_INLINE void CE_V(store_f16)(uint16_t *p, CE_V(vf) v)
{
    CE_V(vu16) h = CE_V(f32_to_f16)(v);
    memcpy(p, &h, sizeof h);
}

/* ---- binary cross-entropy's gradient ------------------------------------ */

/* exp(-a) for a >= 0 (or NaN), results below the smallest normal double
 * included (gradual underflow): there the argument is raised by 40, which
 * is exact in that range, and the result scaled back by exp(-40). */
CE_ALWAYS_INLINE CE_V(vd) CE_V(exp_neg_d)(CE_V(vd) a)
{
    const CE_V(vd) t = -a, lo = (CE_V(vd)){0} - 708.0;
    const CE_V(vd) e = CE_V(exp_d)(t);
    if (!CE_V(any_above_d)(lo, t)) return e;
    return CE_V(select_d)(t < lo, CE_V(exp_d)(t + 40.0) * 4.24835425529158900e-18, e);
}

/* (1 - y) sigmoid(x) - pw y sigmoid(-x) in double, given e = exp(-|x|)
 * and r = 1 / (1 + e): sigmoid(|x|) = r and sigmoid(-|x|) = e r, so it is
 * n r with n = (1 - y) - pw y e for x >= 0 and (1 - y) e - pw y below.
 * The two terms of n cancel where sigmoid(x) is near y; formed in double
 * from a double e, the difference keeps float's precision until they
 * agree to about 2^-28. */
CE_ALWAYS_INLINE CE_V(vd) CE_V(bce_dx_of)(CE_V(vd) x, CE_V(vd) y, CE_V(vd) pw, CE_V(vd) e,
                                          CE_V(vd) r)
{
    const CE_V(vi64) negative = x < 0.0;
    const CE_V(vd) one = (CE_V(vd)){0} + 1.0;
    const CE_V(vd) a = CE_V(select_d)(negative, e, one), b = CE_V(select_d)(negative, one, e);
    return ((1.0 - y) * a - (pw * y) * b) * r;
}

CE_ALWAYS_INLINE CE_V(vd) CE_V(bce_dx_d)(CE_V(vd) x, CE_V(vd) y, CE_V(vd) pw)
{
    const CE_V(vd) e = CE_V(exp_neg_d)(CE_V(select_d)(x < 0.0, -x, x));
    return CE_V(bce_dx_of)(x, y, pw, e, 1.0 / (1.0 + e));
}

/* The same for float lanes, computed in double (whose exp needs no care
 * for float's gradual underflow: below 2^-1022 both round to 0).
 * 1 / (1 + e) is a float quotient
 * (one division for all lanes) refined by a Newton step in double, which
 * leaves a relative error of about 2^-46. */
CE_ALWAYS_INLINE CE_V(vf) CE_V(bce_dx_f)(CE_V(vf) x, CE_V(vf) y, CE_V(vf) pw)
{
    CE_V(vd) x_lo, x_hi, y_lo, y_hi, pw_lo, pw_hi, t_lo, t_hi, r_lo, r_hi;
    CE_V(widen_f)(x, &x_lo, &x_hi);
    CE_V(widen_f)(y, &y_lo, &y_hi);
    CE_V(widen_f)(pw, &pw_lo, &pw_hi);
    /* -|x|: the sign bit set */
    CE_V(widen_f)((CE_V(vf))((CE_V(vi32))x | (CE_V(vi32))((CE_V(vu32)){0} + 0x80000000u)),
                  &t_lo, &t_hi);
    const CE_V(vd) e_lo = CE_V(exp_d)(t_lo), e_hi = CE_V(exp_d)(t_hi);
    const CE_V(vd) d_lo = 1.0 + e_lo, d_hi = 1.0 + e_hi;
    CE_V(widen_f)(1.0f / CE_V(narrow_d)(d_lo, d_hi), &r_lo, &r_hi);
    r_lo = r_lo * (2.0 - d_lo * r_lo);
    r_hi = r_hi * (2.0 - d_hi * r_hi);
    return CE_V(narrow_d)(CE_V(bce_dx_of)(x_lo, y_lo, pw_lo, e_lo, r_lo),
                          CE_V(bce_dx_of)(x_hi, y_hi, pw_hi, e_hi, r_hi));
}

/* ---- soft-capping ------------------------------------------------------- */

/* tanh in double, for soft-capping: 1 - 2 / (exp(2y) + 1) has an absolute
 * error of a few 1e-16, which is what x' = cap * tanh(x / cap) needs. The
 * argument is clamped so exp stays in its domain (tanh(20) = 1 in double). */
CE_ALWAYS_INLINE CE_V(vd) CE_V(tanh_d)(CE_V(vd) y)
{
    const CE_V(vi64) big = y > 20.0, small = y < -20.0;
    CE_V(vd) yc = CE_V(select_d)(big, (CE_V(vd)){0} + 20.0, y);
    yc = CE_V(select_d)(small, (CE_V(vd)){0} - 20.0, yc);
    const CE_V(vd) t = 1.0 - 2.0 / (CE_V(exp_d)(2.0 * yc) + 1.0);
    return CE_V(select_d)(yc != yc, yc, t);   /* NaN stays NaN */
}

/* cap * tanh(x / cap), evaluated in double. */
CE_ALWAYS_INLINE CE_V(vd) CE_V(softcap_d)(CE_V(vd) x, double cap)
{
    return cap * CE_V(tanh_d)(x / cap);
}

CE_ALWAYS_INLINE CE_V(vf) CE_V(softcap_f)(CE_V(vf) x, double cap)
{
    CE_V(vd) lo, hi;
    CE_V(widen_f)(x, &lo, &hi);
    return CE_V(narrow_d)(CE_V(softcap_d)(lo, cap), CE_V(softcap_d)(hi, cap));
}

#undef CE_VCAT_
#undef CE_VCAT
#undef CE_V
