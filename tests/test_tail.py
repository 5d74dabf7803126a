"""ir.tail: the suffix a benchmark trains on cached activations is the same function, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from tinygen.frontends.inputs import training_samples
from tinygen.ir import model as ir
from tinygen.ir.scheme import TrainConfig, parse_update
from tinygen.reference.forward import run_model
from tinygen.reference.training import Trainer
from tinygen.zoo.catalog import get_model


@pytest.mark.parametrize("name, update", [("mnist-cnn", "last-2"), ("mnist-cnn", "last-4"), ("digits-cnn", "full")])
def test_tail_trains_like_the_whole_model(name, update):
    model = get_model(name, classes=5)
    scheme = parse_update(update, model, 1)
    t = ir.tail(model, set(scheme.layers))
    starts = [i for i, layer in enumerate(model.layers) if layer.name in scheme.layers]
    assert len(model.layers) - len(t.layers) <= min(starts)
    # the tail reads exactly one tensor of what precedes it
    made = {layer.output.name for layer in t.layers}
    assert {n for layer in t.layers for n in layer.inputs} - made == {t.input.name}
    t.validate()
    x, y, _ = training_samples(model, 6)
    whole, part = Trainer(model, scheme, TrainConfig()), Trainer(t, scheme, TrainConfig())
    for xi, yi in zip(x, y, strict=True):
        a = run_model(model, xi, keep=True)[t.input.name]
        assert whole.step(xi, yi) == part.step(a, yi)
    for n in scheme.layers:
        assert np.array_equal(whole.weights.get(n), part.weights.get(n))
        assert np.array_equal(whole.bias.get(n), part.bias.get(n))


def test_tail_of_a_residual_block_starts_at_the_block_input():
    model = get_model("mnist-cnn")
    adds = [layer for layer in model.layers if isinstance(layer, ir.Add)]
    assert adds, "mnist-cnn has a residual block"
    add = adds[0]
    inner = next(layer for layer in model.layers if layer.output.name == add.inputs[0])
    t = ir.tail(model, {inner.name})
    assert set(add.inputs) & {layer.output.name for layer in t.layers}  # the block's conv is in the tail
    made = {layer.output.name for layer in t.layers}
    assert {n for layer in t.layers for n in layer.inputs} - made == {t.input.name}
