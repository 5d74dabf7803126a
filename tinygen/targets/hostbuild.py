"""Compile generated C for the host and run it: the `tinygen verify` path.

Flags are the project's promise about generated code: C99, every warning an error,
AddressSanitizer and UndefinedBehaviorSanitizer with no recovery.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tinygen.errors import BuildError
from tinygen.targets.process import run_streaming

WARNINGS = ["-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wstrict-prototypes", "-Wmissing-prototypes"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
# -g1: line tables for the sanitizers' reports; full -g doubled the compile of a large model (32 s vs 15 s)
HOST_CFLAGS = ["-std=c99", "-O1", "-g1", "-fno-strict-aliasing", *WARNINGS, *SANITIZE]
# Benchmarks that train thousands of steps on the host: the same code and warnings, optimised, no sanitizers.
HOST_FAST_CFLAGS = ["-std=c99", "-O2", "-fno-strict-aliasing", *WARNINGS]


def host_cc() -> str:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise BuildError("no host C compiler found; install gcc (apt-get install gcc) or set CC")
    return cc


def compile_host(sources: list[Path], include_dirs: list[Path], out: Path, extra: list[str] | None = None,
                 fast: bool = False) -> Path:
    cmd = [host_cc(), *(HOST_FAST_CFLAGS if fast else HOST_CFLAGS), *(extra or []), *[f"-I{d}" for d in include_dirs],
           *[str(s) for s in sources], "-o", str(out), "-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        first = next((ln for ln in res.stderr.splitlines() if "error" in ln), res.stderr.strip()[:300])
        raise BuildError(f"the generated C failed to compile on the host: {first}")
    return out


def run_host(binary: Path, args: list[str], timeout: float = 600, on_line=None) -> str:
    """Run a host binary under the sanitizers' options; returns its output (stdout and stderr, each line also to
    `on_line` as it arrives). BuildError naming the sanitizer's report when it fails."""
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    text, code, _ = run_streaming([str(binary), *args], timeout, on_line, env=env)
    if code is None:
        raise BuildError(f"{binary.name} did not finish within {timeout:.0f} s")
    if code != 0:
        lines = [ln for ln in text.splitlines() if not ln.startswith("TG step ")]
        san = next((ln for ln in lines if "runtime error" in ln or "ERROR:" in ln), "")
        raise BuildError(f"{binary.name} exited with status {code}"
                         + (f" ({san.strip()})" if san else f": {chr(10).join(lines).strip()[-300:]}"))
    return text
