"""The DLA classifiers against the keras.applications contract and the PyTorch reference (timm)."""

import inspect
import json
import os
import re
import shutil
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
from tests import reference, variants

VARIANTS = variants.ALL

# Trainable parameters with 1000 classes: timm 1.0.31's `sum(p.numel() for p in model.parameters())`.
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


def test_a_build_for_loaded_weights_has_the_random_builds_config(tmp_path):
    """A builder given weights creates the kernels as zeros (no random draws to overwrite), yet its config, its
    saved file and every weight are those of a random build loaded with the same file."""
    random = keras_dla.DLA34(weights=None, input_shape=(64, 64, 3), classes=7)
    path = str(tmp_path / "random.weights.h5")
    random.save_weights(path)
    loaded = keras_dla.DLA34(weights=path, input_shape=(64, 64, 3), classes=7)
    assert json.dumps(loaded.get_config(), sort_keys=True) == json.dumps(random.get_config(), sort_keys=True)
    conv = loaded.get_layer("level3_tree1_tree1_conv1")
    assert (
        conv.get_config()["kernel_initializer"]
        == random.get_layer("level3_tree1_tree1_conv1").get_config()["kernel_initializer"]
    )
    for a, b in zip(random.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), err_msg=a.path)
    # Built again from its config (no weights), the model draws random kernels as before.
    clone = keras.Model.from_config(loaded.get_config())
    assert np.abs(keras.ops.convert_to_numpy(clone.get_layer("fc").kernel)).max() > 0
    assert not np.allclose(keras.ops.convert_to_numpy(clone.get_layer("base_layer_0").kernel), 0)


@pytest.mark.parametrize("variant", variants.tier(variants.LIGHT))
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
    from keras_dla import resampling
    from keras_dla.models import blocks

    def built(*args, **kwargs):
        raise AssertionError("the graph was being built")

    monkeypatch.setattr(blocks, "conv2d", built)
    monkeypatch.setattr(resampling, "pad_to_multiple", built)


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
    assert len(message.replace(str(path), "")) < 500  # the temporary folder's path length varies
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
    """Model and weights code uses Keras layers and keras.ops only, so the builders run on JAX and PyTorch too."""
    package = os.path.dirname(keras_dla.__file__)
    backend_import = re.compile(r"^\s*(import|from)\s+(tensorflow|torch)\b", re.MULTILINE)
    top_level_import = re.compile(r"^(import|from)\s+(tensorflow|torch)\b", re.MULTILINE)
    # TensorFlow's fast paths and the TensorFlow `serve` import TensorFlow inside the functions that run on that
    # backend only, never when the module is imported.
    backend_specific = {"models/fast_paths.py", "export/inference.py"}
    modules = [f"{folder}/{name}" for folder in ("models", "weights") for name in os.listdir(f"{package}/{folder}")]
    modules += [name for name in ("checks.py", "files.py", "resampling.py") if os.path.exists(f"{package}/{name}")]
    checked = 0
    for module in sorted({*modules, *backend_specific}):
        if not module.endswith(".py"):
            continue
        with open(os.path.join(package, module), encoding="utf-8") as f:
            source = f.read()
        if module in backend_specific:
            assert not top_level_import.search(source), module
        else:
            assert not backend_import.search(source), module
            assert module in ("checks.py", "files.py") or "tf." not in source, module  # checks.py names tf.data
        checked += 1
    assert checked >= 15


