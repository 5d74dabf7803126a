"""What a trained layer keeps of its input for its weight gradient, and in which form.

The weight gradient reads the input only through the trained channels, and with a gradient
filter of patch size r only through sums over each r x r patch of outputs
(`dW = sum_P G[P] * sum_{p in P} (x_p - z)`). So instead of keeping the whole activation alive
until the backward pass, the forward pass may copy out just what the update reads:

* ``tensor``   — keep the activation itself (it is no larger than any copy: all channels, r = 1);
* ``channels`` — an int8 copy of the trained channels at full resolution (any conv or FC);
* ``patches``  — int16 sums of `x - z` over each patch, trained channels only, at the output's
  patch grid (1x1 convolutions without padding: each output reads one input pixel, so the
  patch sum is one number per channel). |sum| <= r^2 * 255 fits int16 for r <= 11.

The update computes exactly the same integer sums from any of the three forms, so the choice
changes memory, never values.
"""

from __future__ import annotations

from dataclasses import dataclass

from tinygen.ir import model as ir

PATCH_SUM_MAX_R = 11  # 11 * 11 * 255 = 30,855 <= INT16_MAX


@dataclass(frozen=True)
class SavedInput:
    mode: str  # "tensor" | "channels" | "patches"
    h: int  # grid of the saved form (input rows, or patch rows for "patches")
    w: int
    channels: int  # channels in the saved form (the trained ones, or all for "tensor")
    r: int = 1  # the patch size summed over ("patches")

    @property
    def ctype(self) -> str:
        return "int16_t" if self.mode == "patches" else "int8_t"

    @property
    def nbytes(self) -> int:
        return self.h * self.w * self.channels * (2 if self.mode == "patches" else 1)


def _grid(layer: ir.Layer, x: ir.TensorInfo) -> tuple[int, int, int]:
    if isinstance(layer, ir.FullyConnected):
        return 1, 1, x.size
    return x.shape


def saved_input(layer: ir.Layer, n_channels: int, r: int, tensors: dict[str, ir.TensorInfo]) -> SavedInput:
    """The smallest form of `layer`'s input its update of `n_channels` trained channels can read."""
    x = tensors[layer.inputs[0]]
    h, w, c = _grid(layer, x)
    whole = SavedInput("tensor", h, w, c)
    if isinstance(layer, ir.Conv2D) and layer.groups > 1 and not ir.is_depthwise(layer):
        return whole  # a grouped conv's channel index repeats per group: keep it simple
    forms = [whole, SavedInput("channels", h, w, n_channels)]
    if (isinstance(layer, ir.Conv2D) and layer.kernel == (1, 1) and not any(layer.padding)
            and r <= PATCH_SUM_MAX_R):
        oh, ow = layer.output.shape[:2]
        forms.append(SavedInput("patches", -(-oh // r), -(-ow // r), n_channels, r))
    return min(forms, key=lambda f: (f.nbytes, f.mode != "tensor"))
