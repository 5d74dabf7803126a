"""The fixed-point primitives: Python (tinygen.ir.quant) vs C (cmsis_glue/tg_nn_math.h), bit for bit,
including the int32 extremes and every shift."""

from __future__ import annotations

import math

import numpy as np
import pytest
from c_harness import c_driver

from tinygen.codegen.forward import FOLD_LIMIT, requant_table, requantize_for
from tinygen.ir import quant

C_BODY = """
        r[0] = tg_requantize(v[0], v[1], v[2]);
        r[1] = tg_divide_by_power_of_two(v[0], v[2] < 0 ? -v[2] : v[2]);
        r[2] = v[1] > 0 ? tg_rounded_average(v[0] % (1 << 20), v[1] % 4096 + 1) : 0;"""


@pytest.fixture(scope="module")
def c_prims(tmp_path_factory):
    return c_driver(tmp_path_factory.mktemp("quant"), "tg_nn_math.h", C_BODY.rstrip("\n"), np.int32, 3)


def _cases():
    rng = np.random.default_rng(1)
    n = 20000
    vals = np.concatenate([rng.integers(-(2**31), 2**31, n), rng.integers(-5000, 5000, n),
                           [-(2**31), 2**31 - 1, -1, 0, 1] * 64])
    mults = np.concatenate([rng.integers(2**30, 2**31, n), rng.integers(0, 2**31, n),
                            np.repeat([2**30, 2**31 - 1, 0, 1, 2**30 + 1], 64)])
    shifts = np.concatenate([rng.integers(-31, 1, n), rng.integers(-31, 31, n), np.tile(np.arange(-31, 33), 5)[:320]])
    shifts = np.clip(shifts, -31, 30)
    # A left shift only happens for multipliers > 1, where values are small (the IR bounds them).
    vals = np.where(shifts > 0, vals % 1024 - 512, vals)
    return np.stack([vals, mults, shifts], axis=1)


def test_requantize_c_equals_python(c_prims):
    v = _cases()
    got = c_prims(v)
    assert np.array_equal(got[:, 0], quant.requantize(v[:, 0], v[:, 1], v[:, 2]))
    assert np.array_equal(got[:, 1], quant.divide_by_power_of_two(v[:, 0], np.abs(v[:, 2])))
    pos = v[:, 1] > 0
    assert np.array_equal(got[pos, 2], quant.rounded_average(np.fmod(v[pos, 0], 1 << 20), v[pos, 1] % 4096 + 1))


