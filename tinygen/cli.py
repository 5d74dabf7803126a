"""The `tinygen` command line. Every failure is one sentence on stderr and a non-zero exit."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
from pathlib import Path

import click

from tinygen.bench import filtering, speed, transfer128
from tinygen.bench import ondevice as ondevice_bench
from tinygen.bench.suites import auto_fit, gradient_filter, master_bits, memory, schemes, selection, transfer
from tinygen.bench.transfer import TASKS as _TASKS
from tinygen.bench.transfer128 import TASKS128
from tinygen.codegen.firmware import FirmwareOptions, describe_clock
from tinygen.codegen.project import check_out_dir, read_manifest, write_project
from tinygen.errors import TinygenError
from tinygen.frontends.inputs import load_dataset, training_samples
from tinygen.ir import model as ir
from tinygen.ir.scheme import (
    DEFAULT_LR,
    LR_GUARD_MAX_HALVINGS,
    LR_GUARD_STEPS,
    MAX_LR_GUARD,
    ROUNDINGS,
    TrainConfig,
    default_rounding,
    parse_update,
    with_path_filter,
)
from tinygen.planning.memory import (
    MAX_PATCHES,
    PATCHES_A_SIDE,
    auto_last_k,
    check_fits,
    choose_patch_stage,
    describe,
    sram_budget,
)
from tinygen.planning.report import build_plan, plan_table, timeline_svg
from tinygen.reference.training import Trainer
from tinygen.report import loss_curve_svg, loss_trend, stall_start, table
from tinygen.targets.boards import board_names, load_board
from tinygen.training.filtering import AUTO_RS, AUTO_SAMPLES, auto_filter_r
from tinygen.training.ondevice import choose_envelope, envelope_scheme
from tinygen.training.selection import PROBE_TEST, PROBE_TRAIN, SELECTION_SAMPLES, choose, fisher_potential, select
from tinygen.verify.check import verify_forward, verify_training
from tinygen.verify.compare import expect_training
from tinygen.verify.export import export as export_trained
from tinygen.verify.profile import format_profile, run_profile
from tinygen.verify.runner import KERNEL_IMPLS, Progress
from tinygen.verify.sim import format_report, simulate
from tinygen.zoo.catalog import list_models
from tinygen.zoo.resolve import resolve_model

TRANSFER_TASKS = list(_TASKS) + list(TASKS128)


MAX_STEPS = (1 << 31) - 1  # the firmware and host harnesses count steps in int32
MAX_SAMPLES = 1 << 16
MAX_BUDGET_KB = 1 << 20  # 1 GiB: larger than any microcontroller's SRAM


class FiniteRange(click.FloatRange):
    """A float range that also refuses inf and nan (which compare false with both bounds)."""

    def convert(self, value, param, ctx):
        v = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(v, param, ctx)


MOMENTUM = FiniteRange(min=0, max=1, max_open=True)


class FilterR(click.ParamType):
    """--filter-r: a patch side (1 = off) or "auto"."""

    name = "r|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and value >= 1:
            return value
        if str(value).strip().lower() == "auto":
            return "auto"
        try:
            r = int(str(value))
        except ValueError:
            r = 0
        if r < 1:
            self.fail(f"{value!r} is neither a patch side (1, 2, 4, ...) nor auto", param, ctx)
        return r


FILTER_R = FilterR()


def friendly(fn):
    """Turn TinygenError (and an unwritable or unreadable path) into one clear line and a non-zero exit
    code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TinygenError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            where = exc.filename or "a file"
            click.echo(f"error: cannot use {where}: {exc.strerror or exc}; choose a path you can write to", err=True)
            sys.exit(TinygenError.exit_code)

    return wrapper


