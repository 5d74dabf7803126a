"""Fixed-point arithmetic shared by every int8 kernel (DESIGN.md §3).

This is the Python half of "one fact in one place"; the C half is
`cmsis_glue/tg_nn_math.h`. Tests hold the two against each other.

All functions take and return int64 NumPy arrays (or Python ints) holding
values that are representable in int32 unless said otherwise.
"""

from __future__ import annotations

import math

import numpy as np

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def round_half_away(x: float) -> int:
    """Round to nearest, ties away from zero (C's `round`, not Python's)."""
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def split_multiplier(real: float) -> tuple[int, int]:
    """(m, e) with real ~= m * 2^e / 2^31 and m in [2^30, 2^31) (0, 0 for 0): frexp, then
    m = round_half_away(q * 2^31); if that rounds up to 2^31, halve it and bump e. Any exponent."""
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"multiplier {real!r} must be finite and >= 0")
    if real == 0.0:
        return 0, 0
    q, e = math.frexp(real)
    m = round_half_away(q * (1 << 31))
    if m == 1 << 31:
        m //= 2
        e += 1
    return m, e


def quantize_multiplier(eff: float) -> tuple[int, int]:
    """Split a requantization multiplier into (q31 multiplier, shift) for `arm_nn_requantize`.

    `shift > 0` is a left shift, `shift < 0` a right shift. Multipliers below 2^-31 become 0
    (the product rounds to zero anyway); 2^30 and above are refused (the left shift would overflow).
    """
    try:
        m, e = split_multiplier(eff)
    except ValueError:
        raise ValueError(f"requantization multiplier {eff!r} must be finite and >= 0") from None
    if e < -31:
        return 0, 0
    if e > 30:
        raise ValueError(f"requantization multiplier {eff!r} is too large (>= 2^30)")
    return m, e


def wrap_int32(x):
    """Two's-complement wrap to int32, as the C code's uint32 arithmetic does."""
    x = np.asarray(x, dtype=np.int64)
    return ((x + 2**31) & 0xFFFFFFFF) - 2**31


def doubling_high_mult(a, b):
    """`arm_nn_doubling_high_mult_no_sat`: (a*b + 2^30) >> 31, result in int32.

    The only input pair that overflows (INT32_MIN * INT32_MIN) cannot occur here:
    multipliers are non-negative.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    # a*b fits in int64 for int32 inputs except -2^31 * -2^31, excluded above.
    return wrap_int32((a * b + (1 << 30)) >> 31)


def divide_by_power_of_two(x, exponent):
    """`arm_nn_divide_by_power_of_two`: x / 2^exponent, ties away from zero."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    result = x >> exponent
    threshold = (mask >> 1) + (result < 0)
    return result + (remainder > threshold)


