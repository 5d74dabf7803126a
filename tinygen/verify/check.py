"""`tinygen verify DIR`: generated C on the host vs the NumPy reference, bit for bit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinygen.codegen.project import load_trainer, read_manifest
from tinygen.errors import MismatchError, ModelError
from tinygen.frontends import modelfile
from tinygen.frontends.inputs import load_int8_array, onehot_targets, real_inputs, training_samples
from tinygen.reference import forward as reference
from tinygen.verify.compare import compare_forward, compare_training, expect_training
from tinygen.verify.runner import Program, run


def _build_dataset(build_dir: Path, manifest: dict, n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The first n samples of the build's --dataset, as the model's input codes, with their labels."""
    with np.load(build_dir / manifest["dataset"]["file"], allow_pickle=False) as d:
        x, y = d["x"][:n], d["y"][:n]
    return x, y, manifest["dataset"]["source"]


@dataclass
class VerifyResult:
    inputs: int
    elements: int
    source: str


def verify_forward(build_dir: Path, inputs: int | Path = 8, kernels: str = "portable",
                   expect: Path | None = None) -> VerifyResult:
    """The host C against the reference on `inputs` real inputs (the build's --dataset where it had one), or on
    the int8 inputs of an .npy file; with `expect` (an .npy of another runtime's int8 outputs for them), the
    outputs must equal those too."""
    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    model = modelfile.load(build_dir / manifest["model_file"])
    if not isinstance(inputs, int):
        x = load_int8_array(inputs, tuple(model.input.shape), "the inputs")
        source = f"{len(x)} inputs of {Path(inputs).name}"
    elif "dataset" in manifest:
        x, _, source = _build_dataset(build_dir, manifest, inputs)
    else:
        x, source = real_inputs(model, inputs)
    program = Program(build_dir / "src", build_dir, "forward", kernels,
                      include_dirs=(build_dir / "src", build_dir / "cmsis_glue"))
    want = reference.run_batch(model, x)
    elements = compare_forward(run(program, "host-asan", x), want)
    if expect is not None:
        other = load_int8_array(expect, tuple(model.output.shape), "the expected outputs")
        if len(other) != len(x):
            raise ModelError(f"{expect} has {len(other)} outputs for {len(x)} inputs; give one per input")
        bad = np.flatnonzero(other.reshape(len(x), -1) != want.reshape(len(x), -1))
        if bad.size:
            i, j = divmod(int(bad[0]), model.output.size)
            raise MismatchError(f"{bad.size} of {want.size} output values differ from {Path(expect).name}; first at "
                                f"sample {i}, element {j}: tinygen {int(want.reshape(len(x), -1)[i, j])} vs "
                                f"{int(other.reshape(len(x), -1)[i, j])}")
        source += f", equal to {Path(expect).name}"
    return VerifyResult(len(x), elements, source)


@dataclass
class TrainVerifyResult:
    steps: int
    losses: list[int]
    gradient_values: int
    param_bytes: int
    checksum: int
    source: str
    lr_halvings: list[int]


def verify_training(build_dir: Path, steps: int = 20, kernels: str = "portable", progress=None) -> TrainVerifyResult:
    """`steps` training steps of the host C (ASan+UBSan) against the reference's replay; a `runner.Progress`
    sees both phases step by step."""
    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    if "train" not in manifest:
        raise MismatchError(f"{build_dir} was built without training; rebuild without --no-train to use --steps")
    model, trainer = load_trainer(build_dir, manifest)
    if "dataset" in manifest:
        x, y, source = _build_dataset(build_dir, manifest, steps)
    else:
        x, y, source = training_samples(model, steps)
    if trainer.config.loss == "mse":
        y = onehot_targets(model, y)
        source += " (MSE targets: the one-hot label vector in the output's codes)"
    program = Program(build_dir / "src", build_dir, "train", kernels)
    if progress is not None:
        progress.begin("host C (ASan+UBSan)", steps)
    result = run(program, "host-asan", x, y, steps, progress=progress)
    t = manifest["train"]
    if progress is not None:
        progress.begin("reference", steps)
    expect = expect_training(trainer, x, y, [s % len(x) for s in range(steps)], t["params"], t["records"],
                             on_step=progress.step if progress is not None else None)
    if progress is not None:
        progress.finish()
    summary = compare_training(result, expect)
    return TrainVerifyResult(steps, summary["losses"], summary["gradient_values"], summary["param_bytes"],
                             summary["checksum"], source, summary["lr_halvings"])
