"""Make the int8 `.tflite` test fixtures in tests/fixtures/tflite/ (run once; the outputs are committed).

TensorFlow is needed only here, in a throwaway environment; neither the project's install nor its
tests import it:

    python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu==2.21.0
    /tmp/tfenv/bin/python scripts/make_tflite_fixtures.py [NAME ...]   # all, or the fixtures named

Each model is a small Keras model with seeded random weights, converted with full-integer
post-training quantization (int8 weights and activations, int8 input and output, 64 seeded
calibration samples), the way an embedded ML engineer gets a model out of the TFLite converter.
The file names say what each exercises.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tflite"
L = tf.keras.layers


def _conv_same(x):
    return L.Conv2D(6, 3, padding="same", activation="relu")(x)


def _conv_valid_stride2(x):
    return L.Conv2D(5, 3, strides=2, padding="valid", activation="relu6")(x)


def _conv_same_stride2(x):
    return L.Conv2D(4, (3, 2), strides=2, padding="same")(x)


def _depthwise(x):
    return L.DepthwiseConv2D(3, padding="same", activation="relu6")(x)


def _depthwise_multiplier2(x):
    return L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2)(x)


def _fully_connected(x):
    return L.Dense(7)(L.Flatten()(x))


def _add(x):
    a = L.Conv2D(4, 1, activation="relu")(x)
    b = L.Conv2D(4, 3, padding="same")(x)
    return L.Add()([a, b])


def _avgpool(x):
    return L.AveragePooling2D(2)(L.Conv2D(4, 1)(x))


def _maxpool(x):
    return L.MaxPooling2D(3, strides=2, padding="same")(L.Conv2D(4, 1)(x))


def _pad(x):
    return L.Conv2D(4, 3, strides=2, padding="valid")(L.ZeroPadding2D(((1, 0), (1, 0)))(x))


def _mean(x):
    return L.GlobalAveragePooling2D()(L.Conv2D(6, 3, padding="same", activation="relu")(x))


def _mean_keepdims(x):
    return L.GlobalAveragePooling2D(keepdims=True)(x)


def _softmax(x):
    return L.Softmax()(L.Dense(5)(L.Flatten()(x)))


def _mbv2_block(x):
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu6")(x)
    y = L.Conv2D(24, 1, activation="relu6")(x)
    y = L.DepthwiseConv2D(3, padding="same", activation="relu6")(y)
    y = L.Conv2D(8, 1)(y)
    x = L.Add()([x, y])
    x = L.AveragePooling2D(x.shape[1])(x)
    return L.Dense(10)(L.Flatten()(x))


def _ds_cnn(x):
    """The keyword-spotting DS-CNN (Zhang et al., "Hello Edge"), shrunk: conv, two depthwise-separable
    blocks, average pool over the map, dense, softmax."""
    x = L.Conv2D(16, (10, 4), strides=2, padding="same", activation="relu")(x)
    for _ in range(2):
        x = L.DepthwiseConv2D(3, padding="same", activation="relu")(x)
        x = L.Conv2D(16, 1, activation="relu")(x)
    x = L.AveragePooling2D((x.shape[1], x.shape[2]))(x)
    return L.Softmax()(L.Dense(12)(L.Flatten()(x)))


def _gap_dense(x):
    """The usual classifier head: a convolution, GlobalAveragePooling2D (MEAN over a 5 x 5 map), dense."""
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    return L.Dense(5)(L.GlobalAveragePooling2D()(x))


def _image_cnn(x):
    x = L.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = L.MaxPooling2D(2)(x)
    return L.Dense(10)(L.Flatten()(x))


FIXTURES = {  # name: (input shape, body)
    "conv_same_relu": ((8, 8, 3), _conv_same),
    "conv_valid_stride2_relu6": ((9, 9, 4), _conv_valid_stride2),
    "conv_same_stride2": ((7, 8, 3), _conv_same_stride2),
    "depthwise_relu6": ((6, 6, 5), _depthwise),
    "depthwise_multiplier2_stride2": ((7, 7, 3), _depthwise_multiplier2),
    "fully_connected": ((3, 3, 4), _fully_connected),
    "fully_connected_per_tensor": ((3, 3, 4), _fully_connected),
    "add": ((6, 6, 3), _add),
    "avgpool": ((8, 8, 3), _avgpool),
    "maxpool_same": ((7, 7, 3), _maxpool),
    "pad": ((8, 8, 3), _pad),
    "mean": ((6, 6, 3), _mean),
    "softmax": ((4, 4, 2), _softmax),
    "net_mbv2_block": ((16, 16, 3), _mbv2_block),
    "net_ds_cnn": ((49, 10, 1), _ds_cnn),
    "net_image_cnn": ((16, 16, 1), _image_cnn),
    "float_model": ((8, 8, 3), _conv_same),  # not quantized: the importer must refuse it
    # (new fixtures go last: a fixture's seed is its position)
    "mean_keepdims_large_multiplier": ((5, 5, 4), _mean_keepdims),
    "net_gap_dense": ((10, 10, 3), _gap_dense),
}


def _mean_spread(rng, shape) -> np.ndarray:
    """Samples whose pixels share one value per sample and channel in [-0.674, 0.674] (plus one sample of -1 and
    +1 halves, mean 0, so the input's range stays [-1, 1]): the MEAN's output range is about 0.674 / 1 of the
    input's, so s_in / (s_out N) with N = 25 is near 0.95 / 16, a q31 multiplier of about 2.04e9 - the large
    multipliers where TFLite Micro's integer rule differs from one requantization by s_in / (s_out N)."""
    level = rng.uniform(-0.674, 0.674, size=(64, 1, 1, shape[-1]))
    level[0], level[1] = -0.674, 0.674
    x = np.broadcast_to(level, (64, *shape)).copy()
    x[2, : shape[0] // 2], x[2, shape[0] // 2:] = -1.0, 1.0
    x[2, shape[0] // 2] = np.where(np.arange(shape[1])[:, None] % 2, 1.0, -1.0)
    return x.astype(np.float32)


CALIBRATION = {"mean_keepdims_large_multiplier": _mean_spread}  # name: calibration samples (rng, shape)


def convert(name: str, shape: tuple, body, seed: int) -> bytes:
    tf.keras.utils.set_random_seed(seed)
    x = tf.keras.Input(shape)
    model = tf.keras.Model(x, body(x), name=name)
    rng = np.random.default_rng(seed)
    calibration = rng.uniform(-1.0, 1.0, size=(64, *shape)).astype(np.float32)
    if name in CALIBRATION:
        calibration = CALIBRATION[name](rng, shape)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if name == "float_model":
        return conv.convert()
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([s[None]] for s in calibration)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    # one weight scale per dense layer (the converter's per-tensor form: TFLM's float32 scale product)
    conv._experimental_disable_per_channel_quantization_for_dense_layers = name.endswith("_per_tensor")
    return conv.convert()


def main(names: list[str]) -> int:
    """Make the fixtures named (all without names)."""
    OUT.mkdir(parents=True, exist_ok=True)
    unknown = set(names) - set(FIXTURES)
    if unknown:
        print(f"unknown fixtures: {', '.join(sorted(unknown))}; known: {', '.join(FIXTURES)}", file=sys.stderr)
        return 2
    for seed, (name, (shape, body)) in enumerate(FIXTURES.items()):
        if names and name not in names:
            continue
        data = convert(name, shape, body, seed)
        (OUT / f"{name}.tflite").write_bytes(data)
        print(f"{name}.tflite: {len(data):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
