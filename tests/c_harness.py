"""microTVM-style test runner: generate the C for a model, build it on the host with the
project's flags (-Werror, ASan+UBSan), run it on given inputs, return its outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinygen.codegen import forward as codegen
from tinygen.paths import data_dir
from tinygen.targets.hostbuild import compile_host, run_host


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


DRIVER = """#include <stdio.h>
#include <stdint.h>
#include "{header}"
int main(int argc, char **argv) {{
    (void)argc;
    FILE *f = fopen(argv[1], "rb");
    FILE *g = fopen(argv[2], "wb");
    {ctype} v[3];
    while (fread(v, sizeof v[0], 3, f) == 3) {{
        {ctype} r[{n_out}];
{body}
        fwrite(r, sizeof r[0], {n_out}, g);
    }}
    fclose(f);
    fclose(g);
    return 0;
}}
"""
CTYPE = {np.dtype(np.int32): "int32_t", np.dtype(np.int64): "int64_t"}


def c_driver(workdir: Path, header: str, body: str, dtype, n_out: int):
    """Compile a small C program that reads rows v[0..2] of `dtype` from argv[1], computes r[0..n_out-1]
    with `body` (statements using the functions of `header`) and writes them to argv[2] (project
    flags, sanitizers on); returns run(rows) -> int64 array of shape (rows, n_out)."""
    workdir = Path(workdir)
    source = DRIVER.format(header=header, ctype=CTYPE[np.dtype(dtype)], n_out=n_out, body=body)
    (workdir / "drv.c").write_text(source)
    exe = compile_host([workdir / "drv.c"], [data_dir("cmsis_glue")], workdir / "drv",
                       extra=["-Wno-missing-prototypes"])

    def run(rows):
        (workdir / "in.bin").write_bytes(np.asarray(rows, dtype=dtype).tobytes())
        run_host(exe, [str(workdir / "in.bin"), str(workdir / "out.bin")])
        out = np.frombuffer((workdir / "out.bin").read_bytes(), dtype=dtype)
        return out.reshape(-1, n_out).astype(np.int64)

    return run
