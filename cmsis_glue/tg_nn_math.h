/*
 * tg_nn_math.h - the fixed-point primitives every tinygen kernel uses.
 *
 * The C half of "one fact in one place": tinygen/quant.py is the Python half and
 * tests hold the two against each other. Semantics are CMSIS-NN's
 * arm_nn_requantize (double rounding, its default):
 *   - doubling high multiply: (a * b + 2^30) >> 31 in 64 bits, i.e. round half up
 *     of a*b / 2^31 (no saturation needed: multipliers are >= 0, so INT32_MIN^2
 *     cannot occur);
 *   - divide by 2^n rounding half away from zero;
 *   - values are clamped to the activation range only at the end of each kernel.
 * No undefined behaviour: shifts of negative numbers are right shifts (GCC and
 * Clang define them as arithmetic, an implementation-defined behaviour the
 * project relies on), left shifts are done on uint32_t, and the conversion
 * back to int32_t wraps modulo 2^32 (GCC's documented implementation-defined
 * behaviour), exactly as tinygen.quant.wrap_int32 models it.
 */
#ifndef TG_NN_MATH_H
#define TG_NN_MATH_H

#include <stdint.h>
#include <string.h>

#if defined(__ARM_FEATURE_SAT) && !defined(TG_PORTABLE_KERNELS)
#include <arm_acle.h>
#endif

#if defined(__GNUC__)
#define TG_INLINE static inline __attribute__((always_inline))
#else
#define TG_INLINE static inline
#endif

TG_INLINE int32_t tg_doubling_high_mult(int32_t a, int32_t b)
{
    const int64_t prod = (int64_t)a * (int64_t)b + ((int64_t)1 << 30);
    return (int32_t)(prod >> 31);
}

/* x / 2^n rounded half away from zero (arm_nn_divide_by_power_of_two); n >= 0; 0 when n >= 63. */
TG_INLINE int64_t tg_rshift_round64(int64_t x, int32_t n)
{
    if (n <= 0) {
        return x;
    }
    if (n >= 63) {
        return 0;
    }
    const int64_t mask = (int64_t)(((uint64_t)1 << n) - 1U);
    const int64_t remainder = x & mask;
    int64_t result = x >> n;
    int64_t threshold = mask >> 1;
    if (result < 0) {
        threshold++;
    }
    if (remainder > threshold) {
        result++;
    }
    return result;
}

/* The int32 case (arm_nn_divide_by_power_of_two), exponent in [0, 31], in 32-bit arithmetic: the
 * same steps as tg_rshift_round64 on the same bits, so the same result (docs/numerics.md §1.1).
 * Every requantization shift is in [0, 31]: tinygen.ir.quant.quantize_multiplier makes it so. */
TG_INLINE int32_t tg_divide_by_power_of_two(int32_t x, int32_t exponent)
{
    const int32_t mask = (int32_t)((1U << exponent) - 1U);
    const int32_t remainder = x & mask;
    const int32_t result = x >> exponent;
    /* mask >> 1, one more when the result is negative (its sign bit): no branch */
    const int32_t threshold = (mask >> 1) + (int32_t)((uint32_t)result >> 31);
    return result + (remainder > threshold);
}

/* arm_nn_requantize: val * multiplier * 2^shift / 2^31. shift > 0 is a left shift. */
TG_INLINE int32_t tg_requantize(int32_t val, int32_t multiplier, int32_t shift)
{
    const int32_t left = shift > 0 ? shift : 0;
    const int32_t right = left - shift;
    const int32_t scaled = (int32_t)((uint32_t)val << left);
    return tg_divide_by_power_of_two(tg_doubling_high_mult(scaled, multiplier), right);
}

/* tg_requantize ("r": right shifts only) where the build proved every shift <= 0
 * (codegen/forward.py, requantize_fn): the same two steps without the left shift's selects. */
TG_INLINE int32_t tg_requantize_r(int32_t val, int32_t multiplier, int32_t shift)
{
    return tg_divide_by_power_of_two(tg_doubling_high_mult(val, multiplier), -shift);
}

