"""`--filter-r auto` (issue 16 item 3): each trained layer's patch side from its map (at least 2r x 2r) and the
cosine of the gradient the filter changes to the same step's at r = 1 (tinygen/training/filtering.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tinygen.cli import main
from tinygen.frontends.inputs import training_samples
from tinygen.ir.scheme import TrainConfig, full_scheme
from tinygen.reference.float_grad import cosine, integer_gradients
from tinygen.reference.training import Trainer
from tinygen.training import filtering
from tinygen.training.filtering import AUTO_RS, auto_filter_r, map_cap
from tinygen.zoo.catalog import get_model


@pytest.fixture(scope="module")
def digits():
    model = get_model("digits-cnn", classes=5)
    x, y, _ = training_samples(model, 2)
    return model, Trainer(model, full_scheme(model, 1), TrainConfig()), x, y


def test_auto_r_follows_the_map_and_the_cosine(digits):
    model, trainer, x, y = digits
    chosen, choices = auto_filter_r(trainer, x, y)
    by = {c.layer: c for c in choices}
    assert set(by) == set(trainer.scheme.layers)
    assert by["fc"].cap == 1 and by["fc"].r == 1  # a 1x1 output has no patch
    assert by["conv1"].cap == 2 and by["dw3"].cap == 2  # 8x8 and 4x4 maps (auto goes no further than 2)
    for c in choices:
        if not c.cosine:  # nothing a filter changes was measured there: the map alone decides
            assert c.r == c.cap
        passing = [r for r in AUTO_RS if r <= c.r]
        assert all(c.cosine[r] >= filtering.AUTO_MIN_COSINE for r in passing if r in c.cosine)
        failing = [r for r in AUTO_RS if c.r < r <= c.cap]
        assert not failing or c.cosine[failing[0]] < filtering.AUTO_MIN_COSINE
        assert chosen.scheme.filter_r(c.layer) == c.r
    # the cosine is the reference's: conv1's weight gradient with every layer at r = 2 (capped) against r = 1
    at2 = filtering._with_rs(trainer.scheme, {n: min(2, map_cap(model.layer(n))) for n in trainer.scheme.layers})
    want = np.mean([cosine(integer_gradients(Trainer(model, at2, TrainConfig()), xi, int(yi))["dw:conv1"],
                           integer_gradients(Trainer(model, trainer.scheme, TrainConfig()), xi, int(yi))["dw:conv1"])
                    for xi, yi in zip(x, y, strict=True)])
    assert by["conv1"].cosine[2] == float(want)  # the same float operations in the same order


@pytest.mark.parametrize("threshold, expect", [(1.01, "one"), (-1.0, "cap")])
def test_auto_r_threshold_extremes(digits, monkeypatch, threshold, expect):
    """No measured cosine passes 1.01: every layer whose gradient a filter changes stays at r = 1; all pass -1:
    every layer takes the largest r its map allows."""
    model, trainer, x, y = digits
    monkeypatch.setattr(filtering, "AUTO_MIN_COSINE", threshold)
    _, choices = auto_filter_r(trainer, x, y)
    for c in choices:
        assert c.r == (c.cap if expect == "cap" or not c.cosine else 1)


def test_build_records_the_auto_choice(tmp_path):
    r = CliRunner().invoke(main, ["build", "--board", "stm32f746", "--model", "digits-cnn", "--update", "full",
                                  "--filter-r", "auto", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.stderr
    assert "--filter-r auto" in r.stderr and "map allows r" in r.stderr
    scheme = json.loads((tmp_path / "b" / "model" / "scheme.json").read_text())
    rs = {e["layer"]: e.get("filter_r", 1) for e in scheme["layers"]}
    assert rs["fc"] == 1 and max(rs.values()) >= 2
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "b"), "--inputs", "2"])
    assert r.exit_code == 0, r.stderr


def test_bad_filter_r_is_one_sentence():
    r = CliRunner().invoke(main, ["plan", "--board", "stm32f746", "--model", "digits-cnn", "--filter-r", "often"])
    assert r.exit_code == 2 and "neither a patch side" in r.stderr and "Traceback" not in r.output


def test_update_layers_trains_the_named_layers_with_a_frozen_path():
    """`--update layers:A,B`: those weighted layers wholly, the ones between frozen on the gradient path (where
    `--path-filter-r` has something to filter); an unknown name is one sentence naming the choices."""
    from tinygen.errors import TinygenError
    from tinygen.ir.scheme import parse_update, with_path_filter

    model = get_model("digits-cnn", classes=5)
    scheme = parse_update("layers:conv1,fc", model, 2)
    assert set(scheme.layers) == {"conv1", "fc"} and scheme.filter_r("conv1") == 2
    assert all(u.bias and u.channels for u in scheme.layers.values())
    assert with_path_filter(scheme, model, 2).path_filtered() == ["conv2", "dw3", "pw4"]
    with pytest.raises(TinygenError, match=r"nope is not one; they are conv1, conv2, dw3, pw4, fc"):
        parse_update("layers:conv1,nope", model)
