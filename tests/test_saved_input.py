"""Saved inputs in compact form (tinygen/saved_input.py): only the trained channels, and for 1x1
convolutions with a gradient filter only the r x r patch sums. The C that keeps and reads them trains
bit-for-bit like the reference, and the plan shrinks by what the form saves."""

from __future__ import annotations

import numpy as np
import pytest
from train_harness import train_c_vs_reference

from tinygen.codegen.training import generate_training
from tinygen.ir.builder import ModelBuilder
from tinygen.ir.scheme import LayerUpdate, Scheme, TrainConfig
from tinygen.planning.saved_input import saved_input
from tinygen.planning.schedule import plan_training
from tinygen.reference.training import Trainer


def _model(stride=1):
    """3x3 conv -> 1x1 conv (stride `stride`) -> 3x3 conv -> GAP -> FC, 12x12x4 input."""
    rng = np.random.default_rng(7)

    def w(shape, s):
        return (rng.integers(-127, 128, size=shape).astype(np.int8),
                rng.integers(-2000, 2000, shape[0]).astype(np.int32),
                (rng.random(shape[0]) * s + s / 4).astype(np.float32))

    b = ModelBuilder("saved", (12, 12, 4), 0.02, -3)
    x = b.conv2d(b.input, *w((16, 3, 3, 4), 0.02), 0.05, -10, act="relu", name="c0")
    x = b.conv2d(x, *w((16, 1, 1, 16), 0.02), 0.05, 4, stride=stride, padding="valid", act="relu", name="pw")
    x = b.conv2d(x, *w((8, 3, 3, 16), 0.02), 0.05, 0, act="relu6", name="c2")
    x = b.global_avgpool(x, name="gap")
    b.fully_connected(x, *w((5, 8), 0.03), 0.15, 0, name="head")
    return b.build()


def _scheme(r, pw_channels, c2_channels, head_channels=None):
    return Scheme({"pw": LayerUpdate(pw_channels, True, r), "c2": LayerUpdate(c2_channels, True, r),
                   "head": LayerUpdate(list(range(8)) if head_channels is None else head_channels, True, r)})


def test_the_smallest_form_is_chosen():
    m = _model()
    t = m.tensors()
    pw, c2, head = m.layer("pw"), m.layer("c2"), m.layer("head")
    assert saved_input(pw, 16, 1, t).mode == "tensor"  # all channels, r = 1: the activation itself
    assert saved_input(pw, 4, 1, t).mode == "channels" and saved_input(pw, 4, 1, t).nbytes == 12 * 12 * 4
    p = saved_input(pw, 16, 2, t)  # int16 sums over 2x2 patches: half the tensor
    assert (p.mode, p.h, p.w, p.nbytes) == ("patches", 6, 6, 6 * 6 * 16 * 2)
    assert saved_input(pw, 3, 4, t).nbytes == 3 * 3 * 3 * 2
    assert saved_input(c2, 16, 4, t).mode == "tensor"  # a 3x3 conv reads shifted windows: no patch sums
    assert saved_input(c2, 5, 4, t).mode == "channels"
    assert saved_input(head, 3, 1, t).mode == "channels" and saved_input(head, 3, 1, t).nbytes == 3


@pytest.mark.parametrize("r, pw_ch, c2_ch, stride, head_ch", [
    (2, [1, 5, 6, 11], [0, 3, 9], 1, [2, 5, 7]),  # patches (non-prefix channels), channels, FC channels
    (4, list(range(16)), [2, 4], 1, None),  # patches of every channel, r = 4 (edge patches partial: 12 = 3 * 4)
    (1, [0, 15], list(range(16)), 2, None),  # strided 1x1 at r = 1: patch "sums" of one pixel, int16
    (2, [3], [1], 2, None),  # strided 1x1 at r = 2, a 5x5 output grid: partial edge patches
])
def test_compact_saved_inputs_train_bit_exact(r, pw_ch, c2_ch, stride, head_ch, tmp_path):
    m = _model(stride)
    scheme = _scheme(r, pw_ch, c2_ch, head_ch)
    trainer = Trainer(m, scheme, TrainConfig(lr=0.05, momentum=0.5))
    modes = {n: s.mode for n, s in plan_training(m, trainer).saved.items()}
    assert "patches" in modes.values() or "channels" in modes.values()
    generate_training(m, trainer, tmp_path / "src")
    src = (tmp_path / "src" / "tg_model.c").read_text()
    for name, mode in modes.items():
        assert (f"_{name}_save_input_s8(" in src) == (mode != "tensor")
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, size=(6, 12, 12, 4)).astype(np.int8)
    y = rng.integers(0, 5, size=6)
    summary = train_c_vs_reference(m, scheme, TrainConfig(lr=0.05, momentum=0.5), x, y, 6)
    assert summary["steps"] == 6


def test_compact_form_shrinks_the_plan():
    """Training pw at r = 4 on 4 of 16 channels: the 12x12x16 input (2,304 B) no longer lives
    through the step; a 3x3x4 int16 copy (72 B) does."""
    m = _model()
    trainer = Trainer(m, _scheme(4, [0, 1, 2, 3], []), TrainConfig())
    plan = plan_training(m, trainer)
    assert plan.saved["pw"].nbytes == 72 and plan.buffers["saved_l1"].size == 72
    whole = Trainer(m, _scheme(1, list(range(16)), []), TrainConfig())
    assert plan_training(m, whole).saved["pw"].mode == "tensor"
    assert plan.arena_size < plan_training(m, whole).arena_size


def test_inplace_depthwise_with_a_trained_prefix_keeps_a_copy(tmp_path):
    """A depthwise conv training its first channels: its input is copied before the conv overwrites it in
    place, and the in-place kernel reads the trained filters from SRAM and the rest from flash."""
    rng = np.random.default_rng(11)
    b = ModelBuilder("dwp", (10, 10, 3), 0.02, 0)
    x = b.conv2d(b.input, rng.integers(-127, 128, (12, 3, 3, 3)).astype(np.int8), np.zeros(12, np.int32),
                 np.full(12, 0.02, np.float32), 0.05, -20, act="relu", name="c0")
    x = b.depthwise_conv2d(x, rng.integers(-127, 128, (12, 3, 3, 1)).astype(np.int8),
                           rng.integers(-500, 500, 12).astype(np.int32), np.full(12, 0.03, np.float32), 0.05, 3,
                           act="relu6", name="dw")
    x = b.global_avgpool(x, name="gap")
    b.fully_connected(x, rng.integers(-127, 128, (4, 12)).astype(np.int8), np.zeros(4, np.int32),
                      np.full(4, 0.02, np.float32), 0.15, 0, name="head")
    m = b.build()
    scheme = Scheme({"dw": LayerUpdate([0, 1, 2, 3, 4], True, 1), "head": LayerUpdate(list(range(12)), True, 1)})
    trainer = Trainer(m, scheme, TrainConfig(lr=0.05))
    plan = plan_training(m, trainer)
    assert plan.saved["dw"].mode == "channels"
    assert any(f.kind == "inplace_dw" for f in plan.fusions.values())
    x_in = rng.integers(-128, 128, size=(5, 10, 10, 3)).astype(np.int8)
    train_c_vs_reference(m, scheme, TrainConfig(lr=0.05), x_in, rng.integers(0, 4, 5), 5)