class _Cli(click.Group):
    """click's usage errors in tinygen's form: one `error:` line and exit status 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            hint = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
            message = exc.format_message().replace(". (Did you mean", " (did you mean").rstrip(".")
            click.echo(f"error: {message}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _check_out(out: Path) -> None:
    """Fail before the slow steps when --out cannot hold a build."""
    check_out_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".tinygen-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise TinygenError(f"--out {out} cannot hold a build ({exc.strerror or exc}); choose a folder you can "
                           "write to") from None


MASTER_BITS_OPTION = click.option(
    "--master-bits", type=click.IntRange(0, 16), default=TrainConfig.frac_bits, show_default=True,
    help="Bits of each trained weight's master below its int8 view: 8 (2 B per weight in SRAM), 4 (1.5 B: the "
         "fraction in nibbles) or 0 (1 B: the int8 weight updated in place, stochastic rounding); docs/numerics.md.")
PATCH_OPTIONS = (
    click.option("--patches", default="0", show_default=True, metavar="N|auto",
                 help="Run the initial stage patch by patch (MCUNetV2): its output split into N x N windows, the "
                      "halos recomputed, so its large maps never exist whole (the same outputs). auto: the planner "
                      "chooses the stage and N (2-4): the fewest recomputed MACs that fit the budget (none where "
                      "whole tensors fit), a selection planning with the least peak; 0: whole tensors."),
    click.option("--patch-stage", default=None, metavar="LAYER",
                 help="With --patches N: the stage's last layer, whose output exists whole (`tinygen plan` lists "
                      "the layers; default: the end of least peak SRAM for N)."),
)


def patch_options(fn):
    for option in reversed(PATCH_OPTIONS):
        fn = option(fn)
    return fn


def _patch_sides(patches: str, patch_stage: str | None) -> tuple[int, ...] | None:
    """The patches a side the options allow the planner (None: whole tensors)."""
    if patches == "auto":
        if patch_stage is not None:
            raise TinygenError("--patch-stage goes with --patches N, not auto; give a number of patches a side")
        return PATCHES_A_SIDE
    if not patches.isdigit() or int(patches) > MAX_PATCHES:
        raise TinygenError(f"--patches {patches!r}: use a number of patches a side (0 to {MAX_PATCHES}) or auto")
    if int(patches) == 0:
        if patch_stage is not None:
            raise TinygenError("--patch-stage needs --patches N (or auto) as well")
        return None
    return (int(patches),)


def _apply_patches(model, patches: str, patch_stage: str | None, trainer=None, budget=None, say=None) -> None:
    """Carry the patch stage the options ask for with the model (every plan of it then agrees): the one named, or
    the planner's choice (`choose_patch_stage`: without a budget the least peak, which a selection then plans
    with; with one, for --patches auto, the fewest recomputed MACs that fit it), which it then describes."""
    sides = _patch_sides(patches, patch_stage)
    if sides is None:
        model.patch_stage = None
    elif patch_stage is not None:
        model.patch_stage = (patch_stage, sides[0])
    else:  # --patches N: the end of least peak for N; auto: as above
        model.patch_stage = choose_patch_stage(model, trainer, sides, budget if patches == "auto" else None)
        if say is not None:
            chosen = model.patch_stage
            say("patch stage: none (whole tensors fit the budget, or no stage lowers the peak)" if chosen is None
                else f"patch stage: to {chosen[0]}, {chosen[1]}x{chosen[1]} patches")


JSON_OPTION = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON object on stdout instead of text (README: --json).")
JSON_SCHEMA = 1  # bumped when a key changes meaning or goes away (README: --json)


def _emit_json(command: str, doc: dict) -> None:
    """The --json output: one object on one line of stdout, its command and schema version first."""
    click.echo(json.dumps({"command": command, "schema": JSON_SCHEMA, **doc}))


def _progress(command: str) -> Progress:
    """Progress of a long run on stderr: a bar on a terminal, plain lines otherwise."""
    return Progress(lambda text: click.echo(text, err=True, nl=False), tty=click.get_text_stream("stderr").isatty(),
                    prefix=f"{command}: ")


@click.group(cls=_Cli)
@click.version_option(package_name="tinygen")
def main():
    """tinygen: compile int8 CNNs into C that trains on Cortex-M microcontrollers."""


@main.command()
@JSON_OPTION
@friendly
def models(as_json):
    """List the model zoo: name, input shape, parameters, MACs."""

    entries = list_models()
    if as_json:
        _emit_json("models", {"models": [{**dataclasses.asdict(e), "input_shape": list(e.input_shape)}
                                         for e in entries]})
        return
    rows = [[e.name, "x".join(map(str, e.input_shape)), e.params, e.macs, e.description] for e in entries]
    click.echo(table(["model", "input", "params", "MACs", "description"], rows, "llrrl"))


@main.command()
@JSON_OPTION
@friendly
def boards(as_json):
    """List the boards: core, clock, SRAM, flash, emulators."""

    loaded = [load_board(name) for name in board_names()]
    if as_json:
        _emit_json("boards", {"boards": [_board_json(b) for b in loaded]})
        return
    rows = []
    for b in loaded:
        clock = f"{b.clock_hz / 1e6:g} MHz" + (f" ({b.clock.reset.core_hz / 1e6:g} at reset)"
                                                 if b.clock.reset.core_hz != b.clock_hz else "")
        rows.append([b.name, b.core, b.fpu, clock, f"{b.sram_bytes // 1024} KB",
                     f"{b.flash_bytes // 1024} KB", b.renode["platform"], b.qemu["machine"]])
    click.echo(table(["board", "core", "FPU", "clock", "SRAM", "flash", "Renode platform", "QEMU stand-in"],
                     rows, "lllrrrll"))


def _board_json(b) -> dict:
    regions = lambda rs: [{"name": r.name, "origin": r.origin, "length": r.length} for r in rs]  # noqa: E731
    return {"name": b.name, "description": b.description, "core": b.core, "fpu": b.fpu, "cpu_flags": list(b.cpu_flags),
            "clock_hz": b.clock_hz, "sram_bytes": b.sram_bytes, "flash_bytes": b.flash_bytes,
            "sram": regions(b.sram), "flash": regions(b.flash), "renode_platform": b.renode["platform"],
            "qemu_machine": b.qemu["machine"]}


@main.command()
@click.option("--board", required=True, help="Target board (see `tinygen boards`).")
@click.option("--model", "model_spec", required=True, help="Zoo name (see `tinygen models`) or a model file.")
@click.option("--classes", type=click.IntRange(min=2), default=None, help="Replace the head with N classes.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output directory.")
@click.option("--train/--no-train", default=True, show_default=True,
              help="Emit the training step (tg_train_step) beside inference.")
@click.option("--update", default="auto", show_default=True,
              help="Which layers train: auto (selections under the SRAM budget by gradient potential on real "
                   "samples, with and without a compute cap, ranked by a short training probe) | fisher (by "
                   "Fisher potential, TinyTrain's criterion) | on-device (the firmware chooses by Fisher potential on "
                   "the task's first samples, among candidates whose widest all fit the budget) | deepest (the most "
                   "last layers that fit) | full | last-K | bias | scheme.json | sparse_schemes.json#mbv2/49kb.")
@click.option("--budget-kb", type=FiniteRange(min=1, max=MAX_BUDGET_KB), default=None,
              help="SRAM budget for a training step (default: the board's SRAM).")
@click.option("--macs-budget", type=click.IntRange(min=1), default=None,
              help="With --update auto/fisher/on-device: cap on the backward MACs of a training step (on-device: "
                   "default half the forward's).")
@click.option("--reorder-channels", is_flag=True,
              help="With --update fisher (auto switches to it): rename channels most important first (the same "
                   "function), so each layer trains its most important channels, not its first ones; the order "
                   "goes to scheme.json.")
@click.option("--filter-r", type=FILTER_R, default="1", show_default=True,
              help="Gradient-filter patch size r for every trained layer (1 = off), or auto: per layer, from its map "
                   "(at least 2r x 2r) and the gradient cosine to r = 1 on a few samples (recorded in scheme.json).")
@click.option("--path-filter-r", type=click.IntRange(min=1), default=1, show_default=True,
              help="Also filter the output gradient of every frozen convolution on the gradient path whose map is at "
                   "least 2r x 2r, with patch size r (1 = off): fewer backward MACs, an approximate gradient.")
@click.option("--lr", type=FiniteRange(min=0, min_open=True), default=DEFAULT_LR, show_default=True,
              help="SGD learning rate.")
@click.option("--momentum", type=MOMENTUM, default=0.0, show_default=True, help="SGD momentum in [0, 1).")
@click.option("--lr-halve-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Halve the learning rate every N steps (0: constant).")
@click.option("--lr-guard", type=click.IntRange(min=0, max=MAX_LR_GUARD), default=LR_GUARD_STEPS, show_default=True,
              help="Halve the learning rate after N steps in a row whose outputs mostly sit at their clamp or whose "
                   f"loss is at its ceiling (a diverging rate); at most {LR_GUARD_MAX_HALVINGS} times (0: off).")
@MASTER_BITS_OPTION
@click.option("--rounding", type=click.Choice(ROUNDINGS), default=None,
              help="How a weight update is rounded to the master weight's last bit: to nearest, or stochastically "
                   "(unbiased: updates below one master step still move the weight in expectation; docs/numerics.md). "
                   "Default: stochastic with --master-bits 0, else nearest.")
@click.option("--loss", type=click.Choice(["ce", "mse"]), default="ce", show_default=True,
              help="Softmax cross-entropy on class labels, or mean squared error on target codes "
                   "(MSE builds train on the host; the firmware harness trains with class labels).")
@click.option("--accumulate", type=click.IntRange(min=1, max=65536), default=1, show_default=True,
              help="Gradient accumulation: apply the mean update of every N samples.")
@click.option("--samples", "samples", type=click.IntRange(min=1, max=MAX_SAMPLES), default=None,
              help="Real samples embedded in flash for the firmware (default 8, fewer for large inputs).")
@click.option("--dataset", "dataset_path", type=click.Path(dir_okay=False), default=None,
              help="Your own samples, an .npz with x (N x input shape: float images in [0, 1] or int8 input "
                   "codes) and y (N labels): a fresh --classes head is calibrated on them, the selection measures "
                   "on them, the firmware embeds them and verify trains on them.")
@click.option("--steps", type=click.IntRange(min=1, max=MAX_STEPS), default=20, show_default=True,
              help="Training steps the firmware runs over its embedded samples.")
@click.option("--checkpoint-every", type=click.IntRange(min=0, max=MAX_STEPS), default=0, show_default=True,
              help="Save the trained state to the board's two flash slots every N steps and resume from the newest "
                   "complete one at boot (0: off).")
@click.option("--dump-trained", is_flag=True, default=False,
              help="After training, the firmware runs every embedded sample again and prints its trained "
                   "parameters (framed, CRC-32); tinygen sim checks and saves them and tinygen export writes the "
                   "trained model.")
@click.option("--clock", type=click.Choice(["max", "reset"]), default="max", show_default=True,
              help="max: the firmware brings the board up to the clock its board file configures (216 MHz F746, "
                   "480 MHz H743), falling back to the reset clock with a message; reset: it leaves the clocks as "
                   "it finds them (when your own code sets them).")
@patch_options
@JSON_OPTION
@friendly
def build(board, model_spec, classes, out, train, update, budget_kb, macs_budget, reorder_channels, filter_r,
          path_filter_r, lr,
          momentum, lr_halve_every, lr_guard, master_bits, rounding, loss, accumulate, samples, dataset_path, steps,
          checkpoint_every, dump_trained, clock, patches, patch_stage, as_json):
    """Generate the C project for MODEL on BOARD into OUT."""
    say = functools.partial(click.echo, err=as_json)  # with --json, stdout holds only the JSON object
    if checkpoint_every and (not train or loss != "ce" or checkpoint_every % accumulate):
        raise TinygenError(f"--checkpoint-every {checkpoint_every} needs a firmware that trains with --loss ce and a "
                           f"multiple of --accumulate ({accumulate}); change one of them")
    if dump_trained and (not train or loss != "ce"):
        raise TinygenError("--dump-trained needs a firmware that trains (--loss ce); drop it or train")
    _check_out(out)
    _patch_sides(patches, patch_stage)  # bad options fail before the slow steps
    if update == "on-device" and (checkpoint_every or filter_r == "auto" or path_filter_r > 1 or reorder_channels):
        raise TinygenError("--update on-device does not yet combine with --checkpoint-every, --filter-r auto, "
                           "--path-filter-r or --reorder-channels; drop them or choose another --update")
    b = load_board(board)
    dataset = load_dataset(dataset_path) if dataset_path else None
    model = resolve_model(model_spec, classes, dataset.images() if dataset is not None else None)
    budget = sram_budget(b, budget_kb)
    if dataset is not None:
        dataset.for_model(model, 1)  # its shape and labels fit the model: say so before selecting
    softmax = model.layers[-1] if train and isinstance(model.layers[-1], ir.Softmax) else None
    if train:
        model = ir.logits(model)  # a final softmax: the firmware trains on the logits and outputs them
        _apply_patches(model, patches, patch_stage)  # the selection counts the stage (and trains nothing in it)
    trainer = _choose_trainer(model, budget, train, update, filter_r, lr, momentum, lr_halve_every, loss,
                              accumulate, macs_budget, reorder_channels, lr_guard, rounding, master_bits, dataset)
    if trainer is not None:
        model = trainer.model  # --reorder-channels: the same function, channels renamed
        trainer = _path_filter(trainer, path_filter_r)
    _apply_patches(model, patches, patch_stage, trainer, budget, say)  # for the step as chosen
    check_fits(model, trainer, b, budget)
    if trainer is not None:
        say(f"update scheme: {describe(trainer.scheme)}")
        if trainer.scheme.channel_order:
            say(f"channels reordered most important first in {len(trainer.scheme.channel_order)} tensors "
                "(the same function; the order is recorded in model/scheme.json)")

    fw_train = trainer is not None and trainer.config.loss == "ce"
    tflite = Path(model_spec) if Path(model_spec).suffix == ".tflite" else None
    m = write_project(model, b, out, trainer,
                      FirmwareOptions(samples=samples, train=fw_train, train_steps=steps if fw_train else 0,
                                      checkpoint_every=checkpoint_every, dataset=dataset, clock=clock,
                                      dump_trained=dump_trained),
                      expect_training, tflite, softmax)

    if trainer is not None and m["train"]["config"].get("taps_only"):  # the build left patch sums out to fit
        trainer = Trainer(model, trainer.scheme, TrainConfig.from_json(m["train"]["config"]))
    p = build_plan(model, trainer, b, budget, checkpoint=bool(checkpoint_every))
    (Path(out) / "plan.json").write_text(json.dumps(p, indent=1) + "\n")
    (Path(out) / "memory_timeline.svg").write_text(timeline_svg(p))
    if as_json:
        fw = m.get("firmware", {})
        _emit_json("build", {
            "out": str(out), "model": m["model"], "board": b.name, "layers": len(model.layers), "params": m["params"],
            "macs": m["macs"], "arena_bytes": m["arena_bytes"], "weight_bytes": m["weight_bytes"],
            "train": None if trainer is None else {
                "update": update, "scheme": describe(trainer.scheme), "filter_r": filter_r,
                "trained_layers": m["train"]["trained_layers"], "trained_bytes": m["train"]["trained_bytes"],
                "reordered_tensors": len(trainer.scheme.channel_order or {})},
            "plan": {k: p[k] for k in ("peak_sram_bytes", "budget_bytes", "flash_bytes", "fits")},
            "firmware": {"compiled": bool(fw.get("compiled")), "train_steps": fw.get("train_steps", 0),
                         "samples": fw.get("samples", 0)},
            "clock": fw.get("clock"),
            "files": {"manifest": str(Path(out) / "tinygen.json"), "plan": str(Path(out) / "plan.json"),
                      "memory_timeline": str(Path(out) / "memory_timeline.svg")}})
        return
    click.echo(f"built {m['model']} for {b.name} in {out}: {len(model.layers)} layers, {m['params']:,} params, "
               f"{m['macs']:,} MACs, arena {m['arena_bytes']:,} B, frozen weights {m['weight_bytes']:,} B")
    if trainer is not None:
        t = m["train"]
        which = (f"the device chooses among {t['trained_layers']} layers" if trainer.scheme.ondevice is not None
                 else f"{t['trained_layers']} layers train")
        click.echo(f"training: {which} ({update}, r={filter_r}), "
                   f"{t['trained_bytes']:,} B of trained parameters and optimizer state in SRAM")
    click.echo(f"plan: peak SRAM {p['peak_sram_bytes']:,} B of {p['budget_bytes']:,} B (plan.json, "
               "memory_timeline.svg)")
    fw = m.get("firmware") or {}
    if fw.get("samples"):
        click.echo(f"firmware: {fw['samples_source']} embedded ({fw['samples_why']})")
    for line in fw.get("flash_fit", []):
        click.echo(f"firmware: {line}")
    if fw.get("size_fallback"):
        click.echo(f"firmware: {fw['size_fallback']}")
    click.echo(describe_clock(b, clock))


def _path_filter(trainer: Trainer, r: int) -> Trainer:
    """The chosen step with `--path-filter-r r` (the frozen layers on the gradient path filter their gradient)."""
    if r <= 1:
        return trainer
    return Trainer(trainer.model, with_path_filter(trainer.scheme, trainer.model, r), trainer.config)


def _choose_trainer(model, budget, train, update, filter_r, lr, momentum, lr_halve_every, loss="ce", accumulate=1,
                    macs_budget=None, reorder=False, lr_guard=LR_GUARD_STEPS, rounding=None,
                    master_bits=TrainConfig.frac_bits, dataset=None):
    """The reference Trainer for the requested update scheme (None without training); `filter_r` "auto": the
    scheme chosen at r = 1, then each layer's r (`training.filtering.auto_filter_r`)."""
    if not train:
        return None
    trainer = _select_trainer(model, budget, update, 1 if filter_r == "auto" else filter_r, lr, momentum,
                              lr_halve_every, loss, accumulate, macs_budget, reorder, lr_guard, rounding,
                              master_bits, dataset)
    if filter_r != "auto":
        return trainer
    x, y, source = training_samples(trainer.model, AUTO_SAMPLES, dataset)
    click.echo(f"--filter-r auto: each layer's r from its map and the gradient cosines on {source} ...", err=True)
    trainer, choices = auto_filter_r(trainer, x, y)
    rows = [[c.layer, "x".join(map(str, c.output)), str(c.cap), c.measured or "-",
             *[f"{c.cosine[r]:.3f}" if r in c.cosine else "-" for r in AUTO_RS], str(c.r)] for c in choices]
    click.echo(table(["layer", "output", "map allows r", "cosine of", *[f"r={r}" for r in AUTO_RS], "r"], rows,
                     "lllr" + "r" * len(AUTO_RS) + "r"), err=True)
    return trainer


