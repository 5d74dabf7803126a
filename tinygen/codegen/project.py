"""`tinygen build`: write a self-contained generated project directory.

Layout of DIR:
    tinygen.json        manifest (model, board, sizes, what was generated)
    model/              the model as built (tinygen model file) so verify can rerun the reference
    src/                generated C (tg_model.*, tg_weights.*)
    cmsis_glue/         fixed-point helpers the generated C includes
    host/               the host verification harness
    Makefile            `make host` builds the harness with the project's warning and sanitizer flags
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from tinygen import __version__
from tinygen.codegen import forward as codegen
from tinygen.codegen.firmware import DEFAULT_TRAIN_STEPS, FirmwareOptions, write_firmware
from tinygen.codegen.training import generate_training
from tinygen.errors import TinygenError
from tinygen.frontends import modelfile
from tinygen.ir import model as ir
from tinygen.ir.scheme import TrainConfig, load_scheme, scheme_to_json
from tinygen.planning.backward import structured_bytes, taps_only_to_free
from tinygen.reference.training import Trainer
from tinygen.targets.boards import Board
from tinygen.targets.hostbuild import HOST_CFLAGS, host_cc

MANIFEST = "tinygen.json"
TRAINED_FILE = "trained.npz"  # `tinygen sim` of a --dump-trained firmware: its trained parameters, checked
GENERATED = ("model", "src", "cmsis_glue", "host", "firmware", "Makefile", "plan.json", "memory_timeline.svg",
             TRAINED_FILE, MANIFEST)


def check_out_dir(out: Path) -> None:
    """Refuse an --out that cannot hold a build: a file, or a folder holding something other than a build."""
    if out.exists() and not out.is_dir():
        raise TinygenError(f"--out {out} is a file; choose a directory")
    if out.is_dir() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise TinygenError(f"{out} exists and is not a tinygen build directory; choose an empty or new --out")


DATASET_FILE = "model/dataset.npz"
SHRINK_MARGIN = 1024  # bytes a build frees beyond a flash overflow when it leaves patch sums out (their code too)


SOURCE_TFLITE = "model/source.tflite"  # the .tflite a build was made from: `tinygen export` writes into a copy


def write_project(model: ir.Model, board: Board, out: Path, trainer=None, firmware_options=None,
                  expect_training=None, tflite: Path | None = None, softmax: ir.Softmax | None = None) -> dict:
    """Generate the project; with a `reference.training.Trainer`, the training step too. Rebuilding into
    an earlier build's directory first removes what that build generated (nothing else).
    `expect_training` (`tinygen.verify.compare.expect_training`, passed in by the layer above) replays the
    firmware's training steps on the reference, so that its .robot holds every loss and the checksum; without
    it, a training firmware's .robot fails at once saying why. `tflite`: the .tflite file the model came from (kept
    in the build); `softmax`: the final softmax a training build dropped (recorded, so an export restores it)."""
    out = Path(out)
    check_out_dir(out)
    for name in GENERATED if (out / MANIFEST).is_file() else ():
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    modelfile.save(model, out / "model" / "model.json")
    if trainer is None:
        facts = codegen.generate_forward(model, out / "src")
    else:

        facts = generate_training(model, trainer, out / "src")
        (out / "model" / "scheme.json").write_text(json.dumps(scheme_to_json(trainer.scheme), indent=1) + "\n")
    glue_src = codegen.data_dir("cmsis_glue")
    shutil.copytree(glue_src, out / "cmsis_glue", dirs_exist_ok=True)
    env = codegen.environment()
    (out / "host").mkdir(exist_ok=True)
    (out / "host" / "main_host.c").write_text(env.get_template("host/main_host.c.j2").render())
    (out / "Makefile").write_text(env.get_template("Makefile.j2").render(host_cc=host_cc(), host_cflags=HOST_CFLAGS))
    manifest = {
        "tinygen_version": __version__,
        "model": model.name,
        "model_file": "model/model.json",
        "board": board.name,
        "input_shape": list(model.input.shape),
        "output_shape": list(model.output.shape),
        "params": model.param_count(),
        "macs": model.macs(),
        "arena_bytes": facts["arena_bytes"],
        "weight_bytes": facts.get("weight_bytes", facts.get("const_bytes")),
    }
    if tflite is not None:
        shutil.copyfile(tflite, out / SOURCE_TFLITE)
        manifest["source_tflite"] = SOURCE_TFLITE
    if softmax is not None:
        manifest["dropped_softmax"] = {"name": softmax.name, "beta": softmax.beta}
    if trainer is not None:
        manifest["train"] = {"scheme_file": "model/scheme.json", "config": trainer.config.to_json(),
                             "trained_layers": len(trainer.trained), "trained_bytes": facts["trained_bytes"],
                             "records": facts["records"], "params": facts["params"],
                             "state_bytes": facts["state_bytes"]}
    # the firmware project (DIR/firmware) and its ELFs when arm-none-eabi-gcc is on PATH
    if firmware_options is None and trainer is not None:  # a training build: the harness trains too
        firmware_options = FirmwareOptions(train=True, train_steps=DEFAULT_TRAIN_STEPS)
    expect = None
    if expect_training is not None and firmware_options is not None and firmware_options.train:
        # the reference as `tinygen sim` loads it: from the files just written, untouched by the selection's probes
        _, fresh = load_trainer(out, manifest)

        def expect(x: np.ndarray, labels: np.ndarray, order: list[int]):
            return expect_training(fresh, x, labels.astype(int), order, manifest["train"]["params"])
    def shrink(nbytes: int) -> str | None:
        """Leave out the patch-summed weights that save the fewest products per byte, at least `nbytes` of them
        (the same integers, more products): the sources written again."""
        nonlocal trainer
        dropped = taps_only_to_free(model, trainer, nbytes + SHRINK_MARGIN)
        new = [n for n in dropped if n not in trainer.config.taps_only]
        if not new:
            return None
        freed = sum(structured_bytes(model.layer(n), trainer) for n in new)
        trainer = Trainer(model, trainer.scheme, dataclasses.replace(trainer.config, taps_only=dropped))
        regenerated = generate_training(model, trainer, out / "src")
        manifest["train"]["config"] = trainer.config.to_json()
        manifest["weight_bytes"] = regenerated.get("weight_bytes", regenerated.get("const_bytes"))
        layers = f"{len(new)} depthwise layers take their" if len(new) > 1 else "1 depthwise layer takes its"
        return (f"the image overflowed the flash by {nbytes:,} B at the board's flags: {layers} taps one by one "
                f"instead of the patch-summed weights ({freed:,} B of flash: {', '.join(new)})")

    manifest["firmware"] = write_firmware(model, board, out, facts, firmware_options, expect,
                                          shrink if trainer is not None else None)
    if firmware_options is not None and firmware_options.dataset is not None:
        # the user's samples as the model's input codes: `tinygen verify` trains on them as the build did
        x, y, source = firmware_options.dataset.for_model(model)
        np.savez(out / DATASET_FILE, x=x, y=y)
        manifest["dataset"] = {"file": DATASET_FILE, "source": source}
    manifest["sources_sha256"] = {rel: _sha256(out / rel) for rel in BUILD_SOURCES if (out / rel).is_file()}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def load_trainer(build_dir: Path, manifest: dict) -> tuple[ir.Model, Trainer]:
    """A build's model and a fresh reference trainer, from its model and scheme files and its manifest."""
    model = modelfile.load(Path(build_dir) / manifest["model_file"])
    t = manifest["train"]
    scheme = load_scheme(str(Path(build_dir) / t["scheme_file"]), model)
    return model, Trainer(model, scheme, TrainConfig.from_json(t["config"]))


