/*
 * tg_select.h - the unsigned floating values of the device's selection (docs/numerics.md §8).
 *
 * The C half of tinygen/training/ondevice.py (pf, pf_mul, pf_add, pf_div, pf_greater); the
 * on-device tests hold the two to each other through the selection they make. A value is
 * m * 2^e with m = 0 (zero, e = 0) or m in [2^31, 2^32): every result is truncated to 32
 * significant bits, so the order of operations is part of the definition.
 */
#ifndef TG_SELECT_H
#define TG_SELECT_H

#include <stdint.h>

#include "tg_nn_math.h"

#define TG_PF_BITS 32

typedef struct {
    uint32_t m; /* 0, or in [2^31, 2^32) */
    int32_t e;
} tg_pf_t;

/* u * 2^e for u < 2^64, truncated to 32 significant bits. */
TG_INLINE tg_pf_t tg_pf(uint64_t u, int32_t e)
{
    tg_pf_t v = {0U, 0};
    if (u != 0U) {
        const int32_t b = 64 - __builtin_clzll(u);
        if (b > TG_PF_BITS) {
            v.m = (uint32_t)(u >> (b - TG_PF_BITS));
        } else {
            v.m = (uint32_t)(u << (TG_PF_BITS - b));
        }
        v.e = e + b - TG_PF_BITS;
    }
    return v;
}

TG_INLINE tg_pf_t tg_pf_mul(tg_pf_t a, tg_pf_t b)
{
    const tg_pf_t zero = {0U, 0};
    return a.m == 0U || b.m == 0U ? zero : tg_pf((uint64_t)a.m * b.m, a.e + b.e);
}

/* The sum, the smaller term first truncated to the larger's exponent. */
TG_INLINE tg_pf_t tg_pf_add(tg_pf_t a, tg_pf_t b)
{
    if (a.m == 0U || b.m == 0U) {
        return a.m != 0U ? a : b;
    }
    const tg_pf_t hi = a.e < b.e ? b : a;
    const tg_pf_t lo = a.e < b.e ? a : b;
    const int32_t d = hi.e - lo.e;
    const uint64_t low = d < 64 ? (uint64_t)lo.m >> d : 0U;
    return tg_pf((uint64_t)hi.m + low, hi.e);
}

/* a / b for b > 0: the dividend's mantissa shifted up 32 bits, divided, truncated. */
TG_INLINE tg_pf_t tg_pf_div(tg_pf_t a, tg_pf_t b)
{
    const tg_pf_t zero = {0U, 0};
    return a.m == 0U ? zero : tg_pf(((uint64_t)a.m << 32) / b.m, a.e - b.e - 32);
}

TG_INLINE int32_t tg_pf_greater(tg_pf_t a, tg_pf_t b)
{
    if (a.m == 0U || b.m == 0U) {
        return a.m != 0U && b.m == 0U;
    }
    return a.e > b.e || (a.e == b.e && a.m > b.m);
}

/* (|s| * 2^e)^2, for |s| < 2^62: one sample's potential of a channel. */
TG_INLINE tg_pf_t tg_pf_square(int64_t s, int32_t e)
{
    const tg_pf_t v = tg_pf((uint64_t)(s < 0 ? -s : s), e);
    return tg_pf_mul(v, v);
}

#endif /* TG_SELECT_H */
