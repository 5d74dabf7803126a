"""`tinygen plan`: where every byte of a training step goes, per layer and in total, and a
memory-timeline picture (SVG) of the arena over the step's schedule."""

from __future__ import annotations

from html import escape

import numpy as np

from tinygen.ir import model as ir
from tinygen.planning.arena import lower_bound
from tinygen.planning.backward import depthwise_input_products, structured_bytes, structured_channels
from tinygen.planning.memory import RUNTIME_RESERVE, trained_state_bytes
from tinygen.planning.schedule import MASK_BITS, patch_stage, plan_forward, plan_training
from tinygen.planning.weight_store import weight_store
from tinygen.report import table

CODE_ALLOWANCE = 48 * 1024  # runtime + kernels in flash, beside the weights (checked against the ELF by the tests)


def layer_backward_macs(layer: ir.Layer, trainer, r: int | None = None) -> int:
    """MACs of a weighted layer's backward: its input gradient where the gradient path goes on below it (r^2 fewer
    for a filtered 1x1 convolution), and its weight gradient over the trained channels (r^2 fewer with a filter)."""
    if layer.output.name not in trainer.needs_grad or layer.params().get("weight") is None:
        return 0
    fwd = ir.layer_macs(layer)
    tl = trainer.trained.get(layer.name)
    wants_dx = any(t in trainer.needs_grad for t in layer.inputs)
    frac = len(tl.update.channels) / ir.selectable_channels(layer) if tl and tl.update.channels else 0.0
    r = trainer.scheme.filter_r(layer.name) if r is None else r
    # a 1x1 stride-1 convolution's input gradient of a filtered (patch-constant) G_acc is computed once a patch;
    # a depthwise one's frozen channels take one product per patch their taps reach
    pointwise = isinstance(layer, ir.Conv2D) and layer.kernel == (1, 1) and layer.stride == (1, 1)
    dx = fwd // (r * r) if pointwise else fwd
    summed = structured_channels(layer, trainer) if r == trainer.scheme.filter_r(layer.name) else 0
    if summed:
        in_shape = trainer.model.tensors()[layer.inputs[0]].shape
        dx = dx * (layer.groups - summed) // layer.groups + depthwise_input_products(layer, in_shape, r, summed)[0]
    return (dx if wants_dx else 0) + int(fwd * frac / (r * r))


def backward_macs(model: ir.Model, trainer) -> int:
    """MACs of a training step beyond its forward pass."""
    return sum(layer_backward_macs(layer, trainer) for layer in model.layers)


