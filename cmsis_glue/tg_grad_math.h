/*
 * tg_grad_math.h - fixed-point primitives of the training path (docs/numerics.md §2).
 *
 * The C half of tinygen/gradmath.py; tests/test_grad_math.py holds them against each
 * other. Gradients are int16 values G with a per-tensor exponent e (real dL/dq = G*2^e,
 * |G| <= 2^14). Wide intermediates are int64 with |x| < 2^62. Right shifts of negative
 * values are arithmetic (GCC's documented implementation-defined behaviour); no
 * signed overflow can occur (every bound is stated beside the operation).
 */
#ifndef TG_GRAD_MATH_H
#define TG_GRAD_MATH_H

#include <stdint.h>

#include "tg_nn_math.h"

#define TG_GRAD_BITS 14

/* Host verification hooks: with -DTG_RECORD the harness receives every gradient of a step. */
#ifdef TG_RECORD
void tg_record_i64(int32_t id, int32_t index, int64_t value);
void tg_record_grad(int32_t id, const int16_t *g, int32_t n, int32_t e);
#define TG_RECORD_I64(id, i, v)     tg_record_i64((id), (i), (v))
#define TG_RECORD_GRAD(id, g, n, e) tg_record_grad((id), (g), (n), (e))
#else
#define TG_RECORD_I64(id, i, v)     ((void)(i), (void)(v))
#define TG_RECORD_GRAD(id, g, n, e) ((void)0)
#endif
#define TG_SAT62 ((int64_t)1 << 62)

/* Bit length of |x| (0 for 0); |x| < 2^62. */
TG_INLINE int32_t tg_bitlen64(int64_t x)
{
    const uint64_t a = (uint64_t)(x < 0 ? -x : x);
    return a == 0 ? 0 : 64 - __builtin_clzll(a);
}

TG_INLINE int32_t tg_sat32(int64_t x)
{
    return (int32_t)(x < INT32_MIN ? INT32_MIN : (x > INT32_MAX ? INT32_MAX : x));
}

/* p / 2^r rounded for r >= 0, else p * 2^-r saturated to +-2^62: the last step of tg_mul_q31. */
TG_INLINE int64_t tg_mul_q31_scale(int64_t p, int32_t r)
{
    if (r >= 0) {
        return tg_rshift_round64(p, r);
    }
    const int32_t left = -r > 62 ? 62 : -r;
    const int64_t limit = TG_SAT62 >> left;
    if (p >= limit) {
        return TG_SAT62;
    }
    if (p <= -limit) {
        return -TG_SAT62;
    }
    return (int64_t)((uint64_t)p << left);
}

/* round(x * m * 2^(shift - 31)): narrow x to 31 significant bits first, saturate a left
 * shift to +-2^62. |x| < 2^62, 0 <= m < 2^31. */
TG_INLINE int64_t tg_mul_q31(int64_t x, int32_t m, int32_t shift)
{
    int32_t n = tg_bitlen64(x) - 30;
    if (n < 0) {
        n = 0;
    }
    const int64_t t = tg_rshift_round64(x, n);               /* |t| <= 2^30 */
    return tg_mul_q31_scale(t * (int64_t)m, 31 - shift - n); /* |t m| < 2^61 */
}

/* tg_mul_q31 of an int32 x: its narrowing to 31 significant bits (n <= 2) in 32-bit arithmetic
 * (CLZ, tg_divide_by_power_of_two: the same bits as the 64-bit steps), then the same product and
 * final shift. */
TG_INLINE int64_t tg_mul_q31_s32(int32_t x, int32_t m, int32_t shift)
{
    const uint32_t a = x < 0 ? -(uint32_t)x : (uint32_t)x;
    const int32_t bits = a == 0 ? 0 : 32 - __builtin_clz(a);
    const int32_t n = bits > 30 ? bits - 30 : 0;
    const int32_t t = tg_divide_by_power_of_two(x, n); /* |t| <= 2^30 */
    return tg_mul_q31_scale((int64_t)t * m, 31 - shift - n);
}

