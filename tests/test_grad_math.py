"""The training-path primitives: Python (tinygen.ir.gradmath) vs C (cmsis_glue/tg_grad_math.h), bit for
bit, over random and extreme int64 inputs, every shift, and the saturation paths."""

from __future__ import annotations

import numpy as np
import pytest
from c_harness import c_driver

from tinygen.ir import gradmath

C_BODY = """
        r[0] = tg_mul_q31(v[0], (int32_t)v[1], (int32_t)v[2]);
        r[1] = tg_rshift_round64(v[0], (int32_t)(v[2] < 0 ? -v[2] : v[2]));
        r[2] = tg_bitlen64(v[0]);
        r[3] = tg_sat32(v[0]);
        r[4] = tg_round_stochastic(v[0] >> 1, tg_sr_key((uint32_t)v[1], (uint32_t)v[2]), (int32_t)v[1]);
        r[5] = tg_mul_q31_s16((int16_t)v[0], (int32_t)v[1], 16 - (int32_t)(v[2] < 0 ? -v[2] : v[2]) % 47);
        r[6] = tg_mul_q31_s16_high((int16_t)v[0], (int32_t)v[1], 15 - (int32_t)(v[2] < 0 ? -v[2] : v[2]) % 17);
        r[7] = tg_keep_shift(v[0]);
        r[8] = tg_trunc_shift((int32_t)v[0], (int32_t)(v[2] < 0 ? -v[2] : v[2]) % 32);
        r[9] = tg_trunc_shift64(v[0], (int32_t)(v[2] < 0 ? -v[2] : v[2]) % 63);
        int16_t halves[2] = {(int16_t)v[0], (int16_t)v[1]};
        tg_grad_round(halves, 2, (int32_t)(v[2] & 1));
        r[10] = halves[0];
        r[11] = halves[1];
        r[12] = tg_mul_q31_s32((int32_t)v[0], (int32_t)v[1], (int32_t)v[2]);"""


@pytest.fixture(scope="module")
def c_prims(tmp_path_factory):
    return c_driver(tmp_path_factory.mktemp("grad"), "tg_grad_math.h", C_BODY.rstrip("\n"), np.int64, 13)


def test_grad_primitives_c_equal_python(c_prims):
    rng = np.random.default_rng(7)
    n = 30000
    lim = 2**62 - 1
    x = np.concatenate([rng.integers(-lim, lim, n), rng.integers(-2**20, 2**20, n), rng.integers(-40000, 40000, n),
                        [0, 1, -1, lim, -lim, 2**31, -2**31, 2**30, -(2**30) - 1] * 50])
    m = np.concatenate([rng.integers(2**30, 2**31, 2 * n), rng.integers(0, 2**31, n), [2**31 - 1, 2**30, 0] * 150])
    sh = np.concatenate([rng.integers(-70, 70, 3 * n), np.tile(np.arange(-66, 66), 4)[:450]])
    v = np.stack([x, m, sh], axis=1)
    got = c_prims(v)
    assert np.array_equal(got[:, 0], gradmath.mul_q31(x, m, sh))
    assert np.array_equal(got[:, 1], gradmath.rshift_round(x, np.abs(sh)))
    assert np.array_equal(got[:, 2], gradmath.bitlen(x))
    assert np.array_equal(got[:, 3], gradmath.sat(x, 32))
    # the saturation path is exercised: some products hit +-2^62
    assert np.any(np.abs(got[:, 0]) == 2**62)
    x16 = ((x + 2**15) % 2**16) - 2**15  # (int16_t)x
    assert np.array_equal(got[:, 5], gradmath.mul_q31(x16, m, 16 - np.abs(sh) % 47))  # the int16 fast path
    assert np.array_equal(got[:, 6], gradmath.mul_q31(x16, m, 15 - np.abs(sh) % 17))  # its high-word form
    assert np.array_equal(got[:, 7], np.maximum(gradmath.bitlen(x) - 15, 0))
    x32 = ((x + 2**31) % 2**32) - 2**31  # (int32_t)x
    assert np.array_equal(got[:, 8], truncate(x32, np.abs(sh) % 32))
    assert np.array_equal(got[:, 9], truncate(x, np.abs(sh) % 63))
    assert np.array_equal(got[:, 12], gradmath.mul_q31(x32, m, sh))  # the int32 narrowing
    m16 = ((m + 2**15) % 2**16) - 2**15
    assert np.array_equal(got[:, 10:12], gradmath.rshift_round(np.stack([x16, m16], axis=1), (sh & 1)[:, None]))
    key = (m * gradmath.SR_STEP_MUL + (sh & gradmath.M32)) & gradmath.M32  # v[1] as the step, v[2] as the salt
    assert np.array_equal(got[:, 4], gradmath.round_stochastic(x >> 1, gradmath.sr_noise(key, m)))


def truncate(x, s):
    """x / 2^s truncated toward zero."""
    return np.sign(x) * (np.abs(x) >> s)


