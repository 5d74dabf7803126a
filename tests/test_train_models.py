"""Acceptance: host C == reference, bit for bit, for >= 20 training steps on real data — the digits
CNN with every layer trained, and MbV2-w0.35 (imported) with each published mbv2 scheme."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from train_harness import train_c_vs_reference

from tinygen.cli import main
from tinygen.frontends.inputs import training_samples
from tinygen.ir.scheme import TrainConfig, load_scheme
from tinygen.paths import shared_dir
from tinygen.zoo.catalog import get_model

STEPS = 20


def test_digits_cnn_all_layers_trained_via_cli(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["build", "--board", "stm32f746", "--model", "digits-cnn", "--update", "full",
                             "--lr", "0.02", "--momentum", "0.5", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(main, ["verify", str(tmp_path / "b"), "--steps", str(STEPS)])
    assert r.exit_code == 0, r.stderr
    assert f"training bit-exact over {STEPS} steps" in r.stdout


def _mbv2_schemes():
    root = shared_dir()
    if root is None:
        return []
    return list(json.loads((root / "models/mit-tiny-training/sparse_schemes.json").read_text())["mbv2"])


@pytest.fixture(scope="module")
def mbv2():
    root = shared_dir()
    if root is None:
        pytest.skip("../shared is not present: the MIT models are not available")
    return get_model("mbv2-w0.35", classes=10)


@pytest.mark.parametrize("budget", _mbv2_schemes() or ["(../shared absent)"])
def test_mbv2_published_schemes_train_bit_exact(mbv2, budget):
    path = shared_dir() / "models/mit-tiny-training/sparse_schemes.json"
    scheme = load_scheme(f"{path}#mbv2/{budget}", mbv2)
    x, y, _ = training_samples(mbv2, STEPS)
    summary = train_c_vs_reference(mbv2, scheme, TrainConfig(lr=0.01), x, y, STEPS)
    assert summary["steps"] == STEPS and summary["gradient_values"] > 10_000


def test_mse_loss_with_accumulation_and_momentum_via_cli(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["build", "--board", "nrf52840", "--model", "digits-cnn", "--loss", "mse", "--accumulate",
                             "3", "--momentum", "0.5", "--lr", "0.002", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(main, ["verify", str(tmp_path / "b"), "--steps", "12"])
    assert r.exit_code == 0, r.stderr
    assert "training bit-exact over 12 steps" in r.stdout and "MSE targets" in r.stdout
