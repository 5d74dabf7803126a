"""`--json` on models, boards, build, verify and sim: one JSON object on one line of stdout, nothing else there,
with exactly the keys README's `--json` table documents (the table is the one place they are written). And
`verify --steps N` streams its steps as they run."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from readme_tables import table_rows

from tinygen.cli import main
from tinygen.verify.check import verify_training
from tinygen.verify.runner import Progress


def documented_keys() -> dict[str, dict[str, set[str]]]:
    """README's --json table: {command: {"": top-level keys, key: keys of its object(s)}}."""
    out = {}
    for cells in table_rows("Machine-readable output"):
        m = re.fullmatch(r"`(\w+)`", cells[0]) if len(cells) == 2 else None
        if not m:
            continue
        keys: dict[str, set[str]] = {"": {"command", "schema"}}
        depth, last = 0, None
        for tok in re.finditer(r"`([a-z0-9_]+)`|\{|\}", cells[1]):
            if tok.group(0) == "{":
                depth += 1
            elif tok.group(0) == "}":
                depth -= 1
            elif depth == 0:
                last = tok.group(1)
                keys[""].add(last)
            else:
                keys.setdefault(last, set()).add(tok.group(1))
        out[m.group(1)] = keys
    return out


def run_json(*args) -> dict:
    r = CliRunner().invoke(main, [*map(str, args), "--json"])
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout[:500]  # nothing else on stdout
    return json.loads(lines[0])


def check_keys(command: str, doc: dict) -> None:
    keys = documented_keys()[command]
    assert doc["command"] == command and doc["schema"] == 1
    assert set(doc) == keys[""], set(doc) ^ keys[""]
    for key, sub in keys.items():
        if not key or doc[key] is None:
            continue
        for item in doc[key] if isinstance(doc[key], list) else [doc[key]]:
            assert set(item) == sub, (key, set(item) ^ sub)


def test_the_table_documents_the_five_commands():
    assert set(documented_keys()) == {"models", "boards", "build", "verify", "sim"}


def test_models_json():
    doc = run_json("models")
    check_keys("models", doc)
    digits = next(m for m in doc["models"] if m["name"] == "digits-cnn")
    assert digits["input_shape"] == [8, 8, 1] and digits["params"] > 0 and digits["kind"] == "pretrained"


def test_boards_json():
    doc = run_json("boards")
    check_keys("boards", doc)
    f7 = next(b for b in doc["boards"] if b["name"] == "stm32f746")
    assert f7["sram_bytes"] == 320 * 1024 and f7["sram_bytes"] == sum(r["length"] for r in f7["sram"])
    assert f7["qemu_machine"] == "mps2-an500"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("json") / "b"
    doc = run_json("build", "--board", "stm32f746", "--model", "digits-cnn", "--update", "last-1", "--steps", "3",
                   "--out", out)
    return out, doc


def test_build_json(built):
    out, doc = built
    check_keys("build", doc)
    manifest = json.loads((out / "tinygen.json").read_text())
    assert doc["params"] == manifest["params"] and doc["train"]["trained_layers"] == 1 and doc["plan"]["fits"]
    assert Path(doc["files"]["plan"]).is_file() and doc["firmware"]["train_steps"] == 3


def test_verify_json(built):
    out, _ = built
    doc = run_json("verify", out, "--steps", "4")
    check_keys("verify", doc)
    t = doc["training"]
    assert doc["bit_exact"] and len(t["losses_q16"]) == t["steps"] == 4 and Path(t["loss_curve"]).is_file()
    assert doc["forward"]["values"] == 8 * 10
    assert run_json("verify", out, "--steps", "0")["training"] is None


@pytest.mark.skipif(not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")),
                    reason="arm-none-eabi-gcc or qemu-system-arm is not on PATH")
def test_sim_json(built):
    out, _ = built
    doc = run_json("sim", out)
    check_keys("sim", doc)
    assert doc["bit_exact"] and len(doc["steps"]) == 3 and len(doc["samples"]) == 8
    assert doc["counter"] == "instructions" and all(s["count"] > 0 for s in doc["samples"])


def test_verify_streams_each_step_of_the_host_c_and_the_reference(built):
    """Each phase of a long verify reports its steps while it runs (here: every report, none skipped)."""
    out, _ = built
    shown = []
    progress = Progress(shown.append, every=0.0, prefix="verify: ")
    verify_training(out, 5, progress=progress)
    host = [s for s in shown if s.startswith("verify: host C")]
    ref = [s for s in shown if s.startswith("verify: reference")]
    assert [int(re.search(r"(\d+) of 5 training", s).group(1)) for s in host] == [1, 2, 3, 4, 5]
    assert [int(re.search(r"(\d+) of 5 training", s).group(1)) for s in ref] == [1, 2, 3, 4, 5]
    assert shown.index(host[-1]) < shown.index(ref[0])