def one_pass_normalize16(v: np.ndarray, block: int) -> tuple[np.ndarray, int]:
    """The input-gradient kernels' norm16 without a wide buffer (tg_keep_shift, tg_grad_truncate,
    tg_grad_round): blocks of sums stored in int16 truncated at the running shift, what is stored re-truncated
    where the shift grows, one rounding at the end; returns (the int16 values, k)."""
    out = np.zeros(v.size, dtype=np.int64)
    big, s = 0, 0
    for at in range(0, v.size, block):
        part = v[at:at + block]
        big = max(big, int(np.abs(part).max()))
        need = max(0, int(gradmath.bitlen(big)) - 15)
        if need > s:
            out[:at] = truncate(out[:at], need - s)
            s = need
        out[at:at + block] = truncate(part, s)
        assert np.abs(out[:at + block]).max() < 2**15  # every stored value is an int16
    k = max(0, int(gradmath.bitlen(big)) - 14)
    assert k - s in (0, 1)
    return gradmath.rshift_round(out, k - s), k


@pytest.mark.parametrize("order", ["growing", "shrinking", "random"])
def test_one_pass_normalize16_equals_normalize16(order):
    """Truncation toward zero composes, and values truncated at k - 1 rounded by one bit are the exact sums
    rounded at k: the one-pass norm16 gives normalize16's bits, whatever order the magnitudes come in (growing:
    a re-truncation at nearly every block)."""
    rng = np.random.default_rng(3)
    for bits in (10, 14, 15, 16, 24, 31, 40):
        v = rng.integers(-2**bits, 2**bits, 3000)
        v[rng.integers(0, v.size, 40)] |= 1 << (bits - 1)  # ties: ...100 patterns at many shifts
        v[::7] = (v[::7] >> 5) << 5
        if order != "random":
            v = v[np.argsort(np.abs(v), kind="stable")]
            v = v if order == "growing" else v[::-1]
        for block in (1, 5, 64):
            got, k = one_pass_normalize16(v, block)
            want, e = gradmath.normalize16(v, 0)
            assert k == e and np.array_equal(got, want)


def test_stochastic_rounding_is_unbiased_and_bounded():
    """Rounding x / 2^8 over many keys averages to x / 2^8 and never moves further than one unit."""
    x = np.array([1, 37, 128, 255, -1, -37, -200, 3 * 256 + 77], dtype=np.int64)
    keys = [gradmath.sr_key(step, gradmath.fnv1a32(b"layer")) for step in range(4096)]
    got = np.stack([gradmath.round_stochastic(x, gradmath.sr_noise(k, np.arange(x.size))) for k in keys])
    assert np.all((got == np.floor(x / 256)) | (got == np.floor(x / 256) + 1))
    assert np.allclose(got.mean(axis=0), x / 256, atol=0.03)


def test_normalize16_bounds():
    v = np.array([2**40 + 12345, -(2**40), 7, 0], dtype=np.int64)
    g, e = gradmath.normalize16(v, -3)
    assert np.abs(g).max() <= 2**14 and e == -3 + int(gradmath.bitlen(2**40 + 12345)) - 14
    g0, e0 = gradmath.normalize16(np.zeros(4, dtype=np.int64), 5)
    assert not g0.any() and e0 == 5


def test_int16_multiply_at_its_extremes(c_prims):
    """tg_mul_q31_s16 at the ends of its domain: x = -2^15 and 2^15 - 1, m = 2^31 - 1, right shifts 15 and 46;
    tg_mul_q31_s16_high at the ends of its own, right shifts 16 and 32 (and everything between)."""
    rows = [[x, m, s] for x in (-2**15, 2**15 - 1, -1, 1, 0) for m in (2**31 - 1, 2**30, 1, 0)
            for s in (0, 31, 46, *range(17))]
    got = c_prims(rows)
    v = np.asarray(rows)
    assert np.array_equal(got[:, 5], gradmath.mul_q31(v[:, 0], v[:, 1], 16 - v[:, 2] % 47))
    assert np.array_equal(got[:, 6], gradmath.mul_q31(v[:, 0], v[:, 1], 15 - v[:, 2] % 17))
    assert got[:, 5].min() == -(2**31 - 1) and got[:, 5].max() < 2**31  # the ends, inside int32


def test_grad_output_bound_covers_every_int16_gradient():
    """The output gradient's v = mul(g, m, shift + 16) stays under `grad_output_bound` for every int16 g, so
    where that is below 2^29 the normalizing divide may be the three-operation one (conv_grad_output_s16)."""
    from tinygen.codegen.training import grad_output_bound
    from tinygen.ir.gradmath import mul_q31

    rng = np.random.default_rng(11)
    g = np.array([-32768, -32767, -1, 1, 32767])[:, None]
    for _ in range(300):
        mult = rng.integers(0, 2**31, 6)
        shift = rng.integers(-40, 1, 6)
        v = mul_q31(g, mult[None, :], shift[None, :] + 16)
        assert np.abs(v).max() < grad_output_bound(mult, shift)