/* (2x + addend + (x < 0 ? -1 : 0)) >> rshift: the rounding divide below with its addend and
 * shift given (derived per call, or from a build-time table: tg_requantize29_channel). */
TG_INLINE int32_t tg_round_shift_small(int32_t x, int32_t addend, int32_t rshift)
{
    return (x * 2 + addend + (x >> 31)) >> rshift;
}

/* tg_divide_by_power_of_two for |x| < 2^29 and exponent in [0, 30], with one more bit and no
 * compare: floor((2x + 2^e - (x < 0)) / 2^(e+1)). For x >= 0 it is floor((x + 2^(e-1)) / 2^e)
 * (and x itself at e = 0); for x < 0 the numerator is one more than the even 2x + 2^e - 2, which
 * no multiple of 2^(e+1) lies between, so it is floor((x + 2^(e-1) - 1) / 2^e): ties away from
 * zero either way. The bounds keep 2x + 2^e inside int32.
 * With `offset` (tg_requantize29_offset), the quotient plus offset where the build also proved
 * (1 + 2 |offset|) 2^e <= 2^30 - 2 (codegen/forward.py, requantize_for): offset 2^(e+1) added to
 * the numerator adds exactly offset to the quotient (floor((n + k 2^(e+1)) / 2^(e+1)) =
 * floor(n / 2^(e+1)) + k) and the numerator stays inside int32 (|2x + (x >> 31)| <= 2^30 + 1):
 * one addition fewer an output, as (1 + 2 offset) 2^e is one constant per channel. */
TG_INLINE int32_t tg_divide_by_power_of_two_small_plus(int32_t x, int32_t exponent, int32_t offset)
{
    return tg_round_shift_small(x, (1 + 2 * offset) * (1 << exponent), exponent + 1);
}

TG_INLINE int32_t tg_divide_by_power_of_two_small(int32_t x, int32_t exponent)
{
    return tg_divide_by_power_of_two_small_plus(x, exponent, 0);
}

/* tg_requantize29 is tg_requantize where the build proved |val| < 2^29 and shift in [-30, 0]
 * (codegen/forward.py, requantize_for). Its doubling high multiply (tg_high29_x2) is then the
 * rounded high word of (2 * val) * multiplier, one SMMULR on a core with the DSP extension:
 * (2ab + 2^31) >> 32 is (ab + 2^30) >> 31, the same bits; its magnitude stays under 2^29, so the
 * rounding divide is tg_divide_by_power_of_two_small. The host's "dsp" kernel set computes
 * SMMULR's definition in C, the portable set tg_doubling_high_mult. tg_high29_x2 takes 2 * val
 * itself. */
TG_INLINE int32_t tg_high29_x2(int32_t val2, int32_t multiplier)
{
#if defined(__ARM_FEATURE_DSP) && !defined(TG_PORTABLE_KERNELS)
    int32_t high;
    __asm__("smmulr %0, %1, %2" : "=r"(high) : "r"(val2), "r"(multiplier));
    return high;
#elif defined(TG_DSP_PORTABLE) && !defined(TG_PORTABLE_KERNELS)
    const int64_t product = (int64_t)val2 * multiplier + ((int64_t)1 << 31);
    return (int32_t)(product >> 32);
#else
    return tg_doubling_high_mult(val2 / 2, multiplier);
#endif
}

/* tg_requantize29 and tg_requantize29_offset of val from val2 = 2 * val, which a kernel whose
 * weights it widens to halfwords itself forms at no cost (the depthwise ring kernels double their
 * taps and bias, docs/numerics.md §1.1): the same bits, the doubling left out. */
TG_INLINE int32_t tg_requantize29_x2(int32_t val2, int32_t multiplier, int32_t shift)
{
    return tg_divide_by_power_of_two_small(tg_high29_x2(val2, multiplier), -shift);
}

