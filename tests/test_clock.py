"""Clock trees (issue 19): the board files' clock configurations against the reference manuals, the firmware's
bring-up rows in tg_board.h, the console's baud divisors, the `TG clock` line and `tinygen sim`'s estimates.

Host tests (no toolchain, no emulator, well under a second each) hold every divider, VCO frequency, bus clock
and wait state in boards/*.json to the limits the manuals give, written out here once more from RM0385, RM0433,
DS10916, DS12110 and the nRF52840 PS, so a change to either the board files or tinygen/targets/clocks.py's tables
has to agree with the manuals as this file quotes them. The Renode test (skipped where `renode` is not on PATH)
runs the real-map images on Renode 1.15.3's platforms and states what each RCC model lets the bring-up do.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from tinygen.codegen import firmware
from tinygen.codegen.firmware import FirmwareOptions
from tinygen.errors import TinygenError
from tinygen.targets.boards import load_board, load_board_file
from tinygen.verify import sim

MHZ = 1_000_000
BOARDS_DIR = Path(__file__).resolve().parents[1] / "boards"


def board_json(name: str) -> dict:
    return json.loads((BOARDS_DIR / f"{name}.json").read_text())


# ---- the manuals, quoted ------------------------------------------------------------------------------------------

def test_stm32f746_clock_tree_is_within_rm0385():
    c = board_json("stm32f746")["clock"]
    m = c["max"]
    pll, div = m["pll"], m["dividers"]
    hsi = 16 * MHZ  # RM0385 RCC: HSI
    assert c["hsi_hz"] == hsi
    assert 2 <= pll["m"] <= 63 and 50 <= pll["n"] <= 432 and pll["p"] in (2, 4, 6, 8) and 2 <= pll["q"] <= 15
    vco_in = hsi / pll["m"]
    assert 1 * MHZ <= vco_in <= 2 * MHZ  # RM0385 5.3.2: VCO input 1..2 MHz
    vco = vco_in * pll["n"]
    assert 100 * MHZ <= vco <= 432 * MHZ  # VCO output 100..432 MHz
    assert vco / pll["q"] <= 48 * MHZ  # the 48 MHz domain (USB OTG FS, SDMMC, RNG)
    sysclk = vco / pll["p"]
    assert sysclk <= (216 if m["overdrive"] else 180) * MHZ  # DS10916: 216 MHz with over-drive, else 180
    hclk = sysclk / div["ahb"]
    assert hclk / div["apb1"] <= 54 * MHZ and hclk / div["apb2"] <= 108 * MHZ  # APB1 <= 54, APB2 <= 108 MHz
    # RM0385 3.3.2 table 5, 2.7-3.6 V: 0 WS to 30 MHz, 1 to 60, ..., 6 to 210, 7 to 216 MHz
    table = [(30, 0), (60, 1), (90, 2), (120, 3), (150, 4), (180, 5), (210, 6), (216, 7)]
    need = next(ws for top, ws in table if hclk <= top * MHZ)
    assert m["flash_wait_states"] == need == 7
    assert (sysclk, hclk, hclk / div["apb1"], hclk / div["apb2"]) == (216 * MHZ, 216 * MHZ, 54 * MHZ, 108 * MHZ)
    assert m["hz"] == {"sysclk": sysclk, "core": hclk, "hclk": hclk, "pclk1": hclk / div["apb1"],
                       "pclk2": hclk / div["apb2"]}
    assert set(c["reset"]["hz"].values()) == {hsi}  # reset: HSI, every prescaler 1


def test_stm32h743_clock_tree_is_within_rm0433():
    c = board_json("stm32h743")["clock"]
    m = c["max"]
    pll, div = m["pll"], m["dividers"]
    hsi = 64 * MHZ  # RM0433 RCC: HSI, HSIDIV = 1 at reset
    assert c["hsi_hz"] == hsi
    assert 1 <= pll["m"] <= 63 and 4 <= pll["n"] <= 512 and 2 <= pll["p"] <= 128 and pll["p"] % 2 == 0
    ref = hsi / pll["m"]
    assert 1 * MHZ <= ref <= 16 * MHZ  # RM0433 RCC: ref1_ck 1..16 MHz
    vco = ref * pll["n"]
    assert ref > 2 * MHZ and 192 * MHZ <= vco <= 960 * MHZ  # DS12110: wide VCO 192..960 MHz, ref1_ck >= 2 MHz
    assert m["vos"] == 0 and m["revision"] == "V"  # VOS0 (480 MHz) exists on revision V only
    cpu = vco / pll["p"] / div["cpu"]
    hclk = cpu / div["ahb"]
    pclks = [hclk / div[f"apb{i}"] for i in range(1, 5)]
    assert cpu <= 480 * MHZ and hclk <= 240 * MHZ and max(pclks) <= 120 * MHZ  # DS12110 VOS0 maxima
    # RM0433's FLASH wait-state table, VOS0: 4 wait states and WRHIGHFREQ 2 for an AXI clock of 225..240 MHz
    assert 225 * MHZ < hclk <= 240 * MHZ and (m["flash_wait_states"], m["flash_wrhighfreq"]) == (4, 2)
    assert m["hz"] == {"sysclk": vco / pll["p"], "core": cpu, "hclk": hclk,
                       **{f"pclk{i}": p for i, p in enumerate(pclks, 1)}}
    assert (cpu, hclk, pclks) == (480 * MHZ, 240 * MHZ, [120 * MHZ] * 4)
    assert set(c["reset"]["hz"].values()) == {hsi}


def test_nrf52840_runs_at_64_mhz_either_way():
    c = board_json("nrf52840")["clock"]
    assert c["reset"]["hz"] == c["max"]["hz"] == {"sysclk": 64 * MHZ, "core": 64 * MHZ}  # PS 5.4
    assert c["max"]["hfxo"] is True


def test_the_loader_derives_what_the_files_state():
    for name, core, fields in [
        ("stm32f746", 216 * MHZ, {"pllm": 8, "plln": 216, "pllp": 0, "pllq": 9, "hpre": 0x0, "ppre1": 0x5,
                                  "ppre2": 0x4, "flash_latency": 7, "overdrive": 1}),
        ("stm32h743", 480 * MHZ, {"divm1": 4, "divn1": 59, "divp1": 1, "pll1rge": 3, "pll1vcosel": 0,
                                  "d1cpre": 0x0, "hpre": 0x8, "d2ppre1": 0x4, "d2ppre2": 0x4, "d1ppre": 0x4,
                                  "d3ppre": 0x4, "flash_latency": 4, "flash_wrhighfreq": 2, "vos0": 1}),
            ("nrf52840", 64 * MHZ, {"hfxo": 1})]:
        b = load_board(name)
        assert b.clock_hz == b.clock.max.core_hz == core
        assert b.clock.max.fields == fields


F7_SPOILS = [
    (lambda m: m["pll"].update(m=4), "VCO input \\(HSI / PLLM\\) is 4 MHz, outside 1 MHz..2 MHz"),
    (lambda m: m["pll"].update(n=240), "VCO output \\(VCO input x PLLN\\) is 480 MHz, outside 100 MHz..432 MHz"),
    (lambda m: m["pll"].update(n=40), "clock.max.pll.n \\(PLLN\\) is 40, outside 50..432"),
    (lambda m: (m["pll"].update(n=200), m["pll"].update(p=3)), "PLLP\\) is 3; it divides by 2, 4, 6 or 8 only"),
    (lambda m: m["dividers"].update(apb1=2), "APB1 \\(HCLK / apb1\\) is 108 MHz, above its maximum 54 MHz"),
    (lambda m: m["dividers"].update(apb2=1), "APB2 \\(HCLK / apb2\\) is 216 MHz"),
    (lambda m: m["dividers"].update(ahb=3), "clock.max.dividers.ahb is 3; the prescaler divides by 1, 2, 4"),
    (lambda m: m.update(flash_wait_states=6), "flash_wait_states is 6; HCLK 216 MHz needs 7"),
    (lambda m: m.update(overdrive=False), "SYSCLK \\(VCO / PLLP\\) is 216 MHz, above its maximum 180 MHz"),
    (lambda m: m["hz"].update(pclk1=108_000_000), "clock.max.hz.pclk1 states 108000000 Hz but the dividers give "
                                                  "54000000 Hz"),
    (lambda m: m["pll"].update(q=8), "Q output \\(VCO / PLLQ\\) is 54 MHz"),
]
H7_SPOILS = [
    (lambda m: m["pll"].update(n=70), "wide VCO \\(ref1_ck x DIVN1\\) is 1120 MHz, outside 192 MHz..960 MHz"),
    (lambda m: m["pll"].update(p=3), "DIVP1\\) is 3; PLL1's P divider takes even values only"),
    (lambda m: m["dividers"].update(ahb=1), "HCLK, the AXI/AHB clock \\(CPU / ahb\\) is 480 MHz"),
    (lambda m: m["dividers"].update(apb4=1), "APB4 \\(HCLK / apb4\\) is 240 MHz, above its maximum 120 MHz"),
    (lambda m: m.update(flash_wait_states=3), "flash_wait_states 3 and flash_wrhighfreq 2 do not fit an AXI clock "
                                              "of 240 MHz at VOS0"),
    (lambda m: m.pop("revision"), "clock.max.vos 0 needs \"revision\": \"V\""),
    (lambda m: m.update(vos=1), "wide VCO \\(ref1_ck x DIVN1\\) is 960 MHz, outside 192 MHz..836 MHz "
                                "\\(DS12110 PLL characteristics, revision Y\\)"),
    (lambda m: (m.update(vos=1), m["pll"].update(n=50), m["dividers"].update(ahb=1)),
     "HCLK, the AXI/AHB clock \\(CPU / ahb\\) is 400 MHz, above its maximum 200 MHz"),
    (lambda m: m["pll"].update(m=64), "DIVM1\\) is 64, outside 1..63"),
]


@pytest.mark.parametrize("board,spoil,message", [("stm32f746", s, m) for s, m in F7_SPOILS]
                         + [("stm32h743", s, m) for s, m in H7_SPOILS])
def test_a_clock_outside_the_manual_is_one_sentence(tmp_path, board, spoil, message):
    d = board_json(board)
    spoil(d["clock"]["max"])
    path = tmp_path / f"{board}.json"
    path.write_text(json.dumps(d))
    with pytest.raises(TinygenError, match=message) as err:
        load_board_file(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"board file {path} is malformed: ")


def test_a_rev_y_h743_at_400_mhz_is_accepted(tmp_path):
    """The setting the board file's `why` names for revision Y: VOS1, 400 MHz (RM0433's FLASH wait-state table:
    2 WS at 200 MHz)."""
    d = board_json("stm32h743")
    m = d["clock"]["max"]
    m.update(vos=1, flash_wait_states=2, flash_wrhighfreq=2)
    m.pop("revision")
    m["pll"]["n"] = 50
    m["hz"] = {"sysclk": 400 * MHZ, "core": 400 * MHZ, "hclk": 200 * MHZ,
               **{f"pclk{i}": 100 * MHZ for i in range(1, 5)}}
    path = tmp_path / "stm32h743.json"
    path.write_text(json.dumps(d))
    b = load_board_file(path)
    assert b.clock_hz == 400 * MHZ and b.clock.revision is None and b.clock.max.fields["vos0"] == 0


# ---- tg_board.h, the console, the build's summary -------------------------------------------------------------

@pytest.mark.parametrize("name,brr,brr_reset", [("stm32f746", 938, 139), ("stm32h743", 1042, 556)])
def test_usart_divisors_come_from_the_clock_that_runs(name, brr, brr_reset):
    """USART1 on APB2 (F746: 108 MHz, 16 MHz at reset), USART3 on APB1 (H743: 120 MHz, 64 MHz at reset):
    BRR = kernel clock / 115200, rounded; `--clock reset` uses the reset divisor for both."""
    b = load_board(name)
    rows = dict(firmware.hw_console_defines(b))
    assert (rows["TG_CONSOLE_BRR"], rows["TG_CONSOLE_BRR_RESET"]) == (f"{brr}U", f"{brr_reset}U")
    assert math.isclose(b.clock.max.hz[b.console["kernel_clock"]] / brr, 115200, rel_tol=0.001)
    rows = dict(firmware.hw_console_defines(b, "reset"))
    assert rows["TG_CONSOLE_BRR"] == rows["TG_CONSOLE_BRR_RESET"] == f"{brr_reset}U"


def test_clock_rows_for_each_image():
    f7 = load_board("stm32f746")
    d = firmware.clock_defines(f7, "max")
    assert ("TG_CLOCK_SKIPPED", "1") in d.qemu
    assert dict(d.qemu)["TG_CLOCK_SKIPPED_LINE"] == '" bringup=skipped board_core=216000000 clock=max"'
    assert ("TG_CLOCK_STM32F7", "1") in d.real and ("TG_CLOCK_CHOICE", '"max"') in d.real
    assert {n: v for n, v, _ in d.fields}["TG_CLOCK_PPRE1"] == "0x5U"  # APB1 = HCLK / 4
    assert dict(d.lines)["TG_CLOCK_MAX_LINE"] == (" sysclk=216000000 core=216000000 hclk=216000000 pclk1=54000000 "
                                                  "pclk2=108000000 source=pll-hsi flash_ws=7")
    r = firmware.clock_defines(f7, "reset")
    assert not r.fields and ("TG_CLOCK_CHOICE", '"reset"') in r.real
    assert all(not n.startswith("TG_CLOCK_STM32") for n, _ in r.real)  # nothing to bring up
    assert dict(r.qemu)["TG_CLOCK_SKIPPED_LINE"] == '" bringup=skipped board_core=16000000 clock=reset"'
    h7 = firmware.clock_defines(load_board("stm32h743"), "max")
    assert {n: v for n, v, _ in h7.fields}["TG_CLOCK_REV_ID"] == "0x2003U"
    with pytest.raises(TinygenError, match="--clock must be one of max, reset"):
        firmware.clock_defines(f7, "turbo")


def test_long_string_defines_are_laid_out_as_clang_format_does():
    text, multi = firmware.string_define("TG_X", " a=1", 10)
    assert (text, multi) == ('#define TG_X       " a=1"', False)
    text, multi = firmware.string_define("TG_CLOCK_MAX_LINE", " k=0123456789" * 10, 30)
    lines = text.splitlines()
    assert multi and lines[0].startswith("#define TG_CLOCK_MAX_LINE ") and all(len(ln) <= 100 for ln in lines)
    assert all(ln.endswith("\\") and len(ln) == 100 for ln in lines[:-1])
    assert "".join(ln.rstrip("\\").strip().strip('"') for ln in lines[1:]) == (" k=0123456789" * 10)


HAVE_GCC = shutil.which("arm-none-eabi-gcc") is not None


@pytest.mark.skipif(not HAVE_GCC, reason="arm-none-eabi-gcc is not on PATH (apt-get install gcc-arm-none-eabi)")
@pytest.mark.parametrize("name", ["stm32f746", "stm32h743", "nrf52840"])
def test_clock_and_console_compile_warning_free_for_every_image_and_choice(name, tmp_path):
    """tg_clock.c and tg_console.c against each tg_board.h a build can emit (QEMU image and real board,
    --clock max and reset), as the firmware compiles them: -Wall -Wextra -Werror. Objects only (~0.1 s each)."""
    from tinygen.paths import data_dir
    from tinygen.targets import armbuild

    b = load_board(name)
    glue = Path(__file__).resolve().parents[1] / "cmsis_glue"
    for clock in ("max", "reset"):
        inc = tmp_path / clock
        inc.mkdir()
        (inc / "tg_board.h").write_text(firmware.board_header(b, "m", FirmwareOptions(clock=clock)))
        for image in ([], ["-DTG_TARGET_QEMU=1"]):
            for src in ("tg_clock.c", "tg_console.c"):
                cmd = ["arm-none-eabi-gcc", *b.cpu_flags, *b.opt_flags, *armbuild.CFLAGS, *image, f"-I{inc}",
                       f"-I{data_dir('firmware')}", f"-I{glue}", "-c", str(data_dir("firmware") / src),
                       "-o", str(inc / "x.o")]
                r = subprocess.run(cmd, capture_output=True, text=True)
                assert r.returncode == 0, f"{name} --clock {clock} {image}: {r.stderr}"


@pytest.mark.skipif(shutil.which("clang-format") is None, reason="clang-format is not on PATH")
@pytest.mark.parametrize("clock", ["max", "reset"])
def test_every_board_header_is_clang_format_clean(clock, tmp_path):
    """The clock rows join each preprocessor branch's alignment group (clang-format 14 aligns a branch's macros
    across blank lines and comments; a multi-line macro ends a group), for both QEMU consoles."""
    style = f"--style=file:{Path(__file__).resolve().parents[1] / '.clang-format'}"
    for name in ("stm32f746", "stm32h743", "nrf52840"):
        for console in ("uart", "semihost"):
            header = tmp_path / f"{name}-{console}.h"
            header.write_text(firmware.board_header(load_board(name), "m",
                                                    FirmwareOptions(clock=clock, qemu_console=console)))
            assert max(len(ln) for ln in header.read_text().splitlines()) <= 100
            r = subprocess.run(["clang-format", "--dry-run", "--Werror", style, str(header)], capture_output=True,
                               text=True)
            assert r.returncode == 0, f"{header.name}:\n{r.stderr[:1500]}"


def test_build_summary_says_the_qemu_image_skips_the_bring_up():
    text = firmware.describe_clock(load_board("stm32h743"), "max")
    assert "stm32h743 at 480 MHz" in text and "falling back to the reset clock (64 MHz from hsi)" in text
    assert "falling back to the reset clock (64 MHz from hfint)" in firmware.describe_clock(load_board("nrf52840"),
                                                                                           "max")
    assert "the QEMU image skips the bring-up (mps2-an500 has no RCC)" in text
    assert "at 16 MHz" in firmware.describe_clock(load_board("stm32f746"), "reset")


# ---- the TG clock line and sim's estimates ----------------------------------------------------------------------

START = "TG start model=m board=stm32f746 target=stm32f746 samples=1 counter=cycles\n"
SAMPLE = "TG sample 0 label=1 crc=0x00000000 cycles=216000 ok=1\nTG done samples=1 mismatches=0\n"


def _report(clock_line: str, emulator: str = "renode"):
    run = sim.parse_output(START + clock_line + "\n" + SAMPLE)
    hz, source = sim.run_clock(run, {"clock": {"core_hz": 216 * MHZ}}, 216 * MHZ)
    return run, hz, sim.format_report(sim.SimResult(emulator, "x", "stm32f746", hz, "cycles", run, "s", 1.0,
                                                    clock_source=source))


def test_sim_estimates_at_the_clock_the_firmware_reports():
    run, hz, text = _report("TG clock sysclk=216000000 core=216000000 hclk=216000000 pclk1=54000000 "
                            "pclk2=108000000 source=pll-hsi flash_ws=7 clock=max")
    assert run.clock["core"] == hz == 216 * MHZ and run.clock["source"] == "pll-hsi"
    assert "est. ms @ 216 MHz" in text and "estimate from instruction counts" in text
    assert "clock: core 216 MHz (sysclk 216, hclk 216, pclk1 54, pclk2 108 MHz) from pll-hsi" in text
    run, hz, text = _report("TG clock sysclk=16000000 core=16000000 hclk=16000000 pclk1=16000000 pclk2=16000000 "
                            "source=hsi clock=max fallback=PWR_CSR1.ODRDY (not set after 1000000 polls: staying on "
                            "the reset clock)")
    assert hz == 16 * MHZ and run.clock["fallback"].startswith("PWR_CSR1.ODRDY (not set after 1000000 polls")
    assert "est. ms @ 16 MHz" in text and "13.5" in text  # 216,000 instructions at 16 MHz: 13.5 ms
    assert "the bring-up fell back: PWR_CSR1.ODRDY" in text and "the reset clock its bring-up fell back to" in text
    run, hz, text = _report("TG clock bringup=skipped board_core=216000000 clock=max", "qemu")
    assert hz == 216 * MHZ and "bring-up skipped" in text and "est. ms @ 216 MHz" in text
    run = sim.parse_output(START + SAMPLE)  # an older firmware: no clock line, the build's configured clock
    assert sim.run_clock(run, {"clock": {"core_hz": 16 * MHZ}}, 216 * MHZ)[0] == 16 * MHZ
    assert sim.run_clock(run, {}, 216 * MHZ) == (216 * MHZ, "the board file's maximum clock")


def test_robot_expects_the_clock_line_after_start():
    lines = firmware.robot_lines("m", load_board("nrf52840"), [1], ["0x0"], None, FirmwareOptions())
    assert lines[:2] == ["TG start model=m board=nrf52840 ", "TG clock sysclk="]


# ---- Renode 1.15.3's RCC models ------------------------------------------------------------------------------------

HAVE_RENODE = shutil.which("renode") is not None and shutil.which("arm-none-eabi-gcc") is not None

# What Renode 1.15.3 models (src/.../Miscellaneous/STM32F4_RCC.cs, STM32H7_RCC.cs, NRF52840_CLOCK.cs and the stock
# .repl files), and so what the bring-up does there:
#   stm32f746  RCC_CR HSIRDY/PLLRDY follow HSION/PLLON, RCC_CFGR SWS follows SW; PWR_CR1/CSR1 are "flipflop"
#              Python peripherals (reads alternate 0 and 0xFFFFFFFF, so ODRDY/ODSWRDY read set within two polls);
#              FLASH_ACR is plain memory (reads back): the firmware reaches 216 MHz.
#   stm32h743  RCC_CR HSIRDY/PLL1RDY and RCC_CFGR SWS as above, FLASH_ACR LATENCY reads back; PWR is a tag that
#              reads 0 (CR3's SCUEN clear: the supply step is skipped) but D3CR reads 0x2000 (VOSRDY); D1/D2/D3CFGR
#              and PLL1DIVR are not modelled; DBGMCU is not mapped (REV_ID reads 0): the firmware falls back on
#              the revision check, and with REV_ID 0x2003 assumed (-DTG_TEST_REV_ID) reaches 480 MHz.
#   nrf52840   TASKS_HFCLKSTART raises EVENTS_HFCLKSTARTED and HFCLKSTAT SRC/STATE: HFXO runs.
RENODE_CASES = {  # name: (board, extra C flags, what the TG clock line holds, its fallback or None)
    "stm32f746": ("stm32f746", (), "core=216000000", None),
    "stm32f746-clock-reset": ("stm32f746", "reset", "clock=reset", None),  # `--clock reset`: 16 MHz, untouched
    "stm32f746-odrdy-timeout": ("stm32f746", ("-DTG_TEST_CLOCK_TIMEOUT=0x40007004UL",), "core=16000000",
                                "PWR_CSR1.ODRDY (not set after 1000000 polls: staying on the reset clock)"),
    "stm32h743": ("stm32h743", (), "core=64000000",
                  "DBGMCU_IDC.REV_ID (read 0x00000000, not revision V's 0x2003, which VOS0 and this clock need: "
                  "staying on the reset clock)"),
    "stm32h743-rev-v": ("stm32h743", ("-DTG_TEST_REV_ID=0x2003U",), "core=480000000", None),
    "nrf52840": ("nrf52840", (), "source=hfxo", None),
}


@pytest.mark.skipif(not HAVE_RENODE, reason="renode (Renode 1.15.3 or newer, https://renode.io) and "
                    "arm-none-eabi-gcc must be on PATH")
@pytest.mark.parametrize("case", list(RENODE_CASES))
def test_renode_reaches_the_clock_or_falls_back_saying_so(case, tmp_path):
    from tinygen.codegen.project import write_project
    from tinygen.zoo.catalog import get_model

    name, cflags, want, fallback = RENODE_CASES[case]
    opts = FirmwareOptions(clock="reset") if cflags == "reset" else FirmwareOptions(extra_cflags=cflags)
    write_project(get_model("digits-cnn"), load_board(name), tmp_path / "b", firmware_options=opts)
    r = sim.simulate(tmp_path / "b", emulator="renode", timeout=120)  # bit-exact, or it raises
    line = next(ln for ln in r.run.lines if ln.startswith("TG clock "))
    assert f" {want} " in line + " ", line
    assert (r.run.clock.get("fallback") == fallback) if fallback else "fallback" not in r.run.clock, line
    assert r.clock_hz == r.run.clock["core"] == (16 * MHZ if cflags == "reset" else r.clock_hz)


def test_every_board_file_has_a_clock():
    names = sorted(p.stem for p in BOARDS_DIR.glob("*.json"))
    assert names and all(load_board(n).clock.tree in ("stm32f7", "stm32h7", "nrf52") for n in names)
    assert copy.deepcopy(load_board("stm32f746").clock.reset.hz) == {k: 16 * MHZ for k in
                                                                     ("sysclk", "core", "hclk", "pclk1", "pclk2")}
