"""Integer gradients vs float64 autograd of the same int8 network (straight-through quantizers):
cosine similarity >= 0.99 at r = 1 for every layer type, every sample, every trained layer."""

from __future__ import annotations

import numpy as np
import pytest
from models_for_tests import small_model

from tinygen.frontends.inputs import quantize, real_labelled, training_samples
from tinygen.ir.scheme import TrainConfig, full_scheme
from tinygen.reference.float_grad import cosine, float_backward, integer_gradients
from tinygen.reference.training import Trainer
from tinygen.zoo.catalog import get_model


def _cosines(model, scheme, x, y):
    out = {}
    for xi, yi in zip(x, y, strict=True):
        fl = float_backward(Trainer(model, full_scheme(model, 1), TrainConfig()), xi, yi)
        it = integer_gradients(Trainer(model, scheme, TrainConfig()), xi, yi)
        for k, v in it.items():
            if k in fl:
                out.setdefault(k, []).append(cosine(v, fl[k]))
    return out


@pytest.mark.parametrize("name", ["digits-cnn", "mnist-cnn", "mbv2-w0.35-r32-mnist"])
def test_r1_gradients_match_float_autograd(name):
    model = get_model(name)
    x, y, _ = training_samples(model, 8)
    cos = _cosines(model, full_scheme(model, 1), x, y)
    kinds = {k.split(":")[0] for k in cos}
    assert kinds == {"grad", "dw", "db"}
    worst = min((min(v), k) for k, v in cos.items())
    assert worst[0] >= 0.99, f"cosine {worst[0]:.5f} at {worst[1]}"


def test_r1_gradients_grouped_conv():
    """The builder's every-op model: a grouped conv and the FC head train (max pooling, which has no
    backward, stays below them)."""
    model = small_model(seed=3)
    from tinygen.ir.scheme import LayerUpdate, Scheme

    trained = ["grouped", "fc"]
    scheme = Scheme({n: LayerUpdate(list(range(model.layer(n).weight.shape[-1])), True, 1) for n in trained})
    xf, y, _ = real_labelled(tuple(model.input.shape), 6, 10)
    x = quantize(xf, model.input)
    out = {}
    for xi, yi in zip(x, y, strict=True):
        fl = float_backward(Trainer(model, scheme, TrainConfig()), xi, yi)
        it = integer_gradients(Trainer(model, scheme, TrainConfig()), xi, yi)
        for k, v in it.items():
            out.setdefault(k, []).append(cosine(v, fl[k]))
    assert "dw:grouped" in out
    worst = min((min(v), k) for k, v in out.items())
    assert worst[0] >= 0.99, f"cosine {worst[0]:.5f} at {worst[1]}"


def test_filtered_gradients_are_not_identical_to_exact():
    """r = 2 changes the gradients (the filter is really applied) but keeps them correlated."""
    model = get_model("mnist-cnn")
    x, y, _ = training_samples(model, 2)
    exact = _cosines(model, full_scheme(model, 1), x, y)
    filt = _cosines(model, full_scheme(model, 2), x, y)
    first_conv = [k for k in exact if k.startswith("dw:")][-1]
    assert np.mean(filt[first_conv]) < np.mean(exact[first_conv])
    assert np.mean(filt[first_conv]) > 0.3
