"""Train with the generated C on the host: how benchmarks run thousands of on-device steps.

The C is the device's training step, bit-exact to the reference (`tinygen verify --steps`); here it
is built for the "host" target (optimised, no sanitizers, no step-1 records) by the one runner,
trained on samples in a given order, and then asked for the class of every test sample.
`tests/test_transfer.py` checks the answers equal the reference's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from tinygen.codegen.training import generate_training
from tinygen.errors import MismatchError
from tinygen.ir import model as ir
from tinygen.ir.scheme import Scheme, TrainConfig
from tinygen.reference.training import Trainer
from tinygen.verify.runner import Program, run


def c_train_predict(model: ir.Model, scheme: Scheme, config: TrainConfig, x: np.ndarray, y: np.ndarray,
                    x_test: np.ndarray, kernels: str = "portable") -> np.ndarray:
    """Train on (x[i], y[i]) in order, one step each, then predict every x_test sample."""
    with tempfile.TemporaryDirectory(prefix="tinygen-train-") as tmp:
        work = Path(tmp)
        generate_training(model, Trainer(model, scheme, config), work / "src")
        result = run(Program(work / "src", work, "train", kernels, record=False), "host", x, y, len(x),
                     x_test=x_test)
    if len(result.preds) != len(x_test):
        raise MismatchError(f"the host trainer predicted {len(result.preds)} of {len(x_test)} test samples")
    return np.array(result.preds)
