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
