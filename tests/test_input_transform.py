"""The model's input transform: images in [0, 1] become its real input before quantization (issue 18 item 4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from models_for_tests import small_model

from tinygen.codegen.firmware import embedded_samples
from tinygen.errors import ModelError
from tinygen.frontends import inputs, modelfile
from tinygen.frontends.mit_import import MIT_MODELS, load_mit_model
from tinygen.ir import model as ir
from tinygen.ir.builder import ModelBuilder
from tinygen.ir.scheme import TrainConfig, last_k_scheme
from tinygen.paths import shared_dir
from tinygen.reference.training import Trainer
from tinygen.training.reorder import permute_channels
from tinygen.zoo import catalog as zoo
from tinygen.zoo import ptq

MIT = ir.InputTransform((2.0,), (-1.0,))


def _rgb_model() -> ir.Model:
    rng = np.random.default_rng(0)
    b = ModelBuilder("rgb", (4, 4, 3), 1 / 127.5, 0)
    x = b.conv2d(b.input, rng.integers(-127, 128, (4, 1, 1, 3)).astype(np.int8), np.zeros(4, np.int32),
                 np.full(4, 0.01, np.float32), 0.05, 0, name="pw")
    b.fully_connected(b.flatten(b.global_avgpool(x, name="gap"), name="flat"),
                      rng.integers(-127, 128, (2, 4)).astype(np.int8), np.zeros(2, np.int32),
                      np.full(2, 0.01, np.float32), 0.1, 0, name="fc")
    return b.build()


def _mit_model(name="mcunet-5fps"):
    root = shared_dir()
    path = None if root is None else root / "models/mit-tiny-training" / MIT_MODELS[name]
    if path is None or not path.is_file():
        pytest.skip("the MIT tiny-training models are not present (tinygen.paths.shared_dir)")
    return zoo.replace_head(load_mit_model(path), 10)


# ---- the IR and the model file ---------------------------------------------------------------------------------

def test_identity_is_the_default_and_save_leaves_it_out(tmp_path):
    model = small_model()
    assert model.input_transform == ir.InputTransform() and model.input_transform.is_identity
    path = modelfile.save(model, tmp_path / "m.json")
    assert "input_transform" not in json.loads(path.read_text())
    assert modelfile.load(path).input_transform.is_identity
    assert zoo.get_model("digits-cnn").input_transform.is_identity  # a file written before the field


@pytest.mark.parametrize("tf", [MIT, ir.InputTransform.from_mean_std([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
                                ir.InputTransform((1.0, -2.0, 0.5), (0.0,))])
def test_transform_round_trips_through_the_model_file(tmp_path, tf):
    model = _rgb_model()
    model.input_transform = tf
    path = modelfile.save(model.validate(), tmp_path / "m.json")
    back = modelfile.load(path)
    assert back.input_transform == tf
    assert modelfile.save(back, tmp_path / "again.json").read_text().replace("again", "m") == path.read_text()


def test_mean_std_and_apply():
    tf = ir.InputTransform.from_mean_std(0.5, 0.5)
    assert tf == MIT
    x = np.array([[0.0, 0.5, 1.0]], np.float32).T  # three pixels, one channel
    assert tf.apply(x).ravel().tolist() == [-1.0, 0.0, 1.0] and tf.apply(x).dtype == np.float32
    rgb = ir.InputTransform((1.0, 2.0, 4.0), (0.0, -1.0, 0.5)).apply(np.ones((2, 2, 3)))
    assert rgb[1, 1].tolist() == [1.0, 1.0, 4.5]


def test_models_rebuilt_from_a_model_keep_its_transform():
    model = small_model()
    model.input_transform = ir.InputTransform((3.0,), (-0.5,))
    kept = [permute_channels(model, {}),
            zoo.replace_head(model, 3, np.random.default_rng(0).random((4, 16, 16, 1))),
            Trainer(model, last_k_scheme(model, 1), TrainConfig()).trained_model()]
    assert all(m.input_transform == model.input_transform for m in kept)


_BAD = [
    ({"scale": [0], "offset": [0]}, "nonzero"),
    ({"scale": [1], "offset": [float("nan")]}, "finite"),
    ({"scale": [float("inf")], "offset": [0]}, "finite"),
    ({"scale": [10**400], "offset": [0]}, "finite numbers"),
    ({"scale": [1, 2], "offset": [0]}, "1 or one per input channel"),
    ({"scale": [], "offset": [0]}, "non-empty list of numbers"),
    ({"scale": [True], "offset": [0]}, "non-empty list of numbers"),
    ({"scale": ["2"], "offset": [0]}, "non-empty list of numbers"),
    ({"scale": 2, "offset": [0]}, "must be list"),
    ({"scale": [2]}, "no 'offset' field"),
    ({"scale": [2], "offset": [0], "mean": [0]}, "unknown field 'mean'"),
    ([2, -1], "must be an object"),
    (None, "must be an object"),
]


@pytest.mark.parametrize("value, words", _BAD)
def test_a_bad_transform_is_one_model_error_sentence(tmp_path, value, words):
    path = modelfile.save(small_model(), tmp_path / "m.json")
    doc = json.loads(path.read_text())
    doc["input_transform"] = value
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelError) as info:
        modelfile.load(path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "\n" not in msg and words in msg, msg


def test_a_bad_transform_set_in_python_fails_validation():
    model = small_model()
    model.input_transform = ir.InputTransform((1.0, 1.0, 1.0), (0.0,))
    with pytest.raises(ModelError, match="3 values; give 1 or one per input channel"):
        model.validate()
    with pytest.raises(ModelError, match="list of finite numbers"):
        ir.InputTransform(("x",), (0.0,))


# ---- every image path ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["digits-cnn", "mnist-cnn"])
def test_identity_models_get_the_same_bytes_as_before(name):
    model = zoo.get_model(name)
    x, y, _ = inputs.training_samples(model, 8)
    xf, yf, _ = inputs.real_labelled(tuple(model.input.shape), 8, model.output.size)
    assert np.array_equal(x, inputs.quantize(xf, model.input)) and np.array_equal(y, yf)
    xi, _ = inputs.real_inputs(model, 8)
    assert np.array_equal(xi, inputs.quantize(inputs.real_float_inputs(tuple(model.input.shape), 8)[0],
                                              model.input))


def test_a_transform_reaches_every_image_path():
    model = small_model()
    model.input_transform = ir.InputTransform((2.0,), (-1.0,))
    xf, _ = inputs.real_float_inputs(tuple(model.input.shape), 4)
    want = inputs.quantize(2 * xf - 1, model.input)
    assert not np.array_equal(want, inputs.quantize(xf, model.input))
    assert np.array_equal(inputs.quantize_images(xf, model), want)
    assert np.array_equal(inputs.real_inputs(model, 4)[0], want)
    assert np.array_equal(inputs.real_inputs_labelled(model, 4)[0], want)
    xt, _, _ = inputs.real_labelled(tuple(model.input.shape), 4, model.output.size)
    assert np.array_equal(inputs.training_samples(model, 4)[0], inputs.quantize(2 * xt - 1, model.input))
    assert np.abs(ptq.quantize_input(model, xf).astype(int) - want).max() <= 1  # the zoo's rounding of ties


# ---- the MIT models -----------------------------------------------------------------------------------------

def test_mit_models_are_fed_2x_minus_1_over_the_full_int8_range():
    model = _mit_model()
    assert model.input_transform == MIT
    assert (model.input.scale, model.input.zero_point) == (1 / 127.5, 0)
    x, _, src = inputs.real_labelled(tuple(model.input.shape), 1, 10)
    assert "MNIST" in src
    q = inputs.quantize_images(x, model)
    assert q.min() <= -120 and q.max() >= 120  # background -1, strokes +1
    assert inputs.quantize(x, model.input).min() >= 0  # untransformed: only codes 0..127


@pytest.mark.parametrize("train", [False, True])
def test_firmware_samples_of_an_mit_model_use_the_transform(train):
    model = _mit_model()
    x, labels, _ = embedded_samples(model, 2, train=train)
    if train:
        xf, y, _ = inputs.real_labelled(tuple(model.input.shape), 2, model.output.size)
    else:
        xf, y, _ = inputs.real_float_inputs_labelled(tuple(model.input.shape), 2)
    assert np.array_equal(x, inputs.quantize(model.input_transform.apply(xf), model.input))
    assert np.array_equal(labels, y) and x.min() < 0 < x.max()
