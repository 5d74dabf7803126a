/*
 * tg_dsp.h - the Armv7E-M DSP-extension operations tinygen's optimised kernel paths use.
 *
 * A kernel's optimised path sits beside its portable loop in the same function, as CMSIS-NN's
 * kernels do (`#if defined(ARM_MATH_DSP)`), and is compiled when TG_DSP_KERNELS is 1:
 *   - on a core with the DSP extension (Cortex-M4, M7, M33/M55 with DSP: __ARM_FEATURE_DSP),
 *     with the real SXTB16 / SMLAD instructions through ACLE's <arm_acle.h>;
 *   - on any other compiler when TG_DSP_PORTABLE is defined (the host build of the "dsp" kernel
 *     set, `tinygen verify --kernels dsp`), through the exact C definitions below, so that every
 *     test runs the optimised paths' arithmetic bit for bit on the host.
 * TG_PORTABLE_KERNELS forces the portable loops on a DSP core.
 *
 * Every sum a kernel forms with tg_smlad is proven within int32 by the same bound as its portable
 * loop (docs/numerics.md §1.0); integer addition is exact and associative there, so pairing the
 * products two at a time gives the portable loop's sum exactly.
 */
#ifndef TG_DSP_H
#define TG_DSP_H

#include <stdint.h>
#include <string.h>

#include "tg_nn_math.h"

#if !defined(TG_PORTABLE_KERNELS) && (defined(__ARM_FEATURE_DSP) || defined(TG_DSP_PORTABLE))
#define TG_DSP_KERNELS 1
#else
#define TG_DSP_KERNELS 0
#endif

#if TG_DSP_KERNELS

/* Four int8 values from any address (unaligned LDR on Armv7E-M; memcpy keeps C aliasing rules). */
TG_INLINE int32_t tg_read_s8x4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

/* Two words (eight int8 or four int16 values) from an address the build proved word-aligned:
 * one LDRD on Armv7E-M, which faults on an unaligned address (codegen/forward.py,
 * aligned_rows; the im2col columns and const tables are 8-aligned). */
TG_INLINE void tg_read_2x32(const void *p, int32_t *lo, int32_t *hi)
{
    int32_t v[2];
    memcpy(v, __builtin_assume_aligned(p, 4), sizeof(v));
    *lo = v[0];
    *hi = v[1];
}

/* Two words to an address the build proved word-aligned: one STRD on Armv7E-M. */
TG_INLINE void tg_write_2x32(void *p, int32_t lo, int32_t hi)
{
    const int32_t v[2] = {lo, hi};
    memcpy(__builtin_assume_aligned(p, 4), v, sizeof(v));
}

/* Two int16 values from any address. */
TG_INLINE int32_t tg_read_s16x2(const int16_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

#if defined(__ARM_FEATURE_DSP) && !defined(TG_DSP_PORTABLE)
#include <arm_acle.h>

/* Bytes 0 and 2 of x, sign-extended into the two halfwords (SXTB16). */
TG_INLINE int32_t tg_sxtb16(int32_t x)
{
    return (int32_t)__sxtb16((uint32_t)x);
}

/* Bytes 1 and 3 of x, sign-extended into the two halfwords (SXTB16 with ROR #8: one instruction,
 * which ACLE does not name; a plain asm, so the compiler may still schedule and combine it). */
TG_INLINE int32_t tg_sxtb16_ror8(int32_t x)
{
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}

/* a + bytes 0 and 2 of x sign-extended, halfword by halfword (SXTAB16). */
TG_INLINE int32_t tg_sxtab16(int32_t a, int32_t x)
{
    return (int32_t)__sxtab16((uint32_t)a, (uint32_t)x);
}

/* a + bytes 1 and 3 of x sign-extended, halfword by halfword (SXTAB16 with ROR #8). */
TG_INLINE int32_t tg_sxtab16_ror8(int32_t a, int32_t x)
{
    int32_t r;
    __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(a), "r"(x));
    return r;
}

/* acc + x.lo * y.lo + x.hi * y.hi, halfwords signed (SMLAD). */
TG_INLINE int32_t tg_smlad(int32_t x, int32_t y, int32_t acc)
{
    return __smlad((int16x2_t)x, (int16x2_t)y, acc);
}

/* acc + x.lo * y.hi + x.hi * y.lo, halfwords signed (SMLADX: SMLAD with y's halves exchanged). */
TG_INLINE int32_t tg_smladx(int32_t x, int32_t y, int32_t acc)
{
    return __smladx((int16x2_t)x, (int16x2_t)y, acc);
}

/* acc + x.lo * y.lo (SMLABB) and acc + x.lo * y.hi (SMLABT), halfwords signed. */
TG_INLINE int32_t tg_smlabb(int32_t x, int32_t y, int32_t acc)
{
    return __smlabb(x, y, acc);
}

TG_INLINE int32_t tg_smlabt(int32_t x, int32_t y, int32_t acc)
{
    return __smlabt(x, y, acc);
}

/* acc + x.hi * y.hi (SMLATT). */
TG_INLINE int32_t tg_smlatt(int32_t x, int32_t y, int32_t acc)
{
    return __smlatt(x, y, acc);
}