def _select_trainer(model, budget, update, filter_r, lr, momentum, lr_halve_every, loss, accumulate, macs_budget,
                    reorder, lr_guard, rounding, master_bits, dataset):
    config = TrainConfig(lr=lr, momentum=momentum, lr_halve_every=lr_halve_every, loss=loss,
                         accumulate=accumulate, lr_guard=lr_guard, frac_bits=master_bits,
                         rounding=rounding or default_rounding(master_bits)).check()
    if update == "deepest":
        return auto_last_k(model, config, budget, filter_r)[0]
    if update == "on-device":
        env = choose_envelope(model, budget, config, macs_budget, filter_r)
        scheme = envelope_scheme(model, env, filter_r)
        scheme.ondevice = env.to_json()
        click.echo(f"on-device selection: the firmware chooses among {len(env.candidates)} candidates by the Fisher "
                   f"potential of the first {env.samples} samples, within {env.macs_budget:,} backward MACs; the "
                   "arena and the trained state are planned for every candidate at its widest, so any selection "
                   "fits:", err=True)
        click.echo(table(["candidate", "layer", "channels it may train", "SRAM B (widest)", "MACs (widest)"],
                         [[str(j), c.name, " / ".join(map(str, c.options)), f"{c.option_bytes[-1]:,}",
                           f"{c.option_macs[-1]:,}"] for j, c in enumerate(env.candidates)], "rllrr"), err=True)
        return Trainer(model, scheme, config)
    if update == "fisher" or (update == "auto" and reorder):
        if update == "auto":
            click.echo("--reorder-channels orders channels by Fisher potential: selecting as --update fisher",
                       err=True)
        x, y, source = training_samples(model, SELECTION_SAMPLES, dataset)
        click.echo(f"selecting the update under {budget:,} B from the Fisher potential of {source} ...", err=True)
        got = select(model, fisher_potential(model, x, y), budget, config, macs_budget, filter_r, reorder)
        if got is None:  # not even the classifier with its weights: biases only, or the error with the numbers
            return auto_last_k(model, config, budget, filter_r)[0]
        return got[0]
    if update == "auto":
        x, y, source = training_samples(model, PROBE_TRAIN + PROBE_TEST, dataset)
        click.echo(f"selecting the update under {budget:,} B on {source} (gradient potential, with and without "
                   "a compute cap, then a training probe; where the capped one wins, its layers' contributions "
                   "measured by the probe) ...", err=True)
        choices = choose(model, x, y, budget, config, macs_budget, filter_r,
                         log=lambda line: click.echo(line, err=True))
        if not choices:  # not even the classifier with its weights: biases only, or the error with the numbers
            return auto_last_k(model, config, budget, filter_r)[0]
        for i, c in enumerate(choices):
            loss = "-" if c.probe_loss is None else f"{c.probe_loss:.4f}"
            click.echo(f"  {'chosen' if i == 0 else '      '} {c.label:22s} probe loss {loss}  peak "
                       f"{c.estimate.total:,} B  {c.trainer.scheme.counts()[0]} weight / "
                       f"{c.trainer.scheme.counts()[1]} bias layers", err=True)
        return choices[0].trainer
    return Trainer(model, parse_update(update, model, filter_r), config)