def build_plan(model: ir.Model, trainer, board, budget: int, checkpoint: bool = False) -> dict:
    """The plan as a JSON-able dict (keys: peak_sram_bytes, flash_bytes, fits, layers, ...). With `checkpoint`
    the board's two checkpoint slots count towards flash (checkpoint_bytes)."""

    if trainer is None:
        fp = plan_forward(model)
        buffers, arena, strategy, trained = fp.buffers, fp.arena_size, "greedy (best order)", 0
    else:
        tp = plan_training(model, trainer, one_pass=True)
        buffers, arena, strategy = tp.buffers, tp.arena_size, tp.strategy
        trained = trained_state_bytes(trainer)
    bound = lower_bound(list(buffers.values()))
    stage = patch_stage((fp if trainer is None else tp).fusions)
    patched = stage_summary(stage.stage.stage, stage.plane) if stage else None
    layers = []
    flash = CODE_ALLOWANCE
    for layer in model.layers:
        tl = trainer.trained.get(layer.name) if trainer else None
        on_path = trainer is not None and layer.output.name in trainer.needs_grad
        w = layer.params().get("weight")
        n_chan = None
        if w is not None:
            flash += int(w.nbytes + layer.bias.nbytes + 8 * layer.bias.size)  # weights, bias, multiplier, shift
            n_chan = ir.selectable_channels(layer)
        r = trainer.scheme.filter_r(layer.name) if trainer else 1
        sv = tp.saved.get(layer.name) if trainer else None
        fwd = patched["layer_macs"][layer.name] if patched and layer.name in patched["layer_macs"] \
            else ir.layer_macs(layer)
        bwd = layer_backward_macs(layer, trainer) if trainer is not None else 0
        grad = 2 * layer.output.size if on_path else 0
        layers.append({
            "name": layer.name, "op": layer.op, "output": list(layer.output.shape),
            "trained_channels": len(tl.update.channels) if tl else 0, "channels": n_chan,
            "bias": bool(tl and tl.update.bias), "filter_r": r if tl or r > 1 else None,
            "trained_sram_bytes": (weight_store(layer, tl.update.channels).trained_part(w).size
                                   if tl and tl.update.channels else 0),
            "saved_bytes": sv.nbytes if sv else 0, "saved_form": sv.mode if sv else None,
            "patch_sums_bytes": structured_bytes(layer, trainer) if trainer is not None else 0,
            "mask_bytes": -(-layer.output.size // MASK_BITS) if on_path else 0,
            "gradient_bytes": grad, "macs_forward": fwd, "macs_backward": bwd,
            "macs_backward_r1": layer_backward_macs(layer, trainer, 1) if trainer is not None else 0,
            "patches": patched["patches"] if patched and layer.name in patched["layer_macs"] else None,
        })
    flash += sum(layer["patch_sums_bytes"] for layer in layers)
    ckpt = board.checkpoint.bytes if checkpoint and board.checkpoint is not None else 0
    flash += ckpt
    peak = arena + trained + RUNTIME_RESERVE
    avail = board.sram_bytes if board.sram_contiguous else board.largest_sram.length
    return {
        "model": model.name, "board": board.name, "training": trainer is not None,
        "scheme": trainer.scheme.source if trainer else None,
        "peak_sram_bytes": peak, "arena_bytes": arena, "arena_lower_bound_bytes": bound,
        "arena_over_lower_bound": round(arena / bound - 1, 4) if bound else 0.0, "arena_strategy": strategy,
        "trained_state_bytes": trained, "runtime_reserve_bytes": RUNTIME_RESERVE,
        "flash_bytes": flash, "checkpoint_bytes": ckpt, "board_sram_bytes": avail,
        "board_flash_bytes": board.flash_bytes,
        "budget_bytes": budget, "fits": peak <= budget and flash <= board.flash_bytes,
        "layers": layers,
        "patch_stage": None if patched is None else {k: v for k, v in patched.items() if k != "layer_macs"},
        "buffers": [{"name": b.name, "offset": b.offset, "size": b.size, "first": b.first, "last": b.last}
                    for b in sorted(buffers.values(), key=lambda b: b.offset)],
    }


def stage_summary(stage, plane: int) -> dict:
    """The patch stage as the plan reports it: its end, patches a side, classes, the plane its patches use, its
    MACs run patch by patch and whole, and each layer's MACs patch by patch (halos recomputed)."""
    per_layer: dict[str, int] = {}
    for _, _, c in stage.windows:
        for layer in stage.classes[c].model.layers:
            if not isinstance(layer, ir.Crop):
                per_layer[layer.name] = per_layer.get(layer.name, 0) + ir.layer_macs(layer)
    return {"end": stage.spec.end, "patches": stage.spec.n, "classes": len(stage.classes), "layers": stage.last + 1,
            "plane_bytes": plane, "macs": stage.macs, "whole_macs": stage.whole_macs, "layer_macs": per_layer}


def plan_table(plan: dict) -> str:
    rows = []
    filtered = any((L["filter_r"] or 1) > 1 for L in plan["layers"])  # then the backward at r = 1 beside it
    for L in plan["layers"]:
        trained = (f"{L['trained_channels']}/{L['channels']}" if L["trained_channels"] else "-") \
            if L["channels"] else ""
        op = L["op"] + (f" ({L['patches']}x{L['patches']})" if L.get("patches") else "")
        rows.append([L["name"], op, "x".join(map(str, L["output"])), trained, "yes" if L["bias"] else "",
                     L["filter_r"] or "", L["trained_sram_bytes"], L["saved_bytes"], L["saved_form"] or "",
                     L["mask_bytes"],
                     L["gradient_bytes"], L["macs_forward"], L["macs_backward"]]
                    + ([L["macs_backward_r1"]] if filtered else []))
    t = table(["layer", "op", "output", "trains", "bias", "r", "weights in SRAM", "saved", "saved as", "masks",
               "gradient", "MACs fwd", "MACs bwd"] + (["MACs bwd at r = 1"] if filtered else []), rows,
              "lllllrrrlrrrr" + ("r" if filtered else ""))
    kb = 1024
    totals = (f"peak SRAM {plan['peak_sram_bytes'] / kb:.1f} KB = arena {plan['arena_bytes'] / kb:.1f} KB "
              f"({plan['arena_strategy']}; lower bound {plan['arena_lower_bound_bytes'] / kb:.1f} KB, "
              f"+{100 * plan['arena_over_lower_bound']:.1f}%) + trained parameters and optimizer state "
              f"{plan['trained_state_bytes'] / kb:.1f} KB + stack/runtime {plan['runtime_reserve_bytes'] / kb:.1f} KB; "
              f"budget {plan['budget_bytes'] / kb:.1f} KB of {plan['board_sram_bytes'] / kb:.1f} KB on "
              f"{plan['board']}; flash {plan['flash_bytes'] / kb:.1f} KB of {plan['board_flash_bytes'] / kb:.0f} KB"
              + (f" (checkpoint slots {plan['checkpoint_bytes'] / kb:.0f} KB)" if plan.get("checkpoint_bytes") else "")
              + f"; {'fits' if plan['fits'] else 'DOES NOT FIT'}")
    ps = plan.get("patch_stage")
    stage = "" if not ps else (
        f"patch stage: layers 0..{ps['layers'] - 1} (to {ps['end']}) run in {ps['patches']}x{ps['patches']} patches "
        f"of their output ({ps['classes']} classes, {ps['plane_bytes']:,} B of arena while they run): "
        f"{ps['macs']:,} MACs, {ps['whole_macs']:,} whole (+{100 * (ps['macs'] / ps['whole_macs'] - 1):.1f}% "
        "recomputed halos); the model input is read window by window from the caller's buffer\n")
    return t + "\n\n" + stage + totals


def timeline_svg(plan: dict) -> str:
    """Buffers as rectangles: x = schedule step (forward, loss, backward), y = arena offset; peak marked."""
    bufs = plan["buffers"]
    steps = max((b["last"] for b in bufs), default=1) + 1
    arena = max(plan["arena_bytes"], 1)
    W, H, left, top = 960, 540, 70, 40
    sx, sy = (W - left - 20) / steps, (H - top - 40) / arena
    colors = {"act": "#4e79a7", "mask": "#f28e2b", "grad": "#e15759",
              "gradtmp": "#edc948", "plane": "#b07aa1", "saved": "#59a14f"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
           f'font-size="11">',
           f'<text x="{left}" y="20" font-size="14">{escape(plan["model"])} on {escape(plan["board"])}: arena '
           f'{plan["arena_bytes"]:,} B over the training step (lower bound {plan["arena_lower_bound_bytes"]:,} B)'
           f'</text>']
    live = np.zeros(steps)
    for b in bufs:
        kind = b["name"].split("_", 1)[0]
        color = colors.get(kind, "#9c755f")
        x, y = left + b["first"] * sx, top + b["offset"] * sy
        w, h = max(1.0, (b["last"] - b["first"] + 1) * sx), max(0.5, b["size"] * sy)
        out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{color}" '
                   f'fill-opacity="0.75" stroke="white" stroke-width="0.3"><title>{escape(b["name"])}: '
                   f'{b["size"]:,} B, steps {b["first"]}..{b["last"]}</title></rect>')
        live[b["first"]:b["last"] + 1] += b["size"]
    peak_step = int(np.argmax(live))
    px = left + (peak_step + 0.5) * sx
    out.append(f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{top + arena * sy:.1f}" stroke="black" '
               f'stroke-dasharray="4 3"/>')
    out.append(f'<text x="{px + 4:.1f}" y="{top + 12}">peak {int(live.max()):,} B live at step {peak_step}</text>')
    out.append(f'<text x="{left}" y="{H - 12}">step (forward, loss, backward) →</text>')
    out.append(f'<text x="10" y="{top + 10}" transform="rotate(90 10 {top + 10})">arena offset ↓</text>')
    for i, (k, c) in enumerate(colors.items()):
        out.append(f'<rect x="{W - 160}" y="{top + 14 * i}" width="10" height="10" fill="{c}"/>'
                   f'<text x="{W - 146}" y="{top + 9 + 14 * i}">{k}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