def _divide_cases():
    """Every exponent the requantization can use (0..31) with the values where rounding decides: each
    multiple of 2^n and its neighbours, the halves and their neighbours, the int32 extremes, and random."""
    rng = np.random.default_rng(2)
    rows = []
    for n in range(32):
        step = 1 << n
        k = rng.integers(-(2**31) // step, (2**31 - 1) // step + 1, 64)
        base = np.concatenate([k * step, k * step + step // 2, [0, -step, step // 2, -(step // 2)]])
        vals = np.concatenate([base + d for d in (-1, 0, 1)] + [[-(2**31), 2**31 - 1, -(2**31) + 1, -1, 1],
                                                                 rng.integers(-(2**31), 2**31, 256)])
        vals = vals[(vals >= -(2**31)) & (vals < 2**31)]
        rows.append(np.stack([vals, np.full(len(vals), n), np.zeros(len(vals), np.int64)], axis=1))
    return np.concatenate(rows)


def test_divide_by_power_of_two_32bit_equals_64bit(tmp_path):
    """The 32-bit rounding divide of every requantization equals the int64 one it replaced
    (tg_rshift_round64) and the Python reference, for every exponent 0..31 (docs/numerics.md §1.1)."""
    body = """
        r[0] = tg_divide_by_power_of_two(v[0], v[1]);
        r[1] = (int32_t)tg_rshift_round64(v[0], v[1]);"""
    run = c_driver(tmp_path, "tg_nn_math.h", body.rstrip("\n"), np.int32, 2)
    v = _divide_cases()
    got = run(v)
    assert np.array_equal(got[:, 0], got[:, 1])
    assert np.array_equal(got[:, 0], quant.divide_by_power_of_two(v[:, 0], v[:, 1]))


def test_right_shift_requantization_equals_the_general_one(tmp_path):
    """tg_requantize_r (every shift <= 0: the layers whose accumulators may be large) gives
    tg_requantize's bits for any int32 accumulator, at every exponent's rounding edges and the int32 ends."""
    body = """
        r[0] = tg_requantize_r(v[0], v[1], v[2]);
        r[1] = tg_requantize(v[0], v[1], v[2]);"""
    run = c_driver(tmp_path, "tg_nn_math.h", body.rstrip("\n"), np.int32, 2)
    rng = np.random.default_rng(5)
    d = _divide_cases()
    d = d[d[:, 1] <= 31]
    ends = np.array([2**31 - 1, -2**31, -2**31 + 1, 0, 1, -1])
    vals = np.concatenate([d[:, 0], rng.integers(-2**31, 2**31, 20000), np.repeat(ends, 32)])
    shifts = np.concatenate([-d[:, 1], rng.integers(-31, 1, 20000), np.tile(np.arange(-31, 1), 6)])
    mults = np.concatenate([rng.integers(2**30, 2**31, len(d)), rng.integers(0, 2**31, 20000),
                            np.full(192, 2**31 - 1)])
    v = np.stack([vals, mults, shifts], axis=1)
    got = run(v)
    assert np.array_equal(got[:, 0], got[:, 1])
    assert np.array_equal(got[:, 0], quant.requantize(vals, mults, shifts))


@pytest.mark.parametrize("kernels", ["portable", "dsp"])
def test_small_requantization_equals_the_general_one(tmp_path, kernels):
    """tg_requantize29 (|acc| < 2^29, shift in [-30, 0]: the frozen layers of the MIT models) and its
    rounding divide give the general requantization's bits, at every exponent's rounding edges and the
    ends of the bound, with the portable multiply and with SMMULR's definition (the host "dsp" set)."""
    body = """
        r[0] = tg_requantize29(v[0], v[1], v[2]);
        r[1] = tg_divide_by_power_of_two_small(v[0], -v[2]);"""
    flags = ("-DTG_PORTABLE_KERNELS",) if kernels == "portable" else ("-DTG_DSP_PORTABLE",)
    run = c_driver(tmp_path, "tg_nn_math.h", body.rstrip("\n"), np.int32, 2, flags)
    rng = np.random.default_rng(3)
    d = _divide_cases()
    d = d[(np.abs(d[:, 0]) < 2**29) & (d[:, 1] <= 30)]
    lim = 2**29 - 1
    vals = np.concatenate([d[:, 0], rng.integers(-lim, lim + 1, 20000), np.repeat([lim, -lim, 0, 1, -1], 31)])
    shifts = np.concatenate([-d[:, 1], rng.integers(-30, 1, 20000), np.tile(np.arange(-30, 1), 5)])
    mults = np.concatenate([rng.integers(2**30, 2**31, len(d)), rng.integers(0, 2**31, 20000),
                            np.full(155, 2**31 - 1)])
    v = np.stack([vals, mults, shifts], axis=1)
    got = run(v)
    assert np.array_equal(got[:, 0], quant.requantize(vals, mults, shifts))
    assert np.array_equal(got[:, 1], quant.divide_by_power_of_two(vals, -shifts))


@pytest.mark.parametrize("kernels", ["portable", "dsp"])
def test_offset_folded_requantization_is_requantization_plus_offset(tmp_path, kernels):
    """tg_requantize29_offset (the output zero point folded into the rounding divide) gives the general
    requantization plus the offset wherever codegen.forward.requantize_for chooses it: every offset of int8's
    range at every exponent its bound allows, at the rounding edges and the ends of |acc| < 2^29; so does
    tg_requantize29_channel from codegen.forward.requant_table's constants."""
    body = """
        r[0] = tg_requantize29_offset(v[0], v[1], v[2], v[3]);"""
    flags = ("-DTG_PORTABLE_KERNELS",) if kernels == "portable" else ("-DTG_DSP_PORTABLE",)
    run = c_driver(tmp_path, "tg_nn_math.h", body.rstrip("\n"), np.int32, 1, flags, n_in=4)
    rng = np.random.default_rng(11)
    lim = 2**29 - 1
    offsets = np.arange(-128, 128)
    # the largest exponent requantize_for folds at for each offset
    top = np.array([max(e for e in range(31) if (1 + 2 * abs(int(o))) << e <= FOLD_LIMIT) for o in offsets])
    d = _divide_cases()
    d = d[(np.abs(d[:, 0]) < 2**29) & (d[:, 1] <= top.min())]
    n = 30000
    off = np.concatenate([rng.choice(offsets, len(d)), rng.choice(offsets, n), np.repeat([-128, 127, -1, 1], 6)])
    e_max = top[off - offsets[0]]
    e = np.concatenate([d[:, 1], rng.integers(0, e_max[len(d):len(d) + n] + 1), e_max[len(d) + n:]])
    vals = np.concatenate([d[:, 0], rng.integers(-lim, lim + 1, n), np.tile([lim, -lim, 0, 1, -1, lim - 1], 4)])
    mults = np.concatenate([rng.integers(2**30, 2**31, len(d)), rng.integers(0, 2**31, n), np.full(24, 2**31 - 1)])
    assert all(requantize_for(1, np.array([-int(x)]), int(o)) == "tg_requantize29_offset"
               for x, o in zip(e_max, off, strict=True) if o)  # an offset of 0 is not folded: nothing to add
    got = run(np.stack([vals, mults, -e, off], axis=1))
    assert np.array_equal(got[:, 0], quant.requantize(vals, mults, -e) + off)
    # the same with each channel's constants from the build-time table (tg_requantize29_channel, the 1x1 kernel)
    body = """
        const int32_t channel[3] = {v[1], v[2], v[3]};
        r[0] = tg_requantize29_channel(v[0], channel);"""
    (tmp_path / "table").mkdir()
    run = c_driver(tmp_path / "table", "tg_nn_math.h", body.rstrip("\n"), np.int32, 1, flags, n_in=4)
    table = np.stack([requant_table(m, np.array([-x]), int(o)) for m, x, o in zip(mults, e, off, strict=True)])
    got = run(np.concatenate([vals[:, None], table], axis=1))
    assert np.array_equal(got[:, 0], quant.requantize(vals, mults, -e) + off)


def test_rounding_is_half_away_from_zero():
    assert quant.divide_by_power_of_two(5, 1) == 3 and quant.divide_by_power_of_two(-5, 1) == -3
    assert quant.divide_by_power_of_two(-6, 2) == -2 and quant.divide_by_power_of_two(6, 2) == 2
    assert quant.rounded_average(-3, 2) == -2 and quant.rounded_average(3, 2) == 2
    assert quant.round_half_away(2.5) == 3 and quant.round_half_away(-2.5) == -3


@pytest.mark.parametrize("eff", [0.5, 0.75, 1e-6, 0.999999999999, 3.0, 1 / 3, 2**-31, 0.0])
def test_quantize_multiplier_reconstructs(eff):
    m, s = quant.quantize_multiplier(eff)
    if eff == 0.0:
        assert (m, s) == (0, 0)
        return
    assert 2**30 <= m < 2**31
    assert math.isclose(m * 2.0**s / 2**31, eff, rel_tol=2**-30)


def test_quantize_multiplier_rounds_up_to_next_power():
    # q*2^31 rounds to exactly 2^31: the multiplier must be halved and the exponent bumped.
    eff = 1.0 - 2**-33
    m, s = quant.quantize_multiplier(eff)
    assert (m, s) == (2**30, 1)


def test_quantize_multiplier_rejects_bad_values():
    for bad in (-1.0, float("nan"), float("inf"), 2.0**31):
        with pytest.raises(ValueError):
            quant.quantize_multiplier(bad)


def test_saturated_bias_keeps_every_output_and_mask():
    """codegen.forward.saturated_bias: a channel whose output is beyond one end of the clamp for every input gets
    a bias nearer zero with the same property (same outputs, same clamp masks); any other channel keeps its own."""
    from types import SimpleNamespace

    from tinygen.codegen.forward import saturated_bias
    from tinygen.ir import model as ir

    bias = np.array([2**30, -(2**30), 1000, -(2**30), 2**30 - 5, -3 * 10**8], dtype=np.int32)
    mult = np.array([2**30 + 12345, 2**30, 2**30 + 7, 2**31 - 1, 2**30, 2**30], dtype=np.int64)
    shift = np.array([-8, -12, -9, -27, 2, -21], dtype=np.int64)  # 3: tiny scale, in range; 4: shifts left
    layer = SimpleNamespace(weight=np.zeros((6, 3, 3, 1), np.int8), bias=bias, act_min=-128, act_max=127,
                            output=SimpleNamespace(zero_point=-5))
    new = saturated_bias(layer, mult, shift)
    assert list(np.flatnonzero(new != bias)) == [0, 1]  # saturated above, below; the others kept
    assert np.all(np.abs(new) <= np.abs(bias)) and np.abs(new[:2]).max() < 2**22
    reach = ir.acc_bound(9)
    dots = np.concatenate([np.random.default_rng(4).integers(-reach, reach + 1, 5000), [-reach, 0, reach]])
    for c in range(6):
        old_out = quant.requantize(bias[c].astype(np.int64) + dots, mult[c], shift[c]) - 5
        new_out = quant.requantize(new[c].astype(np.int64) + dots, mult[c], shift[c]) - 5
        assert np.array_equal(np.clip(old_out, -128, 127), np.clip(new_out, -128, 127))
        assert np.array_equal((old_out >= -128) & (old_out <= 127), (new_out >= -128) & (new_out <= 127))


def test_constant_channels_keep_every_output_and_mask():
    """codegen.forward.constant_channels: a channel whose requantized output is the same for every input it can
    reach (zero or tiny weights under a bias near 2^30, in range or saturated) gets multiplier 2^30, a shift of
    at most 21 and a bias under 2^29 with the same output and clamp mask at every reachable accumulator; the
    others keep their own; the new numbers meet tg_requantize29_offset's bounds."""
    from types import SimpleNamespace

    from tinygen.codegen.forward import constant_channels

    rng = np.random.default_rng(6)
    w = rng.integers(-128, 128, (6, 3, 3, 1)).astype(np.int8)
    w[0] = 0  # exactly the bias
    w[1] = 0
    w[1, 0, 0, 0] = 3  # tiny weights: a sum of at most 3 * 255
    bias = np.array([2**30, -(2**30) + 77, 1000, -(2**30), 2**30 - 5, 5 * 10**8], dtype=np.int32)
    mult = np.array([2**30 + 12345, 2**30, 2**30 + 7, 2**31 - 1, 2**30, 2**30], dtype=np.int64)
    shift = np.array([-26, -28, -9, -8, -27, -29], dtype=np.int64)
    z_x, z = -128, -128
    layer = SimpleNamespace(weight=w, bias=bias, act_min=-128, act_max=127, output=SimpleNamespace(zero_point=z))
    x = SimpleNamespace(zero_point=z_x)
    new_b, new_m, new_s, changed = constant_channels(layer, x, bias, mult, shift)
    moved = (new_b != bias) | (new_m != mult) | (new_s != shift)
    assert changed and list(np.flatnonzero(moved)) == [0, 1, 3, 4, 5]  # 3 saturated below; 2 varies
    flat = w.reshape(6, -1).astype(np.int64)
    for c in range(6):
        lo, hi = -128 - z_x, 127 - z_x  # x + INPUT_OFFSET
        s_min = np.where(flat[c] > 0, flat[c] * lo, flat[c] * hi).sum()
        s_max = np.where(flat[c] > 0, flat[c] * hi, flat[c] * lo).sum()
        s = np.concatenate([rng.integers(s_min, s_max + 1, 4000), [s_min, s_max, 0]])
        old = quant.requantize(bias[c].astype(np.int64) + s, mult[c], shift[c]) + z
        new = quant.requantize(new_b[c].astype(np.int64) + s, new_m[c], new_s[c]) + z
        assert np.array_equal(np.clip(old, -128, 127), np.clip(new, -128, 127))
        assert np.array_equal((old >= -128) & (old <= 127), (new >= -128) & (new <= 127))
        if moved[c]:
            assert abs(int(new_b[c])) + max(-s_min, s_max) < 2**29 and -21 <= new_s[c] <= 0
            assert requantize_for(1, new_s[c:c + 1], z) == "tg_requantize29_offset"


def test_softmax_fixed_point_c_equals_python(tmp_path):
    """TFLite's softmax primitives in gemmlowp's fixed point (tg_exp_on_negative_values,
    tg_one_over_one_plus_x), C against Python over their whole input ranges' edges and random values: a
    Q5 exponent in [-31 2^26, 0] (the deepest a softmax reaches) and a Q0 fraction in [0, 1)."""
    body = """
        r[0] = tg_exp_on_negative_values(v[0]);
        r[1] = tg_one_over_one_plus_x(v[1]);"""
    run = c_driver(tmp_path, "tg_nn_math.h", body.rstrip("\n"), np.int32, 2, n_in=2)
    rng = np.random.default_rng(11)
    deepest = 31 << 26
    a = np.concatenate([[0, -1, -(1 << 24), -(1 << 24) - 1, -deepest, -(1 << 26)],
                        -rng.integers(0, deepest + 1, 20000), -rng.integers(0, 1 << 24, 2000)])
    f = np.concatenate([[0, 1, (1 << 31) - 1, 1 << 30], rng.integers(0, 1 << 31, len(a) - 4)])
    got = run(np.stack([a, f], axis=1))
    assert np.array_equal(got[:, 0], quant.exp_on_negative_values(a))
    assert np.array_equal(got[:, 1], quant.one_over_one_plus_x(f))
    # and they are exp and 1 / (1 + x): within a few units of 2^-31 (a test of the transcription's constants)
    assert np.abs(got[:, 0] / 2**31 - np.exp(a / 2**26)).max() < 1e-6
    assert np.abs(got[:, 1] / 2**31 - 1 / (1 + f / 2**31)).max() < 1e-6
