"""The like-for-like float baseline (`FloatTrainer(fake_quant=True)`): before training its forward is the
integer forward, its straight-through gradients are the float oracle's, and SGD moves float masters whose
int8 view changes only when a master crosses a half-code."""

from __future__ import annotations

import numpy as np
import pytest
from models_for_tests import small_model

from tinygen.frontends.inputs import quantize, real_labelled, training_samples
from tinygen.ir.scheme import LayerUpdate, Scheme, TrainConfig, full_scheme, parse_update
from tinygen.reference.float_grad import FloatTrainer, float_backward
from tinygen.reference.forward import run_model
from tinygen.reference.training import Trainer
from tinygen.zoo.catalog import get_model


def _model(name):
    """(model, scheme, int8 samples, labels): zoo models train every layer; the every-op model its
    grouped conv and head (max pooling, which has no backward, is below them)."""
    if name == "small":
        model = small_model(seed=3)
        scheme = Scheme({n: LayerUpdate(list(range(model.layer(n).weight.shape[-1])), True, 1)
                         for n in ("grouped", "fc")})
        xf, y, _ = real_labelled(tuple(model.input.shape), 16, 10)
        return model, scheme, quantize(xf, model.input), y
    model = get_model(name)
    x, y, _ = training_samples(model, 16)
    return model, full_scheme(model, 1), x, y


def _real(model, xq):
    t = model.input
    return (xq.astype(np.float64) - t.zero_point) * t.scale


def _codes(model, vals):
    tensors = model.tensors()
    return {k: np.rint(v / tensors[k].scale + tensors[k].zero_point).reshape(tensors[k].shape)
            for k, v in vals.items()}


@pytest.mark.parametrize("name", ["digits-cnn", "mnist-cnn", "mbv2-w0.35-r32-mnist", "small"])
def test_untrained_fake_quant_forward_is_the_integer_forward(name):
    """Every tensor, not only the logits, equals run_model's codes on every sample: the float forward
    rounds as arm_nn_requantize does (half up at its right shift, then half away), the add as TFLite's
    three requantizes, the average pool on codes. Plain round-half-away differs by one code in ~1% of
    activations (those within 2^-(shift+1) of a tie), and that compounds: on 64 samples all logits
    agreed for 46 (digits-cnn), 16 (mnist-cnn), 0 (mbv2), the argmax for 64, 64, 63."""
    model, scheme, x, _ = _model(name)
    ft = FloatTrainer(model, scheme, lr=0.0)
    for xi in x:
        want = run_model(model, xi, keep=True)
        got = _codes(model, ft.forward(_real(model, xi))[0])
        for k, v in want.items():
            assert np.array_equal(got[k], v), f"{k} differs"


def test_without_fake_quant_the_logits_are_off_the_grid():
    model, scheme, x, _ = _model("mnist-cnn")
    logits = FloatTrainer(model, scheme, lr=0.0, fake_quant=False).forward(_real(model, x[0]))[0][model.output.name]
    codes = logits / model.output.scale + model.output.zero_point
    assert not np.allclose(codes, np.rint(codes))


@pytest.mark.parametrize("name", ["mnist-cnn", "small"])
def test_straight_through_gradients_are_the_float_oracle(name):
    """Where the forward codes agree (everywhere, above), the fake-quant gradients of every trained layer
    are float_backward's (the same masks, the same int8 values), to float64 rounding."""
    model, scheme, x, y = _model(name)
    ft = FloatTrainer(model, scheme, lr=0.0)
    tensors = model.tensors()
    for xi, yi in zip(x[:4], y[:4], strict=True):
        want = float_backward(Trainer(model, scheme, TrainConfig()), xi, yi)
        _, got = ft.gradients(_real(model, xi), yi)
        assert got
        for layer, (dw, db) in got.items():
            s_x = tensors[model.layer(layer).inputs[0]].scale
            s_w = model.layer(layer).w_scales.astype(np.float64)
            np.testing.assert_allclose(dw * ft.s_w[layer], want[f"dw:{layer}"], rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(db * s_x * s_w, want[f"db:{layer}"], rtol=1e-9, atol=1e-12)


def test_sgd_moves_masters_and_the_view_only_across_half_codes():
    """8 steps at lr 0.03: nearly every master moves, a few views change, each exactly where its master
    crossed a half-code; the views track the integer trainer's (its master has 8 fraction bits)."""
    model, _, x, y = _model("mnist-cnn")
    scheme = parse_update("last-2", model, 1)
    ft, it = FloatTrainer(model, scheme, lr=0.03), Trainer(model, scheme, TrainConfig(lr=0.03))
    moved, crossed, differ = 0, 0, 0
    for xi, yi in zip(x[:8], y[:8], strict=True):
        before = {n: ft.w[n].copy() for n in ft.wmask}
        ft.step(_real(model, xi), yi)
        it.step(xi, yi)
        for n, w0 in before.items():
            view0, view1 = np.floor(w0 / ft.s_w[n] + 0.5), ft.weight_codes(n)
            assert np.array_equal(view1 != view0, np.floor(ft.w[n] / ft.s_w[n] + 0.5) != view0)
            moved += int((ft.w[n] != w0).sum())
            crossed += int((view1 != view0).sum())
    for n in ft.wmask:
        differ += int((it.weights[n] != ft.weight_codes(n)).sum())
    assert moved > 100 * crossed > 0
    assert differ < crossed / 10
    # the forward sees only the view: masters moved by less than a half-code change no code
    tiny = FloatTrainer(model, scheme, lr=1e-9)
    tiny.step(_real(model, x[0]), y[0])
    assert any((tiny.w[n] != model.layer(n).weight * tiny.s_w[n]).any() for n in tiny.wmask)
    assert np.array_equal(_codes(model, tiny.forward(_real(model, x[1]))[0])[model.output.name],
                          run_model(model, x[1]))


def test_masters_are_clamped_to_the_int8_range():
    """As the integer master: SGD cannot push a weight beyond +-127 codes, and the view saturates there."""
    model, _, x, y = _model("mnist-cnn")
    ft = FloatTrainer(model, parse_update("last-1", model, 1), lr=1e4)
    for xi, yi in zip(x[:3], y[:3], strict=True):
        ft.step(_real(model, xi), yi)
    (n,) = ft.wmask
    codes = ft.w[n] / ft.s_w[n]
    assert np.abs(codes).max() <= 127 + 1e-9
    assert np.abs(ft.weight_codes(n)).max() == 127
