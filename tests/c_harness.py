"""Test harness for generated C: generate a model's forward C and run it through the one runner
(`tinygen.verify.runner`, host target with -Werror and ASan+UBSan) with a given kernel implementation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinygen.codegen import forward as codegen
from tinygen.paths import data_dir
from tinygen.targets.hostbuild import compile_host, run_host
from tinygen.verify.runner import Program, run


def forward_program(model, workdir: Path, kernels: str = "portable") -> Program:
    """Generate `model`'s forward C into workdir/src; the Program the runner builds from it."""
    workdir = Path(workdir)
    codegen.generate_forward(model, workdir / "src")
    return Program(workdir / "src", workdir, "forward", kernels)


def run_generated_forward(model, x: np.ndarray, workdir: Path, kernels: str = "portable") -> np.ndarray:
    """The generated C's outputs for every input of `x`, shaped (len(x), *output shape)."""
    result = run(forward_program(model, workdir, kernels), "host-asan", x)
    return np.stack(result.outputs).reshape((len(x),) + tuple(model.output.shape))


DRIVER = """#include <stdio.h>
#include <stdint.h>
#include "{header}"
int main(int argc, char **argv) {{
    (void)argc;
    FILE *f = fopen(argv[1], "rb");
    FILE *g = fopen(argv[2], "wb");
    {ctype} v[{n_in}];
    while (fread(v, sizeof v[0], {n_in}, f) == {n_in}) {{
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


def c_driver(workdir: Path, header: str, body: str, dtype, n_out: int, cflags: tuple[str, ...] = (), n_in: int = 3):
    """Compile a small C program that reads rows v[0..n_in-1] of `dtype` from argv[1], computes r[0..n_out-1]
    with `body` (statements using the functions of `header`) and writes them to argv[2] (project
    flags and `cflags`, sanitizers on); returns run(rows) -> int64 array of shape (rows, n_out).

    (Not generated model code: a direct probe of cmsis_glue's helpers, so it compiles on its own.)"""
    workdir = Path(workdir)
    source = DRIVER.format(header=header, ctype=CTYPE[np.dtype(dtype)], n_in=n_in, n_out=n_out, body=body)
    (workdir / "drv.c").write_text(source)
    exe = compile_host([workdir / "drv.c"], [data_dir("cmsis_glue")], workdir / "drv",
                       extra=["-Wno-missing-prototypes", *cflags])

    def run_rows(rows):
        (workdir / "in.bin").write_bytes(np.asarray(rows, dtype=dtype).tobytes())
        run_host(exe, [str(workdir / "in.bin"), str(workdir / "out.bin")])
        out = np.frombuffer((workdir / "out.bin").read_bytes(), dtype=dtype)
        return out.reshape(-1, n_out).astype(np.int64)

    return run_rows
