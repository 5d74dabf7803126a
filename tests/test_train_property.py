"""Property tests: one training step pipeline per layer type (conv, depthwise, pointwise, grouped,
fully connected, residual add, average pool, TFLite's mean) over random shapes, strides, padding, quantization,
filter sizes r in {1, 2, 4}, either rounding of the updates and 8, 4 or 0 master bits: the generated C
equals the reference exactly (losses, every step-1 gradient, every trained parameter after the steps)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from train_harness import train_c_vs_reference

from tinygen.errors import ModelError
from tinygen.ir import model as ir
from tinygen.ir.builder import ModelBuilder
from tinygen.ir.gradmath import SR_BITS
from tinygen.ir.scheme import MASTER_BITS, ROUNDINGS, LayerUpdate, Scheme, TrainConfig
from tinygen.reference.training import Trainer

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STEPS = 3


def _w(rng, shape, scale):
    w = rng.integers(-127, 128, size=shape).astype(np.int8)
    return w, rng.integers(-3000, 3000, size=shape[0]).astype(np.int32), \
        (rng.random(shape[0]) * scale + scale / 4).astype(np.float32)


def _scheme(model, rng, r, names):
    """Random: which of `names` train (the head always), all, a random half or the first half of their
    channels (kept in SRAM apart from the frozen rest) or none (bias-only), with or without bias — so
    frozen, bias-only and partial layers, and the in-place and fused forward kernels they allow, all occur."""
    layers = {}
    for layer in model.layers:
        if layer.name in names and (layer is model.layers[-1] or rng.random() < 0.75):
            n = ir.selectable_channels(layer)
            u = rng.random()
            chans = [] if u < 0.25 else sorted(rng.choice(n, size=max(1, n // 2), replace=False).tolist()) \
                if u < 0.5 else list(range(max(1, n // 2))) if u < 0.7 else list(range(n))
            layers[layer.name] = LayerUpdate(chans, bool(rng.random() < 0.8) or not chans, r)
    return Scheme(layers)


def _run(make, seed, r, trained, classes, kernels, momentum=0.0):
    try:
        model = make()
    except ModelError:
        assume(False)
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, size=(STEPS,) + tuple(model.input.shape)).astype(np.int8)
    labels = rng.integers(0, classes, size=STEPS)
    scheme = _scheme(model, rng, r, trained)
    config = TrainConfig(lr=float(rng.choice([0.001, 0.05, 0.5])), momentum=momentum,
                         lr_halve_every=int(rng.integers(0, 3)), rounding=str(rng.choice(ROUNDINGS)),
                         frac_bits=int(rng.choice(MASTER_BITS)))
    train_c_vs_reference(model, scheme, config, x, labels, STEPS, kernels)


def _head(b, x, rng, classes):
    """global average pool + FC head so the loss applies to any body."""
    if len(b.shape(x)) == 3:
        x = b.global_avgpool(x, name="gap")
    w, bias, s = _w(rng, (classes, int(np.prod(b.shape(x)))), 0.02)
    return b.fully_connected(x, w, bias, s, 0.15, 0, name="head")


@SETTINGS
@given(h=st.integers(3, 10), w=st.integers(3, 10), cin=st.integers(1, 6), cout=st.integers(1, 6),
       k=st.integers(1, 4), stride=st.integers(1, 3), dil=st.integers(1, 2), pad=st.sampled_from(["same", "valid"]),
       kind=st.sampled_from(["conv", "depthwise", "pointwise", "grouped"]), mult=st.integers(1, 2),
       r=st.sampled_from([1, 2, 4]), act=st.sampled_from(["none", "relu", "relu6"]), seed=st.integers(0, 2**16),
       two=st.booleans())
@example(
    h=3,
    w=3,
    cin=1,
    cout=1,
    k=1,
    stride=3,
    dil=1,
    pad='same',
    kind='conv',
    mult=1,
    r=1,
    act='none',
    seed=0,
    two=True,
).via('a 1x1 output: the folded output loops left an unused index')
@example(h=3, w=3, cin=1, cout=1, k=1, stride=1, dil=1, pad='same', kind='grouped', mult=1, r=1, act='none', seed=0,
         two=False).via('a grouped conv with one channel per group: a folded channel index shadowed a local')
@example(h=3, w=7, cin=2, cout=1, k=1, stride=1, dil=1, pad='same', kind='depthwise', mult=1, r=1, act='none', seed=252,
         two=True).via('a depthwise conv trained in part with one tap row: its two parts declared their row twice')
@example(h=5, w=4, cin=3, cout=8, k=1, stride=1, dil=1, pad='same', kind='pointwise', mult=1, r=1, act='relu6', seed=7,
         two=True).via('eight output channels: whole mask bytes per pixel, the grad output channel by channel')
@example(h=6, w=6, cin=4, cout=4, k=3, stride=1, dil=1, pad='same', kind='depthwise', mult=2, r=1, act='relu', seed=14,
         two=False).via('a depthwise conv of eight channels (multiplier 2): its grad output channel by channel')
def test_conv_training_matches_reference(h, w, cin, cout, k, stride, dil, pad, kind, mult, r, act, seed, two, kernels):
    rng = np.random.default_rng(seed)
    groups = 1
    if kind == "pointwise":
        k, dil = 1, 1
    if kind == "depthwise":
        groups, cout = cin, cin * mult
    if kind == "grouped":
        groups, cin, cout = 2, 2 * cin, 2 * cout
    assume(h >= dil * (k - 1) + 1 and w >= dil * (k - 1) + 1)

    def make():
        b = ModelBuilder("p", (h, w, cin), 0.02, int(rng.integers(-20, 20)))
        x = b.input
        if two:  # a frozen layer below, so the input gradient of the trained layer is exercised
            wt, bt, st_ = _w(rng, (cin, 1, 1, cin), 0.02)
            x = b.conv2d(x, wt, bt, st_, 0.03, -5, padding="valid", act="relu", name="below")
        wt, bt, st_ = _w(rng, (cout, k, k, cin // groups), 0.03)
        x = b.conv2d(x, wt, bt, st_, 0.05, int(rng.integers(-30, 30)), stride=stride, dilation=dil, groups=groups,
                     padding=pad, act=act, name="layer")
        _head(b, x, rng, 5)
        return b.build()

    _run(make, seed, r, {"below", "layer", "head"} if two else {"layer", "head"}, 5, kernels)


@SETTINGS
@given(n=st.integers(1, 64), hidden=st.integers(1, 20), r=st.sampled_from([1, 2, 4]), seed=st.integers(0, 2**16),
       momentum=st.sampled_from([0.0, 0.9]))
def test_fully_connected_training_matches_reference(n, hidden, r, seed, momentum, kernels):
    rng = np.random.default_rng(seed)

    def make():
        b = ModelBuilder("p", (n,), 0.02, 3)
        wt, bt, st_ = _w(rng, (hidden, n), 0.03)
        x = b.fully_connected(b.input, wt, bt, st_, 0.05, -10, act="relu", name="fc1")
        _head(b, x, rng, 4)
        return b.build()

    _run(make, seed, r, {"fc1", "head"}, 4, kernels, momentum)


@SETTINGS
@given(h=st.integers(2, 8), w=st.integers(2, 8), c=st.integers(1, 6), pool_k=st.integers(1, 3),
       stride=st.integers(1, 2), same=st.booleans(), r=st.sampled_from([1, 2, 4]), seed=st.integers(0, 2**16))
def test_residual_add_and_avgpool_training_match_reference(h, w, c, pool_k, stride, same, r, seed, kernels):
    rng = np.random.default_rng(seed)
    assume(pool_k <= h and pool_k <= w)

    def make():
        b = ModelBuilder("p", (h, w, c), 0.02, 0)
        wt, bt, st_ = _w(rng, (c, 3, 3, c), 0.02)
        x = b.conv2d(b.input, wt, bt, st_, 0.04, -3, act="relu6", name="stem")
        wt, bt, st_ = _w(rng, (c, 1, 1, c), 0.02)
        y = b.conv2d(x, wt, bt, st_, 0.05, 2, name="branch")
        z = b.add(x, y, 0.06, -1, act="relu", name="res")
        z = b.avgpool(z, pool_k, stride, padding="same" if same else "valid", name="pool")
        _head(b, z, rng, 3)
        return b.build()

    _run(make, seed, r, {"stem", "branch", "head"}, 3, kernels)


@settings(SETTINGS, max_examples=1)  # CI time: one drawn example a run besides the edge case below
@given(h=st.integers(1, 7), w=st.integers(1, 7), c=st.integers(1, 6), ratio=st.floats(-1.5, 1.5),
       keep_dims=st.booleans(), r=st.sampled_from([1, 2]), seed=st.integers(0, 2**16))
@example(h=1, w=1, c=1, ratio=-0.5, keep_dims=False, r=1, seed=0)  # one pixel, one channel, a left shift
def test_mean_training_matches_reference(h, w, c, ratio, keep_dims, r, seed, kernels):
    """TFLite's MEAN (its own output scale, 1/30 to 30 times the input's) between a trained conv and the head: the
    gradient crosses it (train/mean_backward_s16)."""
    rng = np.random.default_rng(seed)

    def make():
        b = ModelBuilder("p", (h, w, 2), 0.02, 0)
        wt, bt, st_ = _w(rng, (c, 3, 3, 2), 0.02)
        x = b.conv2d(b.input, wt, bt, st_, 0.04, -3, act="relu", name="stem")
        x = b.mean(x, 0.04 * 10.0**ratio, 4, keep_dims=keep_dims, name="mean")
        wt, bt, st_ = _w(rng, (3, c), 0.05)
        b.fully_connected(x, wt, bt, st_, 0.1, 0, name="head")
        return b.build()

    _run(make, seed, r, {"stem", "head"}, 3, kernels)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(accumulate=st.integers(2, 4), momentum=st.sampled_from([0.0, 0.5]), seed=st.integers(0, 2**16),
       r=st.sampled_from([1, 2]), rounding=st.sampled_from(ROUNDINGS))
def test_gradient_accumulation_matches_reference(accumulate, momentum, seed, r, rounding, kernels):
    """Updates summed over B samples, applied every B-th step (with and without momentum, either rounding)."""
    from tinygen.frontends.inputs import training_samples
    from tinygen.zoo.catalog import get_model

    model = get_model("digits-cnn")
    x, y, _ = training_samples(model, 9)
    rng = np.random.default_rng(seed)
    config = TrainConfig(lr=0.05, momentum=momentum, accumulate=accumulate, rounding=rounding)
    trained = {layer.name for layer in model.layers if layer.op in ("conv2d", "fully_connected")}
    train_c_vs_reference(model, _scheme(model, rng, r, trained), config, x, y, 9, kernels)


@pytest.mark.parametrize("trained", [5, 8])
def test_partly_trained_pointwise_widens_both_parts(trained, kernels):
    """A 1x1 conv trained on the first 5 (8) of its 10 input channels whose input lives on (a residual add), so
    it runs channels outer: the DSP path widens each channel pair's trained and frozen rows into one scratch,
    each part with (without) a tail of channels past its last four (codegen.forward.widened_rows)."""
    rng = np.random.default_rng(trained)
    b = ModelBuilder("p", (4, 4, 10), 0.02, 3)
    wt, bt, st_ = _w(rng, (10, 1, 1, 10), 0.03)
    y = b.conv2d(b.input, wt, bt, st_, 0.03, -4, padding="valid", act="relu", name="layer")
    x = b.add(b.input, y, 0.04, 2, name="res")
    _head(b, x, rng, 4)
    model = b.build()
    scheme = Scheme({"layer": LayerUpdate(list(range(trained)), True), "head": LayerUpdate(list(range(10)), True)})
    x = rng.integers(-128, 128, size=(STEPS,) + tuple(model.input.shape)).astype(np.int8)
    train_c_vs_reference(model, scheme, TrainConfig(lr=0.05), x, rng.integers(0, 4, size=STEPS), STEPS, kernels)


def test_stochastic_rounding_keeps_updates_below_one_master_step(kernels):
    """At a learning rate whose updates are all below half a master step, nearest rounding leaves every
    trained weight where it was while stochastic rounding moves some of them (in expectation by the true
    update); the C equals the reference either way."""
    from tinygen.frontends.inputs import training_samples
    from tinygen.reference.training import Trainer
    from tinygen.zoo.catalog import get_model

    model = get_model("digits-cnn")
    x, y, _ = training_samples(model, 6)
    scheme = Scheme({layer.name: LayerUpdate(list(range(ir.selectable_channels(layer))), False)
                     for layer in model.layers if layer.op in ("conv2d", "fully_connected")})
    moved = {}
    for rounding in ROUNDINGS:
        config = TrainConfig(lr=3e-5, rounding=rounding, lr_guard=0)
        train_c_vs_reference(model, scheme, config, x, y, 6, kernels)
        t = Trainer(model, scheme, config)
        start = {n: m.copy() for n, m in t.master.items()}
        for i in range(6):
            t.step(x[i], int(y[i]))
        moved[rounding] = sum(int(np.count_nonzero(t.master[n] != start[n])) for n in start)
    assert moved["nearest"] == 0 and moved["stochastic"] > 0


def test_bias_updates_below_half_a_code_still_move_the_biases(kernels, monkeypatch):
    """Biases round stochastically in every configuration (numerics §6.2): at a learning rate whose every bias
    update is below half a code - nearest rounding would move none - some biases move; the C equals the
    reference."""
    import tinygen.reference.training as training
    from tinygen.frontends.inputs import training_samples
    from tinygen.zoo.catalog import get_model

    model = get_model("digits-cnn")
    x, y, _ = training_samples(model, 6)
    scheme = Scheme({layer.name: LayerUpdate([], True) for layer in model.layers
                     if layer.op in ("conv2d", "fully_connected")})
    config = TrainConfig(lr=1e-4, lr_guard=0)  # rounding "nearest": for the weights, none of which train here
    train_c_vs_reference(model, scheme, config, x, y, 6, kernels)
    fine = []  # every bias update with its SR_BITS more fraction bits, before the noise
    real = training.round_stochastic
    monkeypatch.setattr(training, "round_stochastic", lambda f, noise: (fine.append(f), real(f, noise))[1])
    t = training.Trainer(model, scheme, config)
    start = {n: b.copy() for n, b in t.bias.items()}
    for i in range(6):
        t.step(x[i], int(y[i]))
    assert max(int(np.abs(f).max()) for f in fine) < 1 << (SR_BITS - 1)  # below half a code, every one
    assert sum(int(np.count_nonzero(t.bias[n] != start[n])) for n in start) > 0


@pytest.mark.parametrize("h, cmid, cout, r, seed, k, stride", [
    (4, 6, 5, 1, 0, 1, 1), (5, 12, 3, 2, 1, 1, 1), (3, 4, 16, 1, 2, 1, 1),  # 1x1 (the first: a channel tail)
    (4, 8, 8, 1, 3, 3, 1), (5, 6, 6, 2, 4, 3, 2), (6, 4, 4, 1, 5, 5, 2)])  # depthwise (cout = cmid)
def test_input_gradient_sums_in_scratch_overlay_or_gradient_match_reference(h, cmid, cout, r, seed, k, stride, kernels):
    """A 1x1 or depthwise input gradient keeps its sums in a scratch where the plan has room (here the wide
    input of the first layer leaves room), or laid over its own gradient, and where it has no room keeps them
    truncated in the gradient itself, rounded once at the end (numerics §2.1): all equal the reference."""
    import tinygen.codegen.training as codegen_training
    from tinygen.planning.schedule import plan_training
    from tinygen.reference.training import Trainer

    rng = np.random.default_rng(seed)
    b = ModelBuilder("p", (2 * h, 2 * h, 32), 0.02, 3)
    wt, bt, st_ = _w(rng, (cmid, 2, 2, 32), 0.02)
    x = b.conv2d(b.input, wt, bt, st_, 0.03, -5, stride=2, padding="valid", act="relu", name="below")
    if k == 1:
        wt, bt, st_ = _w(rng, (cout, 1, 1, cmid), 0.03)
        x = b.conv2d(x, wt, bt, st_, 0.05, 4, padding="valid", name="layer")
    else:
        wt, bt, st_ = _w(rng, (cmid, k, k, 1), 0.03)
        x = b.conv2d(x, wt, bt, st_, 0.05, 4, stride=stride, groups=cmid, padding="same", name="layer")
    _head(b, x, rng, 4)
    model = b.build()
    scheme = Scheme({"below": LayerUpdate([0], True, r), "layer": LayerUpdate([], True, r),
                     "head": LayerUpdate(list(range(ir.selectable_channels(model.layers[-1]))), True, 1)})
    config = TrainConfig(lr=0.05)
    assert 1 in plan_training(model, Trainer(model, scheme, config), one_pass=True).one_pass  # "layer"
    xs = rng.integers(-128, 128, size=(STEPS,) + tuple(model.input.shape)).astype(np.int8)
    labels = rng.integers(0, 4, size=STEPS)
    train_c_vs_reference(model, scheme, config, xs, labels, STEPS, kernels)
    # the sums laid over the gradient they become (where the grid allows: r = 1), and no scratch at all
    for variant in (("overlay",) if r == 1 else ()) + (False,):
        if variant:
            assert 1 in plan_training(model, Trainer(model, scheme, config), one_pass=variant).overlaid
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(codegen_training, "plan_training", lambda m, t, v=variant, **kw: plan_training(m, t, one_pass=v))
            train_c_vs_reference(model, scheme, config, xs, labels, STEPS, kernels)


@pytest.mark.parametrize("h, c, k, dil, pad, bias, seed", [
    (12, 8, 3, 1, "same", True, 0), (10, 6, 5, 1, "same", False, 1), (12, 8, 3, 2, "same", True, 2),
    (11, 8, 3, 1, "valid_top", True, 3)])
def test_depthwise_input_gradient_in_place_matches_reference(h, c, k, dil, pad, bias, seed, kernels):
    """A frozen or bias-only depthwise conv of stride 1 writes its input gradient over its own output gradient,
    block of channels by block (the bias update first, the largest |sum| from a first pass over G_acc whole):
    the same values as the other kernels, over 20 steps."""
    from tinygen.planning.schedule import plan_training
    from tinygen.reference.training import Trainer

    rng = np.random.default_rng(seed)
    b = ModelBuilder("p", (h, h, 3), 0.02, 3)
    wt, bt, st_ = _w(rng, (c, 1, 1, 3), 0.02)
    x = b.conv2d(b.input, wt, bt, st_, 0.03, -5, padding="valid", act="relu6", name="below")
    wt, bt, st_ = _w(rng, (c, k, k, 1), 0.03)
    span = dil * (k - 1)
    padding = (span // 2, span - span // 2, span // 2, span - span // 2) if pad == "same" else (0, span, 1, span - 1)
    x = b.conv2d(x, wt, bt, st_, 0.05, 4, groups=c, dilation=dil, padding=padding, name="layer")
    _head(b, x, rng, 4)
    model = b.build()
    layers = {"below": LayerUpdate([0, 1], True, 1),
              "head": LayerUpdate(list(range(ir.selectable_channels(model.layers[-1]))), True, 1)}
    if bias:
        layers["layer"] = LayerUpdate([], True, 1)
    scheme, config = Scheme(layers), TrainConfig(lr=0.05, rounding="stochastic")
    assert 1 in plan_training(model, Trainer(model, scheme, config), one_pass=True).in_place  # "layer"
    steps = 20
    xs = rng.integers(-128, 128, size=(steps,) + tuple(model.input.shape)).astype(np.int8)
    train_c_vs_reference(model, scheme, config, xs, rng.integers(0, 4, size=steps), steps, kernels)


@pytest.mark.parametrize("out_scale", [0.05, 0.0002])
def test_grad_output_with_multipliers_below_and_above_one(out_scale, kernels):
    """The output gradient's multiplier path in int32 (every forward multiplier below one, the usual case)
    and in int64 (a layer whose s_x s_w / s_y exceeds one): both equal the reference."""
    from tinygen.ir.model import conv_requant

    rng = np.random.default_rng(11)
    b = ModelBuilder("p", (5, 5, 3), 0.02, 3)
    wt, bt, st_ = _w(rng, (4, 3, 3, 3), 0.03)
    x = b.conv2d(b.input, wt, bt, st_, out_scale, -2, padding="same", act="relu", name="layer")
    _head(b, x, rng, 3)
    model = b.build()
    _, shift = conv_requant(model.layers[0], model.input)
    assert bool((shift > 0).any()) == (out_scale < 0.001)  # the case this run is for (codegen: `narrow`)
    scheme = Scheme({"layer": LayerUpdate([0, 1], True, 1),
                     "head": LayerUpdate(list(range(ir.selectable_channels(model.layers[-1]))), True, 1)})
    config = TrainConfig(lr=0.05, lr_guard=0)
    xs = rng.integers(-128, 128, size=(STEPS,) + tuple(model.input.shape)).astype(np.int8)
    train_c_vs_reference(model, scheme, config, xs, rng.integers(0, 3, size=STEPS), STEPS, kernels)


@settings(SETTINGS, max_examples=6)  # CI time
@given(h=st.integers(4, 11), w=st.integers(4, 11), c=st.integers(1, 6), k=st.sampled_from([1, 3, 5]),
       stride=st.integers(1, 2), r=st.sampled_from([1, 2, 4]), path_r=st.sampled_from([2, 3]),
       seed=st.integers(0, 2**16))
def test_path_filtering_matches_reference(h, w, c, k, stride, r, path_r, seed, kernels):
    """Filtering along the gradient path (`with_path_filter`): a trained stem (its own r) under frozen regular,
    depthwise and pointwise convolutions that filter their output gradient with patch side path_r (edge patches
    partial) before the head."""
    from tinygen.ir.scheme import with_path_filter

    rng = np.random.default_rng(seed)

    def make():
        b = ModelBuilder("p", (h, w, 2), 0.02, 0)
        wt, bt, st_ = _w(rng, (c, 3, 3, 2), 0.02)
        x = b.conv2d(b.input, wt, bt, st_, 0.04, -3, act="relu6", name="stem")
        wt, bt, st_ = _w(rng, (c, k, k, c), 0.02)
        x = b.conv2d(x, wt, bt, st_, 0.05, 1, stride=stride, padding="same", act="relu", name="mid")
        wt, bt, st_ = _w(rng, (c, k, k, 1), 0.05)
        x = b.conv2d(x, wt, bt, st_, 0.05, -2, padding="same", groups=c, act="relu6", name="dw")
        wt, bt, st_ = _w(rng, (c + 1, 1, 1, c), 0.02)
        x = b.conv2d(x, wt, bt, st_, 0.06, 0, name="pw")
        _head(b, x, rng, 3)
        return b.build()

    try:
        model = make()
    except ModelError:
        assume(False)
    data = np.random.default_rng(seed + 1)
    x = data.integers(-128, 128, size=(STEPS,) + tuple(model.input.shape)).astype(np.int8)
    labels = data.integers(0, 3, size=STEPS)
    scheme = with_path_filter(_scheme(model, data, r, {"stem", "head"}), model, path_r)
    assume(scheme.path_filtered())
    train_c_vs_reference(model, scheme, TrainConfig(lr=0.05), x, labels, STEPS, kernels)


@settings(SETTINGS, max_examples=8)  # CI time
@given(h=st.integers(4, 13), w=st.integers(4, 13), c=st.integers(2, 5), k=st.sampled_from([3, 5, 7]),
       stride=st.integers(1, 2), r=st.sampled_from([2, 3, 4]), part=st.sampled_from(["frozen", "bias", "prefix"]),
       seed=st.integers(0, 2**16))
@example(h=9, w=7, c=3, k=7, stride=2, r=2, part="prefix", seed=1)  # partial edge patches, a split filter
@example(h=8, w=8, c=4, k=3, stride=1, r=2, part="frozen", seed=2)  # MCUNet's shape: every patch whole
def test_patch_summed_depthwise_input_gradient(h, w, c, k, stride, r, part, seed, kernels):
    """A depthwise input gradient of a filtered output gradient, summed per patch from build-time weight sums
    (planning.backward.structured_channels): k in {3, 5, 7}, stride 1 and 2, edge patches partial, the layer
    frozen, bias-only or training a prefix of its channels (the rest summed), equal to the reference."""
    from tinygen.planning.backward import structured_channels

    rng = np.random.default_rng(seed)
    b = ModelBuilder("p", (h, w, 2), 0.02, 0)
    wt, bt, st_ = _w(rng, (c, 3, 3, 2), 0.02)
    x = b.conv2d(b.input, wt, bt, st_, 0.04, -3, act="relu6", name="stem")
    wt, bt, st_ = _w(rng, (c, k, k, 1), 0.05)
    x = b.conv2d(x, wt, bt, st_, 0.05, -2, stride=stride, padding="same", groups=c, act="relu6", name="dw")
    wt, bt, st_ = _w(rng, (c + 1, 1, 1, c), 0.02)
    x = b.conv2d(x, wt, bt, st_, 0.06, 0, name="pw")
    _head(b, x, rng, 3)
    model = b.build()
    chans = list(range(c // 2)) if part == "prefix" else []
    scheme = Scheme({"stem": LayerUpdate(list(range(2)), True, 1),
                     "dw": LayerUpdate(chans, part != "frozen", r),
                     "head": LayerUpdate(list(range(c + 1)), True, 1)})
    trainer = Trainer(model, scheme, TrainConfig(lr=0.05))
    assert structured_channels(model.layer("dw"), trainer) == c - len(chans)
    data = np.random.default_rng(seed + 1)
    xs = data.integers(-128, 128, size=(STEPS,) + tuple(model.input.shape)).astype(np.int8)
    labels = data.integers(0, 3, size=STEPS)
    train_c_vs_reference(model, scheme, TrainConfig(lr=0.05), xs, labels, STEPS, kernels)
