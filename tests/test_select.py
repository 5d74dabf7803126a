"""Fisher-potential selection (`--update fisher`): importance from the bit-exact reference on real
samples, a greedy choice that stays under the SRAM budget, and a build that trains bit-exact."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from tinygen.cli import main
from tinygen.frontends.inputs import training_samples
from tinygen.ir.scheme import TrainConfig
from tinygen.paths import shared_dir
from tinygen.planning.memory import training_sram
from tinygen.training.selection import fisher_potential, gradient_potential, select
from tinygen.zoo.catalog import get_model


def test_importance_and_selection_under_budgets():
    model = get_model("mnist-cnn")
    x, y, _ = training_samples(model, 4)
    imp = fisher_potential(model, x, y)
    assert set(imp) >= {"fc", "conv6", "pw4", "dw3", "conv2"}
    assert all(np.all(v >= 0) and v.size for v in imp.values())
    again = fisher_potential(model, x, y)
    assert all(np.array_equal(imp[k], again[k]) for k in imp)
    sizes = []
    for kb in (24, 40, 80):
        trainer, est = select(model, imp, kb * 1024, TrainConfig())
        assert est.total <= kb * 1024
        assert training_sram(trainer.model, trainer).total == est.total
        assert "fc" in trainer.scheme.layers
        sizes.append(sum(len(u.channels) for u in trainer.scheme.layers.values()))
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]  # more budget, more trained channels


def test_fisher_build_trains_bit_exact(tmp_path):
    r = CliRunner().invoke(main, ["build", "--board", "nrf52840", "--model", "mnist-cnn", "--update", "fisher",
                                  "--budget-kb", "48", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.stderr
    assert "fisher" in r.stdout
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "b"), "--steps", "5"])
    assert r.exit_code == 0, r.stderr


BOARD_BUDGETS_KB = {"stm32f746": 256, "nrf52840": 256, "stm32h743": 1024}


@pytest.mark.parametrize("board", list(BOARD_BUDGETS_KB))
@pytest.mark.parametrize("name", ["digits-cnn", "mnist-cnn", "mbv2-w0.35-r32-mnist"])
def test_auto_selection_fits_every_board(name, board):
    """`--update auto` (Fisher selection) under 256 KB on the F746 and nRF52840 and 1 MB on the H743:
    the plan fits the board, and the budget is used (not just the classifier)."""
    from tinygen.planning.memory import check_fits, sram_budget
    from tinygen.targets.boards import load_board

    b = load_board(board)
    budget = sram_budget(b, BOARD_BUDGETS_KB[board])
    model = get_model(name, classes=5)
    x, y, _ = training_samples(model, 4)
    trainer, est = select(model, fisher_potential(model, x, y), budget, TrainConfig())
    assert est.total <= budget
    check_fits(trainer.model, trainer, b, budget)  # raises if the board cannot hold it
    assert sum(1 for u in trainer.scheme.layers.values() if u.channels) >= 2


@pytest.mark.skipif(shared_dir() is None, reason="../shared (the MIT models) is not present")
def test_auto_selection_fits_an_mit_model_at_128():
    from tinygen.planning.memory import check_fits, sram_budget
    from tinygen.targets.boards import load_board

    b = load_board("stm32f746")
    budget = sram_budget(b, 256)
    model = get_model("mcunet-5fps", classes=10)
    x, y, _ = training_samples(model, 4)
    for importance in (fisher_potential(model, x, y), gradient_potential(model, x, y)):
        trainer, est = select(model, importance, budget, TrainConfig())
        assert est.total <= budget
        check_fits(trainer.model, trainer, b, budget)
        assert sum(1 for u in trainer.scheme.layers.values() if u.channels) >= 2
