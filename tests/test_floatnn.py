"""floatnn: finite-difference gradient checks for every layer type, and agreement with the int8 IR."""

from __future__ import annotations

import numpy as np
import pytest

from tinygen.reference import forward as reference
from tinygen.zoo import floatnn as F
from tinygen.zoo import ptq


def _randomize(net: F.Net, rng) -> None:
    """Non-zero biases and BN affine params, so no pre-activation sits exactly on a ReLU kink."""
    for _, key, p in net.parameters():
        if key in ("bias", "beta"):
            p[...] = rng.uniform(-0.5, 0.5, p.shape)
        elif key == "gamma":
            p[...] = rng.uniform(0.5, 1.5, p.shape)


def _numeric(f, arr, eps=1e-6):
    g = np.zeros_like(arr)
    for i in np.ndindex(arr.shape):
        old = arr[i]
        arr[i] = old + eps
        a = f()
        arr[i] = old - eps
        b = f()
        arr[i] = old
        g[i] = (a - b) / (2 * eps)
    return g


def grad_check(build, in_shape, n=2, train=False, seed=0):
    rng = np.random.default_rng(seed)
    net = F.Net(in_shape, dtype=np.float64, seed=seed)
    build(net)
    _randomize(net, rng)
    x = rng.standard_normal((n,) + tuple(in_shape))
    r = rng.standard_normal((n,) + net.output_shape)

    def loss():
        return float((net.forward(x, train=train) * r).sum())

    net.forward(x, train=train, record=True)
    net.zero_grad()
    dx = net.backward(r)
    grads = {(layer.name, k): layer.grads[k].copy() for layer, k, _ in net.parameters()}
    assert np.allclose(dx, _numeric(loss, x), rtol=1e-5, atol=1e-7), "input gradient"
    for layer, k, p in net.parameters():
        num = _numeric(loss, p)
        assert np.allclose(grads[(layer.name, k)], num, rtol=1e-5, atol=1e-7), f"{layer.name}.{k}"
    return net


