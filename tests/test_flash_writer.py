"""firmware/tg_flash.c's nRF NVMC writer, with tg_checkpoint.c, against a model of the controller: QEMU's
micro:bit (nRF51822) has the nRF52's NVMC registers (READY, CONFIG, ERASEPAGE) and NOR-flash semantics (a write
only clears bits, and only with CONFIG = WEN; ERASEPAGE sets a 1 KB page to 0xFF). tests/c/nvmc_check.c erases,
saves three checkpoints, restores the newest, loses it and restores the one before, and refuses another model's.
The STM32 writers have no emulator here (QEMU has no STM32F7/H7 flash controller, Renode is not installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tinygen.paths import data_dir

HERE = Path(__file__).resolve().parent
needs_tools = pytest.mark.skipif(not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")),
                                 reason="arm-none-eabi-gcc and qemu-system-arm are needed (scripts/setup.sh)")

BOARD_H = """#ifndef TG_BOARD_H
#define TG_BOARD_H
#define TG_FLASH_NRF52         1
#define TG_NVMC_PAGE_BYTES     1024U
#define TG_CKPT_SLOT0_ADDR     0x00038000UL
#define TG_CKPT_SLOT_BYTES     16384UL
#define TG_FLASH_PROGRAM_BYTES 4U
#endif
"""
LINK = """ENTRY(tg_check_reset)
MEMORY { FLASH (rx) : ORIGIN = 0x0, LENGTH = 0x38000  RAM (rwx) : ORIGIN = 0x20000000, LENGTH = 16K }
SECTIONS {
  .isr_vector : { KEEP(*(.isr_vector)) } > FLASH
  .text : { *(.text .text.*) *(.rodata .rodata.*) } > FLASH
  .bss (NOLOAD) : { *(.bss .bss.* COMMON) } > RAM
  __tg_check_stack_top = ORIGIN(RAM) + LENGTH(RAM);
}
"""


@needs_tools
def test_nvmc_writer_and_checkpoints_on_qemus_nrf51_controller(tmp_path):
    (tmp_path / "tg_board.h").write_text(BOARD_H)
    (tmp_path / "link.ld").write_text(LINK)
    fw = data_dir("firmware")
    elf = tmp_path / "nvmc_check.elf"
    cmd = ["arm-none-eabi-gcc", "-mcpu=cortex-m0", "-mthumb", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror",
           "-ffunction-sections", f"-I{tmp_path}", f"-I{fw}", f"-I{data_dir('cmsis_glue')}",
           str(HERE / "c" / "nvmc_check.c"), str(fw / "tg_flash.c"), str(fw / "tg_checkpoint.c"),
           str(fw / "tg_crc32.c"), "-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs",
           "-Wl,--gc-sections", "-T", str(tmp_path / "link.ld"), "-o", str(elf)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["qemu-system-arm", "-M", "microbit", "-nographic", "-monitor", "none", "-serial", "null",
                        "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and "nvmc_check: ok" in r.stdout + r.stderr, (r.returncode, r.stdout, r.stderr)
