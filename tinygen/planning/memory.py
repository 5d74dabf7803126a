"""SRAM of a training step, and the interim `--update auto`: the deepest last-K that fits.

Peak SRAM = the arena (activations kept for backward, masks, gradients, planes, placed by
the lifetime planner over the step) + trained parameters (int8 views, int32 biases,
master-weight fractions, momentum) + a stack/runtime allowance.
"""

from __future__ import annotations

from dataclasses import dataclass

from tinygen.errors import TinygenError
from tinygen.ir import model as ir
from tinygen.ir.scheme import Scheme, TrainConfig, last_k_scheme, weighted_layers
from tinygen.planning.patches import PatchSpec, plan_patch_stage, stage_ends
from tinygen.planning.schedule import plan_forward, plan_training
from tinygen.planning.weight_store import FracStore, weight_store
from tinygen.reference.training import Trainer
from tinygen.targets.boards import Board

RUNTIME_RESERVE = 12 * 1024  # stack + runtime data (UART buffers, counters, newlib state)


@dataclass
class SramEstimate:
    arena: int
    trained: int
    reserve: int = RUNTIME_RESERVE

    @property
    def total(self) -> int:
        return self.arena + self.trained + self.reserve


SELECT_BYTES_PER_CANDIDATE = 4  # tg_sel_channels: the width the device chose


def trained_state_bytes(trainer) -> int:
    """Bytes of trained parameters and optimizer state in SRAM."""

    total = 0
    momentum = trainer.config.momentum != 0.0
    frac = FracStore(trainer.config.frac_bits)
    for name, tl in trainer.trained.items():
        total += 4 * trainer.bias[name].size  # int32 bias
        part = 0
        if tl.update.channels:  # the trained part: int8 view + master fraction (frozen weights stay in flash)
            part = weight_store(trainer.model.layer(name), tl.update.channels).trained_part(trainer.weights[name]).size
            total += part + frac.nbytes(part)
        state_copies = int(momentum) + int(trainer.config.accumulate > 1)
        total += 4 * state_copies * (part + (trainer.bias[name].size if tl.update.bias else 0))
    if trainer.scheme.ondevice is not None:  # the selection pass: a potential (8 B) per candidate channel and
        # per candidate its chosen width (train/select_ondevice.c.j2; the tables are in flash)
        total += sum(8 * len(tl.update.channels) + SELECT_BYTES_PER_CANDIDATE for tl in trainer.trained.values())
    return total


def training_sram(model: ir.Model, trainer) -> SramEstimate:
    return SramEstimate(plan_training(model, trainer).arena_size, trained_state_bytes(trainer))


def inference_sram(model: ir.Model) -> SramEstimate:
    return SramEstimate(plan_forward(model).arena_size, 0)


PATCHES_A_SIDE = (2, 3, 4)  # what `choose_patch_stage` tries by default
MAX_PATCHES = 64  # patches a side a build may ask for
PATCH_PEAK_SLACK = 1024  # ... and how far above the least peak it takes fewer recomputed MACs


