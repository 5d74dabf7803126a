"""`tinygen sim --profile` (issue 11): where the firmware's instructions go, per layer and kind of work.

The profile image is the QEMU image with GCC's function instrumentation on the generated model; its run
is held to the reference like `tinygen sim`, and its per-function spans must add up to what the image
itself counts per training step and inference.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from tinygen.cli import main
from tinygen.verify.profile import KIND_ORDER, classify, run_profile

needs_qemu = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                                reason="arm-none-eabi-gcc or qemu-system-arm is not on PATH "
                                       "(apt-get install gcc-arm-none-eabi qemu-system-arm)")
TICK = 40  # QEMU_INSTR_PER_TICK: a span's resolution


def test_classify_names_layer_and_kind():
    layers = ["stem", "b1", "b1_dw", "fc"]
    assert classify("tg_l1_b1_convolve_1x1_s8", layers) == ("b1", "convolve_1x1_s8", "forward")
    assert classify("tg_l2_b1_dw_backward_input_s16", layers) == ("b1_dw", "backward_input_s16", "input gradient")
    assert classify("tg_l2_b1_dw_grad_output_s16", layers) == ("b1_dw", "grad_output_s16", "output gradient")
    assert classify("tg_l3_fc_update_s8", layers) == ("fc", "update_s8", "weight gradient + update")
    assert classify("tg_l1_b1_save_input_s8", layers) == ("b1", "save_input_s8", "forward")
    assert classify("tg_loss_softmax_ce_s8", layers) == ("", "tg_loss_softmax_ce_s8", "loss")
    assert classify("tg_forward", layers) == ("", "tg_forward", "glue")
    # no layer 9: not a layer's
    assert classify("tg_l9_nothing_update_s8", layers) == ("", "tg_l9_nothing_update_s8", "glue")


@pytest.fixture(scope="module")
def training_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("prof") / "d"
    r = CliRunner().invoke(main, ["build", "--board", "stm32f746", "--model", "digits-cnn", "--classes", "5",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


@needs_qemu
def test_profile_spans_add_up_to_the_counted_runs(training_build):
    prof = run_profile(training_build)
    run = prof.sim.run
    assert prof.dropped == 0
    assert prof.runs == {"inference": len(run.samples), "training step": len(run.steps)}
    for root, counted in (("inference", run.samples), ("training step", run.steps)):
        rows = [r for r in prof.rows if r.root == root]
        spans = sum(r.calls for r in rows)
        total = sum(r.count for r in rows)
        # every span is read to one tick; the image's own count of the runs covers the same instructions
        assert abs(total - sum(s["count"] for s in counted)) <= TICK * (spans + len(counted)), root
    manifest = json.loads((training_build / "tinygen.json").read_text())
    trained = {rec.split(":", 1)[1] for rec in manifest["train"]["records"] if rec.startswith("dw:")}
    forward = {r.layer for r in prof.rows if r.root == "inference" and r.kind == "forward"}
    assert {"conv1", "conv2", "fc"} <= forward
    updated = {r.layer for r in prof.rows if r.root == "training step" and r.kind == "weight gradient + update"}
    assert trained and updated == trained
    # MAC/instr of the forward kernels: every weighted layer's MACs land on exactly one kernel (fused ones too)
    from tinygen.frontends import modelfile
    from tinygen.ir.model import layer_macs

    model = modelfile.load(training_build / manifest["model_file"])
    kernels = [r for r in prof.rows if r.root == "inference" and r.kind == "forward"]
    assert sum(r.macs for r in kernels) == sum(layer_macs(lay) for lay in model.layers)
    kinds = prof.per_run("training step")
    assert list(kinds) == [k for k in KIND_ORDER if k in kinds] and kinds["forward"] > 0 and kinds["input gradient"] > 0


@needs_qemu
def test_cli_sim_profile_table_and_json(training_build):
    r = CliRunner().invoke(main, ["sim", str(training_build), "--profile"])
    assert r.exit_code == 0, r.output
    assert "training step:" in r.output and "in the plain image" in r.output and "input gradient" in r.output
    r = CliRunner().invoke(main, ["sim", str(training_build), "--profile", "--json"])
    assert r.exit_code == 0, r.output
    prof = json.loads(r.output.strip().splitlines()[-1])["profile"]
    assert prof["runs"]["training step"] > 0 and prof["by_kind"]["training step"]["forward"] > 0
    r = CliRunner().invoke(main, ["sim", str(training_build), "--profile", "--emulator", "renode"])
    assert r.exit_code != 0 and "--profile runs the QEMU image" in r.output
