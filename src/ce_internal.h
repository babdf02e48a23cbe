/*
 * Private interface between the row driver (ce_kernels.c) and the chunk
 * kernels (ce_leaf_template.h, compiled once per element type and
 * instruction set).
 */
#ifndef CE_INTERNAL_H
#define CE_INTERNAL_H

#include <stdint.h>
#include "ce_kernels.h"

/* Run-time instruction-set dispatch needs GCC or clang on x86-64. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define CE_HAVE_X86_DISPATCH 1
#endif

/* Fixed number of vocabulary elements per chunk. Every row is reduced chunk
 * by chunk and the chunk results are merged in chunk order, whatever the
 * thread count: that is what makes results independent of it. 2048 floats
 * (8 KiB) keep a chunk and its output in L1 between the two sweeps. */
#define CE_CHUNK 2048

/* Software prefetch distance of the first sweep, in elements: one chunk
 * ahead, so the next chunk arrives while this one is being computed. */
#define CE_PREFETCH_AHEAD CE_CHUNK

/* How far above the offered reference (ce_chunk_opts.ref) a chunk's
 * elements may lie and still be measured from it. x - ref is rounded to
 * the compute type before exp: within 4 of ref that costs at most 1.2e-7
 * of an exponential near the maximum, twice exp's own error (beyond, a
 * chunk is measured from its own maximum, where the large exponentials
 * have small arguments). The chunk's largest exponential is then set
 * exactly (ce_chunk_stats.scale), so the error of a loss stays below
 * 1.2e-7 of it, and of a sum of exponentials below 1.2e-7 of the part
 * that is not the maximum's. The reference is the maximum of the chunk's
 * first elements, which the rest of a chunk of LM logits seldom exceeds by
 * 4. exp's inputs stay in (-inf, 4]. */
#define CE_REF_HEADROOM 4.0

/* Below this many elements in total a call stays on one thread: waking a
 * second thread costs more than the work. */
#define CE_PARALLEL_THRESHOLD 32768

/* Work between two polls of a ce_interrupt, in elements: a few
 * milliseconds on one core, so an interrupt surfaces quickly while the
 * poll's own cost (the caller's callback) stays negligible. */
#define CE_POLL_ELEMENTS (INT64_C(1) << 22)

/* Threads one call uses: n_threads (<= 0: OpenMP's default), 1 for fewer
 * than CE_PARALLEL_THRESHOLD elements or without OpenMP, and never more
 * than ce_max_threads() or the units of work there are. */
int ce_threads_for(int64_t elements, int64_t work_units, int n_threads);

/* The stop state of one call: set by the calling thread (thread 0 of the
 * team) when its interrupt's poll asks to stop, read by every thread. */
typedef struct {
    const ce_interrupt *interrupt;  /* may be NULL or have a NULL poll */
    int64_t since;                  /* elements since the last poll    */
    int stop;
} ce_stopper;

void ce_stopper_init(ce_stopper *s, const ce_interrupt *interrupt);
/* Called on the calling thread only, after it has done `elements` more
 * elements of work: polls when CE_POLL_ELEMENTS have accumulated. */
void ce_stopper_tick(ce_stopper *s, int64_t elements);
/* Whether a stop was asked (safe from any thread). */
int ce_stopper_stopped(const ce_stopper *s);

/* Options of the chunk kernels for one chunk.
 *
 * The weighted linear term of a row: a[j] = w[j] * (y_mul * y[j] + y_add),
 * where a missing w or y counts as 1; w and y are stored in the compute
 * type (double for float64 logits, else float).
 * When active, the kernels accumulate sum_j a[j] * (shift - x[j]) (skipping
 * a[j] == 0) and sum_j a[j]: measured from the chunk's maximum, every term
 * is non-negative and nothing cancels.
 *
 * softcap > 0 replaces every logit x by softcap * tanh(x / softcap) first.
 * entropy asks for sum_j e[j] * (shift - x[j]) with e = exp(x - shift).
 *
 * ref, when finite, is no larger than the chunk's maximum (the row driver
 * passes the maximum of the chunk's first elements). When no linear or entropy
 * sums are asked, the chunk is then read once: its exponentials are
 * measured from ref (shift = ref) while its maximum is found, instead of a
 * pass for the maximum first. From the first block of elements more than
 * CE_REF_HEADROOM above ref, the rest is measured from the chunk's own
 * maximum, and what is done (sums, and stored exponentials) is rescaled to
 * it; no block is stored before it is checked, so in place the logits it
 * needs are still there. Measuring from at most the row maximum keeps
 * every exponential that matters a normal float. -inf: no reference. */
typedef struct {
    int active;          /* compute the linear sums                    */
    const void *w;       /* weights of this chunk's classes, or NULL   */
    const void *y;       /* soft targets of this chunk, or NULL        */
    double y_mul;
    double y_add;
    double softcap;      /* 0: none                                    */
    int entropy;         /* accumulate the entropy term                */
    double ref;          /* reference shift to try, or -inf            */
} ce_chunk_opts;