def choose_patch_stage(model: ir.Model, trainer=None, sides: tuple[int, ...] = PATCHES_A_SIDE,
                       budget: int | None = None, log=None) -> tuple[str, int] | None:
    """A patch stage (`ir.Model.patch_stage`) for a training step with `trainer`, or for inference, over every
    stage end before the first layer that trains or passes a gradient (`stage_ends`) and `sides` patches a side.
    With a `budget`: of the plans that fit it (whole tensors among them), the one that recomputes the fewest
    MACs (None: whole tensors fit); else, or where none fits, the least planned peak (of those within
    PATCH_PEAK_SLACK bytes of it, the fewest MACs; None where no stage lowers the peak). Leaves
    `model.patch_stage` as it found it."""
    was = model.patch_stage
    frozen_before = None
    if trainer is not None:
        frozen_before = min(i for i, layer in enumerate(model.layers)
                            if layer.name in trainer.trained or layer.output.name in trainer.needs_grad)

    def peak() -> int:
        return (inference_sram(model) if trainer is None else training_sram(model, trainer)).total
    try:
        model.patch_stage = None
        tried = [(peak(), 0, None)]  # (peak, MACs recomputed, stage)
        for last in stage_ends(model, frozen_before):
            for n in sides:
                model.patch_stage = (model.layers[last].name, n)
                try:
                    stage = plan_patch_stage(model, PatchSpec(*model.patch_stage))
                    total = peak()
                except TinygenError:  # too many patches for this output
                    continue
                tried.append((total, stage.macs - stage.whole_macs, model.patch_stage))
                if log:
                    log(f"  patch stage to {model.patch_stage[0]}, {n}x{n}: peak {total:,} B, "
                        f"{stage.macs - stage.whole_macs:,} MACs recomputed")
    finally:
        model.patch_stage = was
    fitting = [t for t in tried if budget is not None and t[0] <= budget]
    if fitting:
        return min(fitting, key=lambda t: (t[1], t[0]))[2]
    least = min(t[0] for t in tried)
    return min((t for t in tried if t[0] <= least + PATCH_PEAK_SLACK), key=lambda t: (t[1], t[0]))[2]


def sram_budget(board: Board, budget_kb: float | None = None) -> int:
    """The board's usable SRAM for one step: the largest region unless the banks are contiguous."""
    avail = board.sram_bytes if board.sram_contiguous else board.largest_sram.length
    if budget_kb is not None:
        avail = min(avail, int(budget_kb * 1024))
    return avail


def auto_last_k(model: ir.Model, config: TrainConfig, budget: int, filter_r: int = 1):
    """The largest K whose last-K scheme fits `budget`; returns (trainer, estimate) or raises."""

    n = len(weighted_layers(model))
    smallest = None
    for bias_only in (False, True):  # weights and biases of the last K layers; else only their biases
        for k in range(n, 0, -1):
            scheme = last_k_scheme(model, k, filter_r)
            if bias_only:
                for u in scheme.layers.values():
                    u.channels = []
            try:
                trainer = Trainer(model, scheme, config)
            except TinygenError:
                continue  # e.g. the gradient path would cross a max pool
            est = training_sram(model, trainer)
            if est.total <= budget:
                what = "biases of the" if bias_only else ""
                trainer.scheme.source = f"auto ({what} last-{k} of {n} weighted layers)".replace("( ", "(")
                return trainer, est
            smallest = est
    if smallest is None:
        raise TinygenError(f"no layer of {model.name} can train (gradients cannot reach any weighted layer)")
    raise TinygenError(f"even training only the last layer of {model.name} needs {smallest.total:,} B of SRAM "
                       f"(arena {smallest.arena:,} B, trained state {smallest.trained:,} B) but {budget:,} B are "
                       "available; use a board with more SRAM or build with --no-train")


def describe(scheme: Scheme) -> str:
    w, b = scheme.counts()
    path = scheme.path_filtered()
    return (f"{scheme.source}: {w} layers update weights, {b} update biases"
            + (f", {len(path)} frozen layers filter their gradient" if path else ""))


def check_fits(model: ir.Model, trainer, board: Board, budget: int) -> SramEstimate:
    """Refuse, in one sentence with the numbers, a step that cannot fit."""
    est = inference_sram(model) if trainer is None else training_sram(model, trainer)
    if est.total <= budget:
        return est
    parts = {"the activation arena": est.arena, "trained parameters and optimizer state": est.trained}
    big = max(parts, key=parts.get)
    fix = ("train fewer layers or channels (--update last-K, a sparser scheme, or auto), or pick a board with "
           "more SRAM"
           if trainer is not None else "pick a board with more SRAM or a smaller model/input size")
    raise TinygenError(f"{model.name} needs {est.total:,} B of SRAM on {board.name} but {budget:,} B are available "
                       f"(largest part: {big}, {parts[big]:,} B; {est.reserve:,} B reserved for stack and "
                       f"runtime); {fix}")