@main.command()
@click.option("--board", required=True, help="Target board (see `tinygen boards`).")
@click.option("--model", "model_spec", required=True, help="Zoo name or a model file.")
@click.option("--classes", type=click.IntRange(min=2), default=None, help="Replace the head with N classes.")
@click.option("--budget-kb", type=FiniteRange(min=1, max=MAX_BUDGET_KB), default=None,
              help="SRAM budget (default: the board's).")
@click.option("--update", default="auto", show_default=True, help="As for build (auto, deepest, full, ...).")
@click.option("--macs-budget", type=click.IntRange(min=1), default=None, help="As for build.")
@click.option("--reorder-channels", is_flag=True, help="As for build.")
@click.option("--filter-r", type=FILTER_R, default="1", show_default=True, help="As for build (r or auto).")
@click.option("--path-filter-r", type=click.IntRange(min=1), default=1, show_default=True, help="As for build.")
@click.option("--momentum", type=MOMENTUM, default=0.0, show_default=True)
@MASTER_BITS_OPTION
@click.option("--no-train", "no_train", is_flag=True, help="Plan inference only.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--svg", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the memory timeline picture (SVG) to this file.")
@click.option("--checkpoint-every", type=click.IntRange(min=0, max=MAX_STEPS), default=0, show_default=True,
              help="As for build: count the board's two checkpoint slots in flash.")
@patch_options
@friendly
def plan(board, model_spec, classes, budget_kb, update, macs_budget, reorder_channels, filter_r, path_filter_r,
         momentum,
         master_bits, no_train, as_json, svg, checkpoint_every, patches, patch_stage):
    """Plan a training step: per-layer memory and compute, peak SRAM vs the board, a timeline picture."""
    if svg is not None and not svg.parent.is_dir():
        raise TinygenError(f"--svg {svg}: the folder {svg.parent} does not exist; create it or choose another path")

    _patch_sides(patches, patch_stage)  # bad options fail before the slow steps
    b = load_board(board)
    model = resolve_model(model_spec, classes)
    budget = sram_budget(b, budget_kb)
    if not no_train:
        model = ir.logits(model)
        _apply_patches(model, patches, patch_stage)  # the selection counts the stage (and trains nothing in it)
    trainer = _choose_trainer(model, budget, not no_train, update, filter_r, DEFAULT_LR, momentum, 0,
                              macs_budget=macs_budget, reorder=reorder_channels, master_bits=master_bits)
    if trainer is not None:
        model = trainer.model
        trainer = _path_filter(trainer, path_filter_r)
    _apply_patches(model, patches, patch_stage, trainer, budget, lambda line: click.echo(line, err=True))
    p = build_plan(model, trainer, b, budget, checkpoint=bool(checkpoint_every))
    if svg is not None:
        svg.write_text(timeline_svg(p))  # its folder was checked before the slow steps
    click.echo(json.dumps(p, indent=1) if as_json else plan_table(p) + (f"\nmemory timeline: {svg}" if svg else ""))
    if not p["fits"]:
        try:
            check_fits(model, trainer, b, budget)
        except TinygenError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        raise TinygenError(f"{model.name} needs {p['flash_bytes']:,} B of flash but {b.name} has "
                           f"{b.flash_bytes:,} B; pick a board with more flash or a smaller model")


@main.command()
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("--inputs", "inputs", default="8", show_default=True,
              help="How many real inputs to compare, or an .npy of your own int8 inputs (N x input shape).")
@click.option("--expect", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --inputs x.npy: an .npy of another runtime's int8 outputs for them (e.g. TFLite Micro's), "
                   "which the outputs must equal too.")
