"""`--update auto`: the gradient potential, bias-only candidates and the probe that picks between
selections (`training.selection.choose`)."""

from __future__ import annotations

import numpy as np

from tinygen.frontends.inputs import training_samples
from tinygen.ir import model as ir
from tinygen.ir.scheme import LayerUpdate, Scheme, TrainConfig, first_channels, weighted_layers
from tinygen.planning.memory import training_sram
from tinygen.reference.training import Trainer
from tinygen.training import selection as S
from tinygen.zoo.catalog import get_model


def test_code_gradients_are_the_references_own():
    """The potential's gradients are the ones the device's update uses (dw, db of the reference)."""
    model = get_model("mnist-cnn")
    tensors = model.tensors()
    scheme = Scheme({layer.name: LayerUpdate(first_channels(layer, tensors, 1.0), True, 1)
                     for layer in weighted_layers(model)})
    tr = Trainer(model, scheme, TrainConfig())
    x, y, _ = training_samples(model, 1)
    rec: dict = {}
    values, _ = tr.forward(x[0])
    tr.step(x[0], y[0], record=rec)
    for layer in weighted_layers(model):
        xs = values[layer.inputs[0]].astype(np.int64) - tensors[layer.inputs[0]].zero_point
        dw, db = S.code_gradients(layer, xs, rec[f"gacc:{layer.name}"].g.astype(np.int64))
        assert np.array_equal(dw.reshape(rec[f"dw:{layer.name}"].shape), rec[f"dw:{layer.name}"]), layer.name
        assert np.array_equal(db, rec[f"db:{layer.name}"]), layer.name


def test_potential_is_the_squared_mean_gradient():
    """Repeated samples have no variance: the estimate is exactly the squared gradient; two different
    samples give less than the mean of their squares (the variance is not counted as potential)."""
    model = get_model("mnist-cnn")
    x, y, _ = training_samples(model, 2)
    one = S.gradient_potential(model, x[[0, 0, 0]], y[[0, 0, 0]])
    rec: dict = {}
    probe = S._gradient_trainer(model)
    values, _ = probe.forward(x[0])
    probe.step(x[0], y[0], record=rec)
    tensors = model.tensors()
    for layer in weighted_layers(model):
        dw, db = S._real_gradients(layer, values[layer.inputs[0]], tensors[layer.inputs[0]],
                                   rec[f"gacc:{layer.name}"].g * 2.0 ** rec[f"gacc:{layer.name}"].e)
        assert np.allclose(one[layer.name].weight, S._per_channel(layer, dw * dw), rtol=1e-9)
        assert np.isclose(one[layer.name].bias, float((db * db).sum()), rtol=1e-9)
    two = S.gradient_potential(model, x, y)
    each = [S.gradient_potential(model, x[[i, i]], y[[i, i]]) for i in (0, 1)]
    fc = weighted_layers(model)[-1].name
    assert two[fc].bias < (each[0][fc].bias + each[1][fc].bias) / 2


def test_residual_feeding_layers_train_bias_only():
    model = get_model("mbv2-w0.35-r32-mnist", classes=10)
    x, y, _ = training_samples(model, 4)
    pot = S.gradient_potential(model, x, y)
    trainer, est = S.select(model, pot, 96 * 1024, TrainConfig())
    consumers = model.consumers()
    feeds_add = {layer.name for layer in model.layers
                 if any(isinstance(c, ir.Add) for c in consumers.get(layer.output.name, []))}
    assert feeds_add
    trained = trainer.scheme.layers
    assert any(n in feeds_add and u.bias for n, u in trained.items())  # their bias still trains
    assert not any(u.channels for n, u in trained.items() if n in feeds_add)
    assert any(u.bias and not u.channels for u in trained.values())  # bias-only candidates exist
    assert est.total <= 96 * 1024


def test_choose_ranks_by_the_probe_and_leaves_the_candidates_untouched():
    model = get_model("mnist-cnn")
    x, y, _ = training_samples(model, 48)
    budget = 40 * 1024
    choices = S.choose(model, x, y, budget, TrainConfig())
    probed = [c for c in choices if c.probe_loss is not None]
    assert sorted(c.label for c in probed) == ["potential", S.CAPPED]
    assert [c.probe_loss for c in probed] == sorted(c.probe_loss for c in probed)
    if len(choices) > len(probed):  # the capped candidate won: its path's layers measured, that selection first
        assert [c.label for c in choices] == [S.MEASURED, S.CAPPED, "potential"]
    for c in choices:
        assert c.estimate.total <= budget
        assert training_sram(c.trainer.model, c.trainer).total == c.estimate.total
        assert c.trainer.step_count == 0  # the probe trains copies
    again = S.probe([c.trainer for c in probed], x, y, 32)
    assert again == [c.probe_loss for c in probed]  # deterministic, and what choose measured


def test_measured_keeps_the_path_and_adds_only_weights_that_lowered_the_probe_loss():
    """`measured`: the base is the bias of every weighted layer on the path; a layer's weights join only
    where the probe measured them lowering the held-out loss against that base, under the budget."""
    model = get_model("mbv2-w0.35-r32-mnist", 10)
    x, y, _ = training_samples(model, 96)
    layers = weighted_layers(model)
    path = Scheme({layer.name: LayerUpdate([], True, 1) for layer in layers[-4:]})
    config, budget = TrainConfig(lr=0.01), 256 * 1024
    trainer, est = S.measured(model, path, x, y, 64, budget, config)
    got = trainer.scheme.layers
    assert set(got) == set(path.layers) and all(u.bias for u in got.values())
    weighted = [n for n, u in got.items() if u.channels]
    assert weighted  # this task gains from the last block's weights
    assert est.total <= budget and training_sram(model, trainer).total == est.total
    base = Trainer(model, path, config)
    alone = [Trainer(model, Scheme(dict(path.layers, **{n: got[n]})), config) for n in weighted]
    losses = S.probe([base, *alone], x, y, 64)
    assert all(loss < losses[0] for loss in losses[1:])
    assert all(got[n].channels == list(range(len(got[n].channels))) for n in weighted)  # first channels
