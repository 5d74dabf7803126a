"""Turn a `--model` argument into a validated IR model: a zoo name or a file path."""

from __future__ import annotations

from pathlib import Path

from tinygen.errors import ModelError
from tinygen.frontends import modelfile
from tinygen.frontends.mit_import import load_mit_model
from tinygen.frontends.tflite_import import load_tflite
from tinygen.ir import model as ir
from tinygen.zoo.catalog import get_model, is_zoo_name, replace_head
from tinygen.zoo.onnx_import import load_onnx


def resolve_model(spec: str, classes: int | None = None, calib_x=None) -> ir.Model:
    """`calib_x` (float images in [0, 1], e.g. a `--dataset`'s): what a fresh `classes`-way head's logit range is
    calibrated on, instead of the bundled images (where they fit the model's input; the caller checks that); for a
    float .onnx model, also what its PTQ calibrates every tensor on."""
    if calib_x is not None and classes is not None and Path(spec).suffix != ".onnx":
        model = resolve_model(spec)
        if classes != model.output.size and tuple(calib_x.shape[1:]) == tuple(model.input.shape):
            return replace_head(model, classes, calib_x)
    path = Path(spec)
    if is_zoo_name(spec) and not path.exists():  # zoo names may contain dots ("mbv2-w0.35")
        return get_model(spec, classes=classes)
    if path.suffix == ".json" or (path.suffix == "" and path.with_suffix(".json").is_file() and "/" in spec):
        model = modelfile.load(path.with_suffix(".json"))
        return model if classes is None or classes == model.output.size else replace_head(model, classes)
    if path.suffix == ".pkl":

        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        model = load_mit_model(path)
        return model if classes is None else replace_head(model, classes)
    if path.suffix == ".onnx":
        model = load_onnx(path, calib_x)  # quantized on calib_x too
        return model if classes is None or classes == model.output.size else replace_head(model, classes, calib_x)
    if path.suffix == ".tflite":
        model = load_tflite(path).model
        return model if classes is None or classes == model.output.size else replace_head(model, classes)
    if path.suffix:
        raise ModelError(f"cannot read {path}: tinygen models are .json (+ .npz), int8 .tflite, float .onnx or MIT "
                         "tiny-training .pkl files")
    return get_model(spec, classes=classes)
