"""Property tests: for random layer shapes, strides, padding and quantization, the
generated C equals the NumPy reference bit for bit (np.array_equal)."""

from __future__ import annotations

import tempfile

import numpy as np
from c_harness import run_generated_forward
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tinygen.errors import ModelError
from tinygen.ir.builder import ModelBuilder
from tinygen.reference import forward as reference

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scales = st.floats(min_value=1e-3, max_value=0.5)
zero_points = st.integers(-128, 127)


@st.composite
def quant(draw):
    return draw(scales), draw(zero_points)


@st.composite
def act_range(draw):
    lo = draw(st.integers(-128, 127))
    return lo, draw(st.integers(lo, 127))


def _weights(rng, shape, w_scale_max):
    w = rng.integers(-128, 128, size=shape).astype(np.int8)
    cout = shape[0]
    return w, rng.integers(-5000, 5000, size=cout).astype(np.int32), \
        (rng.random(cout) * w_scale_max + 1e-4).astype(np.float32)


def _check(model, seed, kernels):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, size=(3,) + tuple(model.input.shape)).astype(np.int8)
    expected = reference.run_batch(model, x)
    with tempfile.TemporaryDirectory() as tmp:
        got = run_generated_forward(model, x, tmp, kernels)
    assert np.array_equal(got, expected), f"{np.sum(got != expected)} elements differ"


def _build(fn):
    try:
        return fn()
    except ModelError:
        assume(False)


@SETTINGS
@given(h=st.integers(1, 12), w=st.integers(1, 12), cin=st.integers(1, 8), cout=st.integers(1, 8),
       k=st.integers(1, 5), kw=st.integers(1, 5), stride=st.integers(1, 3), dil=st.integers(1, 2),
       pad=st.sampled_from(["same", "valid", "explicit"]), pads=st.tuples(*[st.integers(0, 2)] * 4),
       kind=st.sampled_from(["conv", "depthwise", "grouped", "pointwise"]), mult=st.integers(1, 3),
       qin=quant(), qout=quant(), act=act_range(), w_scale=st.floats(1e-4, 0.05), seed=st.integers(0, 2**16))