@click.option("--steps", type=click.IntRange(min=0, max=MAX_STEPS), default=None,
              help="Training steps to compare (default 20 for a training build, 0 to skip).")
@click.option("--kernels", type=click.Choice(list(KERNEL_IMPLS)), default="portable", show_default=True,
              help="Kernel implementation the host build compiles.")
@JSON_OPTION
@friendly
def verify(build_dir, inputs, expect, steps, kernels, as_json):
    """Compile BUILD_DIR's C for the host (-Werror, ASan+UBSan) and compare with the reference."""

    if inputs.isdigit():
        n = int(inputs)
        if not 1 <= n <= MAX_SAMPLES:
            raise TinygenError(f"--inputs {inputs} is not in 1..{MAX_SAMPLES}; give a count or an .npy of inputs")
        if expect is not None:
            raise TinygenError("--expect needs --inputs x.npy: the expected outputs belong to inputs you give")
        r = verify_forward(build_dir, n, kernels)
    else:
        r = verify_forward(build_dir, Path(inputs), kernels, expect)
    if not as_json:
        click.echo(f"verify: forward bit-exact: {r.elements} of {r.elements} output values equal on {r.source} "
                   f"(host C built -std=c99 -Wall -Wextra -Werror, ASan+UBSan clean)")
    if steps is None:
        steps = 20 if "train" in read_manifest(build_dir) else 0
    t = None
    if steps:
        progress = _progress("verify")
        try:
            t = verify_training(build_dir, steps, kernels, progress)
        finally:
            progress.finish()
    curve = _loss_curve(build_dir, t.losses, "verify: the host C's loss per step") if t else None
    if as_json:
        _emit_json("verify", {
            "build_dir": str(build_dir), "bit_exact": True,
            "forward": {"inputs": r.inputs, "values": r.elements, "source": r.source},
            "training": None if t is None else {
                "steps": t.steps, "source": t.source, "losses_q16": t.losses,
                "gradient_values": t.gradient_values, "param_bytes": t.param_bytes, "checksum": t.checksum,
                "lr_halvings": t.lr_halvings, "stalled_since": stall_start(t.losses), "loss_curve": str(curve)}})
        return
    if t is not None:
        q = [v / 65536 for v in t.losses]
        click.echo(f"verify: training bit-exact over {t.steps} steps on {t.source}: every loss, "
                   f"{t.gradient_values:,} step-1 gradient values, {t.param_bytes:,} bytes of trained parameters "
                   f"(checksum {t.checksum:#010x}); loss {q[0]:.3f} -> {q[-1]:.3f} "
                   f"(mean of first/last 5: {sum(q[:5]) / len(q[:5]):.3f} -> {sum(q[-5:]) / len(q[-5:]):.3f})"
                   + (f"; the learning-rate guard halved the rate at steps {', '.join(map(str, t.lr_halvings))}, "
                      "as the reference's" if t.lr_halvings else ""))
        click.echo(f"verify: {loss_trend(t.losses)}")
        click.echo(f"loss curve: {curve}")