/* Stochastic rounding of weight updates (docs/numerics.md §6.2): the key of a layer's step is
 * step * TG_SR_STEP_MUL + the layer's salt (FNV-1a of its name); a weight's noise is the top
 * TG_SR_BITS bits of lowbias32(key + index * TG_SR_INDEX_MUL), in wrapping uint32 arithmetic. */
#define TG_SR_BITS      8
#define TG_SR_INDEX_MUL 0x9E3779B9U
#define TG_SR_STEP_MUL  0x85EBCA6BU
#define TG_SR_MIX1      0x7FEB352DU
#define TG_SR_MIX2      0x846CA68BU

TG_INLINE uint32_t tg_sr_key(uint32_t step, uint32_t salt)
{
    return step * TG_SR_STEP_MUL + salt;
}

/* floor((fine + noise) / 2^TG_SR_BITS): `fine` carries TG_SR_BITS more fraction bits than the
 * update; it rounds up with probability equal to the dropped fraction. |fine| <= 2^62. */
TG_INLINE int64_t tg_round_stochastic(int64_t fine, uint32_t key, int32_t index)
{
    uint32_t x = key + (uint32_t)index * TG_SR_INDEX_MUL;
    x ^= x >> 16;
    x *= TG_SR_MIX1;
    x ^= x >> 15;
    x *= TG_SR_MIX2;
    x ^= x >> 16;
    return (fine + (int64_t)(x >> (32 - TG_SR_BITS))) >> TG_SR_BITS;
}

/* tg_mul_q31 for an int16 x and a right shift of at least 15 (shift <= 16): the product is exact
 * in int64 (no narrowing), and |x| <= 2^15, m < 2^31 bound the result to int32. One rounding
 * (half away from zero), as tg_rshift_round64: (p + 2^(n-1) - (p < 0)) >> n. */
TG_INLINE int32_t tg_mul_q31_s16(int32_t x, int32_t m, int32_t shift)
{
    const int64_t p = (int64_t)x * m;
    const int32_t n = 31 - shift; /* in [15, 62] */
    return (int32_t)((p + ((int64_t)1 << (n - 1)) - (p < 0)) >> n);
}

/* tg_mul_q31_s16 where the right shift n = 31 - shift is in [16, 32] (shift in [-1, 15]): |x|
 * shifted left by 32 - n = shift + 1 <= 16 still fits 32 bits (|x| <= 2^15), and the high word
 * of that times m plus 2^31 is floor((|x| m + 2^(n-1)) / 2^n), the magnitude rounded half up; the
 * sign put back makes it half away from zero: the same bits as tg_mul_q31_s16 for m >= 0 (every
 * forward multiplier), one UMULL and no 64-bit shift by a variable amount. */
TG_INLINE int32_t tg_mul_q31_s16_high(int32_t x, int32_t m, int32_t shift)
{
    const uint32_t magnitude = (uint32_t)(x < 0 ? -x : x) << (shift + 1);
    const uint32_t r = (uint32_t)(((uint64_t)magnitude * (uint32_t)m + 0x80000000U) >> 32);
    return x < 0 ? -(int32_t)r : (int32_t)r;
}

/* Shift that brings a maximum magnitude into the normalized gradient range. */
TG_INLINE int32_t tg_norm_shift(int64_t max_abs)
{
    const int32_t k = tg_bitlen64(max_abs) - TG_GRAD_BITS;
    return k > 0 ? k : 0;
}

/* norm16 in one pass with no wide buffer (docs/numerics.md §2.1): sums are stored in int16
 * truncated toward zero at the running shift s = tg_keep_shift(largest |sum| so far), the
 * smallest that keeps each within int16 (|x| < 2^(15 + s)); at the end s is tg_norm_shift - 1
 * (or both are 0), and one rounding of the stored values by the difference gives the bits of
 * rounding the exact sums. */
TG_INLINE int32_t tg_keep_shift(int64_t max_abs)
{
    const int32_t s = tg_bitlen64(max_abs) - (TG_GRAD_BITS + 1);
    return s > 0 ? s : 0;
}

/* x / 2^s truncated toward zero, s in [0, 31]: the floor of x + 2^s - 1 for a negative x. */
TG_INLINE int32_t tg_trunc_shift(int32_t x, int32_t s)
{
    return (x + (int32_t)((uint32_t)(x >> 31) & ((1U << s) - 1U))) >> s;
}

