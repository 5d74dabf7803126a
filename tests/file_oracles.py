"""Helpers the frontend tests share: TFLite Micro's interpreter as an oracle, and damaged copies of a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def tflm_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """TFLite Micro's interpreter (PyPI tflite-micro, the test extra) on each int8 input of `x`: its outputs."""
    runtime = pytest.importorskip("tflite_micro.python.tflite_micro.runtime",
                                  reason="the TFLite Micro interpreter (pip install tflite-micro) is not installed")
    interp = runtime.Interpreter.from_bytes(Path(path).read_bytes())
    out = []
    for sample in x:
        interp.set_input(sample[None], 0)
        interp.invoke()
        out.append(interp.get_output(0)[0].copy())
    return np.stack(out)


def mutants(data: bytes, seed: int, cuts: tuple[int, ...], flips: int) -> list[bytes]:
    """Copies of `data` truncated to each length in `cuts`, then `flips` copies with three random bits flipped."""
    rng = np.random.default_rng(seed)
    out = [data[:n] for n in cuts]
    for _ in range(flips):
        b = bytearray(data)
        for pos in rng.integers(0, len(b), size=3):
            b[pos] ^= 1 << int(rng.integers(0, 8))
        out.append(bytes(b))
    return out
