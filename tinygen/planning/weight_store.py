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


@dataclass(frozen=True)
class FracStore:
    """How the F-bit remainder of the master weights is kept beside the int8 view (docs/numerics.md §6):
    nowhere for F = 0 (the view is the master), two's-complement nibbles two to a byte for F <= 4 (weight
    i in byte i // 2, the low nibble for even i), int8 for F <= 8, int16 up to 16."""

    bits: int

    @property
    def ctype(self) -> str | None:
        if not self.bits:
            return None
        return "uint8_t" if self.nibbles else ("int8_t" if self.bits <= 8 else "int16_t")

    @property
    def nibbles(self) -> bool:
        return 0 < self.bits <= 4

    @property
    def per_weight(self) -> float:
        """Bytes of fraction per trained weight (the selection's proxy; `nbytes` counts the array)."""
        return 0.5 if self.nibbles else float(self.nbytes(1))

    def count(self, weights: int) -> int:
        """Elements of the C array for `weights` trained weights."""
        return (weights + 1) // 2 if self.nibbles else (weights if self.bits else 0)

    def nbytes(self, weights: int) -> int:
        return self.count(weights) * (2 if self.bits > 8 else 1)

    def pack(self, frac: np.ndarray) -> bytes:
        """The C array's bytes (little-endian) for these remainders, in order."""
        f = np.asarray(frac, dtype=np.int64).ravel()
        if not self.bits:
            return b""
        if not self.nibbles:
            return f.astype("<i1" if self.bits <= 8 else "<i2").tobytes()
        n = np.append(f & 15, np.zeros(f.size % 2, np.int64))  # an odd count leaves the last byte's high nibble 0
        return (n[0::2] | (n[1::2] << 4)).astype(np.uint8).tobytes()
