"""Small deterministic int8 models built with the builder API, for CLI and emitter tests."""

from __future__ import annotations

import numpy as np

from tinygen.ir.builder import ModelBuilder


def small_model(seed: int = 0, name: str = "small"):
    """Every op once: conv, depthwise, pointwise, residual add, max/avg pool, grouped conv, flatten, FC."""
    rng = np.random.default_rng(seed)

    def w(*s):
        return rng.integers(-127, 128, size=s).astype(np.int8)

    def b(n):
        return rng.integers(-2000, 2000, size=n).astype(np.int32)

    def s(n):
        return (rng.random(n) * 0.01 + 0.002).astype(np.float32)

    m = ModelBuilder(name, (16, 16, 1), 1 / 255, -128)
    x = m.conv2d(m.input, w(8, 3, 3, 1), b(8), s(8), 0.05, -10, stride=2, act="relu", name="stem")
    y = m.depthwise_conv2d(x, w(16, 3, 3, 1), b(16), s(16), 0.04, 3, act="relu6", name="dw")
    y = m.conv2d(y, w(8, 1, 1, 16), b(8), s(8), 0.05, -5, name="pw")
    z = m.add(x, y, 0.07, 2, act="relu", name="res")
    z = m.maxpool(z, 2, name="maxpool")
    z = m.avgpool(z, 3, stride=1, padding="same", name="avgpool")
    z = m.conv2d(z, w(12, 3, 3, 4), b(12), s(12), 0.05, 1, groups=2, padding="valid", name="grouped")
    z = m.global_avgpool(z, name="gap")
    z = m.flatten(z, name="flatten")
    m.fully_connected(z, w(10, 12), b(10), s(10), 0.2, 0, name="fc")
    return m.build()
