"""The patch-based initial stage (planning/patches.py) computes the whole-tensor function: the reference run on
each patch's program over its input window equals the window of the whole reference's stage output, for every
zoo model and stage end (and odd splits); the generated C of every zoo model with a patch stage equals the
reference (host, both kernel sets for the small models; tests/test_firmware_models.py runs one MIT model's
training firmware with a stage under QEMU); a stage that trains, or that a later layer reads into, is refused
in one sentence."""

from __future__ import annotations

import json

import numpy as np
import pytest
from c_harness import run_generated_forward
from click.testing import CliRunner

from tinygen.cli import main
from tinygen.errors import ModelError, TinygenError
from tinygen.planning.memory import choose_patch_stage, inference_sram
from tinygen.planning.patches import PatchSpec, plan_patch_stage, stage_ends
from tinygen.reference.forward import run_model
from tinygen.zoo.catalog import get_model, list_models

ZOO = [e.name for e in list_models()]
SMALL = ("digits-cnn", "mnist-cnn", "mbv2-w0.35-r32")


def _model(name):
    try:
        return get_model(name)
    except ModelError as exc:  # only the MIT models can be absent (no ../shared beside the checkout)
        pytest.skip(f"{name} unavailable: {exc}")


def _inputs(model, n=2, seed=0):
    return np.random.default_rng(seed).integers(-128, 128, (n, *model.input.shape)).astype(np.int8)


@pytest.mark.parametrize("name", ZOO)
def test_every_patch_computes_its_window_of_the_whole_reference(name):
    model = _model(name)
    ends = stage_ends(model)
    assert ends, f"{name}: no layer can end a patch stage"
    if name not in SMALL:
        ends = ends[-1:]  # the deepest stage (the largest halos) of the 128x128 models
    x = _inputs(model, 1)[0]
    whole = run_model(model, x, keep=True)
    for last in ends:
        out = model.layers[last].output
        for n in sorted({2, 3, min(out.shape[:2])}):
            if n > min(out.shape[:2]):
                continue
            stage = plan_patch_stage(model, PatchSpec(model.layers[last].name, n))
            covered = np.zeros(out.shape[:2], int)
            for inbox, outbox, c in stage.windows:
                got = run_model(stage.classes[c].model, x[inbox[0]:inbox[1], inbox[2]:inbox[3]])
                want = whole[out.name][outbox[0]:outbox[1], outbox[2]:outbox[3]]
                assert np.array_equal(got, want), f"{name} to {out.name}, {n}x{n}: patch {outbox} differs"
                covered[outbox[0]:outbox[1], outbox[2]:outbox[3]] += 1
            assert (covered == 1).all(), "the output windows tile the stage output exactly once"
            assert stage.macs >= stage.whole_macs


@pytest.mark.parametrize("name", ZOO)
def test_generated_c_with_a_patch_stage_equals_the_reference(name, tmp_path):
    """The planner's 2x2 stage for inference (where none lowers the peak, the deepest); the MIT models' inference
    peak falls below 0.6 of the whole-tensor one with it."""
    model = _model(name)
    whole = inference_sram(model).arena
    model.patch_stage = choose_patch_stage(model, None, (2,))
    if name in ("mbv2-w0.35", "proxyless-w0.3", "mcunet-5fps"):
        assert model.patch_stage is not None and inference_sram(model).arena < 0.6 * whole
    if model.patch_stage is None:
        model.patch_stage = (model.layers[stage_ends(model)[-1]].name, 2)
    x = _inputs(model)
    want = np.stack([run_model(model, xi) for xi in x])
    for kernels in ("portable", "dsp") if name in ("digits-cnn", "mnist-cnn") else ("portable",):
        got = run_generated_forward(model, x, tmp_path / kernels, kernels)
        assert np.array_equal(got, want), f"{name} with patch stage {model.patch_stage} ({kernels})"


def test_odd_splits_and_the_three_by_three_classes(tmp_path):
    """Where the halo is smaller than a patch, the patches fall into first, middle and last rows and columns."""
    model = _model("mbv2-w0.35-r32")
    end = model.layers[stage_ends(model)[1]].name
    stage = plan_patch_stage(model, PatchSpec(end, 4))
    assert len(stage.classes) == 9 and len(stage.windows) == 16
    model.patch_stage = (model.layers[stage_ends(model)[3]].name, 3)
    x = _inputs(model, 3, seed=1)
    got = run_generated_forward(model, x, tmp_path, "dsp")
    assert np.array_equal(got, np.stack([run_model(model, xi) for xi in x]))


def _cli(*args):
    return CliRunner().invoke(main, list(args))


def test_refusals_are_one_sentence(tmp_path):
    base = ["plan", "--board", "stm32f746", "--model", "mnist-cnn"]
    cases = [
        (["--no-train", "--patches", "2", "--patch-stage", "nope"], "is not a layer of the model"),
        (["--no-train", "--patch-stage", "conv1"], "needs --patches"),
        (["--no-train", "--patches", "two"], "use a number of patches a side"),
        (["--no-train", "--patches", "auto", "--patch-stage", "conv1"], "goes with --patches N"),
        (["--update", "full", "--patches", "2", "--patch-stage", "conv1"], "cannot run patch by patch"),
    ]
    for extra, words in cases:
        r = _cli(*base, *extra)
        assert r.exit_code == 2, (extra, r.output)
        assert words in r.stderr and "Traceback" not in r.output, (extra, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_stage_read_into_by_a_later_layer_is_refused():
    model = _model("mnist-cnn")
    inside = [i for i in range(len(model.layers) - 1) if i not in stage_ends(model)]
    assert inside, "mnist-cnn has a residual block the stage cannot end inside"
    with pytest.raises(TinygenError, match="never holds whole|cannot run patch by patch"):
        plan_patch_stage(model, PatchSpec(model.layers[inside[0]].name, 2))


def test_plan_shows_the_stage_and_its_recomputed_macs():
    r = _cli("plan", "--board", "stm32f746", "--model", "mbv2-w0.35-r32", "--no-train", "--patches", "2")
    assert r.exit_code == 0, r.output
    assert "patch stage: layers 0.." in r.stdout and "recomputed halos" in r.stdout
    assert "(2x2)" in r.stdout


def test_auto_takes_the_fewest_recomputed_macs_that_fit_the_budget():
    """--patches auto: under a budget the whole-tensor plan misses, the stage that fits with the fewest MACs
    recomputed; with room to spare, nothing recomputed."""
    base = ["plan", "--board", "stm32f746", "--model", "mbv2-w0.5-r64", "--no-train", "--json"]
    tight = json.loads(_cli(*base, "--patches", "auto", "--budget-kb", "30").stdout)
    assert tight["fits"] and tight["peak_sram_bytes"] <= 30 * 1024
    assert tight["patch_stage"]["macs"] > tight["patch_stage"]["whole_macs"]
    roomy = json.loads(_cli(*base, "--patches", "auto").stdout)
    assert roomy["patch_stage"] is None or roomy["patch_stage"]["macs"] == roomy["patch_stage"]["whole_macs"]
    least = json.loads(_cli(*base, "--patches", "2").stdout)
    assert least["peak_sram_bytes"] <= tight["peak_sram_bytes"]
