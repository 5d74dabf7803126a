"""`tinygen bench speed`: its table and JSON from measured rows, and its options (the runs themselves are
the firmware path the firmware tests already cover; the benchmark is run by hand, never timed in tests)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tinygen.bench import speed
from tinygen.cli import main

ROW = {"model": "mcunet-5fps", "scheme": "mcunet/49kb", "filter_r": 1, "board": "stm32f746",
       "step_instructions": 232_000_000, "inference_instructions": 127_000_000, "forward_macs": 22_491_968,
       "mac_per_instr": 0.1771, "peak_sram_bytes": 127_728, "flash_bytes": 761_592, "clock_hz": 216_000_000,
       "bit_exact": True}


def test_report_puts_tinyengine_beside_the_mcunet_49kb_row_and_says_instructions_not_cycles():
    text = speed.report([ROW, {**ROW, "filter_r": 2}, {**ROW, "scheme": "mcunet/99kb"}])
    lines = text.splitlines()
    assert "106.4 / 65.0" in lines[2] and "232.0" in lines[2] and "127.0" in lines[2]
    assert "106.4 / 65.0" not in lines[3]  # the anchor was measured at r = 1
    assert lines[4].rstrip().endswith("546")  # the paper's ms beside the ~100 KB scheme
    assert "emulators count instructions, not cycles" in text


def test_report_shows_the_profiled_rows_breakdown():
    kinds = {"forward": 55_000_000, "output gradient": 6_300_000, "input gradient": 25_200_000,
             "weight gradient + update": 5_700_000, "loss": 3_000, "glue": 577_000}
    text = speed.report([{**ROW, "breakdown": {"training step": kinds}}, {**ROW, "filter_r": 2}])
    tail = text.split("Where a training step goes")[1].splitlines()
    assert "input gradient" in tail[1] and "mcunet/49kb" in tail[3] and "25.2" in tail[3] and "55.0" in tail[3]
    assert len([ln for ln in tail if "mcunet-5fps" in ln]) == 1  # only the profiled row
    assert "Where a training step goes" not in speed.report([ROW])


def test_save_writes_rows_and_anchors(tmp_path):
    path = speed.save([ROW], tmp_path)
    data = json.loads(path.read_text())
    assert path.name == "speed.json" and data["rows"] == [ROW]
    assert data["anchors"]["tinyengine_mcunet_49kb_stm32f746"]["step_instructions"] == 106_400_000
    assert "instructions, not cycles" in data["note"]


def test_bench_speed_refuses_an_unknown_model():
    r = CliRunner().invoke(main, ["bench", "speed", "--models", "resnet"])
    assert r.exit_code == 2 and "resnet" in r.stderr


def test_filter_report_sets_each_backward_beside_r1_and_saves(tmp_path):
    """`tinygen bench filter`'s table: the backward (step - inference) and its ratio to the same model and scheme
    at r = 1, the kinds of work, the paper's claim; its JSON holds the rows."""
    from tinygen.bench import filtering

    kinds = {"output gradient": 3_700_000, "input gradient": 19_300_000, "weight gradient + update": 3_800_000}
    base = {**ROW, "step_instructions": 72_600_000, "inference_instructions": 44_900_000, "backward_macs": 20_000_000,
            "filtered_layers": 0, "path_filtered": 0, "saved_bytes": 3_840, "backward_by_kind": kinds}
    r2 = {**base, "filter_r": 2, "step_instructions": 62_000_000, "inference_instructions": 47_400_000,
          "filtered_layers": 30, "path_filtered": 4, "backward_macs": 9_000_000}
    lines = filtering.report([base, r2]).splitlines()
    assert "27.70" in lines[2] and "1.00x" in lines[2] and "19.30" in lines[2]
    assert "14.60" in lines[3] and "0.53x" in lines[3] and "30 (4)" in lines[3]
    assert "Yang et al." in lines[-1] and "instructions, not cycles" in lines[-1] and "frozen ones" in lines[-1]
    data = json.loads(filtering.save([base, r2], tmp_path).read_text())
    assert [r["filter_r"] for r in data["rows"]] == [1, 2]
