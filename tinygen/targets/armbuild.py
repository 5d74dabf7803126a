"""Compile and link firmware with arm-none-eabi-gcc, and read what the ELF holds.

The flags here are the single source: `tinygen.codegen.firmware` renders the same lists into the
generated Makefile and CMakeLists.txt, and `compile_elfs` runs them directly (no make
needed). Generated C must build warning-free: -Wall -Wextra -Werror plus the host's
extra warnings, and -Wdouble-promotion because no float belongs on the device.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tinygen.errors import BuildError, TinygenError
from tinygen.targets.hostbuild import WARNINGS

ARM_CC = "arm-none-eabi-gcc"
ARM_SIZE = "arm-none-eabi-size"
# -fno-strict-aliasing as on the host (hostbuild.HOST_CFLAGS): the generated code views arena slices
# through more than one type. The optimisation flags come from the board file (`opt_flags`, chosen by
# measurement per core); DEFAULT_OPT_FLAGS for a board file that names none.
DEFAULT_OPT_FLAGS = ["-O2"]
CFLAGS = ["-std=c99", "-g", "-fno-strict-aliasing", *WARNINGS, "-Wdouble-promotion", "-ffunction-sections",
          "-fdata-sections", "-fno-common"]
LDFLAGS = ["-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs", "-Wl,--gc-sections",
           "-Wl,--print-memory-usage"]


class LinkOverflowError(BuildError):
    """The firmware does not fit the board: a memory region overflowed at link time. `kinds`: what the overflowed
    regions are ("flash", "sram", ...: the first word of their descriptions)."""

    def __init__(self, message: str, kinds: frozenset[str] = frozenset(), nbytes: int = 0):
        super().__init__(message)
        self.kinds = kinds
        self.nbytes = nbytes  # the largest overflow, in bytes


# the flags a firmware whose code does not fit the flash at the board's `opt_flags` is built with instead
SIZE_OPT_FLAGS = ["-Os"]


@dataclass
class ElfJob:
    """One image to build: which linker script, extra defines, where the ELF goes."""

    name: str  # "qemu" or the board name
    linker_script: Path
    elf: Path
    defines: list[str]
    regions: dict[str, str]  # MEMORY region name -> one-line description for error messages


def toolchain() -> str | None:
    """Path of arm-none-eabi-gcc, or None when it is not installed."""
    return shutil.which(ARM_CC)


def _obj_name(src: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]+", "_", src.lstrip("./")).removesuffix("_c") + ".o"


def compile_elfs(fw_dir: Path, cpu_flags: list[str], common_sources: list[str], target_sources: list[str],
                 include_dirs: list[str], jobs: list[ElfJob], extra_cflags: list[str] | None = None,
                 opt_flags: list[str] | None = None, obj_dir: str = "obj") -> None:
    """Build every job's ELF in `fw_dir` (source and include paths relative to it); objects go to
    build/`obj_dir` (a build with other flags, such as the profile image, keeps its own).

    `common_sources` (the model, its weights, the dataset) do not depend on the target and are compiled
    once; `target_sources` (harness, runtime: they include tg_board.h) once per job with its defines.
    Compiles run in parallel. Raises LinkOverflowError naming the region and the overflow when an image
    does not fit, BuildError with the compiler's first error for anything else.
    """
    if toolchain() is None:
        raise BuildError(f"{ARM_CC} is not on PATH; install it (Debian: apt-get install gcc-arm-none-eabi "
                         "libnewlib-arm-none-eabi) to build the firmware")
    build = fw_dir / "build"
    opt = DEFAULT_OPT_FLAGS if opt_flags is None else opt_flags
    base = [ARM_CC, *cpu_flags, *opt, *CFLAGS, *(extra_cflags or []), *[f"-I{i}" for i in include_dirs]]
    compiles: list[tuple[str, list[str]]] = []  # (log key, command)
    objects: dict[str, list[str]] = {job.name: [] for job in jobs}
    (build / obj_dir / "common").mkdir(parents=True, exist_ok=True)
    for src in common_sources:
        obj = f"build/{obj_dir}/common/{_obj_name(src)}"
        compiles.append(("common", [*base, "-c", src, "-o", obj]))
        for job in jobs:
            objects[job.name].append(obj)
    for job in jobs:
        (build / obj_dir / job.name).mkdir(parents=True, exist_ok=True)
        for src in target_sources:
            obj = f"build/{obj_dir}/{job.name}/{_obj_name(src)}"
            compiles.append((job.name, [*base, *[f"-D{d}" for d in job.defines], "-c", src, "-o", obj]))
            objects[job.name].append(obj)

    def run(cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=fw_dir, capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(pool.map(run, [cmd for _, cmd in compiles]))
        logs = {job.name: [] for job in jobs}
        for (key, _), res in zip(compiles, results, strict=True):
            for job in jobs:
                if key in ("common", job.name):
                    logs[job.name].append(res.stdout + res.stderr)
        bad = [(key, res) for (key, _), res in zip(compiles, results, strict=True) if res.returncode != 0]
        if bad:
            for job in jobs:
                (build / f"{job.elf.stem}.log").write_text("".join(logs[job.name]))
            key, res = bad[0]
            job = next((j for j in jobs if j.name == key), jobs[-1])
            raise _explain_failure(job, res.stdout + res.stderr)
        links = [[ARM_CC, *cpu_flags, *objects[job.name], "-T", job.linker_script.name, *LDFLAGS,
                  f"-Wl,-Map=build/{job.elf.stem}.map", "-o", f"build/{job.elf.name}"] for job in jobs]
        link_results = list(pool.map(run, links))
    failures = []
    for job, res in zip(jobs, link_results, strict=True):
        (build / f"{job.elf.stem}.log").write_text("".join(logs[job.name]) + res.stdout + res.stderr)
        if res.returncode != 0:
            failures.append((job, res.stdout + res.stderr))
    if failures:
        job, text = failures[-1]  # the real-board image (listed last) names the regions users flash
        raise _explain_failure(job, text)


_OVERFLOW = re.compile(r"region `([^']+)' overflowed by (\d+) bytes")
_NOFIT = re.compile(r"section `([^']+)' will not fit in region `([^']+)'")
SECTION_ROLES = {".tg_arena": "the planner's activation arena", ".rodata": "constants and frozen weights",
                 ".text": "code", ".data": "initialised data", ".bss": "zeroed data", ".tg_stack": "the stack"}
_ASSERT = re.compile(r"tinygen: ([^\n]+)")


def _explain_failure(job: ElfJob, text: str) -> BuildError:
    overflows: dict[str, int] = {}
    for region, nbytes in _OVERFLOW.findall(text):
        overflows[region] = max(overflows.get(region, 0), int(nbytes))
    if overflows:
        first = {}
        for sec, region in _NOFIT.findall(text):
            first.setdefault(region, sec)
        parts = []
        for r, n in overflows.items():
            what = f", first section that does not fit: {first[r]}" if r in first else ""
            if r in first and first[r] in SECTION_ROLES:
                what += f" ({SECTION_ROLES[first[r]]})"
            parts.append(f"region {r} ({job.regions.get(r, 'memory')}{what}) overflowed by {n:,} bytes")
        kinds = frozenset(job.regions.get(r, "memory").split(",")[0].split()[0] for r in overflows)
        return LinkOverflowError(f"the firmware does not fit when linking {job.elf.name}: {' and '.join(parts)}; "
                                 "choose a smaller model or input, or a board with more memory", kinds,
                                 max(overflows.values()))
    m = _ASSERT.search(text)
    if m:
        return BuildError(f"linking {job.elf.name} failed a layout check: {m.group(1).strip()}")
    lines = [ln for ln in text.splitlines() if "error" in ln.lower()]
    first = lines[0].strip() if lines else text.strip()[-300:]
    return BuildError(f"the firmware failed to build ({job.elf.name}): {first}")


SECTION_GROUPS = {
    "text": (".isr_vector", ".text"),
    "rodata": (".rodata", ".ARM.extab", ".ARM.exidx", ".tg_init_tables"),
    "data": (".data",),
    "bss": (".bss",),
    "arena": (".tg_arena",),
    "stack": (".tg_stack",),
}


ELF_MACHINE_ARM = 40
_ELF_HEADER = struct.Struct("<16sHHIIIIIHHHHHH")  # ELF32 little-endian file header
_ELF_PHDR = struct.Struct("<IIIIIIII")  # p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align


def elf_problem(data: bytes) -> str | None:
    """Why `data` is not a complete 32-bit little-endian ARM ELF (None when it is): every program header and
    every loaded segment must lie inside the file, so an emulator never starts on a truncated image."""
    if len(data) < _ELF_HEADER.size or data[:4] != b"\x7fELF":
        return f"it has {len(data)} bytes and no ELF header"
    ident, _, machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _ = _ELF_HEADER.unpack_from(data)
    if ident[4] != 1 or ident[5] != 1 or machine != ELF_MACHINE_ARM:
        return "it is not a 32-bit little-endian ARM ELF"
    if phnum == 0 or phentsize < _ELF_PHDR.size or phoff + phnum * phentsize > len(data):
        return f"its program headers end past its {len(data)} bytes (truncated)"
    for i in range(phnum):
        _, offset, _, _, filesz, *_ = _ELF_PHDR.unpack_from(data, phoff + i * phentsize)
        if offset + filesz > len(data):
            return f"segment {i} needs bytes up to {offset + filesz} but the file has {len(data)} (truncated)"
    if shnum and shoff + shnum * shentsize > len(data):
        return f"its section headers end past its {len(data)} bytes (truncated)"
    return None


def check_elf(elf: Path, rebuild: str) -> None:
    """One sentence (exit 2: a damaged build directory is bad input) naming the problem and `rebuild` (how to make
    the ELF again) unless `elf` is complete."""
    try:
        data = elf.read_bytes()
    except OSError as exc:
        raise TinygenError(f"cannot read {elf}: {exc.strerror or exc}; {rebuild}") from None
    problem = elf_problem(data)
    if problem is not None:
        raise TinygenError(f"{elf} is not a complete firmware image: {problem}; {rebuild}")


def elf_sections(elf: Path) -> dict[str, tuple[int, int]]:
    """{section: (size, address)} of the allocated sections, from arm-none-eabi-size -A."""
    res = subprocess.run([ARM_SIZE, "-A", "-d", str(elf)], capture_output=True, text=True)
    if res.returncode != 0:
        raise BuildError(f"{ARM_SIZE} could not read {elf}: {res.stderr.strip()}")
    sections = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit() and parts[2].isdigit():
            if int(parts[2]) != 0 or parts[0] in (".isr_vector", ".text"):
                sections[parts[0]] = (int(parts[1]), int(parts[2]))
    return sections


def elf_sizes(elf: Path) -> dict:
    """Section sizes and the totals that matter: flash = text + rodata + data, SRAM = data + bss + arena +
    stack (guard included) + bank sections."""
    sections = elf_sections(elf)
    sizes = {k: sum(sections.get(s, (0, 0))[0] for s in names) for k, names in SECTION_GROUPS.items()}
    banks = {s: v[0] for s, v in sections.items() if s.startswith(".tg_bank_")}
    sizes["banks"] = sum(banks.values())
    sizes["flash_bytes"] = sizes["text"] + sizes["rodata"] + sizes["data"]
    sizes["sram_bytes"] = sizes["data"] + sizes["bss"] + sizes["arena"] + sizes["stack"] + sizes["banks"]
    sizes["sections"] = {s: {"size": v[0], "address": f"0x{v[1]:08x}"} for s, v in sorted(sections.items())}
    return sizes
