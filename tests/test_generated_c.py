"""The generated C reads like hand-written C: for four real builds (the digits CNN trained, with a fixed
scheme and with the device's own selection, MbV2-w0.35 and MCUNet-5fps with their published 49kb schemes; 8, 4
and 0 master bits; MCUNet's initial stage patch by patch) every emitted .c/.h under
src/, host/ and firmware/ has no arithmetic on identity constants (`+ 0`, `- 0`, `* 1`, `/ 1`, `% 1`,
also through a named constant of that value), no `for` loop of one iteration, no line over 100 characters, and is
`clang-format --dry-run --Werror` clean with the committed style. Each check reports every offending
file and line. The host C of each build also compiles with the project's flags (C99, -Werror,
ASan + UBSan) and its forward pass runs on a sample."""

from __future__ import annotations

import ast
import functools
import operator
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tinygen import cli
from tinygen.codegen.firmware import FirmwareOptions
from tinygen.paths import shared_dir
from tinygen.targets.hostbuild import compile_host, run_host

MAX_LINE = 100
STYLE = Path(__file__).resolve().parent.parent / ".clang-format"
SCHEMES = "models/mit-tiny-training/sparse_schemes.json"
BUILDS = {
    "digits-cnn": lambda root: ["--model", "digits-cnn", "--classes", "5", "--samples", "4",
                                "--checkpoint-every", "1",  # the checkpoint harness's C is held to the style too
                                "--filter-r", "2"],  # the trained layers' filtered kernels
    "digits-ondevice": lambda root: ["--model", "digits-cnn", "--classes", "5", "--samples", "4",
                                     "--update", "on-device",  # the device's selection pass and greedy
                                     "--budget-kb", "18"],  # conv2 a candidate of 4 of its 8 channels: split
    "mbv2-w0.35": lambda root: ["--model", "mbv2-w0.35", "--classes", "10", "--update",
                                f"{root}/{SCHEMES}#mbv2/49kb", "--samples", "2",
                                "--master-bits", "4",  # the nibble-packed master fractions
                                "--path-filter-r", "2"],  # the filtered kernels of the frozen path
    "mcunet-5fps": lambda root: ["--model", "mcunet-5fps", "--classes", "10", "--update",
                                 f"{root}/{SCHEMES}#mcunet/49kb", "--samples", "2",
                                 "--master-bits", "0",  # in-place int8 weights, the stochastic rounding kernels
                                 "--patches", "2", "--patch-stage", "b3_pw2"],  # the patch stage's C
}


