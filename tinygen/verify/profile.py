"""`tinygen sim --profile`: where the firmware's instructions go, per layer and per kind of work.

The QEMU image is compiled once more with GCC's function instrumentation on the generated model
(`tinygen.codegen.firmware.build_profile_elf`, hooks in firmware/tg_profile.c) and run like `tinygen sim`:
its outputs, losses and checksum are held to the reference as always. It prints, per generated function
and root (tg_infer, tg_train_step), the calls and the exclusive instruction count; the ELF's symbol table
names the functions and `tinygen.ir.names.layer_symbol` ties each to its layer.

The instrumented image's count differs from the plain one's (the hooks; inlining and register allocation
change around them; within 1% on the MIT models): the shares are the profile's, the totals beside them the
plain image's, and a root's own share ("glue") holds the hooks' cost. Emulators count instructions, not cycles.
"""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tinygen.codegen.firmware import PROFILE_ELF, build_profile_elf
from tinygen.codegen.project import read_manifest
from tinygen.errors import BuildError, TinygenError
from tinygen.frontends import modelfile
from tinygen.ir.model import layer_macs
from tinygen.ir.names import layer_symbol
from tinygen.report import table
from tinygen.targets.boards import load_board
from tinygen.verify.sim import SimResult, simulate

ARM_NM = "arm-none-eabi-nm"
ROOTS = {"tg_infer": "inference", "tg_train_step": "training step"}
# What a generated function does, by the suffix after its layer's symbol (codegen/training.py names them);
# every other function of a layer is its forward kernel.
KINDS = {"save_input_s8": "forward", "grad_output_s16": "output gradient", "backward_input_s16": "input gradient",
         "backward_input1_s16": "input gradient", "backward_input2_s16": "input gradient",
         "backward_s16": "input gradient", "update_s8": "weight gradient + update"}
# Functions of no single layer, by name prefix (the model's small helpers are not instrumented: their
# instructions count to their caller, codegen.firmware.PROFILE_CFLAGS).
SHARED = {"tg_loss_": "loss"}
KIND_ORDER = ("forward", "output gradient", "input gradient", "weight gradient + update", "loss", "glue")


@dataclass
class ProfileRow:
    root: str  # "inference" or "training step"
    function: str
    layer: str  # the layer's name, "" for shared functions and the root itself
    op: str  # what the function is after its layer's symbol (e.g. convolve_1x1_s8), or its whole name
    kind: str
    calls: int
    count: int  # exclusive, over the whole run
    macs: int = 0  # forward kernels: the MACs of one call (a fused kernel's include its pointwise layer's)


