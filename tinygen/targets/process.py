"""Run a program and hand each line of its output on as it arrives: how a long host run or emulator run shows
it is alive (the one place tinygen starts a program whose output it streams)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable


def run_streaming(cmd: list[str], timeout: float, on_line: Callable[[str], None] | None = None,
                  env: dict | None = None, cwd=None) -> tuple[str, int | None, float]:
    """Run `cmd` (stdout and stderr as one stream, stdin closed); every line goes to `on_line` as it arrives.
    Returns (all output, exit status or None when `timeout` seconds passed and the process group was killed,
    wall seconds)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True, env=env, cwd=cwd)
    lines: list[str] = []

    def pump():
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line)
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = None
    reader.join(timeout=10)
    return "".join(lines), code, time.monotonic() - t0
