"""`tinygen verify DIR`: generated C on the host vs the NumPy reference, bit for bit."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinygen.codegen.project import read_manifest
from tinygen.errors import MismatchError
from tinygen.frontends import modelfile
from tinygen.frontends.inputs import onehot_targets, real_inputs, training_samples
from tinygen.ir.scheme import TrainConfig, load_scheme
from tinygen.reference import forward as reference
from tinygen.reference.training import Trainer
from tinygen.targets.hostbuild import compile_host, run_host
from tinygen.verify.host_training import build_host_trainer, compare, run_c_training


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


@dataclass
class TrainVerifyResult:
    steps: int
    losses: list[int]
    gradient_values: int
    param_bytes: int
    checksum: int
    source: str


def load_trainer(build_dir: Path, manifest: dict):
    model = modelfile.load(build_dir / manifest["model_file"])
    t = manifest["train"]
    scheme = load_scheme(str(build_dir / t["scheme_file"]), model)
    return model, Trainer(model, scheme, TrainConfig.from_json(t["config"]))


def verify_training(build_dir: Path, steps: int = 20) -> TrainVerifyResult:
    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    if "train" not in manifest:
        raise MismatchError(f"{build_dir} was built without training; rebuild without --no-train to use --steps")
    model, trainer = load_trainer(build_dir, manifest)
    x, y, source = training_samples(model, steps)
    if trainer.config.loss == "mse":
        y = onehot_targets(model, y)
        source += " (MSE targets: the one-hot label vector in the output's codes)"
    binary = build_host_trainer(build_dir, build_dir / "src")
    with tempfile.TemporaryDirectory() as tmp:
        c = run_c_training(binary, x, y, steps, Path(tmp))
    t = manifest["train"]
    summary = compare(c, trainer, x, y, steps, t["records"], t["params"])
    return TrainVerifyResult(steps, summary["losses"], summary["gradient_values"], summary["param_bytes"],
                             summary["checksum"], source)
