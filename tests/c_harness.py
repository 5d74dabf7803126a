"""microTVM-style test runner: generate the C for a model, build it on the host with the
project's flags (-Werror, ASan+UBSan), run it on given inputs, return its outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinygen import codegen
from tinygen.hostbuild import compile_host, run_host
from tinygen.paths import data_dir


def run_generated_forward(model, x: np.ndarray, workdir: Path) -> np.ndarray:
    workdir = Path(workdir)
    src = workdir / "src"
    codegen.generate_forward(model, src)
    main_c = workdir / "main_host.c"
    main_c.write_text(codegen.environment().get_template("host/main_host.c.j2").render())
    binary = compile_host(sorted(src.glob("*.c")) + [main_c], [src, data_dir("cmsis_glue")], workdir / "tg_host")
    fin, fout = workdir / "in.bin", workdir / "out.bin"
    fin.write_bytes(np.ascontiguousarray(x, dtype=np.int8).tobytes())
    run_host(binary, [str(fin), str(fout)])
    return np.frombuffer(fout.read_bytes(), dtype=np.int8).reshape((len(x),) + tuple(model.output.shape))


def c_driver(workdir: Path, source: str, dtype, n_out: int):
    """Compile a small C program that maps rows of `dtype` values read from argv[1] to `n_out`
    values written to argv[2] (project flags, sanitizers on); returns run(rows) -> int64 array."""
    workdir = Path(workdir)
    (workdir / "drv.c").write_text(source)
    exe = compile_host([workdir / "drv.c"], [data_dir("cmsis_glue")], workdir / "drv",
                       extra=["-Wno-missing-prototypes"])

    def run(rows):
        (workdir / "in.bin").write_bytes(np.asarray(rows, dtype=dtype).tobytes())
        run_host(exe, [str(workdir / "in.bin"), str(workdir / "out.bin")])
        out = np.frombuffer((workdir / "out.bin").read_bytes(), dtype=dtype)
        return out.reshape(-1, n_out).astype(np.int64)

    return run
