"""Saturation: extreme learning rates and inputs drive the training arithmetic to its limits; the C
(UBSan with no recovery) still equals the reference, and values clamp where docs/numerics.md says."""

from __future__ import annotations

import numpy as np
import pytest
from train_harness import train_c_vs_reference

from tinygen.frontends.inputs import training_samples
from tinygen.ir.scheme import TrainConfig, full_scheme
from tinygen.reference.training import WEIGHT_LIMIT, Trainer, bias_limit
from tinygen.zoo.catalog import get_model


@pytest.fixture(scope="module")
def digits():
    return get_model("digits-cnn")


def _extreme_inputs(model, n):
    x, y, _ = training_samples(model, n)
    x = x.copy()
    x[0::3] = 127
    x[1::3] = -128
    return x, y


def test_huge_learning_rate_saturates_master_and_view_identically(digits):
    x, y = _extreme_inputs(digits, 6)
    config = TrainConfig(lr=1e6, momentum=0.9)
    summary = train_c_vs_reference(digits, full_scheme(digits), config, x, y, 6)
    assert summary["steps"] == 6
    tr = Trainer(digits, full_scheme(digits), config)
    for i in range(6):
        tr.step(x[i], y[i])
    limit = WEIGHT_LIMIT << config.frac_bits
    hit = [n for n, m in tr.master.items() if np.abs(m).max() == limit]
    assert hit, "a learning rate of 1e6 must drive some master weights to the clamp"
    for n in hit:
        assert np.abs(tr.weights[n]).max() == WEIGHT_LIMIT
        assert tr.weights[n].dtype == np.int8
    limits = {n: bias_limit(digits.layer(n)) for n in tr.bias}
    assert any(np.abs(b).max() == limits[n] for n, b in tr.bias.items()), "some bias must reach its clamp"
    assert all(np.abs(b).max() <= limits[n] for n, b in tr.bias.items())


def test_tiny_learning_rate_changes_nothing_visible(digits):
    x, y = _extreme_inputs(digits, 3)
    config = TrainConfig(lr=1e-12)
    train_c_vs_reference(digits, full_scheme(digits), config, x, y, 3)
    tr = Trainer(digits, full_scheme(digits), config)
    for i in range(3):
        tr.step(x[i], y[i])
    for layer in digits.layers:
        if layer.name in tr.weights:
            assert np.array_equal(tr.weights[layer.name], layer.weight)


def test_filtered_training_at_the_limits(digits):
    x, y = _extreme_inputs(digits, 4)
    train_c_vs_reference(digits, full_scheme(digits, filter_r=4), TrainConfig(lr=1e4, lr_halve_every=1), x, y, 4)
