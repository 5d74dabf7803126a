"""Acceptance: for every zoo model (the MIT models at 128x128 included),
`tinygen build --board stm32f746 --model M --filter-r auto --out D && tinygen verify D` exits 0 (issue 16:
each layer's r chosen from its map and the measured gradient cosines; r = 1 builds are in every other test).
Models of 32x32 and more select with `--update fisher`: `auto`'s probe trains candidates for hundreds of
steps, minutes a model (tests/test_select.py runs `auto` on mbv2-w0.35-r32-mnist for every board,
tests/test_choose.py its parts, `tinygen bench transfer --task mnist128` the MIT models at 128x128); the two
small CNNs take the default."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tinygen.cli import main
from tinygen.errors import ModelError
from tinygen.zoo.catalog import get_model, list_models

ZOO = [e.name for e in list_models()]


@pytest.mark.parametrize("name", ZOO)
def test_build_and_verify_every_zoo_model(name, tmp_path):
    try:
        model = get_model(name)
    except ModelError as exc:  # only the MIT models can be absent (no ../shared beside the checkout)
        pytest.skip(f"{name} unavailable: {exc}")
    runner = CliRunner()
    update = ["--update", "fisher"] if model.input.shape[0] >= 32 else []
    r = runner.invoke(main, ["build", "--board", "stm32f746", "--model", name, *update, "--filter-r", "auto",
                             "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(main, ["verify", str(tmp_path / "b"), "--inputs", "4"])
    assert r.exit_code == 0, r.stderr
    assert "bit-exact" in r.stdout


def test_zoo_has_the_required_models():
    for required in ("digits-cnn", "mnist-cnn", "mbv2-w0.35", "proxyless-w0.3", "mcunet-5fps"):
        assert required in ZOO
    assert any(n.startswith("mbv2-w") and n.endswith("-mnist") for n in ZOO)
