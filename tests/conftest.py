"""Shared fixtures. `kernels`: every kernel implementation the runner knows
(tinygen.verify.runner.KERNEL_IMPLS), so each kernel test and golden runs through each one.
Session-scoped so Hypothesis tests may use it (no per-example function fixture)."""

from __future__ import annotations

import pytest

from tinygen.verify.runner import KERNEL_IMPLS


@pytest.fixture(scope="session", params=list(KERNEL_IMPLS))
def kernels(request) -> str:
    return request.param