def _loss_curve(build_dir: Path, losses: list[int], title: str) -> Path:
    path = Path(build_dir) / "loss_curve.svg"
    path.write_text(loss_curve_svg(losses, title))
    return path


# ---- benchmarks (tinygen/bench.py): tables on stdout, JSON in --out ----
@main.group()
def bench():
    """Benchmarks: print a table, save JSON."""


@bench.command("gradients")
@click.option("--model", "models", multiple=True, default=["digits-cnn", "mnist-cnn"], show_default=True)
@click.option("--samples", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--filter-r", "rs", multiple=True, type=click.IntRange(min=1), default=[1, 2, 4], show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for the JSON (default bench-results/).")
@friendly
def bench_gradients(models, samples, rs, out):
    """Cosine similarity of filtered integer gradients to the exact float gradient, per layer."""

    gradient_filter(list(models), samples, list(rs), out, log=click.echo)


@bench.command("memory")
@click.option("--no-elf", "no_elf", is_flag=True, help="Plans only: do not link a firmware per configuration.")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Parallel firmware builds (default: cores).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None)
@friendly
def bench_memory(no_elf, jobs, out):
    """Planned peak SRAM of the MIT models with their published schemes and 8, 4 and 0 master bits, and the
    paper's own setting (0 bits, a 2x2 patch stage), beside the linked firmware's and the paper's figures; and of
    inference, whole and with a patch stage."""

    memory(out, log=click.echo, elf=not no_elf, jobs=jobs)


@bench.command("selection")
@click.option("--task", type=click.Choice(TRANSFER_TASKS), default="mnist", show_default=True)
@click.option("--budget-kb", "budgets", multiple=True, type=float, default=[32.0, 40.0, 56.0], show_default=True)
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None)
@friendly
def bench_selection(task, budgets, seeds, out):
    """Fisher-selected sparse update vs the deepest last-K at equal SRAM budgets, on the transfer task."""

    selection(task, list(budgets), out, log=click.echo, seeds=seeds)


@bench.command("ondevice")
@click.option("--model", "models", multiple=True, type=click.Choice(["digits", "mnist14"]),
              default=["digits", "mnist14"], show_default=True, help="The transfer start (pretrained on 0-4).")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Sample orders.")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Parallel runs (default: cores).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None)
