"""Channel reordering (tinygen/reorder.py): permuting a model's channel groups computes the same
function and trains the same way, bit for bit; Fisher selection uses it to train the most important
channels as SRAM/flash-split prefixes."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from tinygen.cli import main
from tinygen.frontends.inputs import real_inputs, training_samples
from tinygen.ir.scheme import LayerUpdate, Scheme, TrainConfig, first_channels, weighted_layers
from tinygen.planning.weight_store import weight_store
from tinygen.reference import forward as reference
from tinygen.reference.training import Trainer
from tinygen.training.reorder import channel_groups, permute_channels, reorder_by_importance, restore_order
from tinygen.training.selection import fisher_potential, select
from tinygen.zoo.catalog import get_model

MODELS = ["digits-cnn", "mnist-cnn", "mbv2-w0.35-r32-mnist"]


def _random_perms(model, seed):
    g = channel_groups(model)
    rng = np.random.default_rng(seed)
    perms, seen = {}, set()
    for t, info in model.tensors().items():
        root = g.find(t)
        if root in seen or g.is_pinned(t):
            continue
        seen.add(root)
        perms[t] = rng.permutation(info.shape[-1])
    return perms


@pytest.mark.parametrize("name", MODELS)
def test_permuted_model_computes_the_same_outputs(name):
    model = get_model(name, classes=7)
    perms = _random_perms(model, 1)
    assert len(perms) >= 2  # there is something to permute
    permuted = permute_channels(model, perms)
    changed = sum(not np.array_equal(a.weight, b.weight) for a, b in zip(weighted_layers(model),
                                                                        weighted_layers(permuted), strict=True))
    assert changed >= 2
    x, _ = real_inputs(model, 6)
    assert np.array_equal(reference.run_batch(model, x), reference.run_batch(permuted, x))
    back = restore_order(permuted, {t: [int(i) for i in p] for t, p in perms.items()})
    for a, b in zip(weighted_layers(model), weighted_layers(back), strict=True):
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)


def test_model_input_and_output_are_never_permuted():
    model = get_model("mbv2-w0.35-r32-mnist", classes=5)
    g = channel_groups(model)
    assert g.is_pinned(model.input.name) and g.is_pinned(model.output.name)
    with pytest.raises(ValueError):
        permute_channels(model, {model.input.name: np.arange(model.input.shape[-1])[::-1]})


@pytest.mark.parametrize("name", ["mnist-cnn", "mbv2-w0.35-r32-mnist"])
def test_permuted_training_is_the_same_training(name):
    """Train arbitrary channel sets on the original and the mapped sets on a permuted model: every
    loss is equal, and the trained weights, put back in the original order, are equal."""
    model = get_model(name, classes=5)
    perms = _random_perms(model, 2)
    permuted = permute_channels(model, perms)
    g = channel_groups(model)
    inv = {g.find(t): np.argsort(p) for t, p in perms.items()}
    rng = np.random.default_rng(0)
    layers = weighted_layers(model)[-4:]
    scheme, mapped = Scheme(), Scheme()
    for layer in layers:
        n = len(first_channels(layer, model.tensors(), 1.0))
        chans = sorted(rng.choice(n, size=max(1, n // 3), replace=False).tolist())
        scheme.layers[layer.name] = LayerUpdate(chans, True)
        p = inv.get(g.find(layer.inputs[0]))
        c = model.tensors()[layer.inputs[0]].shape[-1]
        new = chans if p is None else sorted(int(p[i % c] + (i // c) * c) for i in chans)
        mapped.layers[layer.name] = LayerUpdate(new, True)
    cfg = TrainConfig(lr=0.05, momentum=0.5)
    a, b = Trainer(model, scheme, cfg), Trainer(permuted, mapped, cfg)
    x, y, _ = training_samples(model, 6)
    assert [a.step(xi, yi) for xi, yi in zip(x, y, strict=True)] == \
        [b.step(xi, yi) for xi, yi in zip(x, y, strict=True)]
    back = restore_order(b.trained_model(), {t: [int(i) for i in p] for t, p in perms.items()})
    for la, lb in zip(weighted_layers(a.trained_model()), weighted_layers(back), strict=True):
        assert np.array_equal(la.weight, lb.weight) and np.array_equal(la.bias, lb.bias)


def test_fisher_selection_trains_the_most_important_channels_as_prefixes():
    model = get_model("mbv2-w0.35-r32-mnist", classes=5)
    x, y, _ = training_samples(model, 4)
    imp = fisher_potential(model, x, y)
    new, new_imp, order = reorder_by_importance(model, imp)
    assert order
    # the classifier alone consumes its group (the last conv's output, pooled): it now sees its
    # channels by falling importance
    layer = weighted_layers(model)[-1]
    v = new_imp[layer.name]
    assert np.all(np.diff(v) <= 0) and not np.all(np.diff(imp[layer.name]) <= 0)
    trainer, est = select(model, imp, 96 * 1024, TrainConfig(), reorder=True)
    assert trainer.scheme.channel_order and trainer.model is not model
    tensors = trainer.model.tensors()
    partial = {n: u for n, u in trainer.scheme.layers.items()
               if 0 < len(u.channels) < len(first_channels(trainer.model.layer(n), tensors, 1.0))}
    assert partial  # some layers train part of their channels: all of them as SRAM prefixes
    assert all(weight_store(trainer.model.layer(n), u.channels).split_k == len(u.channels) for n, u in partial.items())
    xi, _ = real_inputs(model, 4)
    assert np.array_equal(reference.run_batch(model, xi), reference.run_batch(trainer.model, xi))


def test_reordered_build_records_the_order_and_verifies(tmp_path):
    r = CliRunner().invoke(main, ["build", "--board", "nrf52840", "--model", "mnist-cnn", "--budget-kb", "40",
                                  "--reorder-channels", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.stderr
    assert "channels reordered" in r.stdout
    import json

    order = json.loads((tmp_path / "b" / "model" / "scheme.json").read_text())["channel_order"]
    assert order and all(sorted(p) == list(range(len(p))) for p in order.values())
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "b"), "--steps", "5"])
    assert r.exit_code == 0, r.stderr
