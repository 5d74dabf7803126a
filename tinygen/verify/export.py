"""`tinygen export DIR --out FILE`: the build's model with the parameters its firmware trained.

`tinygen sim` of a `--dump-trained` build checks the firmware's dump (every trained parameter framed with its
size and CRC-32, equal to the reference's) and saves it in DIR/trained.npz. From it this writes:

* `.json` (+ `.npz`): a tinygen model file of the model the build ran, the trained layers' int8 weights (the
  view the device computes with) and int32 biases in place; a final softmax the training build dropped is
  restored;
* `.tflite` (a build from a .tflite): the build's source file with those weights and biases in its own tensors,
  layout and quantization (`frontends.tflite_import.write_trained`), for TFLite Micro or any TFLite runtime.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from tinygen.codegen.project import TRAINED_FILE, load_trainer, read_manifest
from tinygen.errors import TinygenError
from tinygen.frontends import modelfile
from tinygen.frontends.tflite_import import write_trained
from tinygen.ir import model as ir
from tinygen.verify.compare import trained_values

FORMATS = (".json", ".tflite")


def export(build_dir: Path, out: Path) -> str:
    """Write the trained model to `out` (.json or .tflite); returns what was written, one sentence."""
    build_dir, out = Path(build_dir), Path(out)
    if out.suffix not in FORMATS:
        raise TinygenError(f"--out {out} must end in .json (a tinygen model file) or .tflite")
    if not out.parent.is_dir():
        raise TinygenError(f"--out {out}: the folder {out.parent} does not exist; create it or choose another path")
    manifest = read_manifest(build_dir)
    if "train" not in manifest:
        raise TinygenError(f"{build_dir} is an inference build: it trains nothing to export")
    saved = build_dir / TRAINED_FILE
    if not saved.is_file():
        first = "" if (manifest.get("firmware") or {}).get("dump_trained") else "rebuild it with --dump-trained, then "
        raise TinygenError(f"{build_dir} holds no trained parameters ({TRAINED_FILE}); {first}run tinygen sim "
                           f"{build_dir} to train and save them")
    model, trainer = load_trainer(build_dir, manifest)
    names = manifest["train"]["params"]
    with np.load(saved, allow_pickle=False) as z:
        missing = [n for n in names if n not in z.files]
        if missing:
            raise TinygenError(f"{saved} lacks {missing[0]}; run tinygen sim {build_dir} again")
        params = {n: z[n].tobytes() for n in names}
    values = trained_values(trainer, params)
    if out.suffix == ".tflite":
        source = manifest.get("source_tflite")
        if not source:
            raise TinygenError(f"{build_dir} was not built from a .tflite file; export to a model file (.json)")
        if trainer.scheme.channel_order:
            raise TinygenError(f"{build_dir} reordered channels (--reorder-channels), which the .tflite does not; "
                               "export to a model file (.json)")
        write_trained(build_dir / source, out, values)
        what = f"{model.name} (the build's .tflite) with the trained values"
    else:
        layers = [dataclasses.replace(layer, weight=values[layer.name][0], bias=values[layer.name][1])
                  if layer.name in values else layer for layer in model.layers]
        drop = manifest.get("dropped_softmax")
        if drop:
            layers.append(ir.softmax_of(layers[-1].output, drop["name"], drop["beta"]))
        out = modelfile.save(dataclasses.replace(model, layers=layers, patch_stage=None).validate(), out)
        what = f"model {model.name} with the trained values{' and its softmax' if drop else ''}"
    layers = "1 trained layer's" if len(values) == 1 else f"{len(values)} trained layers'"
    return f"exported {what} to {out}: {layers} int8 weights and int32 biases, as {build_dir}'s firmware left them"