def test_conv_variants_match_reference(h, w, cin, cout, k, kw, stride, dil, pad, pads, kind, mult, qin, qout, act,
                                       w_scale, seed, kernels):
    rng = np.random.default_rng(seed)
    groups = 1
    if kind == "pointwise":
        k = kw = 1
    if kind == "depthwise":
        groups, cout = cin, cin * mult
    if kind == "grouped":
        groups = 2
        cin, cout = 2 * cin, 2 * cout
    assume(h + 4 >= dil * (k - 1) + 1 and w + 4 >= dil * (kw - 1) + 1)
    weight, bias, ws = _weights(rng, (cout, k, kw, cin // groups), w_scale)

    def make():
        b = ModelBuilder("p", (h, w, cin), *qin)
        b.conv2d(b.input, weight, bias, ws, *qout, stride=stride, dilation=dil, groups=groups,
                 padding=pads if pad == "explicit" else pad)
        m = b.model
        m.layers[-1].act_min, m.layers[-1].act_max = act
        return b.build()

    _check(_build(make), seed, kernels)


@SETTINGS
@given(n_in=st.integers(1, 300), n_out=st.integers(1, 40), qin=quant(), qout=quant(), act=act_range(),
       w_scale=st.floats(1e-4, 0.05), seed=st.integers(0, 2**16), spatial=st.booleans())
def test_fully_connected_matches_reference(n_in, n_out, qin, qout, act, w_scale, seed, spatial, kernels):
    rng = np.random.default_rng(seed)
    weight, bias, ws = _weights(rng, (n_out, n_in * (4 if spatial else 1)), w_scale)

    def make():
        b = ModelBuilder("p", (2, 2, n_in) if spatial else (n_in,), *qin)
        b.fully_connected(b.input, weight, bias, ws, *qout)
        b.model.layers[-1].act_min, b.model.layers[-1].act_max = act
        return b.build()

    _check(_build(make), seed, kernels)


@SETTINGS
@given(h=st.integers(1, 10), w=st.integers(1, 10), c=st.integers(1, 6), qa=quant(), qb=quant(), qout=quant(),
       act=act_range(), seed=st.integers(0, 2**16))
def test_add_matches_reference(h, w, c, qa, qb, qout, act, seed, kernels):
    rng = np.random.default_rng(seed)
    wgt, bias, ws = _weights(rng, (c, 1, 1, c), 0.02)

    def make():
        b = ModelBuilder("p", (h, w, c), *qa)
        other = b.conv2d(b.input, wgt, bias, ws, *qb, padding="valid")
        b.add(b.input, other, *qout)
        b.model.layers[-1].act_min, b.model.layers[-1].act_max = act
        return b.build()

    _check(_build(make), seed, kernels)


@SETTINGS
@given(h=st.integers(1, 12), w=st.integers(1, 12), c=st.integers(1, 6), k=st.integers(1, 4), kw=st.integers(1, 4),
       stride=st.integers(1, 3), same=st.booleans(), is_max=st.booleans(), q=quant(), act=act_range(),
       seed=st.integers(0, 2**16), global_pool=st.booleans())
def test_pooling_matches_reference(h, w, c, k, kw, stride, same, is_max, q, act, seed, global_pool, kernels):
    assume(k <= h and kw <= w)

    def make():
        b = ModelBuilder("p", (h, w, c), *q)
        if global_pool and not is_max:
            b.global_avgpool(b.input)
        else:
            (b.maxpool if is_max else b.avgpool)(b.input, (k, kw), stride, padding="same" if same else "valid")
        b.model.layers[-1].act_min, b.model.layers[-1].act_max = act
        return b.build()

    _check(_build(make), seed, kernels)


@settings(SETTINGS, max_examples=5)
@given(h=st.integers(1, 16), w=st.integers(1, 16), c=st.integers(1, 9), q=quant(), ratio=st.floats(-2.0, 1.5),
       out_zp=zero_points, keep_dims=st.booleans(), act=act_range(), seed=st.integers(0, 2**16))
def test_mean_matches_reference(h, w, c, q, ratio, out_zp, keep_dims, act, seed, kernels):
    """TFLite's MEAN over height and width (kernels/mean_s8) for output scales from 1/100 to 30 times the input's
    (left and right shifts, multipliers above and below 2^30)."""

    def make():
        b = ModelBuilder("p", (h, w, c), *q)
        b.mean(b.input, q[0] * 10.0**ratio, out_zp, keep_dims=keep_dims)
        b.model.layers[-1].act_min, b.model.layers[-1].act_max = act
        return b.build()

    _check(_build(make), seed, kernels)


@SETTINGS
@given(h=st.integers(1, 12), w=st.integers(1, 12), c=st.integers(1, 6), k=st.integers(1, 5), kw=st.integers(1, 5),
       stride=st.integers(1, 3), dil=st.integers(1, 2), pad=st.sampled_from(["same", "valid", "explicit"]),
       pads=st.tuples(*[st.integers(0, 2)] * 4), qin=quant(), qmid=quant(), qout=quant(), act=act_range(),
       w_scale=st.floats(1e-4, 0.05), seed=st.integers(0, 2**16))
def test_inplace_depthwise_matches_reference(h, w, c, k, kw, stride, dil, pad, pads, qin, qmid, qout, act, w_scale,
                                             seed, kernels):
    """A depthwise conv whose input dies with it runs in place over a ring of input rows
    (kernels/depthwise_conv_inplace_s8); a 3x3 conv before it keeps the pair from fusing with a 1x1."""
    from tinygen.planning.fusion import plan_fusions

    rng = np.random.default_rng(seed)
    assume(h + 4 >= dil * (k - 1) + 1 and w + 4 >= dil * (kw - 1) + 1)
    first, fb, fs = _weights(rng, (c, 3, 3, c), 0.02)
    weight, bias, ws = _weights(rng, (c, k, kw, 1), w_scale)

    def make():
        b = ModelBuilder("p", (h, w, c), *qin)
        mid = b.conv2d(b.input, first, fb, fs, *qmid, padding="same")
        b.conv2d(mid, weight, bias, ws, *qout, stride=stride, dilation=dil, groups=c,
                 padding=pads if pad == "explicit" else pad)
        b.model.layers[-1].act_min, b.model.layers[-1].act_max = act
        return b.build()

    model = _build(make)
    assume(any(f.kind == "inplace_dw" for f in plan_fusions(model).values()))
    _check(model, seed, kernels)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(1, 9), w=st.integers(1, 9), cin=st.integers(2, 12), cout=st.integers(1, 8), qin=quant(),
       qmid=quant(), qout=quant(), act=act_range(), w_scale=st.floats(1e-4, 0.05), seed=st.integers(0, 2**16))
def test_overlapped_pointwise_matches_reference(h, w, cin, cout, qin, qmid, qout, act, w_scale, seed, kernels):
    """A 1x1 conv whose input dies with it writes its output over the input it has consumed (overlap
    fusion; kernels/convolve_1x1_s8 pixel pair by pixel pair through a staging buffer); a 3x3 conv before
    it makes its input an arena tensor."""
    from tinygen.planning.schedule import plan_forward

    rng = np.random.default_rng(seed)
    first, fb, fs = _weights(rng, (cin, 3, 3, cin), 0.02)
    weight, bias, ws = _weights(rng, (cout, 1, 1, cin), w_scale)

    def make():
        b = ModelBuilder("p", (h, w, cin), *qin)
        mid = b.conv2d(b.input, first, fb, fs, *qmid, padding="same")
        b.conv2d(mid, weight, bias, ws, *qout, padding="valid")
        b.model.layers[-1].act_min, b.model.layers[-1].act_max = act
        return b.build()

    model = _build(make)
    assume(any(f.kind == "overlap" and f.layer == 1 for f in plan_forward(model).fusions.values()))
    _check(model, seed, kernels)