@friendly
def bench_ondevice(models, seeds, jobs, out):
    """Accuracy of the device's own selection (--update on-device) on two tasks vs the selection it made for the
    other task and the best fixed scheme, at the same envelope and compute budget."""

    ondevice_bench.run(list(models), seeds, out, log=click.echo, jobs=jobs)


@bench.command("transfer")
@click.option("--task", "tasks", multiple=True, type=click.Choice(TRANSFER_TASKS),
              default=["digits", "mnist", "mnist14"], show_default=True)
@click.option("--update", "updates", multiple=True, default=["last-1", "last-2", "last-3", "full"],
              show_default=True)
@click.option("--filter-r", "rs", multiple=True, type=FILTER_R, default=["1", "2"], show_default=True,
              help="The trained layers' patch sides (or auto), each a run.")
@click.option("--path-filter-r", "path_rs", multiple=True, type=click.IntRange(min=2), default=[],
              help="Also a run where every frozen convolution on the gradient path filters at this r (small tasks).")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Sample orders averaged per configuration.")
@click.option("--float-nq", is_flag=True,
              help="Also run float SGD without quantization (the float baseline fake-quantizes like the int8 net).")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="mnist128: parallel runs (default: cores).")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="mnist128: keep the frozen layers' activations here between runs (keyed by a hash).")
@click.option("--only", "labels", multiple=True,
              help="mnist128: only these updates, by their table label (e.g. 'MIT 99kb', 'auto @stm32f746'); "
                   "their rows replace their own in the saved JSON, the others are kept.")
@click.option("--lr-halve-every", "halve_every", type=click.IntRange(min=0), default=0, show_default=True,
              help="mnist128: halve the learning rate every N steps in every run, integer and float (0: constant); "
                   "saved as transfer_mnist128_halveN.json.")
@click.option("--master-bits", type=click.IntRange(0, 16), default=TrainConfig.frac_bits, show_default=True,
              help="mnist128: the integer runs' trained-weight storage (as for build; other than 8: saved as "
                   "transfer_mnist128_mbB.json).")
@click.option("--rounding", type=click.Choice(ROUNDINGS), default=None,
              help="mnist128: the integer runs' rounding of weight updates (stochastic: saved as "
                   "transfer_mnist128_stochastic.json). Default: as for build.")
@click.option("--int-only", is_flag=True,
              help="mnist128: only the integer runs (float SGD does not round); the saved JSON keeps its float rows "
                   "of the same schemes (those of an `auto` that now chooses another scheme are dropped).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None)
@friendly
def bench_transfer(tasks, updates, rs, path_rs, seeds, float_nq, jobs, cache, labels, halve_every, master_bits,
                   rounding, int_only, out):
    """Transfer learning: integer on-device training vs float SGD (fake-quant) vs none.

    digits/mnist/mnist14/mnist-mbv2: pretrained on classes 0-4, trained on 5-9. mnist128: the MIT ImageNet models
    at 128x128 with a fresh 10-way head on MNIST, each update scheme (head, last-K, MIT 49kb/99kb, auto at each
    MIT scheme's SRAM)."""

    rounding = rounding or default_rounding(master_bits)
    small = [t for t in tasks if t not in TASKS128]
    if small:
        transfer(small, list(updates), [1] + [r for r in dict.fromkeys(rs) if r != 1], out, log=click.echo,
                 seeds=seeds, float_nq=float_nq, path_rs=tuple(dict.fromkeys(path_rs)))
    for task in (t for t in tasks if t in TASKS128):
        results = transfer128.bench(task, seeds, labels=list(labels) or None, jobs=jobs, log=click.echo,
                                    cache_dir=cache, halve_every=halve_every, rounding=rounding,
                                    master_bits=master_bits, methods=("int",) if int_only else ("int", "float"))
        headers, rows = transfer128.summary(results)
        click.echo(table(headers, rows, "llrrrrl"))
        merge = bool(labels) or int_only
        path, dropped = transfer128.save(results, task, Path(out or "bench-results"), halve_every, rounding, merge,
                                         master_bits)
        click.echo(f"saved {path}" + (" (the other rows kept)" if merge else ""))
        for model_name, label in dropped:
            click.echo(f"{model_name} {label}: the saved rows of its other method trained another scheme and were "
                       f"dropped; run it again with --only '{label}' (without --int-only) to compare")


@bench.command("master-bits")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Sample orders averaged per configuration.")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Parallel runs (default: cores).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None)
@friendly
def bench_master_bits(seeds, jobs, out):
    """Accuracy of 8, 4 and 0 master bits (`--master-bits`) vs float SGD: mnist-mbv2 with the MIT mbv2 99kb
    scheme and mnist14 last-3, with the SRAM each storage's trained state takes."""

    master_bits(out, log=click.echo, seeds=seeds, jobs=jobs)


@bench.command("auto")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None)
@friendly
def bench_auto(out):
    """--update auto on every zoo model and board at 256 KB (F746, nRF52840) and 1 MB (H743): does it fit?"""

    auto_fit(out, log=click.echo)


@bench.command("schemes")
@click.option("--task", type=click.Choice(TRANSFER_TASKS), default="mnist-mbv2", show_default=True,
              help="A transfer task on a MobileNetV2-w0.35 (the published mbv2 schemes index its 51 convolutions).")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Sample orders averaged per configuration.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None)
@friendly
def bench_schemes(task, seeds, out):
    """Published MIT mbv2 schemes vs Fisher selection vs last-K at each scheme's own peak SRAM."""

    schemes(task, out, log=click.echo, seeds=seeds)


@bench.command("filter")
@click.option("--models", "models", multiple=True, type=click.Choice(filtering.MODELS),
              default=list(filtering.MODELS), show_default=True)
@click.option("--schemes", "schemes", multiple=True, type=click.Choice(list(speed.SCHEMES)),
              default=list(speed.SCHEMES), show_default=True)
