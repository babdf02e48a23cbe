/*
 * Loads and stores of partial vectors, shared by the chunk kernels
 * (ce_leaf_template.h) and the family's kernels (ce_family_template.h).
 * Expanded once per element type and instruction set, like them (no
 * include guard): the includer defines CE_NAME, CE_T, CE_CT, CE_VT, CE_W
 * and the vector macros (ce_leaf_types.h).
 */

CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(splat)(CE_CT s)
{
    return (CE_VT){0} + s;
}

CE_TARGET CE_ALWAYS_INLINE CE_VIT CE_NAME(lanes_below)(int64_t count)
{
    return CE_IOTA < (CE_VIT){0} + (__typeof__(CE_IOTA[0]))count;
}

/* count elements at p; lanes past count hold fill. */
CE_TARGET CE_ALWAYS_INLINE CE_VT CE_NAME(load)(const CE_T *p, int64_t count, CE_CT fill)
{
    if (count == CE_W) return CE_VLOAD(p);
    CE_T buf[CE_W];
    memset(buf, 0, sizeof buf);
    memcpy(buf, p, (size_t)count * sizeof(CE_T));
    return CE_SELECT(CE_NAME(lanes_below)(count), CE_VLOAD(buf), CE_NAME(splat)(fill));
}

/* The first count lanes of v to p, as values of type with vstore (a whole
 * vector stored directly, else through a buffer). */
#ifndef CE_STORE_LANES
#define CE_STORE_LANES(type, vstore, p, count, v)                            \
    do {                                                                     \
        if ((count) == CE_W) {                                               \
            vstore(p, v);                                                    \
        } else {                                                             \
            type lanes_[CE_W];                                               \
            vstore(lanes_, v);                                               \
            memcpy(p, lanes_, (size_t)(count) * sizeof(type));               \
        }                                                                    \
    } while (0)
#endif

CE_TARGET CE_ALWAYS_INLINE void CE_NAME(store)(CE_T *p, int64_t count, CE_VT v)
{
    CE_STORE_LANES(CE_T, CE_VSTORE, p, count, v);
}

/* The largest lane of m. */
CE_TARGET CE_ALWAYS_INLINE double CE_NAME(max_lane)(CE_VT m)
{
    CE_CT lanes[CE_W];
    memcpy(lanes, &m, sizeof lanes);
    CE_CT best = lanes[0];
    for (int l = 1; l < CE_W; ++l) best = lanes[l] > best ? lanes[l] : best;
    return (double)best;
}
