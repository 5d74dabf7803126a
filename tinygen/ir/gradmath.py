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

# Stochastic rounding of weight updates (docs/numerics.md §6.2; TG_SR_* in tg_grad_math.h). The noise is
# counter-based, a hash of (step, layer, weight index), so that it does not depend on the order in which
# weights are visited: lowbias32 (C. Wellons' integer-hash search) of key + index * SR_INDEX_MUL.
SR_BITS = 8  # extra fraction bits of the update before it is rounded; the noise is the hash's top byte
SR_INDEX_MUL = 0x9E3779B9  # 2^32 / golden ratio: spreads consecutive indices
SR_STEP_MUL = 0x85EBCA6B  # the step's stride in the key
SR_MIX = (0x7FEB352D, 0x846CA68B)  # lowbias32's multipliers
M32 = 0xFFFFFFFF


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


def fnv1a32(data: bytes) -> int:
    """32-bit FNV-1a (offset basis 2166136261, prime 16777619): the trained parameters' checksum the device
    prints (`tg_param_checksum`), and a layer's salt in the stochastic-rounding key (of its name's UTF-8:
    its name, not its position, so that a model's tail trains exactly as the whole model does)."""
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & M32
    return h


def sr_key(step: int, salt: int) -> int:
    return (step * SR_STEP_MUL + salt) & M32


def sr_noise(key, index) -> np.ndarray:
    """The SR_BITS-bit noise of each weight index under `key` (uint32 arithmetic, wrapping)."""
    m32 = np.uint64(M32)
    x = (np.asarray(key, dtype=np.uint64) + np.asarray(index, dtype=np.uint64) * np.uint64(SR_INDEX_MUL)) & m32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(SR_MIX[0])) & m32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(SR_MIX[1])) & m32
    x ^= x >> np.uint64(16)
    return (x >> np.uint64(32 - SR_BITS)).astype(np.int64)


def round_stochastic(fine, noise) -> np.ndarray:
    """floor((fine + noise) / 2^SR_BITS): rounds up with probability equal to the dropped fraction, so that
    the expected result is fine / 2^SR_BITS exactly (|fine| <= 2^62)."""
    return (np.asarray(fine, dtype=np.int64) + noise) >> SR_BITS


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
