"""Firmware and emulation (issue 5): the generated firmware project, its ELFs and `tinygen sim`.

Builds digits-cnn (forward pass) for stm32f746, nrf52840 and stm32h743, runs each QEMU image on
its mps2 stand-in and holds the outputs to the NumPy reference bit for bit; checks the FPU
attributes, the memory maps, link-time overflow messages, stack-overflow reporting and the
Renode files. Skips with the reason when the Arm toolchain, QEMU or Renode is missing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tinygen.cli import main
from tinygen.codegen import firmware
from tinygen.codegen.firmware import FirmwareOptions
from tinygen.codegen.project import write_project
from tinygen.errors import BuildError, MismatchError, TinygenError
from tinygen.frontends import datasets
from tinygen.frontends.inputs import quantize
from tinygen.ir.builder import ModelBuilder
from tinygen.ir.scheme import TrainConfig, parse_update
from tinygen.reference.training import Trainer
from tinygen.targets.armbuild import LinkOverflowError, elf_problem
from tinygen.targets.boards import Region, RegWrite, load_board, load_board_file
from tinygen.verify import sim
from tinygen.verify.compare import expect_training

HAVE_GCC = shutil.which("arm-none-eabi-gcc") is not None
HAVE_QEMU = shutil.which("qemu-system-arm") is not None
HAVE_RENODE = shutil.which("renode") is not None
HAVE_RENODE_TEST = shutil.which("renode-test") is not None

needs_gcc = pytest.mark.skipif(not HAVE_GCC, reason="arm-none-eabi-gcc is not on PATH "
                               "(apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi)")
needs_qemu = pytest.mark.skipif(not (HAVE_GCC and HAVE_QEMU), reason="arm-none-eabi-gcc or qemu-system-arm is "
                                "not on PATH (apt-get install gcc-arm-none-eabi qemu-system-arm)")
BOARDS = ["stm32f746", "nrf52840", "stm32h743"]


def digits_model():
    try:
        from tinygen.zoo.catalog import get_model

        return get_model("digits-cnn")
    except Exception:  # the zoo is being finished elsewhere: fall back to the builder's test model
        from models_for_tests import small_model

        return small_model()


@pytest.fixture(scope="module")
def model():
    return digits_model()


@pytest.fixture(scope="module")
def builds(model, tmp_path_factory):
    """Forward-only builds of digits-cnn, one per board (compiled when the toolchain exists)."""
    root = tmp_path_factory.mktemp("fw")
    out = {}
    for name in BOARDS:
        write_project(model, load_board(name), root / name)
        out[name] = root / name
    return out


def manifest(build: Path) -> dict:
    return json.loads((build / "tinygen.json").read_text())


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def one_sentence(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


# ---- the project on disk ----------------------------------------------------------------------------------------

def test_project_layout_and_manifest(builds):
    for name, build in builds.items():
        fw = build / "firmware"
        for f in ("main.c", "tg_board.h", "tg_dataset.c", "tg_dataset.h", "samples.npz", "link_qemu.ld",
                  f"link_{name}.ld", "Makefile", "CMakeLists.txt", "arm-none-eabi.cmake", f"{name}.repl",
                  f"{name}.resc", f"{name}.robot", "runtime/tg_startup.c", "runtime/tg_runtime.h"):
            assert (fw / f).is_file(), f
        m = manifest(build)["firmware"]
        assert m["qemu"]["machine"] == load_board(name).qemu["machine"]
        assert m["compiled"] == HAVE_GCC
        ld = (fw / f"link_{name}.ld").read_text()
        assert "MEMORY" in ld and "ASSERT(" in ld
        assert "-mcpu=" in (fw / "Makefile").read_text()


def test_memory_maps():
    f7 = load_board("stm32f746")
    real, qemu = firmware.real_memory_map(f7), firmware.qemu_memory_map(f7)
    assert [(r.name, r.origin, r.length) for r in real.sram] == [("RAM", 0x20000000, 320 * 1024)]
    assert (real.flash.origin, real.flash.length) == (0x08000000, 1024 * 1024)
    assert (qemu.flash.origin, qemu.flash.length) == (0x0, 1024 * 1024)
    assert [(r.origin, r.length) for r in qemu.sram] == [(0x20000000, 320 * 1024)]
    nrf = load_board("nrf52840")
    assert firmware.real_memory_map(nrf).sram == firmware.qemu_memory_map(nrf).sram
    h7 = load_board("stm32h743")
    real, qemu = firmware.real_memory_map(h7), firmware.qemu_memory_map(h7)
    assert real.arena_region == real.data_region == "AXI_SRAM" and real.stack_region == "DTCM"
    assert {r.name: r.length for r in real.sram} == {r.name: r.length for r in qemu.sram}
    end = max(r.origin + r.length for r in qemu.sram)
    assert end <= 0x20000000 + firmware.QEMU_SSRAM_BYTES  # mps2 SSRAM2/3: 4 MB at 0x20000000


def test_parse_output():
    text = ("TG start model=m board=b target=qemu-mps2-an500 samples=2 counter=instr\n"
            "TG sample 0 label=3 crc=0x0000abcd out=1,-2,3 instr=400 ok=1\n"
            "TG sample 1 label=-1 crc=0x00000001 instr=440 ok=0\n"
            "TG step 0 sample=0 label=3 loss=-77 instr=1200\n"
            "TG params checksum=0xdeadbeef\n"
            "TG stack used=184 size=8192\n"
            "TG done samples=2 mismatches=1 instr_total=840\n"
            "TG exit 1\n")
    r = sim.parse_output(text)
    assert r.start["counter"] == "instr"
    assert r.samples[0] == {"index": 0, "label": 3, "crc": 0xABCD, "ok": True, "count": 400, "out": [1, -2, 3]}
    assert r.samples[1]["count"] == 440 and "out" not in r.samples[1] and not r.samples[1]["ok"]
    assert r.steps == [{"index": 0, "sample": 0, "label": 3, "loss": -77, "count": 1200}]
    assert r.params_crc == 0xDEADBEEF and r.stack == {"used": 184, "size": 8192}
    assert r.done["mismatches"] == "1" and r.exit_status == 1 and not r.failures


# ---- the ELFs ---------------------------------------------------------------------------------------------------

@needs_gcc
def test_elf_sizes_recorded_and_planner_agrees_with_linker(builds):
    for name, build in builds.items():
        m = manifest(build)
        for image in ("qemu", "hw"):
            s = m["firmware"][image]["sizes"]
            assert s["text"] > 0 and s["rodata"] > 0 and s["bss"] >= 0 and s["data"] >= 0
            assert s["arena"] == m["arena_bytes"], (name, image)
            assert s["flash_bytes"] == s["text"] + s["rodata"] + s["data"]
            assert s["stack"] == firmware.DEFAULT_STACK_BYTES + firmware.GUARD_BYTES
            assert s["sram_bytes"] <= load_board(name).sram_bytes


@needs_gcc
def test_f746_is_single_precision_only(builds):
    elf = builds["stm32f746"] / "firmware" / "build" / "tinygen-stm32f746.elf"
    attrs = subprocess.run(["arm-none-eabi-readelf", "-A", str(elf)], capture_output=True, text=True, check=True)
    assert re.search(r"Tag_FP_arch: FPv5", attrs.stdout), attrs.stdout
    assert re.search(r"Tag_ABI_HardFP_use: SP only", attrs.stdout), attrs.stdout
    dis = subprocess.run(["arm-none-eabi-objdump", "-d", str(elf)], capture_output=True, text=True, check=True)
    mnemonics = [ln.split("\t")[2] for ln in dis.stdout.splitlines() if ln.count("\t") >= 2]
    assert mnemonics, "empty disassembly"
    f64 = [m for m in mnemonics if re.search(r"\.f64\b|\.f64\.|f64", m)]
    assert not f64, f64[:5]
    # the H743's FPU has double precision: its attributes must not claim SP only (the check is not vacuous)
    h7 = builds["stm32h743"] / "firmware" / "build" / "tinygen-stm32h743.elf"
    h7_attrs = subprocess.run(["arm-none-eabi-readelf", "-A", str(h7)], capture_output=True, text=True, check=True)
    assert "SP only" not in h7_attrs.stdout


def _symbols(elf: Path) -> dict[str, int]:
    out = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    return {p[2]: int(p[0], 16) for p in (ln.split() for ln in out.splitlines()) if len(p) == 3}


@needs_gcc
def test_real_map_images(builds, tmp_path):
    for name, build in builds.items():
        board = load_board(name)
        elf = build / "firmware" / "build" / f"tinygen-{name}.elf"
        sym = _symbols(elf)
        flash = board.flash[0]
        assert sym["tg_vectors"] == flash.origin  # Renode guesses VTOR from the lowest loaded address
        raw = tmp_path / f"{name}.bin"
        subprocess.run(["arm-none-eabi-objcopy", "-O", "binary", "-j", ".isr_vector", str(elf), str(raw)], check=True)
        sp, reset = struct.unpack("<II", raw.read_bytes()[:8])
        assert sp == sym["__tg_stack_top"] and reset == sym["Reset_Handler"] | 1
        assert any(r.origin <= sp <= r.origin + r.length for r in board.sram)
        assert flash.origin <= reset < flash.origin + flash.length
    h7 = _symbols(builds["stm32h743"] / "firmware" / "build" / "tinygen-stm32h743.elf")
    assert 0x24000000 <= h7["__tg_arena_start"] < 0x24080000  # the arena in AXI SRAM, the largest bank
    assert h7["__tg_stack_guard_start"] == 0x20000000  # the stack at the bottom of DTCM


@needs_gcc
def test_generated_makefile_builds_the_qemu_image(builds):
    if shutil.which("make") is None:
        pytest.skip("make is not on PATH")
    fw = builds["nrf52840"] / "firmware"
    elf = fw / "build" / firmware.QEMU_ELF
    before = elf.read_bytes()
    elf.unlink()
    r = subprocess.run(["make", "-s", "qemu"], cwd=fw.parent, capture_output=True, text=True)  # top-level Makefile
    assert r.returncode == 0, r.stderr
    assert elf.is_file() and len(elf.read_bytes()) > 0.5 * len(before)


@needs_gcc
def test_sram_overflow_fails_at_link_time(tmp_path):
    rng = np.random.default_rng(0)
    b = ModelBuilder("too-big", (160, 160, 1), 1 / 255, -128)
    x = b.conv2d(b.input, rng.integers(-127, 128, (16, 3, 3, 1)).astype(np.int8), np.zeros(16, np.int32),
                 np.full(16, 0.01, np.float32), 0.05, -128, padding="same", act="relu", name="conv")
    x = b.flatten(b.global_avgpool(x, name="gap"), name="flat")
    b.fully_connected(x, rng.integers(-127, 128, (10, 16)).astype(np.int8), np.zeros(10, np.int32),
                      np.full(10, 0.01, np.float32), 0.1, 0, name="fc")
    # the conv's 160*160*16 = 409,600-byte output alone (its input is overlapped into it) exceeds the F746's 320 KB
    model = b.build()
    with pytest.raises(LinkOverflowError) as exc:
        write_project(model, load_board("stm32f746"), tmp_path / "b")
    msg = str(exc.value)
    assert "\n" not in msg
    assert "region RAM" in msg and "327,680 bytes at 0x20000000" in msg and ".tg_arena" in msg
    n = int(re.search(r"overflowed by ([\d,]+) bytes", msg).group(1).replace(",", ""))
    assert n > 409_600 - 327_680
    assert exc.value.exit_code != 0


@needs_gcc
def test_flash_overflow_on_a_tiny_board(model, tmp_path):
    f7 = load_board("stm32f746")
    tiny = dataclasses.replace(f7, name="tiny", flash=[Region("FLASH", 0x08000000, 4096)])
    with pytest.raises(LinkOverflowError, match=r"region FLASH \(flash, 4,096 bytes at 0x08000000.*overflowed by"):
        write_project(model, tiny, tmp_path / "t")


@needs_qemu
def test_flash_overflow_leaves_patch_sums_out_before_building_for_size(tmp_path):
    """A training build whose image overflows the flash at the board's flags by less than its patch-summed
    depthwise weights: the build writes the sources again without them (the same integers, tap by tap) and keeps
    the board's flags; the firmware still trains bit-exact in QEMU."""
    from tinygen.ir.scheme import LayerUpdate, Scheme, first_channels, with_path_filter
    from tinygen.planning.backward import structured_bytes
    from tinygen.zoo.catalog import get_model

    model = get_model("digits-cnn", classes=5)
    conv1 = model.layer("conv1")
    scheme = Scheme({"conv1": LayerUpdate(first_channels(conv1, model.tensors(), 1.0), True, 1)})
    trainer = Trainer(model, with_path_filter(scheme, model, 2), TrainConfig())
    sums = structured_bytes(model.layer("dw3"), trainer)
    assert sums > 0
    opts = FirmwareOptions(train=True, train_steps=3, samples=2)
    f7 = load_board("stm32f746")
    fitted = write_project(model, f7, tmp_path / "a", trainer, opts, expect_training)["firmware"]
    assert "flash_fit" not in fitted
    used = fitted["hw"]["sizes"]["flash_bytes"]
    small = dataclasses.replace(f7, flash=[Region("FLASH", 0x08000000, used - sums // 2)])
    m = write_project(model, small, tmp_path / "b", trainer, opts, expect_training)
    fw = m["firmware"]
    assert len(fw["flash_fit"]) == 1 and "dw3" in fw["flash_fit"][0] and "size_fallback" not in fw
    assert fw["opt_flags"] == list(f7.opt_flags) and m["train"]["config"]["taps_only"] == ["dw3"]
    assert "_dw3_wsum" not in (tmp_path / "b" / "src" / "tg_weights.c").read_text()
    assert len(sim.simulate(tmp_path / "b").run.steps) == 3  # every loss and the checksum held to the reference


# ---- QEMU ---------------------------------------------------------------------------------------------------------

@needs_qemu
@pytest.mark.parametrize("board", BOARDS)
def test_sim_qemu_bit_exact(builds, board):
    code, out, err = run("sim", builds[board], "--timeout", "60")
    assert code == 0, err
    assert "bit-exact with the reference" in out and "est. ms" in out and "estimate from instruction counts" in out
    r = sim.simulate(builds[board])
    assert all(s["count"] > 10_000 for s in r.run.samples)
    # the stand-in has no RCC: the QEMU image skips the bring-up; estimates at the real image's configured clock
    assert r.run.clock == {"bringup": "skipped", "board_core": load_board(board).clock_hz, "clock": "max"}
    assert r.clock_hz == load_board(board).clock_hz and "bring-up skipped" in out


@needs_qemu
def test_instruction_counts_repeat_exactly(builds):
    a = sim.simulate(builds["stm32f746"])
    b = sim.simulate(builds["stm32f746"])
    assert [s["count"] for s in a.run.samples] == [s["count"] for s in b.run.samples]
    assert a.run.stack == b.run.stack and 0 < a.run.stack["used"] < a.run.stack["size"]


@needs_qemu
def test_sim_catches_a_wrong_output(builds, tmp_path):
    build = tmp_path / "b"
    shutil.copytree(builds["stm32f746"], build)
    samples = build / "firmware" / "samples.npz"
    with np.load(samples) as z:
        x, labels, source = z["x"].copy(), z["labels"], z["source"]
    x[2] = np.roll(x[2], 5)  # the reference now sees another input than the firmware ran
    np.savez(samples, x=x, labels=labels, source=source)
    with pytest.raises(MismatchError, match="sample 2"):
        sim.simulate(build)


@needs_qemu
@pytest.mark.parametrize("keep", [0, 40, 0.5, -1])
def test_truncated_elf_is_one_sentence_at_once(builds, tmp_path, keep):
    """A damaged image is refused before the emulator starts (it used to wait out the whole timeout)."""
    build = tmp_path / "b"
    shutil.copytree(builds["stm32f746"], build)
    elf = build / "firmware" / "build" / "tinygen-qemu.elf"
    data = elf.read_bytes()
    assert elf_problem(data) is None
    elf.write_bytes(data[:int(keep * len(data)) if isinstance(keep, float) else keep] if keep != -1 else data[:-1])
    t0 = time.monotonic()
    code, out, err = run("sim", build, "--timeout", "60")
    line = one_sentence(err)
    assert code == 2 and "not a complete firmware image" in line and "rebuild" in line
    assert time.monotonic() - t0 < 30


@needs_qemu
@pytest.mark.parametrize("board", ["stm32f746", "nrf52840"])
def test_stack_overflow_is_reported(model, board, tmp_path):
    opts = FirmwareOptions(samples=1, extra_cflags=("-DTG_TEST_STACK_OVERFLOW",))
    write_project(model, load_board(board), tmp_path / "so", firmware_options=opts)
    code, out, err = run("sim", tmp_path / "so", "--timeout", "60")
    line = one_sentence(err)
    assert code == 3 and "stack overflow" in line and "8192 bytes" in line


@needs_qemu
def test_hung_firmware_hits_the_timeout(model, tmp_path):
    opts = FirmwareOptions(samples=1, extra_cflags=("-DTG_TEST_HANG",))
    write_project(model, load_board("nrf52840"), tmp_path / "h", firmware_options=opts)
    code, out, err = run("sim", tmp_path / "h", "--timeout", "2")
    line = one_sentence(err)
    assert code == 3 and "did not finish" in line and "within 2 s" in line and "TG test hang" in line


@needs_qemu
@pytest.mark.parametrize("board,opts", [
    ("stm32f746", FirmwareOptions(samples=2, extra_cflags=("-DTG_TEST_FORCE_CACHES",))),  # M7 cache sequence
    ("nrf52840", FirmwareOptions(samples=2, qemu_console="semihost")),  # console over semihosting (stderr)
], ids=["m7-cache-maintenance-on-qemu", "semihosting-console"])
def test_firmware_variants_run(model, board, opts, tmp_path):
    write_project(model, load_board(board), tmp_path / "v", firmware_options=opts)
    r = sim.simulate(tmp_path / "v")
    assert len(r.run.samples) == 2 and r.run.exit_status == 0


def test_cli_build_then_sim(tmp_path):
    """The user's path: `tinygen build` then `tinygen sim` (skips the sim without the toolchain)."""
    code, out, err = run("build", "--board", "stm32f746", "--model", "digits-cnn", "--out", tmp_path / "d")
    if code != 0 and "digits-cnn" in err:
        pytest.skip(f"the zoo's digits-cnn is unavailable: {err.strip()}")
    assert code == 0, err
    assert "clock: --clock max: stm32f746 at 216 MHz" in out and "the QEMU image skips the bring-up" in out
    if not (HAVE_GCC and HAVE_QEMU):
        pytest.skip("arm-none-eabi-gcc or qemu-system-arm is not on PATH")
    code, out, err = run("sim", tmp_path / "d")
    assert code == 0, err
    assert "8 of 8 samples" in out
    if "train" in manifest(tmp_path / "d"):  # a training build: the firmware trains and must equal the reference
        steps = manifest(tmp_path / "d")["firmware"]["train_steps"]
        assert steps >= 20 and f"{steps} training steps: every loss and the trained-parameter checksum" in out
        samples = tmp_path / "d" / "firmware" / "samples.npz"
        with np.load(samples) as z:
            x, labels, source = z["x"], z["labels"].copy(), z["source"]
        labels[0] = (labels[0] + 1) % manifest(tmp_path / "d")["output_shape"][0]  # reference: another label
        np.savez(samples, x=x, labels=labels, source=source)
        with pytest.raises(MismatchError, match="training step 0"):
            sim.simulate(tmp_path / "d")


# ---- Renode ---------------------------------------------------------------------------------------------------------

RENODE_MISSING = ("renode and renode-test (Renode 1.15.3 or newer, https://renode.io) and arm-none-eabi-gcc must be "
                  "on PATH; Renode is in no package registry here, so CI simulates with QEMU")
needs_renode = pytest.mark.skipif(not (HAVE_RENODE and HAVE_RENODE_TEST and HAVE_GCC), reason=RENODE_MISSING)


def test_renode_files_name_the_right_platform_and_uart(builds):
    for name, build in builds.items():
        board = load_board(name)
        fw = build / "firmware"
        repl = (fw / f"{name}.repl").read_text()
        assert f'using "{board.renode["platform"]}"' in repl and "Python.PythonPeripheral @ sysbus 0xE0001000" in repl
        assert not re.search(r"^\s*ApplySVD", repl, re.M)  # offline
        assert all(ln in repl for ln in board.renode["sysbus_init"] or ())
        resc = (fw / f"{name}.resc").read_text()
        assert f"machine LoadPlatformDescription $ORIGIN/{name}.repl" in resc
        assert "mach create $name" in resc and "sysbus LoadELF $elf" in resc
        assert f"$elf?=$ORIGIN/build/tinygen-{name}.elf" in resc
        assert f"\nshowAnalyzer {board.renode['uart']}\n" in resc
        # the .robot includes it, attaches its tester, then starts; a file backend would stop renode-test's snapshots
        assert "\nstart" not in resc and not re.search(r"^[^#].*CreateFileBackend", resc, re.M)
        robot = (fw / f"{name}.robot").read_text()
        assert f"${{UART}}                         {board.renode['uart']}" in robot
        assert f"Execute Script              ${{CURDIR}}/{name}.resc" in robot
        assert "Register Failing Uart String" not in robot  # Renode 1.16 and newer only
        assert re.search(r"Next TG Line Starts With    TG sample 0 label=-?\d+ crc=0x[0-9a-f]{8}\$\{SPACE\}", robot)
        assert "Next TG Line Starts With    TG done samples=8 mismatches=0${SPACE}" in robot
    uarts = {n: load_board(n).renode["uart"] for n in BOARDS}
    assert uarts == {"stm32f746": "sysbus.usart1", "nrf52840": "sysbus.uart0", "stm32h743": "sysbus.usart3"}


def test_sim_renode_without_renode_is_one_sentence(builds):
    if HAVE_RENODE:
        pytest.skip("renode is on PATH (see test_sim_renode_counts_instructions_as_qemu_does)")
    code, out, err = run("sim", builds["stm32f746"], "--emulator", "renode")
    assert code != 0 and "renode is not on PATH" in one_sentence(err)


def _fake_renode(tmp_path, monkeypatch, script: str) -> None:
    """A `renode` on PATH that runs `script` (sh) with $uart set to the file the monitor's second command
    (`<uart> CreateFileBackend @PATH true`) names, then serves the monitor until `quit`."""
    fake = tmp_path / "bin" / "renode"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nread include\nread backend\nset -- $backend\nuart=${3#@}\n' + script +
                    '\nwhile read cmd; do [ "$cmd" = quit ] && exit 0; done\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")


@needs_qemu
def test_sim_renode_plumbing_with_a_stand_in(builds, tmp_path, monkeypatch):
    """`sim --emulator renode` with a fake `renode` on PATH that never exits by itself and writes the UART
    file backend the monitor names (here from the QEMU image): sim must read it, stop it and compare."""
    build = tmp_path / "b"
    shutil.copytree(builds["stm32f746"], build)
    qemu = " ".join(firmware.qemu_args(load_board("stm32f746")))
    elf = build / "firmware" / "build" / firmware.QEMU_ELF
    _fake_renode(tmp_path, monkeypatch, f'qemu-system-arm {qemu} -kernel "{elf}" > "$uart" 2>&1')
    r = sim.simulate(build, emulator="renode", timeout=30)
    assert r.machine.startswith("Renode") and len(r.run.samples) == 8 and r.run.exit_status == 0
    assert r.seconds < 20  # stopped at "TG exit", not at the timeout


@needs_gcc
def test_a_renode_that_exits_early_is_reported_as_such(builds, tmp_path, monkeypatch):
    _fake_renode(tmp_path, monkeypatch, 'echo "Unhandled exception: the platform could not load"; exit 7')
    with pytest.raises(BuildError, match="Renode stopped before the firmware finished: it exited with status 7 "
                                         r"\(Renode's output: .*the platform could not load"):
        sim.simulate(builds["nrf52840"], emulator="renode", timeout=30)


def test_a_counter_that_read_zero_is_not_reported_as_a_measurement():
    """A platform without a DWT (a .repl edited to drop the stand-in): CYCCNT reads 0, and the report must not
    print 0s as counts."""
    run = sim.parse_output("TG start model=m board=stm32f746 target=stm32f746 samples=1 counter=cycles\n"
                           "TG sample 0 label=1 crc=0x00000000 cycles=0 ok=1\nTG step 0 sample=0 label=1 loss=5 "
                           "cycles=0\nTG step 1 sample=0 label=1 loss=4 cycles=0\nTG done samples=1 mismatches=0\n")
    r = sim.SimResult("renode", "Renode x", "stm32f746", 216_000_000, "cycles", run, "s", 1.0)
    text = sim.format_report(r)
    assert "no instructions counted (the counter read 0 throughout" in text and "0..0" not in text
    assert not re.search(r"\s0\s+0(\.0)?\s*$", text, re.M)  # no count column of zeros
    r.run.samples[0]["count"] = 151_148
    assert "151,148..151,148 instructions per inference, counted by the DWT stand-in" in sim.format_report(r)


@pytest.fixture(scope="module")
def training_builds(tmp_path_factory):
    """`tinygen build --model digits-cnn` (it trains) for each board: the user's path to a .robot."""
    root = tmp_path_factory.mktemp("renode")
    for board in BOARDS:
        code, out, err = run("build", "--board", board, "--model", "digits-cnn", "--out", root / board)
        assert code == 0, err
    return {board: root / board for board in BOARDS}


def _renode_test(robot: Path, results: Path) -> tuple[subprocess.CompletedProcess, float]:
    """renode-test on `robot`, in a temporary folder that takes everything it writes."""
    results.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    r = subprocess.run(["renode-test", "-r", str(results), str(robot)], cwd=results, capture_output=True, text=True,
                       timeout=600)
    return r, time.monotonic() - t0


@needs_renode
@pytest.mark.parametrize("board", BOARDS)
def test_renode_robot(training_builds, board, tmp_path):
    before = sorted(p.name for p in (training_builds[board] / "firmware").iterdir())
    r, _ = _renode_test(training_builds[board] / "firmware" / f"{board}.robot", tmp_path / "results")
    assert r.returncode == 0, r.stdout[-3000:]
    assert sorted(p.name for p in (training_builds[board] / "firmware").iterdir()) == before


@needs_renode
def test_renode_robot_fails_at_once_on_a_wrong_loss(model, tmp_path):
    """A firmware that reports step 2's loss one too high (-DTG_TEST_WRONG_LOSS=2): the .robot fails at that line,
    not at its timeout; `sim` names the step."""
    trainer = Trainer(model, parse_update("last-2", model), TrainConfig())
    out = tmp_path / "wrong"
    write_project(model, load_board("stm32f746"), out, trainer,
                  FirmwareOptions(samples=2, train=True, train_steps=4, extra_cflags=("-DTG_TEST_WRONG_LOSS=2",)),
                  expect_training)
    r, seconds = _renode_test(out / "firmware" / "stm32f746.robot", tmp_path / "results")
    test_seconds = re.search(r"Finished test '.*' in ([\d.]+) seconds", r.stdout)
    assert r.returncode != 0 and test_seconds, r.stdout[-3000:]
    assert float(test_seconds.group(1)) < 10, f"{seconds:.1f} s with Renode's start: {r.stdout[-3000:]}"
    assert "TG step 2 sample=0 label=" in r.stdout and "does not start with" in r.stdout
    with pytest.raises(MismatchError, match="training step 2"):
        sim.simulate(out, emulator="renode", timeout=60)


@needs_renode
@pytest.mark.parametrize("board", BOARDS)
def test_sim_renode_counts_instructions_as_qemu_does(training_builds, board):
    code, out, err = run("sim", training_builds[board], "--emulator", "renode", "--timeout", "300")
    assert code == 0, err
    assert "counted by the DWT stand-in" in out
    renode = sim.simulate(training_builds[board], emulator="renode", timeout=300)
    qemu = sim.simulate(training_builds[board], timeout=300)
    for kind in ("samples", "steps"):
        got, want = ([s["count"] for s in getattr(r.run, kind)] for r in (renode, qemu))
        assert len(got) == len(want) > 0 and all(abs(g - w) <= 0.01 * w for g, w in zip(got, want, strict=True)), kind


@needs_renode
def test_two_renode_sims_at_once(training_builds):
    """No telnet port, no shared file: two Renode runs of one build directory at the same time both pass."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(lambda _: sim.simulate(training_builds["nrf52840"], emulator="renode", timeout=300),
                             range(2)))
    assert all(r.run.exit_status == 0 and len(r.run.steps) == 20 for r in runs)


def test_unknown_console_kind_is_one_sentence():
    b = dataclasses.replace(load_board("stm32f746"), console={"kind": "spi-lcd", "name": "x", "base": "0x0"})
    with pytest.raises(TinygenError, match="console kind 'spi-lcd' has no driver"):
        firmware.hw_console_defines(b)


@needs_qemu
def test_missing_elf_is_explained(builds, tmp_path):
    build = tmp_path / "b"
    shutil.copytree(builds["nrf52840"], build)
    (build / "firmware" / "build" / firmware.QEMU_ELF).unlink()
    with pytest.raises(BuildError, match="was not compiled"):
        sim.simulate(build)


# ---- board files, embedded labels, the emitted C -------------------------------------------------------------------

def test_forward_build_embeds_the_labels_of_its_own_images(model, builds):
    """Each label embedded in a forward-only build is the data set's label of the image embedded beside it."""
    x_all, y_all = datasets.load_digits()
    q_all = quantize(x_all.reshape((len(x_all),) + tuple(model.input.shape)), model.input)
    for name, build in builds.items():
        s = np.load(build / "firmware" / "samples.npz")
        assert len(s["x"]) == len(s["labels"]) > 1
        for xi, label in zip(s["x"], s["labels"], strict=True):
            same = np.flatnonzero((q_all == xi).reshape(len(q_all), -1).all(axis=1))
            assert len(same) > 0, name
            assert set(y_all[same].tolist()) == {int(label)}, (name, label, y_all[same])
        c = (build / "firmware" / "tg_dataset.c").read_text()
        body = re.search(r"tg_samples_label\[\d+\][^=]*= \{([^}]*)\}", c).group(1)
        assert [int(v) for v in body.replace(",", " ").split()] == s["labels"].tolist(), name


def _emitted_c(build: Path) -> list[Path]:
    fw = build / "firmware"
    return [fw / "main.c", fw / "tg_board.h", fw / "tg_dataset.h", fw / "tg_dataset.c",
            *sorted((fw / "runtime").glob("*.[ch]")), *sorted((build / "cmsis_glue").glob("*.h"))]


@pytest.mark.skipif(shutil.which("clang-format") is None, reason="clang-format is not on PATH "
                    "(apt-get install clang-format)")
@pytest.mark.parametrize("which", ["main.c", "tg_board.h", "tg_dataset.h", "tg_dataset.c", "runtime", "cmsis_glue"])
def test_emitted_firmware_c_is_clang_format_clean(builds, which):
    """Every C file a build's firmware/ holds (and the cmsis_glue headers it includes) is as clang-format
    formats it with the committed .clang-format, with no line over 100 characters."""
    style = f"--style=file:{Path(__file__).resolve().parents[1] / '.clang-format'}"
    for build in builds.values():
        for f in _emitted_c(build):
            if which not in (f.name, f.parent.name):
                continue
            long = [i + 1 for i, line in enumerate(f.read_text().splitlines()) if len(line) > 100]
            assert not long, f"{f}: lines {long} are over 100 characters"
            r = subprocess.run(["clang-format", "--dry-run", "--Werror", style, str(f)], capture_output=True,
                               text=True)
            assert r.returncode == 0, f"{f} is not clang-format clean:\n{r.stderr[:2000]}"


def test_headers_have_extern_c_guards(builds):
    fw = builds["stm32f746"] / "firmware"
    for f in ("tg_board.h", "tg_dataset.h", "runtime/tg_runtime.h", "runtime/tg_runtime_internal.h"):
        assert 'extern "C" {' in (fw / f).read_text(), f


def test_board_facts_come_from_the_board_file(builds):
    h7 = (builds["stm32h743"] / "firmware" / "tg_board.h").read_text()
    assert "#define TG_BOARD_EARLY_INIT(set_bits) set_bits(0x580244DCUL, 0xE0000000UL)" in h7
    assert re.search(r"#define TG_CONSOLE_RCC_REG\s+0x580244E8UL", h7)
    assert "TG_BOARD_EARLY_INIT" not in (builds["stm32f746"] / "firmware" / "tg_board.h").read_text()
    assert re.search(r"#define TG_CONSOLE_TX_PIN\s+6U", (builds["nrf52840"] / "firmware" / "tg_board.h").read_text())
    resc = (builds["stm32h743"] / "firmware" / "stm32h743.resc").read_text()
    assert all(line in resc for line in load_board("stm32h743").renode["checked"])


@pytest.mark.skipif(shutil.which("clang-format") is None, reason="clang-format is not on PATH")
def test_several_early_init_writes_render_clean(model, tmp_path):
    h7 = load_board("stm32h743")
    board = dataclasses.replace(h7, early_init=h7.early_init + [RegWrite(0x58024400, 0x1, "a second write")])
    write_project(model, board, tmp_path / "b", firmware_options=FirmwareOptions(compile=HAVE_GCC))
    header = tmp_path / "b" / "firmware" / "tg_board.h"
    text = header.read_text()
    assert "set_bits(0x580244DCUL, 0xE0000000UL);" in text and "set_bits(0x58024400UL, 0x00000001UL)\n" in text
    style = f"--style=file:{Path(__file__).resolve().parents[1] / '.clang-format'}"
    r = subprocess.run(["clang-format", "--dry-run", "--Werror", style, str(header)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


BAD_BOARDS = [
    (lambda d: d["console"].pop("rcc_bit"), "console gives part of the USART bring-up but not rcc_bit"),
    (lambda d: d["console"].update(tx_af=16), "console.tx_af must be an integer from 0 to 15"),
    (lambda d: d["console"].update(base="40011000"), "console.base must be a hex string"),
    (lambda d: d["console"].update(colour="red"), "console field 'colour' is not used by a stm32_usart console"),
    (lambda d: d["console"].update(kind="spi-lcd"), "console.kind 'spi-lcd' has no driver"),
    (lambda d: d["early_init"].append({"reg": "0x58024400"}), r"early_init\[0\].set is missing"),
    (lambda d: d["renode"].pop("uart"), "renode.uart is missing"),
    (lambda d: d["renode"].update(version="1.15"), "renode.version must be a Renode release"),
    (lambda d: d["renode"].update(sysbus_init=["Tag <0x0, 0x3> \"x\"\nApplySVD @https://x"]),
     "renode.sysbus_init must be a list of one-line strings"),
    (lambda d: d["renode"].update(platform="platforms/cpus/x.repl\nstart"), "renode.platform must be a .repl path"),
    (lambda d: d.pop("clock"), "clock is missing"),
    (lambda d: d.update(clock_hz=216_000_000), "clock_hz is replaced by the clock object"),
    (lambda d: d["console"].update(kernel_clock="pclk9"), "console.kernel_clock 'pclk9' is not a clock of the board"),
    (lambda d: d.update(opt_flags=["-O3", "-o/tmp/x"]), "opt_flags holds '-o/tmp/x', which is not an optimisation"),
    (lambda d: d.update(opt_flags=[]), "opt_flags must be a non-empty list of strings"),
]


def test_board_opt_flags_reach_the_compiler_and_the_makefile(model, tmp_path):
    board = dataclasses.replace(load_board("stm32f746"), opt_flags=["-O1", "-fno-inline"])
    write_project(model, board, tmp_path / "b", firmware_options=FirmwareOptions(compile=False))
    make = (tmp_path / "b" / "firmware" / "Makefile").read_text()
    assert "-O1 -fno-inline -std=c99" in make and "-O2" not in make


@pytest.mark.parametrize("spoil,message", BAD_BOARDS)
def test_a_bad_board_file_is_one_sentence(tmp_path, spoil, message):
    d = json.loads((Path(__file__).resolve().parents[1] / "boards" / "stm32f746.json").read_text())
    spoil(d)
    path = tmp_path / "stm32f746.json"
    path.write_text(json.dumps(d))
    with pytest.raises(TinygenError, match=message) as err:
        load_board_file(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"board file {path} is malformed: ")
