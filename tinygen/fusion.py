"""Memory-saving forward schedules that compute exactly the same values.

* **In-place depthwise**: a depthwise conv (channel multiplier 1) whose input dies with it
  computes each output channel into a one-channel plane, then writes the plane over the
  input's slots of that channel (already consumed); output and input share one buffer of
  max(input, output) bytes, plus the plane.
* **Fused pointwise -> depthwise** (the inverted-residual expansion): when a 1x1 conv's output
  feeds only a depthwise conv (multiplier 1) and is needed by nothing else (not saved for
  backward, no gradient), each expansion channel is computed into a plane and immediately
  convolved; the expanded tensor never exists (TinyEngine-style). For MobileNetV2 at 128x128
  this removes the 64x64x48 tensor (196 KB).

Every kernel involved does the same integer operations as the unfused one, so the results
are bit-identical; the tests compare them with the reference as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ir


@dataclass(frozen=True)
class Fusion:
    kind: str  # "inplace_dw" | "pw_dw"
    layer: int  # the depthwise layer's index (it carries the fused call)
    pointwise: int = -1  # for pw_dw: the 1x1 conv's index
    plane: int = 0  # bytes of the one-channel plane buffer


def _is_dw1(layer) -> bool:
    return (isinstance(layer, ir.Conv2D) and layer.groups > 1 and layer.weight.shape[3] == 1
            and layer.weight.shape[0] == layer.groups)


def _is_pw(layer) -> bool:
    return (isinstance(layer, ir.Conv2D) and layer.groups == 1 and layer.kernel == (1, 1)
            and layer.stride == (1, 1) and sum(layer.padding) == 0)


def plan_fusions(model: ir.Model, keep: set[str] | None = None, grad_path: set[str] | None = None) -> dict[int, Fusion]:
    """Fusions keyed by the depthwise layer index. `keep`: tensors that must survive their last
    forward consumer (saved for backward); `grad_path`: tensors that get gradients."""
    keep, grad_path = keep or set(), grad_path or set()
    users = model.consumers()
    out = {}
    for j, layer in enumerate(model.layers):
        if not _is_dw1(layer):
            continue
        t = layer.inputs[0]
        sole = len(users[t]) == 1 and t not in keep and t != model.output.name
        if not sole:
            continue
        oh, ow = layer.output.shape[:2]
        prev = model.layers[j - 1] if j > 0 else None
        if (prev is not None and prev.output.name == t and _is_pw(prev) and t not in grad_path):
            h, w = prev.output.shape[:2]
            out[j] = Fusion("pw_dw", j, j - 1, plane=h * w)
        elif t != model.input.name:
            out[j] = Fusion("inplace_dw", j, plane=oh * ow)
    return out
