"""The memory planner: `tinygen plan` (table, --json, timeline picture), fit-or-fail, the arena
planner against its lower bound, and no two simultaneously live buffers overlapping."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygen.cli import main
from tinygen.ir.scheme import TrainConfig
from tinygen.planning.arena import Buffer, check_no_overlap, lower_bound, plan_best, plan_greedy_by_size
from tinygen.planning.memory import auto_last_k, sram_budget
from tinygen.planning.schedule import plan_forward, plan_training
from tinygen.targets.boards import load_board
from tinygen.zoo.catalog import get_model, list_models


def test_plan_json_has_the_documented_keys(tmp_path):
    r = CliRunner().invoke(main, ["plan", "--board", "nrf52840", "--model", "mnist-cnn", "--update", "last-3",
                                  "--json", "--svg", str(tmp_path / "t.svg")])
    assert r.exit_code == 0, r.stderr
    p = json.loads(r.stdout)
    for key in ("peak_sram_bytes", "flash_bytes", "fits", "layers", "arena_bytes", "arena_lower_bound_bytes"):
        assert key in p
    assert p["fits"] and p["peak_sram_bytes"] <= 256 * 1024
    trained = [L for L in p["layers"] if L["trained_channels"]]
    assert [L["name"] for L in trained] == ["pw4", "conv6", "fc"]
    assert (tmp_path / "t.svg").read_text().startswith("<svg")


def test_plan_table_and_build_write_the_timeline(tmp_path):
    r = CliRunner().invoke(main, ["plan", "--board", "stm32f746", "--model", "digits-cnn", "--svg",
                                  str(tmp_path / "t.svg")])
    assert r.exit_code == 0, r.stderr
    assert "peak SRAM" in r.stdout and "fits" in r.stdout
    r = CliRunner().invoke(main, ["build", "--board", "stm32f746", "--model", "digits-cnn",
                                  "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "b" / "memory_timeline.svg").is_file()
    assert json.loads((tmp_path / "b" / "plan.json").read_text())["fits"]


@pytest.mark.parametrize("command", ["plan", "build"])
def test_impossible_budget_fails_with_the_numbers(command, tmp_path):
    args = [command, "--board", "stm32f746", "--model", "mbv2-w0.35-r32", "--update", "full", "--budget-kb", "32"]
    if command == "build":
        args += ["--out", str(tmp_path / "b")]
    else:
        args += ["--svg", str(tmp_path / "t.svg")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "needs" in err[0] and "32,768 B are available" in err[0] and "largest part" in err[0]


def test_auto_fails_clearly_when_even_one_layer_cannot_fit(tmp_path):
    r = CliRunner().invoke(main, ["build", "--board", "stm32f746", "--model", "mnist-cnn", "--budget-kb", "4",
                                  "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "available" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("name", [e.name for e in list_models()])
def test_arena_within_5_percent_of_lower_bound(name):
    from tinygen.errors import ModelError

    try:
        model = get_model(name)
    except ModelError as exc:
        pytest.skip(str(exc))
    fp = plan_forward(model)
    assert fp.arena_size <= 1.05 * lower_bound(list(fp.buffers.values()))
    trainer, _ = auto_last_k(model, TrainConfig(), sram_budget(load_board("stm32f746")))
    tp = plan_training(model, trainer)
    bufs = list(tp.buffers.values())
    check_no_overlap(bufs)
    assert tp.arena_size <= 1.05 * lower_bound(bufs)


buffers_st = st.lists(st.tuples(st.integers(1, 5000), st.integers(0, 30), st.integers(0, 10)), min_size=1,
                      max_size=40)


@settings(max_examples=200, deadline=None)
@given(specs=buffers_st)
def test_no_two_live_buffers_overlap(specs):
    bufs = [Buffer(f"b{i}", size, first, first + span) for i, (size, first, span) in enumerate(specs)]
    size, _ = plan_best(bufs)
    check_no_overlap(bufs)
    assert all(b.offset % 8 == 0 and b.offset + b.size <= size for b in bufs)
    assert size >= lower_bound(bufs)
    tflm = plan_greedy_by_size([Buffer(b.name, b.size, b.first, b.last) for b in bufs])
    assert size <= tflm


@pytest.mark.skipif(not __import__("shutil").which("arm-none-eabi-gcc"), reason="arm-none-eabi-gcc is not installed")
@pytest.mark.parametrize("model, board", [("digits-cnn", "nrf52840"), ("mnist-cnn", "stm32f746")])
def test_plan_agrees_with_the_linker(model, board, tmp_path):
    """The ELF's SRAM (.data + .bss + arena + stack) lies within the plan's runtime allowance of the
    plan's peak, never above it."""
    r = CliRunner().invoke(main, ["build", "--board", board, "--model", model, "--update", "last-3",
                                  "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.stderr
    b = tmp_path / "b"
    plan = json.loads((b / "plan.json").read_text())
    elf = json.loads((b / "tinygen.json").read_text())["firmware"]["hw"]["sizes"]
    assert elf["arena"] == plan["arena_bytes"]
    assert plan["peak_sram_bytes"] - plan["runtime_reserve_bytes"] <= elf["sram_bytes"] <= plan["peak_sram_bytes"]
    assert elf["flash_bytes"] <= plan["flash_bytes"]


def test_plan_shows_backward_macs_at_r1_beside_the_filtered_ones():
    """`--path-filter-r 2` on the digits CNN training its first conv: the frozen 1x1 convolution on the path
    computes its input gradient once a 2x2 patch (its backward MACs a quarter of r = 1's), a frozen 3x3 depthwise
    one product per patch its taps reach (weights summed per patch); the table shows both columns."""
    from tinygen.ir.scheme import LayerUpdate, Scheme, first_channels, with_path_filter
    from tinygen.planning.report import build_plan, plan_table
    from tinygen.reference.training import Trainer

    model = get_model("digits-cnn", classes=5)
    tensors = model.tensors()
    scheme = Scheme({"conv1": LayerUpdate(first_channels(model.layer("conv1"), tensors, 1.0), True, 1)})
    trainer = Trainer(model, with_path_filter(scheme, model, 2), TrainConfig())
    board = load_board("stm32f746")
    plan = build_plan(model, trainer, board, sram_budget(board))
    rows = {L["name"]: L for L in plan["layers"]}
    assert rows["pw4"]["filter_r"] == 2 and rows["pw4"]["macs_backward"] * 4 == rows["pw4"]["macs_backward_r1"]
    # the frozen 3x3 depthwise (4x4, every 2x2 patch whole) takes one product per patch its taps reach
    reach = sum(len({((iy + 1 - ky) // 2, (ix + 1 - kx) // 2) for ky in range(3) for kx in range(3)
                     if 0 <= iy + 1 - ky < 4 and 0 <= ix + 1 - kx < 4}) for iy in range(4) for ix in range(4))
    assert rows["dw3"]["filter_r"] == 2 and rows["dw3"]["macs_backward"] == 16 * reach
    assert rows["dw3"]["macs_backward_r1"] == 16 * 16 * 9 and rows["dw3"]["patch_sums_bytes"] > 0
    assert rows["conv1"]["filter_r"] == 1 and "MACs bwd at r = 1" in plan_table(plan)
