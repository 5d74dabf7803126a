"""The learning-rate guard (docs/numerics.md §6.1): its counting rules in the reference, and a diverging
learning rate that the guard rescues with the host C equal to the reference bit for bit (every loss, every
halving step, every trained parameter) and the firmware in QEMU reporting the same halvings."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from tinygen.cli import main
from tinygen.codegen.project import read_manifest
from tinygen.errors import MismatchError, TinygenError
from tinygen.frontends.inputs import training_samples
from tinygen.ir.scheme import LR_GUARD_MAX_HALVINGS, LR_GUARD_STEPS, TrainConfig, parse_update
from tinygen.reference.training import LrGuard, Trainer
from tinygen.verify.check import load_trainer
from tinygen.verify.compare import TrainingExpectation, compare_training
from tinygen.verify.runner import RunResult, parse_output
from tinygen.verify.sim import simulate
from tinygen.zoo.catalog import get_model

STEPS = 40
DIVERGING = ["--model", "digits-cnn", "--classes", "5", "--update", "last-2", "--lr", "5"]


def _guard(steps: int) -> LrGuard:
    return LrGuard(steps, -128, 127, pinned_min=6, loss_ceiling=1000)


def _feed(guard: LrGuard, saturated: list[bool]) -> LrGuard:
    for step, s in enumerate(saturated):
        guard.observe(s, step)
    return guard


def test_a_run_of_saturated_steps_halves_and_restarts():
    T, F = True, False
    g = _feed(_guard(3), [T, T, F, T, T, T, T, T, T, T, F, T])
    assert g.halved_at == [5, 8] and g.halvings == 2 and g.run == 1  # the break at step 2 restarted the count


def test_halvings_stop_at_the_cap_and_zero_steps_is_off():
    g = _feed(_guard(2), [True] * 40)
    assert g.halvings == LR_GUARD_MAX_HALVINGS and g.halved_at == list(range(1, 2 * LR_GUARD_MAX_HALVINGS, 2))
    assert _feed(_guard(0), [True] * 40).halved_at == []


def test_a_step_is_saturated_by_most_outputs_pinned_or_the_loss_at_its_ceiling():
    g = _guard(1)
    five = np.array([-128, 127, -128, 127, -128, 0, 1, 2, 3, 4])
    assert not g.saturated(five, 999)
    assert g.saturated(np.where(np.arange(10) == 5, 127, five), 0)  # six of ten at the clamp
    assert g.saturated(five, 1000)
    assert not LrGuard(1, -128, 127, 6, None).saturated(five, 10**9)  # no ceiling (MSE): outputs only


def test_the_ceiling_is_the_loss_of_a_wrong_class_pinned_high():
    model = get_model("digits-cnn", classes=5)
    tr = Trainer(model, parse_update("last-1", model), TrainConfig())
    assert tr.config.lr_guard == LR_GUARD_STEPS and tr.guard.pinned_min == 3
    assert tr.guard.loss_ceiling == tr.loss(np.array([-128, 127, -128, -128, -128]), 0)[0]
    assert abs(tr.guard.loss_ceiling / 65536 - 30 * np.log(2)) < 0.01  # E >= 1 bounds it at ln(2^30)
    assert Trainer(model, parse_update("last-1", model), TrainConfig(loss="mse")).guard.loss_ceiling is None


def test_the_step_completing_the_run_already_updates_at_the_halved_rate():
    model = get_model("digits-cnn", classes=5)
    x, y, _ = training_samples(model, 1)
    guarded = Trainer(model, parse_update("last-2", model), TrainConfig(lr=0.5, lr_guard=1))
    guarded.guard.pinned_min = 0  # every step counts as saturated
    halved = Trainer(model, parse_update("last-2", model), TrainConfig(lr=0.25, lr_guard=0))
    guarded.step(x[0], y[0])
    halved.step(x[0], y[0])
    assert guarded.guard.halved_at == [0]
    assert all(np.array_equal(guarded.master[n], halved.master[n]) for n in halved.master)
    assert all(np.array_equal(guarded.bias[n], halved.bias[n]) for n in halved.bias)


def test_config_records_the_guard():
    cfg = TrainConfig(lr_guard=5)
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    legacy = {k: v for k, v in cfg.to_json().items() if k != "lr_guard"}
    assert TrainConfig.from_json(legacy).lr_guard == 0  # recorded before the guard: it had none
    with pytest.raises(TinygenError, match="learning-rate guard"):
        TrainConfig(lr_guard=-1).check()


def test_the_compare_names_a_halving_the_reference_did_not_make():
    expect = TrainingExpectation([7, 7, 7, 7], lr_halvings=[2])
    compare_training(RunResult("host-asan", losses=[7, 7, 7, 7], lr_halvings=[2]), expect)
    with pytest.raises(MismatchError, match=r"halved the rate at steps \[1\] .* at \[2\] .* step 1"):
        compare_training(RunResult("host-asan", losses=[7, 7, 7, 7], lr_halvings=[1]), expect)
    with pytest.raises(MismatchError, match=r"at steps \[\] in the generated C, at \[2\]"):
        compare_training(RunResult("host-asan", losses=[7, 7, 7, 7]), expect)


def test_firmware_halving_lines_parse():
    run = parse_output("TG step 8 sample=8 label=1 loss=5 instr=9\n"
                       "TG lr halved step=8 halvings=1 lr=5/2^1 (saturated for 8 steps)\n")
    assert run.lr_halvings == [8] and len(run.steps) == 1


def test_a_diverging_learning_rate_recovers_bit_exact(tmp_path):
    """lr 5 on a fresh 5-way head saturates it from step 1 (the loss at its ceiling); the guard halves at step 8,
    the loss falls back, and `verify` holds the host C to the reference: every loss, the halving, every parameter."""
    build = tmp_path / "b"
    runner = CliRunner()
    r = runner.invoke(main, ["build", "--board", "stm32f746", *DIVERGING, "--lr-guard", "8", "--out", str(build)])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(main, ["verify", str(build), "--steps", str(STEPS)])
    assert r.exit_code == 0, r.stderr
    assert f"training bit-exact over {STEPS} steps" in r.stdout
    assert "the learning-rate guard halved the rate at steps 8, as the reference's" in r.stdout

    model, trainer = load_trainer(build, read_manifest(build))
    x, y, _ = training_samples(model, STEPS)
    losses = np.array([trainer.step(x[s], y[s]) for s in range(STEPS)])  # what the C was held to
    ceiling = trainer.guard.loss_ceiling
    assert trainer.guard.halved_at == [8] and np.all(losses[1:8] == ceiling)
    assert losses[-20:].mean() < ceiling / 4
    unguarded = Trainer(model, trainer.scheme, TrainConfig(lr=5.0, lr_guard=0))
    assert losses[-20:].mean() < np.mean([unguarded.step(x[s], y[s]) for s in range(STEPS)][-20:])


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                    reason="the firmware needs arm-none-eabi-gcc and qemu-system-arm")
def test_the_firmware_prints_and_matches_the_halvings(tmp_path):
    build = tmp_path / "b"
    r = CliRunner().invoke(main, ["build", "--board", "stm32f746", *DIVERGING, "--samples", "8", "--steps", "24",
                                  "--out", str(build)])
    assert r.exit_code == 0, r.stderr
    sim = simulate(build)  # raises MismatchError unless the halving steps equal the reference's
    assert sim.run.lr_halvings, "lr 5 must make the guard halve within 24 steps"
    line = next(ln for ln in sim.run.lines if ln.startswith("TG lr halved"))
    assert line == f"TG lr halved step={sim.run.lr_halvings[0]} halvings=1 lr=5/2^1 (saturated for 8 steps)"