CASES = {
    "conv3x3_same": ((6, 6, 3), lambda n: n.conv2d(n.input, 4, 3, act="relu")),
    "conv3x3_stride2_same": ((7, 7, 3), lambda n: n.conv2d(n.input, 4, 3, stride=2, act="relu")),
    "conv_valid_rect": ((6, 7, 2), lambda n: n.conv2d(n.input, 3, (2, 3), stride=(2, 1), padding="valid")),
    "conv_asym_padding_dilation2": ((7, 8, 2), lambda n: n.conv2d(n.input, 4, 3, padding=(1, 0, 2, 1), dilation=2,
                                                                   act="relu6")),
    "conv_stride2_dilation2": ((9, 9, 2), lambda n: n.conv2d(n.input, 3, 3, stride=2, dilation=2)),
    "pointwise": ((4, 4, 5), lambda n: n.conv2d(n.input, 3, 1, act="relu")),
    "depthwise": ((6, 6, 4), lambda n: n.depthwise_conv2d(n.input, 3, act="relu6")),
    "depthwise_stride2": ((7, 7, 3), lambda n: n.depthwise_conv2d(n.input, 3, stride=2, act="relu")),
    "depthwise_mult2_dilation": ((7, 7, 2), lambda n: n.depthwise_conv2d(n.input, 3, multiplier=2, dilation=2)),
    "grouped": ((5, 6, 4), lambda n: n.conv2d(n.input, 6, 3, groups=2, stride=(1, 2))),
    "dense_relu": ((3, 3, 2), lambda n: n.dense(n.input, 5, act="relu")),
    "dense_flat": ((7,), lambda n: n.dense(n.input, 4, act="relu6")),
    "bn_train": ((5, 5, 2), lambda n: n.conv2d(n.input, 3, 3, bn=True, bias=False, act="relu")),
    "clamp_act": ((5, 5, 2), lambda n: n.conv2d(n.input, 3, 3, act=(-0.3, 0.4))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_layer_gradients(case):
    shape, build = CASES[case]
    grad_check(build, shape, n=3 if case.startswith("bn") else 2, train=case.startswith("bn"))


def _residual(n):
    a = n.conv2d(n.input, 4, 3, act="relu", name="a")
    b = n.depthwise_conv2d(a, 3, name="dw")
    b = n.conv2d(b, 4, 1, name="pw")
    c = n.add(a, b, act="relu6", name="add")
    return c


def test_add_and_fanout_gradients():
    grad_check(lambda n: n.dense(_residual(n), 3), (5, 5, 2))


def test_pool_reshape_activation_gradients():
    def build(n):
        x = n.conv2d(n.input, 3, 3)
        x = n.avgpool(x, 2, 2, padding="same")  # 5x5 -> 3x3, partial windows at the edge
        x = n.maxpool(x, 2, 1, padding=(0, 1, 0, 1))
        x = n.relu(x)
        x = n.reshape(x, (3, 9))
        x = n.reshape(x, (3, 3, 3))
        x = n.relu6(n.conv2d(x, 4, 1))
        x = n.global_avgpool(x)
        return n.dense(n.flatten(x), 3)

    grad_check(build, (5, 5, 2))


def test_bn_eval_mode_gradient():
    def build(n):
        x = n.conv2d(n.input, 3, 3, bn=True, act="relu")
        n.layers[-1].running_mean = np.array([0.1, -0.2, 0.3])
        n.layers[-1].running_var = np.array([0.5, 1.5, 2.0])
        return x

    grad_check(build, (4, 4, 2), train=False)


def test_softmax_cross_entropy_gradient():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 6))
    labels = np.array([0, 5, 2, 2])
    loss, d = F.softmax_cross_entropy(logits, labels)
    num = _numeric(lambda: F.softmax_cross_entropy(logits, labels)[0], logits)
    assert np.allclose(d, num, atol=1e-8)
    p = F.softmax(logits)
    assert np.isclose(loss, -np.mean(np.log(p[np.arange(4), labels])))


def test_fold_bn_matches_eval_mode():
    rng = np.random.default_rng(1)
    net = F.Net((6, 6, 2), dtype=np.float64)
    x = net.conv2d(net.input, 4, 3, bn=True, act="relu")
    x = net.depthwise_conv2d(x, 3, bn=True, bias=False, act="relu6")
    net.dense(net.global_avgpool(x), 3)
    _randomize(net, rng)
    xs = rng.standard_normal((8, 6, 6, 2))
    net.forward(xs, train=True)  # moves the running statistics
    folded = net.fold_bn()
    assert not folded.has_bn() and net.has_bn()
    assert np.allclose(net.forward(xs), folded.forward(xs), atol=1e-10)