/* What one chunk contributes to its row. */
typedef struct {
    double max;      /* largest element (-inf if every element is -inf/NaN) */
    double shift;    /* max (0 when max is -inf), or the reference ref     */
    double sumexp;   /* sum_j exp(x[j] - shift)                            */
    double scale;    /* 1, or exp(max - shift) over the largest exponential
                      * as computed, when shift is a reference below max:
                      * with it, that exponential counts as exactly
                      * exp(max - shift)                                   */
    double lin;      /* sum_j a[j] * (shift - x[j]), a[j] == 0 terms skipped */
    double asum;     /* sum_j a[j]                                         */
    double ent;      /* sum_j e[j] * (shift - x[j]), e[j] == 0 terms skipped */
    /* Set by the row driver (ce_kernels.c), for its exact merge: */
    double frame;    /* k ln 2 at or just above max (-inf for no max)      */
    double k;        /* frame / ln 2, or NaN when frame is max itself      */
    double framed;   /* sum_j exp(x[j] - frame)                            */
} ce_chunk_stats;

/* The chunk kernels of one element type on one instruction set. */
typedef struct {
    /* Largest element of x[0:n], soft-capped when softcap > 0 (NaN passed
     * over; -inf if there is no other). */
    double (*max)(const void *x, int64_t n, double softcap);
    /* First sweep: stats of x[0:n]; stores exp(x - shift) into e, in the
     * compute type (float for float32 and half precision, double for
     * float64), when e is not NULL (e may equal x when that is x's type). */
    void (*stats)(const void *x, int64_t n, void *e, const ce_chunk_opts *opts,
                  ce_chunk_stats *st);
    /* Second sweep for gradients and softmax: out = e * f - c * a, plus
     * delta at index t (chunk-relative; outside [0, n) for none), from the
     * exponentials e[0:n] sweep 1 stored (e may equal out). */
    void (*rescale)(const void *e, void *out, int64_t n, double f, double c,
                    const ce_chunk_opts *opts, int64_t t, double delta);
    /* The same when sweep 1 stored nothing: exp(x' - shift) recomputed from
     * x (x' soft-capped if asked, then times the cap's derivative). out may
     * equal x. */
    void (*rescale_from_x)(const void *x, void *out, int64_t n, double shift, double f,
                           double c, const ce_chunk_opts *opts, int64_t t, double delta);
    /* sum of exp(x' - shift) over v[0:n], every vector widened before it is
     * added (sweep 1 adds a few in the compute type first): from the
     * logits, or, when stored, from the exponentials sweep 1 stored in v
     * (in the compute type). */
    double (*exact_sumexp)(const void *v, int64_t n, int stored, double shift,
                           const ce_chunk_opts *opts);
    /* Second sweep for log-softmax: out = (x - max) - log_sum (out may equal x). */
    void (*shift)(const void *x, int64_t n, void *out, double max, double log_sum);
    /* exp on an array, for measuring its accuracy (float32/float64 only). */
    void (*exp_array)(const void *x, void *y, int64_t n);
} ce_leaf;

/* The instruction-set paths compiled in (their definitions:
 * ce_isa_list.h): X(isa) for each. */
#if defined(CE_HAVE_X86_DISPATCH)
#define CE_FOR_EACH_ISA(X) X(baseline) X(avx2) X(avx512)
#else
#define CE_FOR_EACH_ISA(X) X(baseline)
#endif

/* &<kind>_<type>_<isa>: the kernel table of one element type on one path. */
#define CE_BY_DTYPE(kind, isa, dtype)                                        \
    ((dtype) == CE_FLOAT32 ? &kind##_f32_##isa :                             \
     (dtype) == CE_FLOAT64 ? &kind##_f64_##isa :                             \
     (dtype) == CE_FLOAT16 ? &kind##_f16_##isa : &kind##_bf16_##isa)

/* The kernel table <kind> for instruction set isa (a ce_isa) and dtype. */
#if defined(CE_HAVE_X86_DISPATCH)
#define CE_PICK(kind, isa, dtype)                                            \
    ((isa) == CE_ISA_AVX512 ? CE_BY_DTYPE(kind, avx512, dtype) :             \
     (isa) == CE_ISA_AVX2 ? CE_BY_DTYPE(kind, avx2, dtype) :                 \
     CE_BY_DTYPE(kind, baseline, dtype))
#else
#define CE_PICK(kind, isa, dtype) ((void)(isa), CE_BY_DTYPE(kind, baseline, dtype))
#endif

/* extern const <type> <kind>_<dtype>_<isa>; for every dtype. */
#define CE_DECLARE_KERNELS(type, kind, isa)                                  \
    extern const type kind##_f32_##isa; extern const type kind##_f64_##isa;  \
    extern const type kind##_f16_##isa; extern const type kind##_bf16_##isa;

#define CE_DECLARE_LEAVES(isa) CE_DECLARE_KERNELS(ce_leaf, ce_leaf, isa)
CE_FOR_EACH_ISA(CE_DECLARE_LEAVES)

#endif /* CE_INTERNAL_H */
