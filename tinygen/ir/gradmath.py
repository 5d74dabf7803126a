"""Fixed-point primitives of the training path (docs/numerics.md §2).

Python half of `cmsis_glue/tg_grad_math.h`; tests hold the two against each other.
Everything is int64 NumPy arithmetic on values bounded as the docs state; nothing
here relies on float.
"""

from __future__ import annotations

import numpy as np

from tinygen.ir.quant import divide_by_power_of_two, split_multiplier  # noqa: F401  (split_multiplier re-exported)

GRAD_BITS = 14  # normalized gradients satisfy |G| <= 2^14 (int16 with one bit of headroom)
SAT62 = (1 << 62)


def bitlen(x) -> np.ndarray:
    """Bit length of |x| (0 for 0) for int64 |x| < 2^62, exactly (no float log)."""
    a = np.abs(np.asarray(x, dtype=np.int64))
    n = np.zeros(a.shape, dtype=np.int64)
    for step in (32, 16, 8, 4, 2, 1):
        big = a >= (np.int64(1) << step)
        a = np.where(big, a >> step, a)
        n += np.where(big, step, 0)
    return n + (a > 0)


def rshift_round(x, n):
    """x / 2^n rounded half away from zero, n >= 0; 0 when n >= 63 (|x| < 2^62): CMSIS-NN's
    rounding divide (`quant.divide_by_power_of_two`) on int64."""
    n = np.asarray(n, dtype=np.int64)
    big = n >= 63
    return np.where(big, 0, divide_by_power_of_two(x, np.where(big, 0, n)))


def sat(x, bits: int):
    lim = 1 << (bits - 1)
    return np.clip(np.asarray(x, dtype=np.int64), -lim, lim - 1)


def mul_q31(x, m, shift):
    """round(x * m * 2^(shift - 31)) for |x| < 2^62, 0 <= m < 2^31, as specified in numerics.md:
    x is first narrowed to 31 significant bits (t = x >> n, rounded, n = max(0, bitlen(x) - 30)),
    then p = t * m is shifted right by r = 31 - shift - n (rounded) or, for r < 0, left with
    saturation to +-2^62."""
    x = np.asarray(x, dtype=np.int64)
    m = np.asarray(m, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    n = np.maximum(bitlen(x) - 30, 0)
    t = rshift_round(x, n)
    p = t * m  # |t| <= 2^30, m < 2^31: |p| < 2^61
    r = 31 - shift - n
    right = rshift_round(p, np.maximum(r, 0))
    left_n = np.minimum(np.maximum(-r, 0), 62)
    left = np.where(np.abs(p) >= (SAT62 >> left_n), np.sign(p) * SAT62, p << left_n)
    return np.where(r >= 0, right, left)


def normalize16(v, e: int) -> tuple[np.ndarray, int]:
    """Scale int64 values by a power of two so that |G| <= 2^14; returns (G int16 values as int64, e')."""
    v = np.asarray(v, dtype=np.int64)
    big = int(np.abs(v).max()) if v.size else 0
    k = max(0, int(bitlen(big)) - GRAD_BITS)
    return rshift_round(v, k), int(e) + k


def align_add(parts: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, int]:
    """Sum gradients held at different exponents: align to the largest, then normalize."""
    e = max(p[1] for p in parts)
    total = sum(rshift_round(g, e - pe) for g, pe in parts)
    return normalize16(total, e)