def test_the_generic_builder_takes_an_architecture():
    """`DLA(levels=..., channels=..., ...)` builds any architecture; an architecture equal to a named variant's is
    that variant (its name, its pretrained weights); the named builders are `DLA` with their row."""
    tiny = dict(levels=(1, 1, 1, 2, 1, 1), channels=(4, 8, 8, 16, 16, 32), block="bottleneck", groups=2)
    model = keras_dla.DLA(**tiny, weights=None, classes=3, input_shape=(32, 32, 3))
    assert model.name == "dla" and model.output_shape == (None, 3)
    assert model.get_layer(keras_name("level4.tree1.conv2")).groups == 2
    # DLA-X-46-C's row, given as arguments, is DLA-X-46-C: same name, same graph.
    row = keras_dla.MODEL_CONFIGS["dla46x_c"]
    as_arguments = keras_dla.DLA(**row, weights=None, include_top=False, input_shape=(32, 32, 3))
    named = keras_dla.DLA46XC(weights=None, include_top=False, input_shape=(32, 32, 3))
    assert as_arguments.name == named.name == "dla46x_c"
    assert [w.shape for w in as_arguments.weights] == [w.shape for w in named.weights]
    assert json.dumps(as_arguments.get_config()) == json.dumps(named.get_config())
    # A variant's architecture with one argument changed is a new architecture: no pretrained weights for it.
    wider = keras_dla.DLA("dla46x_c", groups=16, weights=None, include_top=False, input_shape=(32, 32, 3))
    assert wider.name == "dla" and wider.get_layer(keras_name("level2.tree1.conv2")).groups == 16
    with pytest.raises(ValueError, match="none of the named DLA variants.*Received: weights='imagenet'"):
        keras_dla.DLA("dla46x_c", groups=16)
    assert str(inspect.signature(keras_dla.DLA34)).startswith("(include_top=True, weights='imagenet', input_tensor")
    assert keras_dla.DLA34.variant == "dla34" and "DLA-34" in keras_dla.DLA34.__doc__
    with pytest.raises(TypeError, match=r"DLA34\(\) got an unexpected keyword argument 'level'"):
        keras_dla.DLA34(level=(1,))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(levels=(1, 1, 1, 1, 1)), r"`levels` should be 6 positive integers.*Received: levels=\(1, 1, 1, 1, 1\)"),
        (dict(levels=(1, 1, 1, 0, 1, 1)), r"`levels\[3\]` should be a positive integer. Received: levels\[3\]=0"),
        (dict(channels="wide"), r"`channels` should be 6 positive integers.*Received: channels='wide'"),
        (dict(block="resnet"), r"`block` should be one of \['basic', 'bottleneck', 'res2net'\]. Received"),
        (dict(block="bottleneck", groups=0), r"`groups` should be a positive integer. Received: groups=0"),
        (dict(block="bottleneck", groups=3, base_width=1), r"level2 would have 1 channels, not a positive multiple"),
        (dict(residual_root="yes"), r"`residual_root` should be True or False"),
        (dict(variant="dla35"), r"Unknown DLA variant.*Received: variant='dla35'"),
    ],
)
def test_bad_architectures_are_refused_before_the_graph(nothing_is_built, kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_dla.DLA(**kwargs, weights=None)
    if "variant" not in kwargs:
        with pytest.raises(ValueError, match=message):
            keras_dla.DLAUp(kwargs, classes=3)


def test_a_variant_is_one_row(tmp_path):
    """A row added to `configs.VARIANTS` (in a copy of the package) is a builder, a public name, a DLA-Up builder
    when it says so, and a `keras-dla info` line, with nothing else changed."""
    package = os.path.dirname(keras_dla.__file__)
    copy = tmp_path / "keras_dla"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    configs = copy / "models" / "configs.py"
    row = 'Variant("dla20", "DLA20", "DLA-20", dict(levels=(1, 1, 1, 1, 1, 1)), segmentation=True),\n'
    configs.write_text(configs.read_text().replace("VARIANTS = (\n", "VARIANTS = (\n    " + row, 1))
    script = (
        "import keras_dla, json; m = keras_dla.DLA20(weights=None, input_shape=(32, 32, 3)); "
        "u = keras_dla.DLA20Up(classes=2, input_shape=(32, 32, 3)); "
        "print(json.dumps([m.name, m.count_params(), u.name, 'DLA20' in keras_dla.__all__]))"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    name, params, up_name, public = json.loads(done.stdout.strip().splitlines()[-1])
    assert (name, up_name, public) == ("dla20", "dla20up", True)
    assert params < keras_dla.DLA34(weights=None, input_shape=(32, 32, 3)).count_params()
    info = subprocess.run(
        [sys.executable, "-m", "keras_dla.cli", "info"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert info.returncode == 0 and "dla20" in info.stdout, info.stderr[-2000:]
