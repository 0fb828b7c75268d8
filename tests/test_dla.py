"""The DLA classifiers against the keras.applications contract and the PyTorch reference (timm)."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import timm
import torch

import keras_dla
from keras_dla.models import fast_paths
from keras_dla.models.dla import BUILDERS
from keras_dla.weights.names import keras_name
from tests import reference

VARIANTS = list(BUILDERS)
# The wide and deep variants take most of the suite's time: the parameter counts and the float32 parity run
# for every variant in the default run; the other per-variant checks of these run with `-m slow` (or with
# no marker filter: `python -m pytest`).
HEAVY = {"dla60", "dla60x", "dla102", "dla102x", "dla102x2", "dla169", "dla60_res2net", "dla60_res2next"}
VARIANTS_HEAVY_SLOW = [pytest.param(v, marks=pytest.mark.slow) if v in HEAVY else v for v in VARIANTS]

# Trainable parameters with 1000 classes; timm 1.0.31's `sum(p.numel())` (REFERENCE.md §1).
PARAMETER_COUNTS = {
    "dla34": 15_742_104,
    "dla46_c": 1_301_400,
    "dla46x_c": 1_068_440,
    "dla60x_c": 1_319_832,
    "dla60": 22_036_632,
    "dla60x": 17_352_344,
    "dla102": 33_268_888,
    "dla102x": 26_309_272,
    "dla102x2": 41_282_200,
    "dla169": 53_389_720,
    "dla60_res2net": 20_848_072,
    "dla60_res2next": 17_032_984,
}
CHANNELS = {v: keras_dla.MODEL_CONFIGS[v]["channels"] for v in VARIANTS}


def images(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(keras.config.floatx())


def count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def level_output_names(variant):
    """The layer ending each level, named after its PyTorch module path: a conv level's last ReLU, a tree's last
    root."""
    levels = keras_dla.MODEL_CONFIGS[variant]["levels"]
    paths = [f"level{i}.{3 * levels[i] - 1}" for i in range(2)]
    paths += [f"level{i}." + "tree2." * (levels[i] - 1) + "root.relu" for i in range(2, 6)]
    return [keras_name(path) for path in paths]


def logits_and_levels(classifier, variant):
    """One model computing the classifier's logits and its six level features (one build, one pass)."""
    outputs = {"logits": classifier.get_layer("fc").output}
    for i, name in enumerate(level_output_names(variant)):
        outputs[f"level{i}"] = classifier.get_layer(name).output
    return keras.Model(classifier.input, outputs)


def run(model, x):
    """An eager forward pass in inference mode (no tracing: each test calls a model on few inputs)."""
    return keras.tree.map_structure(keras.ops.convert_to_numpy, model(x, training=False))


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_count_and_top(variant):
    model = BUILDERS[variant](weights=None)
    assert model.name == variant
    assert count(model.trainable_weights) == PARAMETER_COUNTS[variant]
    assert model.input_shape == (None, 224, 224, 3)
    assert model.output_shape == (None, 1000)
    assert model.get_layer("predictions").get_config()["activation"] == "softmax"
    # Same module paths as the PyTorch model: each level's last layer, and each kind of weighted layer.
    for path in ("base_layer.0", "level5.tree1.conv1", "level5.project.0", "fc"):
        model.get_layer(keras_name(path))
    for layer in level_output_names(variant):
        model.get_layer(layer)
    # Keras' own layers only, with TensorFlow's fast paths bound to the batch norms and the grouped convs.
    assert all(type(layer).__module__.startswith("keras.") for layer in model.layers)
    fast = [layer for layer in model.layers if fast_paths.attached(layer)]
    assert fast and fast == [
        layer
        for layer in model.layers
        if type(layer) is keras.layers.BatchNormalization or (type(layer) is keras.layers.Conv2D and layer.groups > 1)
    ]


