"""Train a model for N steps in generated C on the host and compare with the reference (exactly),
through the one runner and the one compare."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from tinygen.codegen.training import generate_training
from tinygen.reference.training import Trainer
from tinygen.verify.compare import compare_training, expect_training
from tinygen.verify.runner import Program, run


def train_c_vs_reference(model, scheme, config, x, labels, steps, kernels: str = "portable"):
    """Returns the comparison summary; raises MismatchError on any difference."""
    x = np.asarray(x, dtype=np.int8)
    labels = np.asarray(labels)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        facts = generate_training(model, Trainer(model, scheme, config), d / "src")
        result = run(Program(d / "src", d, "train", kernels), "host-asan", x, labels, steps)
    expect = expect_training(Trainer(model, scheme, config), x, labels, [s % len(x) for s in range(steps)],
                             facts["params"], facts["records"])
    return compare_training(result, expect)
