"""Where a trained layer's weights live on the device.

When a layer trains a prefix of its channels (input channels of a conv or FC, channels of a
depthwise conv: the MIT schemes' "first ceil(ratio * C)" and every full update), only that
prefix is copied to SRAM — as the int8 view plus an F-bit remainder of the master weight — and
the frozen rest stays in flash; kernels read the two parts. A layer training an arbitrary channel
set keeps its whole tensor in SRAM and updates only the selected elements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinygen.ir import model as ir


@dataclass(frozen=True)
class WeightStore:
    split_k: int  # trained prefix length (channels); 0 = the whole tensor is in SRAM
    depthwise: bool
    ch_mult: int

    def trained_part(self, w: np.ndarray) -> np.ndarray:
        """The SRAM part of a weight tensor (OHWI, or (O, I) for an FC)."""
        if not self.split_k:
            return w
        return w[: self.split_k * self.ch_mult] if self.depthwise else w[..., : self.split_k]

    def frozen_part(self, w: np.ndarray) -> np.ndarray | None:
        if not self.split_k:
            return None
        return w[self.split_k * self.ch_mult:] if self.depthwise else w[..., self.split_k:]


def weight_store(layer: ir.Layer, channels: list[int]) -> WeightStore:
    dw = ir.is_depthwise(layer)
    n = layer.groups if dw else layer.weight.shape[-1]
    k = len(channels)
    prefix = 0 < k < n and channels == list(range(k))
    mult = layer.weight.shape[0] // layer.groups if dw else 1
    return WeightStore(k if prefix else 0, dw, mult)


def frac_ctype(frac_bits: int) -> str:
    return "int8_t" if frac_bits <= 8 else "int16_t"


def frac_dtype(frac_bits: int):
    return np.dtype("<i1") if frac_bits <= 8 else np.dtype("<i2")