@click.option("--filter-r", "rs", multiple=True, type=FILTER_R, default=list(filtering.RS), show_default=True,
              help="Patch sides; r > 1 filters the trained layers and the frozen ones on the path; auto: each layer's "
                   "r as build --filter-r auto chooses it.")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Parallel builds and runs (default: cores).")
@click.option("--timeout", type=click.FloatRange(min=1), default=900.0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None)
@friendly
def bench_filter(models, schemes, rs, jobs, timeout, out):
    """What gradient filtering (trained layers and the frozen path) saves: backward MACs and instructions on QEMU."""
    rows = filtering.bench(list(models), list(schemes), list(dict.fromkeys(rs)), jobs, log=click.echo, timeout=timeout)
    click.echo(filtering.report(rows))
    click.echo(f"saved {filtering.save(rows, out)}")


@bench.command("speed")
@click.option("--models", "models", multiple=True, type=click.Choice(speed.MODELS), default=list(speed.MODELS),
              show_default=True)
@click.option("--schemes", "schemes", multiple=True, type=click.Choice(list(speed.SCHEMES)),
              default=list(speed.SCHEMES), show_default=True,
              help="Published MIT schemes: 49kb, or 100kb (mbv2 99kb, proxyless 98kb, mcunet 99kb).")
@click.option("--filter-r", "rs", multiple=True, type=click.IntRange(min=1), default=[1, 2], show_default=True)
@click.option("--boards", "boards", multiple=True, type=click.Choice(speed.BOARDS), default=list(speed.BOARDS),
              show_default=True)
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Parallel builds and runs (default: cores).")
@click.option("--timeout", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="Seconds before a hung firmware is stopped.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None)
@friendly
def bench_speed(models, schemes, rs, boards, jobs, timeout, out):
    """Instructions per training step and per inference of the MIT models under QEMU (bit-exact runs),
    forward MAC/instr, peak SRAM and flash, beside TinyEngine's counts. Emulators count instructions, not cycles."""

    rows = speed.bench(list(models), list(schemes), sorted(set(rs)), list(boards), jobs, log=click.echo,
                       timeout=timeout)
    click.echo(speed.report(rows))
    click.echo(f"saved {speed.save(rows, out)}")


# ---- firmware in an emulator (tinygen/verify/sim.py, run by tinygen/verify/runner.py) ----
@main.command()
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("--emulator", type=click.Choice(["qemu", "renode"]), default="qemu", show_default=True,
              help="QEMU: the board's mps2 stand-in (CI). Renode: the board's own platform (renode on PATH).")
@click.option("--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="Seconds before a hung firmware is stopped.")
@click.option("--profile", is_flag=True,
              help="Then build an instrumented QEMU image and show where the instructions go, per layer and kind "
                   "of work (forward, output and input gradient, weight update, loss).")
@JSON_OPTION
@friendly
def sim(build_dir, emulator, timeout, profile, as_json):
    """Run BUILD_DIR's firmware in an emulator and compare its outputs with the reference, bit for bit."""

    if profile and emulator != "qemu":
        raise TinygenError("--profile runs the QEMU image (it counts instructions); drop --emulator renode")
    progress = _progress("sim")
    try:
        r = simulate(build_dir, emulator, timeout, progress)
    finally:
        progress.finish()
    losses = [s["loss"] for s in r.run.steps]
    curve = _loss_curve(build_dir, losses, f"{emulator}: the firmware's loss per step") if losses else None
    if as_json:
        _emit_json("sim", {
            "build_dir": str(build_dir), "bit_exact": True, "emulator": r.emulator, "machine": r.machine,
            "board": r.board, "clock_hz": r.clock_hz, "clock_source": r.clock_source,
            "clock_line": next((ln for ln in r.run.lines if ln.startswith("TG clock ")), None),
            "clock_fallback": (r.run.clock or {}).get("fallback"), "counter": r.unit,
            "samples_source": r.samples_source,
            "samples": [{"index": s["index"], "label": s["label"], "count": s["count"]} for s in r.run.samples],
            "steps": [{"index": s["index"], "sample": s["sample"], "label": s["label"], "loss_q16": s["loss"],
                       "count": s["count"]} for s in r.run.steps],
            "params_checksum": r.run.params_crc if r.run.steps else None, "lr_halvings": r.run.lr_halvings,
            "checkpoints": r.run.checkpoints,
            "stalled_since": stall_start(losses) if losses else None, "stack": r.run.stack,
            "seconds": round(r.seconds, 3), "loss_curve": None if curve is None else str(curve),
            "trained": r.trained, "profile": _profile_json(build_dir, timeout, r) if profile else None})
        return
    click.echo(format_report(r))
    if curve is not None:
        click.echo(f"loss curve: {curve}")
    if profile:
        click.echo("")
        click.echo(format_profile(_run_profile(build_dir, timeout), _plain_counts(r)))


@main.command()
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="model.json (a tinygen model file, its .npz beside it) or trained.tflite (a build from a .tflite: "
                   "that file with the trained weights and biases).")
@friendly
def export(build_dir, out):
    """Write BUILD_DIR's model with the parameters its firmware trained (saved by tinygen sim of a build made
    with --dump-trained)."""
    click.echo(export_trained(build_dir, out))


def _run_profile(build_dir, timeout):
    progress = _progress("profile")
    try:
        return run_profile(build_dir, timeout, progress)
    finally:
        progress.finish()


def _plain_counts(r) -> dict[str, int]:
    """Instructions per inference and per training step of the plain image (means over the run)."""
    out = {}
    for root, runs in (("inference", r.run.samples), ("training step", r.run.steps)):
        if runs:
            out[root] = sum(s["count"] for s in runs) // len(runs)
    return out


def _profile_json(build_dir, timeout, r) -> dict:
    return {"plain": _plain_counts(r), **_run_profile(build_dir, timeout).to_json()}


if __name__ == "__main__":
    main()
