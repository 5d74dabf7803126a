"""The one runner's result shape and the one compare's sentences, without a compiler."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from tinygen.errors import MismatchError, TinygenError
from tinygen.verify.compare import TrainingExpectation, compare_forward, compare_training
from tinygen.verify.runner import Program, RunResult, compile_program, firmware_result, kernel_impl, parse_output


def test_compare_forward_names_the_first_difference():
    expected = np.arange(12, dtype=np.int8).reshape(2, 2, 3)
    got = expected.copy()
    got[1, 1, 0] = 100
    compare_forward(RunResult("host-asan", outputs=[r.ravel() for r in expected]), expected)
    with pytest.raises(MismatchError, match=r"sample 1: 1 of 6 output values differ from the reference; first at "
                                            r"element \(1, 0\): the generated C 100 vs reference 9"):
        compare_forward(RunResult("host-asan", outputs=[r.ravel() for r in got]), expected)
    with pytest.raises(MismatchError, match="reported 1 samples; the reference has 2"):
        compare_forward(RunResult("host-asan", outputs=[got[0].ravel()]), expected)


def test_firmware_results_compare_by_crc_where_no_outputs_were_printed():
    want = np.array([[1, -2, 3], [4, 5, 6]], dtype=np.int8)
    crc0, crc1 = (zlib.crc32(r.tobytes()) for r in want)
    text = (f"TG sample 0 label=1 crc=0x{crc0:08x} out=1,-2,3 instr=10 ok=1\n"
            f"TG sample 1 label=1 crc=0x{crc1 ^ 1:08x} instr=11 ok=1\n"
            "TG step 0 sample=1 label=1 loss=-5 instr=99\nTG params checksum=0x0000002a\nTG done\n")
    r = firmware_result(parse_output(text), "qemu", 0, 0.1)
    assert r.outputs[1] is None and r.counts == [10, 11] and r.step_samples == [1] and r.checksum == 42
    with pytest.raises(MismatchError, match="sample 1: the firmware's output checksum"):
        compare_forward(r, want, who="the firmware")
    compare_training(r, TrainingExpectation([-5], 42), who="the firmware")
    with pytest.raises(MismatchError, match="training step 0: the firmware's loss -5 differs from the reference's -6"):
        compare_training(r, TrainingExpectation([-6], 42), who="the firmware")
    with pytest.raises(MismatchError, match="parameter checksum 0x0000002a differs from the reference's 0x0000002b"):
        compare_training(r, TrainingExpectation([-5], 43), who="the firmware")


def test_unknown_kernel_implementation_and_target_are_refused(tmp_path):
    assert kernel_impl("portable").name == "portable"
    with pytest.raises(TinygenError, match="unknown kernel implementation 'nope'"):
        compile_program(Program(tmp_path, tmp_path, kernels="nope"))
    with pytest.raises(TinygenError, match="not a host target"):
        compile_program(Program(tmp_path, tmp_path), "qemu")


def test_progress_counts_samples_and_steps_as_lines_arrive():
    from tinygen.verify.runner import Progress

    shown = []
    p = Progress(shown.append, every=0.0, prefix="sim: ")
    p.begin("qemu", 40)
    for line in ("TG sample 0 label=1 crc=0x1 instr=5 ok=1\n", "TG step 0 sample=0 label=1 loss=2.0 instr=9\n",
                 "TG step 1 sample=1 label=2 loss=1.9 instr=9\n"):
        p(line)
    assert shown[-1].startswith("sim: qemu: 1 samples, 2 of 40 training steps (") and shown[-1].endswith("\n")
    p.finish()  # plain lines: nothing to close
    assert len(shown) == 3
    quiet = []
    q = Progress(quiet.append, every=3600.0)
    q("TG step 0 sample=0 label=1 loss=2.0 instr=9\n")
    q.step(4)  # steps done elsewhere (the reference's replay)
    assert quiet == [] and q.steps == 5


def test_progress_on_a_terminal_is_one_bar_redrawn_in_place():
    from tinygen.verify.runner import Progress

    shown = []
    p = Progress(shown.append, tty=True, every=0.0, prefix="verify: ")
    p.begin("reference", 10)
    for _ in range(10):
        p.step()
    p.finish()
    assert all(s.startswith("\rverify: reference: [") and "\n" not in s for s in shown[:-1]) and shown[-1] == "\n"
    assert "[" + "#" * 30 + "] 10/10 training steps" in shown[-2] and "[#########---" in shown[2]


def test_loss_trend_names_a_stall_and_the_curve_is_svg():
    from tinygen.report import STALL_MIN_STEPS, loss_curve_svg, loss_trend

    falling = [65536 * 2 - 1000 * i for i in range(40)]
    assert "stalled" not in loss_trend(falling)
    stuck = falling[:30] + [0] * max(STALL_MIN_STEPS, 7)
    line = loss_trend(stuck)
    assert "stalled" in line and "since step 30" in line and "lower --lr" in line
    assert "stalled" not in loss_trend([0] * 10)  # too short to call
    svg = loss_curve_svg(stuck, "a <title>")
    assert svg.startswith("<svg") and "&lt;title&gt;" in svg and svg.count("<polyline") == 1