TG_INLINE int32_t tg_requantize29_x2_offset(int32_t val2, int32_t multiplier, int32_t shift,
                                            int32_t offset)
{
    return tg_divide_by_power_of_two_small_plus(tg_high29_x2(val2, multiplier), -shift, offset);
}

TG_INLINE int32_t tg_requantize29(int32_t val, int32_t multiplier, int32_t shift)
{
    return tg_requantize29_x2(val * 2, multiplier, shift);
}

/* tg_requantize29(val, multiplier, shift) + offset, the offset folded into the rounding divide
 * (tg_divide_by_power_of_two_small_plus; the same bound). */
TG_INLINE int32_t tg_requantize29_offset(int32_t val, int32_t multiplier, int32_t shift,
                                         int32_t offset)
{
    return tg_requantize29_x2_offset(val * 2, multiplier, shift, offset);
}

/* tg_requantize29_offset (and tg_requantize29: offset 0) with a channel's constants derived at
 * build time (codegen/forward.py, requant_table): channel[0] the multiplier, channel[1] the
 * rounding divide's addend (1 + 2 offset) 2^e and channel[2] its shift e + 1, e = -shift. The
 * same expression on the same values, so the same bits; a kernel that requantizes channel after
 * channel for each pixel (the 1x1 kernel) loads three words where it derived two of them every
 * time. */
TG_INLINE int32_t tg_requantize29_channel(int32_t val, const int32_t *channel)
{
    return tg_round_shift_small(tg_high29_x2(val * 2, channel[0]), channel[1], channel[2]);
}

/* v clamped to [lo, hi]. Where the range is all of int8 (every layer of the MIT models) and the
 * core saturates (Armv7-M and later: SSAT), one instruction; lo and hi are the kernels' named
 * constants, so the test folds at compile time. The portable kernel set keeps the plain C. */
TG_INLINE int8_t tg_clamp_s8(int32_t v, int32_t lo, int32_t hi)
{
#if defined(__ARM_FEATURE_SAT) && !defined(TG_PORTABLE_KERNELS)
    const int full_range = lo == INT8_MIN && hi == INT8_MAX;
    if (__builtin_constant_p(full_range) && full_range) {
        return (int8_t)__ssat(v, 8);
    }
#endif
    v = v > hi ? hi : v;
    return (int8_t)(v < lo ? lo : v);
}

TG_INLINE int32_t tg_min_i32(int32_t a, int32_t b)
{
    return a < b ? a : b;
}

/* CMSIS-NN average pool rounding: total / count, ties away from zero. */
TG_INLINE int32_t tg_rounded_average(int32_t total, int32_t count)
{
    return total > 0 ? (total + count / 2) / count : (total - count / 2) / count;
}

/* `rows` rows of `row_bytes` bytes from `src` to `dst`, whose rows start `src_stride` and
 * `dst_stride` bytes apart: a window of an NHWC map copied out of it or into it (the patch
 * stage, planning/patches.py). */
static inline void tg_copy_window(int8_t *dst, int32_t dst_stride, const int8_t *src,
                                  int32_t src_stride, int32_t rows, int32_t row_bytes)
{
    for (int32_t r = 0; r < rows; r++) {
        memcpy(dst + r * dst_stride, src + r * src_stride, (size_t)row_bytes);
    }
}

/* TFLite Micro's int8 softmax in gemmlowp's fixed point (reference_ops::Softmax; the Python half is
 * tinygen/ir/quant.py, docs/numerics.md §1.4). A Qk value is an int32 r meaning r / 2^(31 - k).
 * Every product is tg_doubling_high_mult: gemmlowp's saturating version differs only where both
 * operands are INT32_MIN, and one operand of each product here is a positive constant or >= 0. */