@pytest.fixture(scope="module", params=list(BUILDS))
def build(request, tmp_path_factory):
    """One build per model and module, without compiling the firmware ELFs (only their sources matter)."""
    name = request.param
    root = shared_dir()
    if not name.startswith("digits") and root is None:
        pytest.skip("../shared is not present: the MIT models are not available")
    out = tmp_path_factory.mktemp(name) / "b"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "FirmwareOptions", functools.partial(FirmwareOptions, compile=False))
        r = CliRunner().invoke(cli.main, ["build", "--board", "stm32f746", *BUILDS[name](root), "--steps", "2",
                                          "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def _sources(out):
    files = [p for d in ("src", "host", "firmware") for p in sorted((out / d).rglob("*")) if p.suffix in (".c", ".h")]
    assert files
    return files


_COMMENT_OR_LITERAL = re.compile(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)


def _code(text: str) -> str:
    """`text` with comments and string/char literals blanked (line structure kept)."""
    return _COMMENT_OR_LITERAL.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


# a binary + or - of the literal 0, or a *, / or % by the literal 1 (not 10, 0x10, 1.5 or 0U-style suffixes)
_IDENTITY = re.compile(r"(?<![+\-*/%<>=!&|^])([+\-]\s*0|[*/%]\s*1)[uUlL]*(?![\w.])")
_NAMED = re.compile(r"([+\-]|[*/%])\s*([A-Za-z_]\w*)(?![\w(\[])")
_ENUMERATOR = re.compile(r"^\s*([A-Z_][A-Z0-9_]*)\s*=\s*([^,;{}]+),\s*$")
_DEFINE = re.compile(r"^#define\s+([A-Za-z_]\w*)\s+([^/\n]+?)\s*(?:/\*.*)?$")
_FOR = re.compile(r"\bfor\s*\(\s*(?:\w+\s+)?(\w+)\s*=\s*([^;]+);\s*(\w+)\s*(<=|<)\s*([^;]+);")


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
        ast.Mod: operator.mod, ast.LShift: operator.lshift, ast.RShift: operator.rshift}


def _eval(expr: str, values: dict[str, int]) -> int | None:
    """The value of a constant integer expression over known names, or None (parsed, never executed)."""
    expr = re.sub(r"\b(\d+)[uUlL]+\b", r"\1", expr.strip())
    if not re.fullmatch(r"[\w\s()+\-*/%<>]*", expr):
        return None
    try:
        tree = ast.parse(re.sub(r"(?<![/])/(?!/)", "//", expr), mode="eval").body
    except SyntaxError:
        return None

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in values:
            return values[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = value(node.operand)
            return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = value(node.left), value(node.right)
            if a is None or b is None or (isinstance(node.op, (ast.FloorDiv, ast.Mod)) and b == 0):
                return None
            if isinstance(node.op, (ast.LShift, ast.RShift)) and not 0 <= b < 64:
                return None
            return _OPS[type(node.op)](a, b)
        return None

    return value(tree)


def _scopes(code: str):
    """(first line number, lines, constants) per top-level block; constants are the file's #defines and
    the block's enumerators with integer values."""
    lines = code.splitlines()
    defines: dict[str, int] = {}
    for ln in lines:
        m = _DEFINE.match(ln)
        if m and (v := _eval(m.group(2), defines)) is not None:
            defines[m.group(1)] = v
    start = 0
    for i, ln in enumerate(lines + ["}"]):
        if ln.startswith("}") or i == len(lines):
            block = lines[start:i + 1]
            values = dict(defines)
            for b in block:
                m = _ENUMERATOR.match(b)
                if m and (v := _eval(m.group(2), values)) is not None:
                    values[m.group(1)] = v
            yield start + 1, block, values
            start = i + 1


def _identity_ops(text: str) -> list[str]:
    bad = []
    for first, block, values in _scopes(_code(text)):
        for k, ln in enumerate(block):
            if _ENUMERATOR.match(ln) or ln.startswith("#"):
                hits = [m.group(0) for m in _IDENTITY.finditer(ln)] if not ln.startswith("#") else []
            else:
                hits = [m.group(0) for m in _IDENTITY.finditer(ln)]
                for m in _NAMED.finditer(ln):
                    op, name = m.groups()
                    if name in values and values[name] == (0 if op in "+-" else 1):
                        if op in "+-" and re.search(r"[\w)\]]\s*$", ln[:m.start()]) is None:
                            continue  # a unary sign, not an addition
                        hits.append(f"{op} {name} (= {values[name]})")
            if ln.startswith("#define") and _IDENTITY.search(ln):
                hits = [m.group(0) for m in _IDENTITY.finditer(ln)]
            bad += [f"{first + k}: {h.strip()}: {ln.strip()}" for h in hits]
    return bad


def _one_trip_loops(text: str) -> list[str]:
    bad = []
    for first, block, values in _scopes(_code(text)):
        for k, ln in enumerate(block):
            for m in _FOR.finditer(ln):
                var, lo, var2, op, hi = m.groups()
                lo_v, hi_v = _eval(lo, values), _eval(hi, values)
                if var == var2 and lo_v is not None and hi_v is not None and hi_v - lo_v + (op == "<=") == 1:
                    bad.append(f"{first + k}: {ln.strip()}")
    return bad


def _report(out, check) -> None:
    failures = {}
    for path in _sources(out):
        found = check(path)
        if found:
            failures[str(path.relative_to(out))] = found
    assert not failures, "\n".join(f"{f}: {len(v)} x, e.g. " + "; ".join(v[:3]) for f, v in failures.items())


def test_no_identity_arithmetic(build):
    _report(build, lambda p: _identity_ops(p.read_text()))


def test_no_one_iteration_loops(build):
    _report(build, lambda p: _one_trip_loops(p.read_text()))


def test_lines_fit(build):
    _report(build, lambda p: [f"{i}: {len(ln)} characters" for i, ln in enumerate(p.read_text().splitlines(), 1)
                              if len(ln) > MAX_LINE])


@pytest.mark.skipif(shutil.which("clang-format") is None,
                    reason="clang-format is not installed (scripts/setup.sh installs it): the style cannot be checked")
def test_clang_format_clean(build):
    style = f"--style=file:{STYLE}"  # the build lives outside the checkout: name the committed style

    def check(path):
        r = subprocess.run(["clang-format", "--dry-run", "--Werror", style, str(path)], capture_output=True,
                           text=True)
        return [ln for ln in r.stderr.splitlines() if ": error:" in ln] or (["clang-format failed"] if r.returncode
                                                                          else [])

    _report(build, check)


def test_host_forward_compiles_clean_and_runs(build, tmp_path):
    """The build's host C under -std=c99 -Wall -Wextra -Werror and ASan + UBSan, as `tinygen verify` does;
    one forward pass on a zero input."""
    sources = sorted((build / "src").glob("*.c")) + [build / "host" / "main_host.c"]
    exe = compile_host(sources, [build / "src", build / "cmsis_glue"], tmp_path / "tg_host")
    header = (build / "src" / "tg_model.h").read_text()
    size = int(re.search(r"#define TG_INPUT_SIZE\s+(\d+)", header).group(1))
    (tmp_path / "in.bin").write_bytes(np.zeros(size, dtype=np.int8).tobytes())
    run_host(exe, [str(tmp_path / "in.bin"), str(tmp_path / "out.bin")])
    assert (tmp_path / "out.bin").stat().st_size > 0
