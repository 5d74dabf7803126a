"""One head function: every `--classes N` path gets zoo.replace_head, with its headroom."""

from __future__ import annotations

import numpy as np

from tinygen.frontends import modelfile
from tinygen.ir import model as ir
from tinygen.zoo.catalog import HEAD_HEADROOM, get_model, replace_head
from tinygen.zoo.resolve import resolve_model


def _assert_fresh_head(model: ir.Model, classes: int) -> None:
    head = model.layers[-1]
    assert isinstance(head, ir.FullyConnected) and model.output.shape == (classes,)
    assert np.all(head.bias == 0)
    # HEAD_HEADROOM in the weight scales: the int8 codes start well inside [-127, 127]
    assert 0 < np.abs(head.weight.astype(int)).max() <= round(127 / HEAD_HEADROOM)


def test_zoo_name_and_model_file_get_the_same_head(tmp_path):
    model = get_model("digits-cnn")
    path = tmp_path / "m.json"
    modelfile.save(model, path)
    from_file = resolve_model(str(path), classes=5)
    from_zoo = get_model("digits-cnn", classes=5)
    _assert_fresh_head(from_file, 5)
    _assert_fresh_head(from_zoo, 5)
    # the file path calibrates on real images of the input shape, the zoo on its own training images: same
    # seeded weights, each with a logit range of its own calibration
    assert np.array_equal(from_file.layers[-1].weight, from_zoo.layers[-1].weight)


def test_same_class_count_keeps_the_model_file_head(tmp_path):
    model = get_model("digits-cnn")
    path = tmp_path / "m.json"
    modelfile.save(model, path)
    kept = resolve_model(str(path), classes=model.output.size)
    assert np.array_equal(kept.layers[-1].weight, model.layers[-1].weight)


def test_replace_head_is_deterministic_and_calibrates_by_default():
    model = get_model("digits-cnn")
    a, b = replace_head(model, 3), replace_head(model, 3)
    _assert_fresh_head(a, 3)
    assert np.array_equal(a.layers[-1].weight, b.layers[-1].weight)
    assert a.output.scale == b.output.scale