def requantize(x, multiplier, shift):
    """`arm_nn_requantize` (CMSIS-NN's default double rounding)."""
    x = np.asarray(x, dtype=np.int64)
    multiplier = np.asarray(multiplier, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return divide_by_power_of_two(doubling_high_mult(wrap_int32(x << left), multiplier), right)


def saturate(x, lo: int, hi: int):
    return np.clip(np.asarray(x, dtype=np.int64), lo, hi)


def rounded_average(total, count):
    """CMSIS-NN average pool: divide rounding half away from zero."""
    total = np.asarray(total, dtype=np.int64)
    count = np.asarray(count, dtype=np.int64)
    half = count // 2
    num = np.where(total > 0, total + half, total - half)
    # C integer division truncates toward zero.
    return np.sign(num) * (np.abs(num) // count)


# ---------------------------------------------------------------------------
# TFLite Micro's int8 SOFTMAX (reference_ops::Softmax, gemmlowp fixed point). A "Qk" value is an int32 raw
# value r meaning r / 2^(31 - k). Products are gemmlowp's SaturatingRoundingDoublingHighMul, which is
# `doubling_high_mult` wherever not both operands are INT32_MIN (never here: one operand of every product is
# a positive constant or a non-negative value). The C half is cmsis_glue/tg_softmax.h.

SOFTMAX_DIFF_BITS = 5  # the scaled input difference is Q5 (kScaledDiffIntegerBits)
SOFTMAX_SUM_BITS = 12  # the sum of exponentials is Q12 (kAccumulationIntegerBits)
SOFTMAX_EXP_STEPS = ((24, 1672461947), (25, 1302514674), (26, 790015084), (27, 290630308), (28, 39332535),
                     (29, 720401), (30, 242))  # (bit of the Q5 remainder, Q0 exp(-2^(bit - 26)))


def saturating_shift_left(x, n: int):
    """gemmlowp's SaturatingRoundingMultiplyByPOT<n> for n > 0: x * 2^n, saturated to int32."""
    x = np.asarray(x, dtype=np.int64)
    return np.clip(x << n, INT32_MIN, INT32_MAX)


def _exp_quarter_interval(a):
    """exp(a) for a Q0 `a` in [-1/4, 0): gemmlowp's Taylor expansion around -1/8."""
    x = a + (1 << 28)
    x2 = doubling_high_mult(x, x)
    x3 = doubling_high_mult(x2, x)
    x4 = doubling_high_mult(x2, x2)
    x4_over_4 = divide_by_power_of_two(x4, 2)
    poly = divide_by_power_of_two(doubling_high_mult(x4_over_4 + x3, 715827883) + x2, 1)  # 715827883: Q0 1/3
    return 1895147668 + doubling_high_mult(1895147668, x + poly)  # 1895147668: Q0 exp(-1/8)


def exp_on_negative_values(a):
    """gemmlowp's exp_on_negative_values: exp(a) of a Q5 `a` <= 0, in Q0 (exp(0) is INT32_MAX)."""
    a = np.asarray(a, dtype=np.int64)
    quarter = 1 << 24
    a_mod = (a & (quarter - 1)) - quarter  # in [-1/4, 0)
    result = _exp_quarter_interval(saturating_shift_left(a_mod, SOFTMAX_DIFF_BITS))
    remainder = a_mod - a
    for bit, multiplier in SOFTMAX_EXP_STEPS:
        result = np.where(remainder & (1 << bit), doubling_high_mult(result, multiplier), result)
    return np.where(a == 0, INT32_MAX, result)


def one_over_one_plus_x(a):
    """gemmlowp's one_over_one_plus_x_for_x_in_0_1: 1 / (1 + a) of a Q0 `a` in [0, 1), in Q0 (three
    Newton-Raphson steps in Q2 from 48/17 - 32/17 d, d = (1 + a) / 2)."""
    a = np.asarray(a, dtype=np.int64)
    half_denominator = (a + INT32_MAX + 1) // 2  # gemmlowp's RoundingHalfSum(a, 1) for a >= 0
    x = 1515870810 + doubling_high_mult(half_denominator, -1010580540)  # Q2 48/17 and -32/17
    for _ in range(3):
        one_minus = (1 << 29) - doubling_high_mult(half_denominator, x)
        x = x + saturating_shift_left(doubling_high_mult(x, one_minus), 2)
    return saturating_shift_left(x, 1)


def softmax_params(beta: float, input_scale: float) -> tuple[int, int, int]:
    """(multiplier, left shift, diff_min) as TFLite Micro derives them (PreprocessSoftmaxScaling and
    CalculateInputRadius, kScaledDiffIntegerBits = 5): `beta s_in 2^26` split into a q31 multiplier and a left
    shift; input differences below diff_min contribute nothing. Refused where the left shift exceeds 30 (an
    input scale of 16 / beta or more: TFLite's two rounding modes differ there)."""
    real = min(float(beta) * float(input_scale) * (1 << (31 - SOFTMAX_DIFF_BITS)), float(INT32_MAX))
    m, e = split_multiplier(real)
    if not 0 <= e <= 30:
        raise ValueError(f"softmax multiplier beta * s_in = {float(beta) * float(input_scale)!r} is outside "
                         "[2^-26, 16)")
    radius = math.floor(((1 << SOFTMAX_DIFF_BITS) - 1) * (1 << (31 - SOFTMAX_DIFF_BITS)) / (1 << e))
    return m, e, -radius


def softmax_s8(x, multiplier: int, left_shift: int, diff_min: int):
    """TFLite Micro's int8 SOFTMAX of one row of logits (output scale 1/256, zero point -128)."""
    x = np.asarray(x, dtype=np.int64)
    diff = x - x.max()
    live = diff >= diff_min
    scaled = doubling_high_mult(np.where(live, diff, 0) << left_shift, multiplier)
    exps = np.where(live, exp_on_negative_values(scaled), 0)
    total = int(divide_by_power_of_two(exps, SOFTMAX_SUM_BITS).sum())
    headroom = 32 - total.bit_length()  # count of leading zeros of the (positive) int32 sum
    bits_over_unit = SOFTMAX_SUM_BITS - headroom
    shifted_scale = one_over_one_plus_x(((total << headroom) - (1 << 31)) & 0xFFFFFFFF)
    out = divide_by_power_of_two(doubling_high_mult(shifted_scale, exps), bits_over_unit + 31 - 8) - 128
    return np.where(live, np.clip(out, -128, 127), -128)
