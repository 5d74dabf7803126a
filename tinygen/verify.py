"""`tinygen verify DIR`: generated C on the host vs the NumPy reference, bit for bit."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import modelfile, reference
from .errors import MismatchError
from .hostbuild import compile_host, run_host
from .inputs import real_inputs
from .project import read_manifest


@dataclass
class VerifyResult:
    inputs: int
    elements: int
    source: str


def verify_forward(build_dir: Path, n_inputs: int = 8) -> VerifyResult:
    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    model = modelfile.load(build_dir / manifest["model_file"])
    x, source = real_inputs(model, n_inputs)
    expected = reference.run_batch(model, x)
    binary = compile_host(sorted((build_dir / "src").glob("*.c")) + [build_dir / "host" / "main_host.c"],
                          [build_dir / "src", build_dir / "cmsis_glue"], build_dir / "host" / "tg_host")
    with tempfile.TemporaryDirectory() as tmp:
        fin, fout = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        fin.write_bytes(x.tobytes())
        run_host(binary, [str(fin), str(fout)])
        got = np.frombuffer(fout.read_bytes(), dtype=np.int8)
    if got.size != expected.size:
        raise MismatchError(f"the generated C wrote {got.size} output values; the reference has {expected.size}")
    got = got.reshape(expected.shape)
    if not np.array_equal(got, expected):
        bad = np.argwhere(got != expected)
        i, j = bad[0][0], tuple(bad[0][1:])
        raise MismatchError(f"{len(bad)} of {expected.size} outputs differ from the reference; first at input {i} "
                            f"element {j}: C {got[(i, *j)]} vs reference {expected[(i, *j)]}")
    return VerifyResult(len(x), int(expected.size), source)
