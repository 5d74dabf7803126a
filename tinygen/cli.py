"""The `tinygen` command line. Every failure is one sentence on stderr and a non-zero exit."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from .errors import TinygenError


def friendly(fn):
    """Turn TinygenError into one clear line and its exit code (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TinygenError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


@click.group()
@click.version_option(package_name="tinygen")
def main():
    """tinygen: compile int8 CNNs into C that trains on Cortex-M microcontrollers."""


@main.command()
@friendly
def models():
    """List the model zoo: name, input shape, parameters, MACs."""
    from .report import table
    from .zoo import list_models

    rows = [[e.name, "x".join(map(str, e.input_shape)), e.params, e.macs, e.description] for e in list_models()]
    click.echo(table(["model", "input", "params", "MACs", "description"], rows, "llrrl"))


@main.command()
@friendly
def boards():
    """List the boards: core, clock, SRAM, flash, emulators."""
    from .boards import board_names, load_board
    from .report import table

    rows = []
    for name in board_names():
        b = load_board(name)
        rows.append([b.name, b.core, b.fpu, f"{b.clock_hz // 1_000_000} MHz", f"{b.sram_bytes // 1024} KB",
                     f"{b.flash_bytes // 1024} KB", b.renode["platform"], b.qemu["machine"]])
    click.echo(table(["board", "core", "FPU", "clock", "SRAM", "flash", "Renode platform", "QEMU stand-in"],
                     rows, "lllrrrll"))


@main.command()
@click.option("--board", required=True, help="Target board (see `tinygen boards`).")
@click.option("--model", "model_spec", required=True, help="Zoo name (see `tinygen models`) or a model file.")
@click.option("--classes", type=click.IntRange(min=2), default=None, help="Replace the head with N classes.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output directory.")
@click.option("--train/--no-train", default=True, show_default=True,
              help="Emit the training step (tg_train_step) beside inference.")
@click.option("--update", default="full", show_default=True,
              help="Which layers train: full | last-K | bias | scheme.json | sparse_schemes.json#mbv2/49kb.")
@click.option("--filter-r", type=click.IntRange(min=1), default=1, show_default=True,
              help="Gradient-filter patch size r for every trained layer (1 = off).")
@click.option("--lr", type=float, default=0.01, show_default=True, help="SGD learning rate.")
@click.option("--momentum", type=float, default=0.0, show_default=True, help="SGD momentum in [0, 1).")
@click.option("--lr-halve-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Halve the learning rate every N steps (0: constant).")
@friendly
def build(board, model_spec, classes, out, train, update, filter_r, lr, momentum, lr_halve_every):
    """Generate the C project for MODEL on BOARD into OUT."""
    from .boards import load_board
    from .project import write_project
    from .resolve import resolve_model

    b = load_board(board)
    model = resolve_model(model_spec, classes)
    trainer = None
    if train:
        from .scheme import TrainConfig, parse_update
        from .train_ref import Trainer

        config = TrainConfig(lr=lr, momentum=momentum, lr_halve_every=lr_halve_every).check()
        trainer = Trainer(model, parse_update(update, model, filter_r), config)
    m = write_project(model, b, out, trainer)
    click.echo(f"built {m['model']} for {b.name} in {out}: {len(model.layers)} layers, {m['params']:,} params, "
               f"{m['macs']:,} MACs, arena {m['arena_bytes']:,} B, frozen weights {m['weight_bytes']:,} B")
    if trainer is not None:
        t = m["train"]
        click.echo(f"training: {t['trained_layers']} layers train ({update}, r={filter_r}), "
                   f"{t['trained_bytes']:,} B of trained parameters and optimizer state in SRAM")


@main.command()
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("--inputs", "n_inputs", type=click.IntRange(min=1), default=8, show_default=True,
              help="Number of real inputs to compare.")
@click.option("--steps", type=click.IntRange(min=0), default=None,
              help="Training steps to compare (default 20 for a training build, 0 to skip).")
@friendly
def verify(build_dir, n_inputs, steps):
    """Compile BUILD_DIR's C for the host (-Werror, ASan+UBSan) and compare with the reference."""
    from .project import read_manifest
    from .verify import verify_forward, verify_training

    r = verify_forward(build_dir, n_inputs)
    click.echo(f"verify: forward bit-exact: {r.elements} of {r.elements} output values equal on {r.source} "
               f"(host C built -std=c99 -Wall -Wextra -Werror, ASan+UBSan clean)")
    if steps is None:
        steps = 20 if "train" in read_manifest(build_dir) else 0
    if steps:
        t = verify_training(build_dir, steps)
        q = [v / 65536 for v in t.losses]
        click.echo(f"verify: training bit-exact over {t.steps} steps on {t.source}: every loss, "
                   f"{t.gradient_values:,} step-1 gradient values, {t.param_bytes:,} bytes of trained parameters "
                   f"(checksum {t.checksum:#010x}); loss {q[0]:.3f} -> {q[-1]:.3f} "
                   f"(mean of first/last 5: {sum(q[:5]) / len(q[:5]):.3f} -> {sum(q[-5:]) / len(q[-5:]):.3f})")


if __name__ == "__main__":
    main()