@dataclass
class Profile:
    sim: SimResult  # the instrumented run (bit-exact with the reference)
    rows: list[ProfileRow] = field(default_factory=list)
    runs: dict[str, int] = field(default_factory=dict)  # root -> how many times it ran
    dropped: int = 0

    def per_run(self, root: str) -> dict[str, int]:
        """Instructions per run of `root`, by kind (KIND_ORDER)."""
        out: dict[str, int] = defaultdict(int)
        for r in self.rows:
            if r.root == root:
                out[r.kind] += r.count
        n = max(1, self.runs.get(root, 1))
        return {k: out[k] // n for k in KIND_ORDER if k in out}

    def to_json(self) -> dict:
        """The runs of each root, instructions per run of it by kind, and every function per run of its root."""
        return {"runs": self.runs, "dropped": self.dropped,
                "by_kind": {root: self.per_run(root) for root in self.runs},
                "functions": [vars(r) for root in self.runs for r in self.layers(root)]}

    def layers(self, root: str) -> list[ProfileRow]:
        """`root`'s functions with their counts per run of it, largest first."""
        n = max(1, self.runs.get(root, 1))
        rows = [ProfileRow(r.root, r.function, r.layer, r.op, r.kind, r.calls, r.count // n, r.macs)
                for r in self.rows if r.root == root]
        return sorted(rows, key=lambda r: -r.count)


def symbols(elf: Path) -> dict[int, str]:
    """Function address (Thumb bit cleared) -> name, from the ELF's symbol table."""
    try:
        out = subprocess.run([ARM_NM, "--defined-only", str(elf)], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(f"{ARM_NM} could not read {elf} ({e}); install gcc-arm-none-eabi's binutils") from e
    names = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tT":
            names[int(parts[0], 16) & ~1] = parts[2]
    return names


def classify(name: str, layers: list[str]) -> tuple[str, str, str]:
    """(layer, op, kind) of generated function `name`; `layers` are the model's layer names in order."""
    for prefix, kind in SHARED.items():
        if name.startswith(prefix):
            return "", name, kind
    m = re.match(r"tg_l(\d+)_", name)
    if m and int(m.group(1)) < len(layers):
        i = int(m.group(1))
        sym = layer_symbol(i, layers[i])
        if name.startswith(sym + "_"):
            op = name[len(sym) + 1:]
            return layers[i], op, KINDS.get(op, "forward")
    return "", name, "glue"


def _forward_macs(model, functions: set[str]) -> dict[str, int]:
    """Layer -> MACs of its forward kernel: a weighted layer with no kernel of its own (a pointwise conv fused
    into the depthwise kernel after it) adds its MACs to the next layer's."""
    out, carried = {}, 0
    for i, lay in enumerate(model.layers):
        carried += layer_macs(lay)
        sym = layer_symbol(i, lay.name) + "_"
        if any(f.startswith(sym) and KINDS.get(f[len(sym):], "forward") == "forward" for f in functions):
            out[lay.name], carried = carried, 0
    return out


def run_profile(build_dir: Path, timeout: float = 600.0, progress=None) -> Profile:
    """Build the profile image of `build_dir` (QEMU only) and run it; the run is checked like `tinygen sim`."""
    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    info = manifest.get("firmware")
    if not info or not info.get("compiled"):
        raise TinygenError(f"{build_dir} has no compiled firmware; build it with arm-none-eabi-gcc on PATH")
    board = load_board(manifest["board"])
    elf = build_profile_elf(build_dir, board, info)
    sim = simulate(build_dir, "qemu", timeout, progress, elf_name=PROFILE_ELF)
    names = symbols(elf)
    model = modelfile.load(build_dir / manifest["model_file"])
    layers = [lay.name for lay in model.layers]
    prof = Profile(sim, dropped=sim.run.profile_dropped)
    macs = _forward_macs(model, {names.get(p["fn"] & ~1, "") for p in sim.run.profile})
    for p in sim.run.profile:
        fn, root = names.get(p["fn"] & ~1, f"0x{p['fn']:08x}"), names.get(p["root"] & ~1, "")
        if root not in ROOTS:
            continue
        if fn == root:
            prof.runs[ROOTS[root]] = p["calls"]
        layer, op, kind = classify(fn, layers)
        mac = macs.get(layer, 0) if kind == "forward" and op != "save_input_s8" else 0
        prof.rows.append(ProfileRow(ROOTS[root], fn, layer, op, kind, p["calls"], p["count"], mac))
    if not prof.rows:
        raise BuildError(f"the profile image of {build_dir} printed no profile lines; rebuild it with this tinygen")
    return prof


def format_profile(prof: Profile, plain: dict[str, int] | None = None, top: int = 12) -> str:
    """Tables per root: instructions by kind of work and the `top` layers; `plain` (root -> instructions per run
    of the uninstrumented image) is shown beside the profile's own totals."""
    out = []
    for root in ("inference", "training step"):
        kinds = prof.per_run(root)
        if not kinds:
            continue
        total = sum(kinds.values())
        head = f"{root}: {total:,} instructions per run in the profile image"
        if plain and root in plain:
            head += f" ({plain[root]:,} in the plain image)"
        rows = [[k, f"{v:,}", f"{100 * v / total:.1f}%"] for k, v in kinds.items()]
        out += [head, table(["work", "instructions", "share"], rows, "lrr"), ""]
        rows = [[r.layer or "-", r.op, r.kind, f"{r.count:,}", f"{100 * r.count / total:.1f}%",
                 f"{r.macs / r.count:.2f}" if r.macs and r.count else ""] for r in prof.layers(root)[:top]]
        out += [f"the {top} largest functions:",
                table(["layer", "function", "work", "instructions", "share", "MAC/instr"], rows, "lllrrr"), ""]
    out.append("Instruction counts from QEMU -icount shift=0 (SysTick, 40-instruction resolution per span); the "
               "profile image runs the hooks too, counted in 'glue'. Emulators count instructions, not cycles."
               + (f" {prof.dropped} spans were not recorded." if prof.dropped else ""))
    return "\n".join(out)