/* The halfword pairs (a.lo, b.lo) (PKHBT) and (a.hi, b.hi) (PKHTB); ACLE names neither. */
TG_INLINE int32_t tg_pack_lo(int32_t a, int32_t b)
{
    int32_t r;
    __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

TG_INLINE int32_t tg_pack_hi(int32_t a, int32_t b)
{
    int32_t r;
    __asm__("pkhtb %0, %1, %2, asr #16" : "=r"(r) : "r"(b), "r"(a));
    return r;
}

#else /* the same operations in C99, exact */

TG_INLINE int32_t tg_halfwords(int32_t lo, int32_t hi)
{
    return (int32_t)(((uint32_t)hi << 16) | ((uint32_t)lo & 0xFFFFU));
}

TG_INLINE int32_t tg_sxtb16(int32_t x)
{
    const uint32_t u = (uint32_t)x;
    return tg_halfwords((int8_t)(u & 0xFFU), (int8_t)((u >> 16) & 0xFFU));
}

TG_INLINE int32_t tg_sxtb16_ror8(int32_t x)
{
    const uint32_t u = (uint32_t)x;
    return tg_halfwords((int8_t)((u >> 8) & 0xFFU), (int8_t)((u >> 24) & 0xFFU));
}

TG_INLINE int32_t tg_sxtab16(int32_t a, int32_t x)
{
    const uint32_t ua = (uint32_t)a;
    const int32_t e = tg_sxtb16(x);
    return tg_halfwords((int32_t)(ua & 0xFFFFU) + (int16_t)((uint32_t)e & 0xFFFFU),
                        (int32_t)(ua >> 16) + (int16_t)((uint32_t)e >> 16));
}

TG_INLINE int32_t tg_sxtab16_ror8(int32_t a, int32_t x)
{
    return tg_sxtab16(a, (int32_t)(((uint32_t)x >> 8) | ((uint32_t)x << 24)));
}

TG_INLINE int32_t tg_smlad(int32_t x, int32_t y, int32_t acc)
{
    const uint32_t ux = (uint32_t)x;
    const uint32_t uy = (uint32_t)y;
    const int32_t lo = (int32_t)(int16_t)(ux & 0xFFFFU) * (int32_t)(int16_t)(uy & 0xFFFFU);
    const int32_t hi = (int32_t)(int16_t)(ux >> 16) * (int32_t)(int16_t)(uy >> 16);
    /* SMLAD's sum wraps modulo 2^32; the kernels' bounds keep it exact */
    return (int32_t)((uint32_t)acc + (uint32_t)lo + (uint32_t)hi);
}

TG_INLINE int32_t tg_smladx(int32_t x, int32_t y, int32_t acc)
{
    const uint32_t uy = (uint32_t)y;
    return tg_smlad(x, (int32_t)((uy >> 16) | (uy << 16)), acc);
}

TG_INLINE int32_t tg_smlabb(int32_t x, int32_t y, int32_t acc)
{
    const int32_t p =
        (int32_t)(int16_t)((uint32_t)x & 0xFFFFU) * (int32_t)(int16_t)((uint32_t)y & 0xFFFFU);
    return (int32_t)((uint32_t)acc +
                     (uint32_t)p); /* wraps as SMLABB does; the bounds keep it exact */
}

TG_INLINE int32_t tg_smlabt(int32_t x, int32_t y, int32_t acc)
{
    const int32_t p =
        (int32_t)(int16_t)((uint32_t)x & 0xFFFFU) * (int32_t)(int16_t)((uint32_t)y >> 16);
    return (int32_t)((uint32_t)acc + (uint32_t)p);
}

TG_INLINE int32_t tg_smlatt(int32_t x, int32_t y, int32_t acc)
{
    const int32_t p = (int32_t)(int16_t)((uint32_t)x >> 16) * (int32_t)(int16_t)((uint32_t)y >> 16);
    return (int32_t)((uint32_t)acc + (uint32_t)p);
}

TG_INLINE int32_t tg_pack_lo(int32_t a, int32_t b)
{
    return (int32_t)(((uint32_t)a & 0xFFFFU) | ((uint32_t)b << 16));
}

TG_INLINE int32_t tg_pack_hi(int32_t a, int32_t b)
{
    return (int32_t)(((uint32_t)a >> 16) | ((uint32_t)b & 0xFFFF0000U));
}

#endif

/* `quads` words of int8 values widened to int16 pairs in SXTB16 order, a quad every 8 halfwords:
 * each four bytes (b0, b1, b2, b3) of src become the halfwords (b0, b2, b1, b3) at dst[8 q], the
 * order in which a kernel's SXTB16 gives the values they meet. A 1x1 kernel widens an output
 * channel pair's weight rows once, interleaved quad by quad (the second row at dst + 4), and reads
 * them by word pairs for every pixel: two SXTB16 fewer a word each time, one pointer for both
 * rows. dst is word-aligned. */
TG_INLINE void tg_widen_s8x4_pair(const int8_t *src, int16_t *dst, int32_t quads)
{
    for (int32_t q = 0; q < quads; q++) {
        const int32_t w = tg_read_s8x4(&src[q * 4]);
        tg_write_2x32(&dst[q * 8], tg_sxtb16(w), tg_sxtb16_ror8(w));
    }
}

/* v in both halfwords (its low 16 bits twice). */
TG_INLINE int32_t tg_halfword_pair(int32_t v)
{
    return (int32_t)(((uint32_t)v & 0xFFFFU) * 0x10001U);
}
#endif /* TG_DSP_KERNELS */
#endif /* TG_DSP_H */