@pytest.mark.parametrize("cfg", [
    dict(k=3, stride=1, padding="same", dilation=1, groups=1),
    dict(k=3, stride=2, padding="same", dilation=1, groups=1),
    dict(k=3, stride=1, padding=(0, 2, 1, 0), dilation=2, groups=1),
    dict(k=3, stride=2, padding="same", dilation=1, groups=4),  # depthwise
    dict(k=3, stride=1, padding="valid", dilation=1, groups=2),
    dict(k=1, stride=1, padding="valid", dilation=1, groups=1),
])
def test_conv_matches_reference_accumulator(cfg):
    """Integer-valued float conv == the int8 reference's exact accumulator (same layout and padding)."""
    rng = np.random.default_rng(2)
    x = rng.integers(-5, 6, (7, 8, 4)).astype(np.float64)
    w = rng.integers(-3, 4, (4 if cfg["groups"] == 4 else 6, cfg["k"], cfg["k"], 4 // cfg["groups"]))
    net = F.Net(x.shape, dtype=np.float64)
    net.conv2d(net.input, w.shape[0], cfg["k"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"],
               bias=False, weight=w)
    layer = net.layers[0]
    oh, ow, _ = layer.shape
    acc = reference.conv_accumulate(x.astype(np.int64), w, 0, layer.stride, layer.padding[0], layer.padding[2],
                                    layer.dilation, oh, ow, cfg["groups"])
    assert np.array_equal(net.forward(x[None])[0], acc)


def test_avgpool_matches_reference_semantics():
    rng = np.random.default_rng(3)
    x = rng.integers(-20, 20, (5, 5, 3)).astype(np.float64)
    net = F.Net(x.shape, dtype=np.float64)
    net.avgpool(net.input, 2, 2, padding="same")
    oh, ow, _ = net.output_shape
    total = reference._pool_windows(x.astype(np.int64), (2, 2), (2, 2), 0, 0, oh, ow, 0).sum(axis=2)
    ones = np.ones((5, 5, 1), dtype=np.int64)
    count = reference._pool_windows(ones, (2, 2), (2, 2), 0, 0, oh, ow, 0).sum(axis=2)
    assert np.allclose(net.forward(x[None])[0], total / count)


def test_train_is_deterministic_and_learns():
    def run():
        rng = np.random.default_rng(0)
        x = rng.standard_normal((96, 4, 4, 1)).astype(np.float32)
        y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int64)
        net = F.Net((4, 4, 1), seed=3)
        h = net.conv2d(net.input, 4, 3, act="relu", bn=True)
        net.dense(net.global_avgpool(h), 2)
        hist = F.train(net, x, y, epochs=8, batch_size=16, lr=0.1, seed=5, augment=F.shift_augment(1))
        return net, hist, F.accuracy(net, x, y)

    (n1, h1, a1), (n2, h2, _) = run(), run()
    assert [h["loss"] for h in h1] == [h["loss"] for h in h2]
    for (_, _, p1), (_, _, p2) in zip(n1.parameters(), n2.parameters(), strict=True):
        assert np.array_equal(p1, p2)
    assert h1[-1]["loss"] < h1[0]["loss"] and a1 > 0.8


def test_from_ir_tracks_the_int8_model():
    rng = np.random.default_rng(4)
    net = F.Net((6, 6, 2), seed=0)
    x = _residual(net)
    net.dense(net.global_avgpool(x), 4)
    _randomize(net, rng)
    xs = rng.uniform(0, 1, (16, 6, 6, 2)).astype(np.float32)
    model = ptq.quantize(net, xs, input_range=(0.0, 1.0))
    back = F.from_ir(model)
    assert [layer.name for layer in back.layers] == [layer.name for layer in model.layers]
    xq = ptq.quantize_input(model, xs)
    ref = np.stack([ptq.dequantize(model.output, reference.run_model(model, q)) for q in xq])
    flt = back.forward(ptq.dequantize(model.input, xq))
    assert np.abs(flt - ref).max() < 6 * model.output.scale
    assert np.abs(net.forward(xs) - ref).max() < 10 * model.output.scale


def test_builder_errors():
    net = F.Net((4, 4, 2))
    with pytest.raises(Exception, match="kernel"):
        net.conv2d(net.input, 2, 5, padding="valid")
    with pytest.raises(Exception, match="activation"):
        net.conv2d(net.input, 2, 3, act="gelu")
    with pytest.raises(RuntimeError):
        F.Net((2, 2, 1)).backward(np.zeros((1, 1)))


def test_maxpool_via_builder_roundtrip():
    """A float maxpool quantizes to an IR maxpool that keeps its input's quantization."""
    net = F.Net((4, 4, 1))
    x = net.conv2d(net.input, 2, 3, act="relu")
    x = net.maxpool(x, 2)
    net.dense(x, 3)
    rng = np.random.default_rng(0)
    model = ptq.quantize(net, rng.uniform(0, 1, (8, 4, 4, 1)), input_range=(0, 1))
    pool = model.layers[1]
    assert pool.op == "maxpool" and pool.output.scale == model.layers[0].output.scale