/* tg_trunc_shift of an int64 sum (|x| < 2^62), s in [0, 62]. */
TG_INLINE int64_t tg_trunc_shift64(int64_t x, int32_t s)
{
    return (x + (int64_t)((uint64_t)(x >> 63) & (((uint64_t)1 << s) - 1U))) >> s;
}

/* Stored values truncated at shift s re-truncated at s + by: truncation toward zero composes
 * (trunc(trunc(x / 2^s) / 2^by) = trunc(x / 2^(s + by))), so they are as if truncated once. */
static inline void tg_grad_truncate(int16_t *g, int32_t n, int32_t by)
{
    for (int32_t i = 0; i < n; i++) {
        g[i] = (int16_t)tg_trunc_shift(g[i], by);
    }
}

/* The last step of the one-pass norm16: values truncated at s = k - 1 rounded by one more bit,
 * ties away from zero, are the exact sums rounded at k (floor((|x| + 2^(k-1)) / 2^k) is
 * floor((floor(|x| / 2^(k-1)) + 1) / 2)); by = k - s is 0 or 1. Halving with ties away from
 * zero is (t + (t > 0)) >> 1: floor((t + 1) / 2) above zero, floor(t / 2) = -floor((|t| + 1) / 2)
 * below. */
static inline void tg_grad_round(int16_t *g, int32_t n, int32_t by)
{
    if (by == 0) {
        return;
    }
    for (int32_t i = 0; i < n; i++) {
        const int32_t t = g[i];
        g[i] = (int16_t)((t + (t > 0)) >> 1);
    }
}

TG_INLINE int64_t tg_abs64(int64_t x)
{
    return x < 0 ? -x : x;
}

/* Bit i of a 1-bit mask array. */
TG_INLINE int32_t tg_mask_get(const uint8_t *mask, int32_t i)
{
    return (mask[i >> 3] >> (i & 7)) & 1;
}

/* Every bit of a mask of n outputs to 0: a kernel that writes a mask clears it first, then sets
 * bits. */
TG_INLINE void tg_mask_clear(uint8_t *mask, int32_t n)
{
    for (int32_t i = 0; i < (n + 7) / 8; i++) {
        mask[i] = 0;
    }
}

/* Bit i of a mask cleared by tg_mask_clear to `bit` (0 or 1): one OR, no read of the bit's old
 * value. */
TG_INLINE void tg_mask_put(uint8_t *mask, int32_t i, int32_t bit)
{
    mask[i >> 3] = (uint8_t)(mask[i >> 3] | ((uint32_t)bit << (i & 7)));
}

/* out = normalize16(align(a, ea) + align(b, eb)); in place on a or b is safe. In 32-bit
 * arithmetic: |a|, |b| <= 2^15, so the aligned sum fits int32, and a shift of 31 or more rounds an
 * int16 to 0 as 31 does (tg_divide_by_power_of_two takes exponents up to 31). The largest |v|
 * matters only through its bit length, which the OR of the magnitudes has. */
static inline void tg_grad_align_add(const int16_t *a, int32_t ea, const int16_t *b, int32_t eb,
                                     int16_t *out, int32_t *eout, int32_t n)
{
    const int32_t e = ea > eb ? ea : eb;
    const int32_t sa = e - ea < 31 ? e - ea : 31;
    const int32_t sb = e - eb < 31 ? e - eb : 31;
    int32_t big = 0;
    for (int32_t i = 0; i < n; i++) {
        const int32_t v = tg_divide_by_power_of_two(a[i], sa) + tg_divide_by_power_of_two(b[i], sb);
        big |= v < 0 ? -v : v;
    }
    const int32_t k = tg_norm_shift(big);
    for (int32_t i = 0; i < n; i++) {
        const int32_t v = tg_divide_by_power_of_two(a[i], sa) + tg_divide_by_power_of_two(b[i], sb);
        out[i] = (int16_t)tg_divide_by_power_of_two(v, k);
    }
    *eout = e + k;
}

#endif /* TG_GRAD_MATH_H */
