"""Train a model for N steps in generated C on the host and compare with the reference (exactly)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from tinygen.codegen.training import generate_training
from tinygen.reference.training import Trainer
from tinygen.verify.host_training import build_host_trainer, compare, run_c_training


def train_c_vs_reference(model, scheme, config, x, labels, steps):
    """Returns the comparison summary; raises MismatchError on any difference."""
    trainer = Trainer(model, scheme, config)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        facts = generate_training(model, trainer, d / "src")
        binary = build_host_trainer(d, d / "src")
        c = run_c_training(binary, np.asarray(x, dtype=np.int8), np.asarray(labels), steps, d)
    return compare(c, Trainer(model, scheme, config), x, labels, steps, facts["records"], facts["params"])