# The files the generated C was made from: verify and sim rerun the reference on them, so an edit after the
# build would compare the old C with a new reference (and fail in a confusing place).
BUILD_SOURCES = ("model/model.json", "model/model.npz", "model/scheme.json", "model/dataset.npz")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_sources(build_dir: Path, manifest) -> None:
    sources = manifest.get("sources_sha256", {}) if isinstance(manifest, dict) else None
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise TinygenError(f"{Path(build_dir) / MANIFEST} is damaged (not a tinygen manifest); rebuild with "
                           "tinygen build")
    for rel, digest in sources.items():
        path = Path(build_dir) / rel
        if not path.is_file() or _sha256(path) != digest:
            raise TinygenError(f"{path} has changed since the build (tinygen.json records another SHA-256), but the "
                               f"generated C was made from the old one; rebuild to use it (a scheme: tinygen build "
                               f"... --update {path})")


def read_manifest(build_dir: Path) -> dict:
    path = Path(build_dir) / MANIFEST
    if not path.is_file():
        raise TinygenError(f"{build_dir} is not a tinygen build directory (no {MANIFEST}); run tinygen build first")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise TinygenError(f"{path} is damaged (not JSON); rebuild with tinygen build") from None
    _check_sources(build_dir, manifest)
    return manifest