#define TG_Q0_EXP_MINUS_ONE_EIGHTH 1895147668 /* exp(-1/8) */
#define TG_Q0_ONE_THIRD            715827883
#define TG_Q0_ONE_EIGHTH           (1 << 28)
#define TG_Q2_ONE                  (1 << 29)
#define TG_Q2_48_OVER_17           1515870810
#define TG_Q2_MINUS_32_OVER_17     (-1010580540)
#define TG_Q5_ONE_QUARTER          (1 << 24)
#define TG_Q5_FRACTION_BITS        26

/* x * 2^n saturated to int32, n in [1, 30] (gemmlowp's SaturatingRoundingMultiplyByPOT<n>). */
TG_INLINE int32_t tg_saturating_shift_left(int32_t x, int32_t n)
{
    const int32_t limit = (int32_t)((1U << (31 - n)) - 1U);
    if (x > limit) {
        return INT32_MAX;
    }
    if (x < -limit) {
        return INT32_MIN;
    }
    return (int32_t)((uint32_t)x << n);
}

/* exp(a) of a Q0 a in [-1/4, 0): gemmlowp's Taylor expansion around -1/8 to x^4, x = a + 1/8. */
TG_INLINE int32_t tg_exp_quarter_interval(int32_t a)
{
    const int32_t x = a + TG_Q0_ONE_EIGHTH;
    const int32_t x2 = tg_doubling_high_mult(x, x);
    const int32_t x3 = tg_doubling_high_mult(x2, x);
    const int32_t x4 = tg_doubling_high_mult(x2, x2);
    const int32_t x4_over_4 = tg_divide_by_power_of_two(x4, 2);
    /* x^4 / 24 + x^3 / 6 + x^2 / 2 */
    const int32_t terms = tg_doubling_high_mult(x4_over_4 + x3, TG_Q0_ONE_THIRD) + x2;
    const int32_t poly = tg_divide_by_power_of_two(terms, 1);
    return TG_Q0_EXP_MINUS_ONE_EIGHTH + tg_doubling_high_mult(TG_Q0_EXP_MINUS_ONE_EIGHTH, x + poly);
}

/* exp(a) of a Q5 a <= 0, in Q0 (gemmlowp's exp_on_negative_values): exp of a mod 1/4 from the
 * expansion, times exp(-2^k) for each bit 2^k (k = -2..4) of the rest; exp(0) is INT32_MAX. */
TG_INLINE int32_t tg_exp_on_negative_values(int32_t a)
{
    static const int32_t exp_minus_pot[7] = {1672461947, 1302514674, 790015084, 290630308,
                                             39332535,   720401,     242};
    const int32_t a_mod = (a & (TG_Q5_ONE_QUARTER - 1)) - TG_Q5_ONE_QUARTER;
    const int32_t remainder = a_mod - a;
    int32_t result = tg_exp_quarter_interval(tg_saturating_shift_left(a_mod, 5));
    for (int32_t k = 0; k < 7; k++) {
        if (remainder & (1 << (TG_Q5_FRACTION_BITS - 2 + k))) {
            result = tg_doubling_high_mult(result, exp_minus_pot[k]);
        }
    }
    return a == 0 ? INT32_MAX : result;
}

/* 1 / (1 + a) of a Q0 a in [0, 1), in Q0 (gemmlowp's one_over_one_plus_x_for_x_in_0_1): three
 * Newton-Raphson steps in Q2 from 48/17 - 32/17 d, d = (1 + a) / 2 rounded half up. */
TG_INLINE int32_t tg_one_over_one_plus_x(int32_t a)
{
    const int32_t half_denominator = (int32_t)(((int64_t)a + INT32_MAX + 1) / 2);
    int32_t x = TG_Q2_48_OVER_17 + tg_doubling_high_mult(half_denominator, TG_Q2_MINUS_32_OVER_17);
    for (int32_t i = 0; i < 3; i++) {
        const int32_t one_minus = TG_Q2_ONE - tg_doubling_high_mult(half_denominator, x);
        x += tg_saturating_shift_left(tg_doubling_high_mult(x, one_minus), 2);
    }
    return tg_saturating_shift_left(x, 1);
}

#endif /* TG_NN_MATH_H */
