"""The model zoo, the data sets and post-training quantization."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import tinygen
from tinygen.errors import ModelError
from tinygen.frontends import datasets, modelfile
from tinygen.ir import model as ir
from tinygen.reference.forward import run_model
from tinygen.zoo import catalog as zoo
from tinygen.zoo import floatnn as F
from tinygen.zoo import ptq

ENTRIES = {e.name: e for e in zoo.list_models()}


def _real_input(model: ir.Model) -> np.ndarray:
    h, w, c = model.input.shape
    if c == 3:
        return datasets.sample_images(1, h, seed=3)[0]
    x, _ = datasets.load_digits() if h == 8 else datasets.load_mnist5k()
    return datasets.pad_to(x[:1], h)[0]


# ---------------------------------------------------------------------------
# data sets


def test_digits_and_mnist_shapes():
    x, y = datasets.load_digits()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0 and set(np.unique(y)) == set(range(10))
    x, y = datasets.load_mnist5k()
    assert x.shape == (5000, 28, 28, 1) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0 and np.bincount(y).tolist() == [500] * 10
    x[0] = 7  # callers get copies
    assert datasets.load_mnist5k()[0].max() == 1.0


def test_split_is_deterministic_and_stratified():
    x, y = datasets.load_digits()
    a = datasets.train_test_split(x, y, 0.2, seed=0)
    b = datasets.train_test_split(x, y, 0.2, seed=0)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    xtr, ytr, xte, yte = a
    assert len(ytr) + len(yte) == 1797 and abs(len(yte) - 360) <= 5
    assert np.bincount(yte).min() >= 17
    assert not np.array_equal(datasets.train_test_split(x, y, 0.2, seed=1)[3], yte)


def test_sample_images():
    a = datasets.sample_images(5, 24)
    assert a.shape == (5, 24, 24, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, datasets.sample_images(5, 24))
    assert not np.array_equal(a, datasets.sample_images(5, 24, seed=1))
    assert a.std() > 0.05  # real photos, not blank
    assert datasets.pad_to(np.ones((2, 28, 28, 1)), 32).shape == (2, 32, 32, 1)


# ---------------------------------------------------------------------------
# every zoo entry


def test_zoo_lists_the_required_models():
    for name in ("digits-cnn", "mnist-cnn", "mbv2-w0.35-r32-mnist", "mbv2-w0.35-r32", "mbv2-w0.5-r64",
                 "mbv2-w0.35", "proxyless-w0.3", "mcunet-5fps"):
        assert name in ENTRIES
    assert "UNTRAINED" in ENTRIES["mbv2-w0.35-r32"].description


@pytest.mark.parametrize("name", list(ENTRIES))
def test_entry_builds_validates_and_runs(name):
    entry = ENTRIES[name]
    if not entry.available:
        pytest.skip(f"{name} is not available here (MIT model data or importer missing)")
    model = zoo.get_model(name)
    model.validate()
    assert tuple(model.input.shape) == tuple(entry.input_shape)
    assert model.param_count() == entry.params and model.macs() == entry.macs
    y = run_model(model, ptq.quantize_input(model, _real_input(model)))
    assert y.dtype == np.int8 and y.shape == model.output.shape
    assert len(np.unique(y)) > 1  # not a saturated, constant output


def test_get_model_returns_fresh_copies():
    a = zoo.get_model("digits-cnn")
    a.layers[0].weight[...] = 0
    assert zoo.get_model("digits-cnn").layers[0].weight.any()


def _accuracy(name, n=None):
    xtr, ytr, xte, yte = zoo.RECIPES[name].data()
    model = zoo.get_model(name)
    n = n or len(yte)
    return zoo.int8_accuracy(model, xte[:n], yte[:n]), n


@pytest.mark.parametrize("name,n", [("digits-cnn", None), ("mnist-cnn", None), ("mbv2-w0.35-r32-mnist", 300)])
def test_pretrained_int8_accuracy(name, n):
    acc, count = _accuracy(name, n)
    assert acc > 0.9, f"{name}: int8 accuracy {acc:.3f} on {count} held-out images"
    recorded = json.loads((zoo.ZOO_DATA / "metrics.json").read_text())[name]
    if n is None:  # the whole test split: must equal what regenerate measured
        assert acc == pytest.approx(recorded["int8_acc"], abs=1e-4)
    assert recorded["params"] == zoo.get_model(name).param_count()


def test_zoo_data_is_package_data():
    for name in zoo.RECIPES:
        for ext in (".json", ".npz"):
            assert (zoo.ZOO_DATA / f"{name}{ext}").is_file()
    assert zoo.ZOO_DATA.relative_to(Path(tinygen.__file__).parent).parts == ("zoo", "data")  # inside the package


def test_classes_option():
    m = zoo.get_model("digits-cnn", classes=10)
    assert m.output.shape == (10,)
    m = zoo.get_model("digits-cnn", classes=4)
    assert m.output.shape == (4,) and m.layers[-1].weight.shape[0] == 4
    base = zoo.get_model("digits-cnn")
    assert all(np.array_equal(a.weight, b.weight) for a, b in zip(m.layers[:-1], base.layers[:-1], strict=True)
               if isinstance(a, ir.Conv2D))
    y = run_model(m, ptq.quantize_input(m, _real_input(m)))
    assert y.shape == (4,)
    assert zoo.get_model("mbv2-w0.35-r32", classes=3).output.shape == (3,)
    with pytest.raises(ModelError):
        zoo.get_model("digits-cnn", classes=0)


def test_mbv2_pattern_and_strides():
    m = zoo.get_model("mbv2-w0.25-r16")
    assert m.input.shape == (16, 16, 3)
    assert zoo.mbv2_strides(32) == (2, [1, 2, 2, 2, 1, 1, 1])
    assert zoo.mbv2_strides(64) == (2, [1, 2, 2, 2, 1, 2, 1])
    assert zoo.mbv2_strides(128) == (2, [1, 2, 2, 2, 1, 2, 1])
    net = zoo.mobilenet_v2(0.35, 128, 10)
    assert net.layers[-2].in_shape[:2] == (4, 4)  # the standard total stride 32
    ops = [layer.op for layer in net.layers]
    assert ops.count("add") == 10 and sum(isinstance(la, F.Conv2D) and la.depthwise for la in net.layers) == 17


def test_unknown_names():
    with pytest.raises(ModelError, match="unknown zoo model"):
        zoo.get_model("resnet-50")
    with pytest.raises(ModelError):
        zoo.get_model("mbv2-w9-r32")


# ---------------------------------------------------------------------------
# PTQ


def _small_net(seed=0):
    net = F.Net((6, 6, 2), seed=seed)
    a = net.conv2d(net.input, 4, 3, act="relu")
    b = net.depthwise_conv2d(a, 3, act="relu6")
    b = net.conv2d(b, 4, 1)
    c = net.add(a, b)
    c = net.relu(c)
    net.dense(net.global_avgpool(c), 3)
    return net


def test_ptq_is_deterministic_and_faithful(tmp_path):
    rng = np.random.default_rng(0)
    calib = rng.uniform(0, 1, (32, 6, 6, 2)).astype(np.float32)
    m1 = ptq.quantize(_small_net(), calib, input_range=(0, 1))
    m2 = ptq.quantize(_small_net(), calib, input_range=(0, 1))
    p1, p2 = modelfile.save(m1, tmp_path / "a.json"), modelfile.save(m2, tmp_path / "b.json")
    assert p1.with_suffix(".npz").read_bytes() == p2.with_suffix(".npz").read_bytes()
    assert p1.read_text().replace('"a.npz"', "") == p2.read_text().replace('"b.npz"', "")
    assert m1.input.scale == pytest.approx(1 / 255) and m1.input.zero_point == -128
    # relu folded into the add's clamp; activations after ReLU start at zero point -128
    add = m1.layer("act4")
    assert add.op == "add" and add.act_min == -128 and add.output.zero_point == -128
    assert m1.layers[0].output.zero_point == -128 and m1.layers[0].act_min == -128
    relu6 = m1.layers[1]
    assert relu6.act_max == min(127, relu6.output.zero_point + round(6 / relu6.output.scale))
    assert m1.layer("gap5").output.scale == add.output.scale  # pooling keeps its input's quantization
    x = rng.uniform(0, 1, (8, 6, 6, 2)).astype(np.float32)
    ref = np.stack([ptq.dequantize(m1.output, run_model(m1, q)) for q in ptq.quantize_input(m1, x)])
    flt = _small_net().forward(x)
    assert np.abs(ref - flt).max() < 0.05 * np.abs(flt).max() + 4 * m1.output.scale


def test_quantize_weights_rules():
    w = np.array([[1.0, -0.5], [0.0, 0.0], [1e-3, 2e-3]])
    b = np.array([0.1, 0.0, 5000.0])
    w_q, b_q, s = ptq.quantize_weights(w, b, s_x=0.01)
    assert w_q.dtype == np.int8 and b_q.dtype == np.int32 and s.dtype == np.float32
    assert w_q[0].tolist() == [127, -64] and s[0] == np.float32(1 / 127)
    assert s[1] > 0 and w_q[1].tolist() == [0, 0]
    assert b_q[0] == round(0.1 / (0.01 * float(s[0])))
    assert s[2] > 2e-3 / 127  # raised so that the bias fits the accumulator bound
    assert abs(int(b_q[2])) < 2**31 - 2 * 255 * 128
    assert abs(float(b_q[2]) * 0.01 * float(s[2]) - 5000.0) < 1e-3
    assert ptq.choose_qparams(0.0, 2.55) == (pytest.approx(0.01), -128)
    assert ptq.choose_qparams(-1.0, 1.0)[1] in (-1, 0)
    assert ptq.quantize_input(zoo.get_model("digits-cnn"), np.array([0.0, 1.0, 0.5])).tolist() == [-128, 127, 0]


def test_random_mbv2_is_deterministic():
    a = zoo._random_mbv2(0.35, 32, 10, "x")
    b = zoo._random_mbv2(0.35, 32, 10, "x")
    for la, lb in zip(a.layers, b.layers, strict=True):
        for k, v in la.params().items():
            assert np.array_equal(v, lb.params()[k])
        assert la.output == lb.output


def test_regenerate_digits_reproduces_committed_model(tmp_path):
    """Regenerating from scratch gives the committed bytes on this machine (else: the same accuracy)."""
    res = zoo.regenerate(["digits-cnn"], directory=tmp_path, log=None)["digits-cnn"]
    new, old = modelfile.load(tmp_path / "digits-cnn.json"), zoo.get_model("digits-cnn")
    same = all(np.array_equal(v, lo.params()[k]) for ln, lo in zip(new.layers, old.layers, strict=True)
               for k, v in ln.params().items())
    recorded = json.loads((zoo.ZOO_DATA / "metrics.json").read_text())["digits-cnn"]
    if same:
        assert res["int8_acc"] == recorded["int8_acc"]
    else:  # another BLAS may round differently; the recipe must still hold
        assert abs(res["int8_acc"] - recorded["int8_acc"]) < 0.02


def test_train_recipe_short_run_is_deterministic():
    r = dataclasses.replace(zoo.RECIPES["digits-cnn"], epochs=1, calib=64)
    _, m1, a = zoo.train_recipe(r, log=None)
    _, m2, b = zoo.train_recipe(r, log=None)
    assert a["int8_acc"] == b["int8_acc"]
    assert all(np.array_equal(x.weight, y.weight) for x, y in zip(m1.layers, m2.layers, strict=True)
               if hasattr(x, "weight"))
