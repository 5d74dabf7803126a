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