@pytest.mark.parametrize("variant", VARIANTS_HEAVY_SLOW)
def test_levels_pooling_and_any_size(variant):
    channels = CHANNELS[variant]
    levels = BUILDERS[variant](weights=None, return_levels=True)
    assert levels.input_shape == (None, None, None, 3)
    assert sorted(levels.output) == [f"level{i}" for i in range(6)]
    # Odd, 32k - 1 and non-square sizes: level k has stride 2**k, rounding up like the strided convs.
    for height, width in ((33, 47), (63, 95)):
        out = run(levels, images((2, height, width, 3)))
        for k in range(6):
            assert out[f"level{k}"].shape == (2, -(-height // 2**k), -(-width // 2**k), channels[k])
            assert np.isfinite(out[f"level{k}"]).all()
    features = BUILDERS[variant](weights=None, include_top=False)
    assert features.output_shape == (None, None, None, channels[-1])
    for pooling, reduce in (("avg", np.mean), ("max", np.max)):
        pooled = BUILDERS[variant](weights=None, include_top=False, pooling=pooling, input_shape=(63, 95, 3))
        assert pooled.output_shape == (None, channels[-1])
        pooled.set_weights(levels.get_weights())
        np.testing.assert_allclose(
            run(pooled, images((2, 63, 95, 3))), reduce(out["level5"], axis=(1, 2)), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("variant", VARIANTS)
def test_equals_timm_float32(variant, tmp_path):
    """Logits and every level equal timm's at two sizes, one odd and non-square; both checkpoint layouts load."""
    torch_model = reference.make_timm_model(variant)
    authors = reference.save_safetensors(
        reference.authors_state_dict(torch_model, variant), tmp_path / "authors.safetensors"
    )
    timm_layout = reference.save_safetensors(reference.timm_state_dict(torch_model), tmp_path / "timm.safetensors")
    classifier = BUILDERS[variant](weights=authors, input_shape=(None, None, 3), classifier_activation=None)
    model = logits_and_levels(classifier, variant)
    for shape in ((2, 64, 64, 3), (1, 63, 95, 3)):
        x = images(shape, seed=shape[1])
        logits, levels = reference.timm_outputs(torch_model, x)
        ours = run(model, x)
        np.testing.assert_allclose(ours["logits"], logits, rtol=1e-4, atol=1e-4)
        for name, expected in levels.items():
            np.testing.assert_allclose(ours[name], expected, rtol=1e-4, atol=1e-4, err_msg=name)
    # The timm layout holds the same tensors without the dead projections: it loads to the same weights.
    before = classifier.get_weights()
    for w in classifier.weights:
        w.assign(keras.ops.zeros_like(w))
    keras_dla.weights.convert.load_weights(classifier, timm_layout)
    for a, b in zip(before, classifier.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("variant", VARIANTS_HEAVY_SLOW)
def test_equals_timm_float64(variant, tmp_path, float64):
    """With plain (untempered) random weights in float64 the graphs agree to round-off: same arithmetic."""
    torch.manual_seed(1)
    torch_model = timm.create_model(variant).eval().double()
    path = reference.save_safetensors(reference.timm_state_dict(torch_model), tmp_path / "w.safetensors")
    model = BUILDERS[variant](weights=path, input_shape=(None, None, 3), classifier_activation=None)
    x = images((1, 64, 96, 3))
    logits, _ = reference.timm_outputs(torch_model, x)
    ours = run(model, x)
    assert ours.dtype == np.float64
    assert np.abs(ours - logits).max() <= 1e-9 * np.abs(logits).max()


@pytest.mark.parametrize("variant", VARIANTS_HEAVY_SLOW)
def test_save_load_and_config_round_trip(variant, tmp_path):
    model = BUILDERS[variant](weights=None, input_shape=(None, None, 3), classes=7)
    x = images((1, 64, 64, 3))
    expected = run(model, x)
    path = tmp_path / "model.keras"
    model.save(path)
    assert "keras_dla" not in json.dumps(model.get_config())
    # Plain Keras loads the file (no keras_dla class in it), without TensorFlow's fast paths: the same function
    # up to float rounding; with them attached again, the same computation.
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(run(loaded, x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(run(keras_dla.attach_fast_paths(loaded), x), expected)
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(run(keras_dla.attach_fast_paths(clone), x), expected)


def test_keras_weights_file_round_trip(tmp_path):
    model = keras_dla.DLA60Res2NeXt(weights=None, input_shape=(None, None, 3), classes=7)
    x = images((1, 64, 64, 3))
    path = tmp_path / "model.weights.h5"
    model.save_weights(path)
    reloaded = keras_dla.DLA60Res2NeXt(weights=path, input_shape=(None, None, 3), classes=7)
    np.testing.assert_array_equal(run(reloaded, x), run(model, x))


@pytest.mark.parametrize("variant", VARIANTS_HEAVY_SLOW)
def test_training_step_gradients(variant):
    model = BUILDERS[variant](weights=None, input_shape=(32, 32, 3), classes=5, classifier_activation=None)
    x = images((4, 32, 32, 3))
    y = np.array([0, 1, 2, 3])
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_weights)
    for weight, grad in zip(model.trainable_weights, grads, strict=True):
        assert grad is not None, weight.path
        grad = grad.numpy()
        assert np.isfinite(grad).all(), weight.path
        assert np.abs(grad).max() > 0, weight.path


@pytest.mark.parametrize("channels", [1, 4])
def test_other_channel_counts_without_weights(channels):
    model = keras_dla.DLA46XC(weights=None, include_top=False, pooling="avg", input_shape=(40, 40, channels))
    assert model.predict(images((2, 40, 40, channels)), verbose=0).shape == (2, 256)


def test_input_tensor():
    inputs = keras.Input((48, 80, 3), name="pixels")
    model = keras_dla.DLA34(weights=None, input_tensor=inputs, include_top=False)
    assert model.inputs[0] is inputs
    assert model.output_shape == (None, 2, 3, 512)
    head = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(model.output))
    assert keras.Model(inputs, head).predict(images((1, 48, 80, 3)), verbose=0).shape == (1, 2)


@pytest.fixture
def nothing_is_built(monkeypatch):
    """Fails a test that builds a layer: a refusal must come before the graph."""
    from keras_dla.models import blocks

    def built(*args, **kwargs):
        raise AssertionError("the graph was being built")

    monkeypatch.setattr(blocks, "conv2d", built)
    monkeypatch.setattr(keras_dla.models.dla_up.resampling, "pad_to_multiple", built)


@pytest.mark.parametrize(
    "tensor_shape, input_shape",
    [
        ((48, 80, 3), (64, 64, 3)),
        ((48, 80, 3), (80, 48, 3)),
        ((48, 80, 3), (48, 80, 1)),
        ((None, None, 3), (224, 224, 3)),  # the tensor takes any size: the shape asked for would be ignored
        ((64, 64, 3), (None, None, 3)),
        ((64, 64, 3), [64, 64, 4]),
    ],
)
def test_input_shape_that_differs_from_the_input_tensor_is_refused(nothing_is_built, tensor_shape, input_shape):
    inputs = keras.Input(tensor_shape)
    shown = re.escape(f"Received: input_shape={tuple(input_shape)}, input_tensor with shape {(None, *tensor_shape)}")
    with pytest.raises(ValueError, match=rf"differs from the shape of `input_tensor`.*{shown}$"):
        keras_dla.DLA46C(weights=None, include_top=False, input_tensor=inputs, input_shape=input_shape)
    with pytest.raises(ValueError, match=rf"differs from the shape of `input_tensor`.*{shown}$"):
        keras_dla.DLAUp("dla46_c", classes=3, input_tensor=inputs, input_shape=input_shape)


def test_input_shape_equal_to_the_input_tensor_is_accepted():
    inputs = keras.Input((48, 80, 3))
    model = keras_dla.DLA46C(weights=None, include_top=False, input_tensor=inputs, input_shape=(48, 80, 3))
    assert model.inputs[0] is inputs and model.output_shape == (None, 2, 3, 256)
    model = keras_dla.DLA46C(weights=None, include_top=False, input_tensor=inputs, input_shape=[np.int64(48), 80, 3])
    assert model.inputs[0] is inputs


@pytest.mark.parametrize("name", ["a/b", "/", "dla34/", "level/3", 5, b"dla34", ["dla34"], 1.5, True])
def test_a_name_keras_cannot_take_is_refused_before_the_graph(nothing_is_built, name):
    with pytest.raises(ValueError, match=re.escape(f'`name` should be a string without "/". Received: name={name!r}')):
        keras_dla.DLA46C(weights=None, name=name)
    with pytest.raises(ValueError, match="Received: name="):
        keras_dla.DLA(variant="dla34", weights=None, name=name)
    for build_dla_up in (keras_dla.DLA34Up, lambda **kwargs: keras_dla.DLAUp("dla46_c", **kwargs)):
        with pytest.raises(ValueError, match="Received: name="):
            build_dla_up(weights=None, name=name)


def test_names_keras_takes_are_kept():
    for name in ("my model", "dla-34.v2", "ünïcode", "a" * 200):
        assert keras_dla.DLA46C(weights=None, include_top=False, input_shape=(32, 32, 3), name=name).name == name
    assert keras_dla.DLA46C(weights=None, include_top=False, input_shape=(32, 32, 3), name="").name == "dla46_c"


def test_checkpoint_without_fc_needs_include_top_false(tmp_path):
    state = reference.timm_state_dict(reference.make_timm_model("dla46x_c"))
    headless = {k: v for k, v in state.items() if not k.startswith("fc.")}
    path = reference.save_safetensors(headless, tmp_path / "headless.safetensors")
    model = keras_dla.DLA46XC(weights=path, include_top=False)
    assert model.get_layer(keras_name("level5.root.bn")).get_weights()[0].shape == (256,)
    with pytest.raises(ValueError, match=r"no tensor 'fc.weight'"):
        keras_dla.DLA46XC(weights=path)
    # ... and a full checkpoint loads into a headless model: only fc.* is ignored.
    full = reference.save_safetensors(state, tmp_path / "full.safetensors")
    keras_dla.DLA46XC(weights=full, include_top=False, pooling="avg")


def test_unexplained_and_mismatched_keys(tmp_path):
    state = reference.timm_state_dict(reference.make_timm_model("dla46x_c"))
    extra = dict(state, **{"level2.extra.weight": np.zeros((3, 3), "float32")})
    with pytest.raises(ValueError, match=r"level2\.extra\.weight\[3, 3\]"):
        keras_dla.DLA46XC(weights=reference.save_safetensors(extra, tmp_path / "extra.safetensors"))
    wrong = dict(state, **{"level2.root.bn.running_var": np.ones(65, "float32")})
    with pytest.raises(ValueError, match=r"level2\.root\.bn\.running_var.*\(65,\).*\(64,\)"):
        keras_dla.DLA46XC(weights=reference.save_safetensors(wrong, tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError, match="another DLA variant"):
        keras_dla.DLA46C(weights=reference.save_safetensors(state, tmp_path / "x.safetensors"))


def test_numpy_integers_bad_activation_and_input_tensor_rank():
    model = keras_dla.DLA46C(weights=None, classes=np.int64(10), input_shape=(np.int64(32), 32, np.int64(3)))
    assert model.output.shape == (None, 10) and model.input.shape == (None, 32, 32, 3)
    up = keras_dla.DLAUp("dla46_c", classes=np.int32(3), input_shape=(32, 32, 3))
    assert up.output.shape == (None, 32, 32, 3)
    with pytest.raises(ValueError, match=r"`classifier_activation` should be None \(logits\) or a Keras activation"):
        keras_dla.DLA46C(weights=None, classifier_activation="softmaxx")
    with pytest.raises(ValueError, match=r"`input_tensor` should be a 4D image tensor.*\(None, 32, 32\)"):
        keras_dla.DLA46C(weights=None, input_tensor=keras.Input((32, 32)))
    with pytest.raises(ValueError, match=r"`input_tensor` should be a 4D image tensor"):
        keras_dla.DLAUp("dla46_c", classes=3, input_tensor=keras.Input((32, 32)))
    data = np.zeros((1, 32, 32, 3), "float32")  # data rather than a Keras tensor: one sentence, not the array
    with pytest.raises(ValueError, match=r"should be a Keras tensor .*type ndarray with shape \(1, 32, 32, 3\)$"):
        keras_dla.DLA46C(weights=None, input_tensor=data)
    with pytest.raises(ValueError, match=r"should be a Keras tensor .*type EagerTensor"):
        keras_dla.DLAUp("dla46_c", classes=3, input_tensor=tf.constant(data))
    with pytest.raises(ValueError, match=r"`include_top` should be True or False. Received: include_top='no'"):
        keras_dla.DLA46C(weights=None, include_top="no")  # was taken as True, as any non-empty string
    assert keras_dla.DLA46C(weights=None, include_top=np.bool_(False), input_shape=(32, 32, 3)).output.ndim == 4


def test_weights_file_of_another_variant(tmp_path, recwarn):
    path = tmp_path / "dla46x_c.weights.h5"
    keras_dla.DLA46XC(weights=None).save_weights(path)
    with pytest.raises(ValueError, match="(?s)another DLA variant.*Received: weights=") as caught:
        keras_dla.DLA46C(weights=path)
    # Keras' message prints whole variables; the sentence keeps the layer count, a few names and one shape clash.
    message = str(caught.value)
    # 60: the layers whose weights differ in shape between the two variants.
    assert re.search(r"60 layer\(s\) did not fit: level2_tree1_conv1, .* and 54 more\. For example", message)
    assert len(message) < 600
    # The error alone, without Keras' per-sublayer warnings in front of it.
    assert not [w for w in recwarn if "saving" in w.filename]


def test_weights_file_that_is_not_one(tmp_path):
    good = tmp_path / "good.weights.h5"
    keras_dla.DLA46C(weights=None, input_shape=(64, 64, 3)).save_weights(good)
    (tmp_path / "text.weights.h5").write_text("not HDF5")
    (tmp_path / "cut.weights.h5").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"Not a Keras weights file.*HDF5.*Received: weights="):
        keras_dla.DLA46C(weights=tmp_path / "text.weights.h5", input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match=r"(?s)is it incomplete\? h5py said: .*truncated.*Received: weights="):
        keras_dla.DLA46C(weights=tmp_path / "cut.weights.h5", input_shape=(64, 64, 3))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(weights="no/such/file.safetensors"), r"`weights` argument.*Received: weights='no/such/file"),
        (dict(weights="imagenet", classes=10), r"classes.*1000. Received: classes=10"),
        (dict(weights=None, input_shape=(224, 224)), r"3 values.*Received: input_shape=\(224, 224\)"),
        (dict(weights=None, input_shape=(31, 64, 3)), r">= 32. Received: input_shape=\(31, 64, 3\)"),
        (dict(weights=None, include_top=False, input_shape=(64, 16, 3)), r">= 32. Received"),
        (dict(weights="imagenet", include_top=False, input_shape=(64, 64, 1)), r"3 input channels.*Received"),
        (dict(weights=None, include_top=False, pooling="mean"), r"pooling.*Received: pooling='mean'"),
        (dict(weights="imagenet", classifier_activation="sigmoid"), r"Received: classifier_activation='sigmoid'"),
        (dict(weights=None, classes=0), r"positive integer. Received: classes=0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_dla.DLA34(**kwargs)


def test_preprocess_input():
    pixels = np.array([[[[0, 128, 255]]]], dtype="uint8")
    expected = (np.array([0, 128, 255]) / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(keras_dla.preprocess_input(pixels)[0, 0, 0], expected, rtol=1e-6)
    as_tensor = keras.ops.convert_to_numpy(keras_dla.preprocess_input(tf.constant(pixels)))
    np.testing.assert_allclose(as_tensor[0, 0, 0], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="3 channels"):
        keras_dla.preprocess_input(np.zeros((1, 4, 4, 1)))
    np.testing.assert_allclose(keras_dla.preprocess_input([[[[0, 128, 255]]]])[0, 0, 0], expected, rtol=1e-6)
    with pytest.raises(ValueError, match=r"3 channels last. Received: shape=\(\)"):
        keras_dla.preprocess_input(np.float32(3))


def test_decode_predictions():
    preds = np.zeros((2, 1000), "float32")
    preds[0, [1, 2, 3]] = [0.1, 0.7, 0.2]
    preds[1, 999] = 1.0
    decoded = keras_dla.decode_predictions(preds, top=3)
    assert [d[:2] for d in decoded[0]] == [
        ("n01484850", "great white shark"),
        ("n01491361", "tiger shark"),
        ("n01443537", "goldfish"),
    ]
    assert decoded[0][0][2] == pytest.approx(0.7)
    assert decoded[1][0][:2] == ("n15075141", "toilet tissue")
    with pytest.raises(ValueError, match=r"\(samples, 1000\). Received: shape=\(1, 10\)"):
        keras_dla.decode_predictions(np.zeros((1, 10)))


def test_import_has_no_side_effects(tmp_path):
    env = dict(os.environ, KERAS_HOME=str(tmp_path / "keras_home"))
    result = subprocess.run(
        [sys.executable, "-c", "import keras_dla, keras; print(keras.backend.backend())"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert result.stdout == "tensorflow\n"
    assert not (tmp_path / "keras_home" / "models").exists()


def test_model_code_is_backend_agnostic():
    """Model code uses Keras layers and keras.ops only, so the builders can run on JAX and PyTorch too."""
    import re

    package = os.path.dirname(keras_dla.__file__)
    backend_import = re.compile(r"^\s*(import|from)\s+(tensorflow|torch)\b", re.MULTILINE)
    model_code = ("blocks.py", "dla.py", "dla_up.py", "layers.py", "resampling.py", "names.py", "convert.py")
    for module in (*model_code, "legacy_weights.py", "readers.py", "imagenet.py"):
        with open(os.path.join(package, module), encoding="utf-8") as f:
            source = f.read()
        assert not backend_import.search(source), module
        assert "tf." not in source, module
    # TensorFlow's fast paths and the TensorFlow `serve` import TensorFlow inside the functions that run on that
    # backend only, never when the module is imported.
    top_level_import = re.compile(r"^(import|from)\s+(tensorflow|torch)\b", re.MULTILINE)
    for module in ("fast_paths.py", "inference.py"):
        with open(os.path.join(package, module), encoding="utf-8") as f:
            source = f.read()
        assert not top_level_import.search(source), module
