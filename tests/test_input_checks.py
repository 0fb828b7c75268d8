"""Input that cannot give a right answer is named in one sentence (issue 29): a user's own weights of another
channel count, bfloat16 / float16 models sent to TFLite, non-finite images, and segmentation labels out of range
in any mask of a data set."""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dla import checks, cli, export
from keras_dla.cli import predict as predict_command
from keras_dla.export import tensorflow_formats
from keras_dla.models import dla, dla_up
from keras_dla.training import datasets, fit, segmentation
from keras_dla.training.config import TrainConfig
from keras_dla.weights import convert
from tests.test_data import make_list_folder, write_png
from tests.test_export import tiny_model

# ------------------------------------------------------------------------------------------------------------------
# A user's own .weights.h5 of any input channel count


def _saved(tmp_path, model, name):
    path = str(tmp_path / f"{name}.weights.h5")
    model.save_weights(path)
    return path


def _assert_same_weights(loaded, model):
    assert [v.path for v in loaded.weights] == [v.path for v in model.weights]
    for a, b in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_own_weights_of_any_channel_count_load(tmp_path, channels):
    shape = (32, 32, channels)
    model = dla.DLA46C(weights=None, classes=10, input_shape=shape)
    path = _saved(tmp_path, model, f"grey{channels}")
    assert convert.weights_file_input_channels(path) == channels
    _assert_same_weights(dla.DLA46C(weights=path, classes=10, input_shape=shape), model)


def test_own_dla_up_weights_of_one_channel_load(tmp_path):
    model = dla_up.DLAUp("dla46_c", classes=3, input_shape=(None, None, 1))
    path = _saved(tmp_path, model, "up_grey")
    assert convert.weights_file_input_channels(path) == 1
    _assert_same_weights(dla_up.DLAUp("dla46_c", classes=3, weights=path, input_shape=(None, None, 1)), model)


@pytest.mark.parametrize("saved, wanted", [(1, 3), (3, 1), (4, 2), (2, 4)])
def test_weights_of_another_channel_count_are_one_sentence(tmp_path, saved, wanted):
    path = _saved(tmp_path, dla.DLA46C(weights=None, classes=10, input_shape=(32, 32, saved)), f"c{saved}")
    message = (
        rf"saved from a model of {saved} input channel\(s\) and dla46_c takes {wanted}; build the model with "
        rf"input_shape=\(height, width, {saved}\)\. Received: weights="
    )
    with pytest.raises(ValueError, match=message) as caught:
        dla.DLA46C(weights=path, classes=10, input_shape=(32, 32, wanted))
    assert path in str(caught.value) and "\n" not in str(caught.value)


def test_dla_up_weights_of_another_channel_count_are_one_sentence(tmp_path):
    path = _saved(tmp_path, dla_up.DLAUp("dla46_c", classes=3, input_shape=(None, None, 1)), "up1")
    with pytest.raises(ValueError, match=r"of 1 input channel\(s\) and dla46_cup takes 3; build the model with"):
        dla_up.DLAUp("dla46_c", classes=3, weights=path)


def test_rgb_weights_stay_rgb(tmp_path):
    # ImageNet and PyTorch checkpoints are refused for other channel counts before anything is read.
    for suffix in (".pth", ".safetensors"):
        (tmp_path / f"authors{suffix}").write_bytes(b"never read")
    cases = [
        (dla.DLA46C, dict(weights="imagenet", include_top=False, input_shape=(64, 64, 1))),
        (dla.DLA46C, dict(weights=str(tmp_path / "authors.pth"), input_shape=(64, 64, 1))),
        (dla.DLA46C, dict(weights=str(tmp_path / "authors.safetensors"), input_shape=(64, 64, 4))),
        (dla_up.DLA34Up, dict(weights="imagenet", input_shape=(None, None, 1))),
    ]
    for builder, kwargs in cases:
        with pytest.raises(ValueError, match=r"expect 3 input channels \(RGB\); only a Keras \.weights\.h5 file"):
            builder(**kwargs)


def test_export_cli_exports_own_grey_weights(tmp_path, capsys):
    model = dla.DLA46C(weights=None, classes=10, input_shape=(32, 32, 1), classifier_activation=None)
    path = _saved(tmp_path, model, "grey")
    output = tmp_path / "grey_saved_model"
    args = ["export", "--model", "dla46_c", "--weights", path, "--classes", "10", "--logits", "--format"]
    args += ["saved_model", "--input-size", "32", "32", "--samples", "2", "--output", str(output)]
    assert cli.main([*args, "--preprocess", "fashion_mnist"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "parity on 2 random images" in out
    signature = tf.saved_model.load(str(output)).signatures["serving_default"]
    assert tuple(next(iter(signature.structured_input_signature[1].values())).shape) == (None, 32, 32, 1)
    # The ImageNet normalisation is for RGB: one sentence, nothing written.
    assert cli.main([*args[:-1], str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "--preprocess imagenet normalises RGB images and the model takes 1 channel(s)" in err
    assert not (tmp_path / "other").exists()


# ------------------------------------------------------------------------------------------------------------------
# bfloat16 and float16 models sent to TFLite


@pytest.fixture
def policy():
    """Sets a global dtype policy for the test and restores float32 after it."""
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


def _no_conversion(monkeypatch):
    def refused(*args, **kwargs):
        raise AssertionError("the converter ran")

    monkeypatch.setattr(keras.Model, "export", refused)


@pytest.mark.parametrize("name, dtype", [("mixed_bfloat16", "bfloat16"), ("bfloat16", "bfloat16"),
                                         ("mixed_float16", "float16"), ("float16", "float16")])  # fmt: skip
def test_low_precision_models_are_refused_before_conversion(tmp_path, monkeypatch, policy, name, dtype):
    policy(name)
    models = [tiny_model(), dla.DLA46C(weights=None, classes=3, input_shape=(32, 32, 3))]
    policy("float32")
    _no_conversion(monkeypatch)
    for model in models:
        output = tmp_path / f"{model.name}.tflite"
        with pytest.raises(ValueError, match=rf"takes a float32 model and {model.name} computes in {dtype}") as e:
            export.export_tflite(model, output, input_size=(32, 32))
        assert "set_global_policy('float32')" in str(e.value) and f"Received: a {dtype} model" in str(e.value)
        assert not output.exists() and os.listdir(tmp_path) == []


def test_one_low_precision_layer_anywhere_is_found(tmp_path, monkeypatch):
    _no_conversion(monkeypatch)
    inner_input = keras.Input((None, None, 4))
    inner = keras.Model(inner_input, keras.layers.Conv2D(4, 1, dtype="bfloat16", name="half")(inner_input))
    inputs = keras.Input((None, None, 3))
    x = inner(keras.layers.Conv2D(4, 3, padding="same")(inputs))
    nested = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)), name="nested")
    with pytest.raises(ValueError, match=r"nested computes in bfloat16 \(layer 'half', dtype policy 'bfloat16'\)"):
        export.export_tflite(nested, tmp_path / "m.tflite", input_size=(32, 32))
    for dtype, found in (("mixed_bfloat16", "bfloat16"), ("float16", "float16"), ("mixed_float16", "float16")):
        head = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(2), keras.layers.Dense(2, dtype=dtype, name="h")]
        )
        layer, low = tensorflow_formats._low_precision_layer(head)
        assert (layer.name, low) == ("h", found)
    assert tensorflow_formats._low_precision_layer(tiny_model()) == (None, None)


def test_the_advice_works_weights_into_a_float32_model(tmp_path, policy):
    policy("mixed_bfloat16")
    low = tiny_model()
    policy("float32")
    path = _saved(tmp_path, low, "low")
    model = tiny_model()
    model.load_weights(path)
    tflite = export.export_tflite(model, tmp_path / "m.tflite", input_size=(32, 32), verbose=False)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype("float32")
    assert export.verify_export(model, tflite, x, latency_runs=1).max_abs_diff < 1e-4


def test_float32_weights_load_into_a_mixed_bfloat16_build(tmp_path, policy):
    """docs/training.md: under `mixed_bfloat16` a builder's `weights=` loads into float32 variables unchanged."""
    model = dla.DLA46C(weights=None, classes=3, input_shape=(32, 32, 3))
    rng = np.random.default_rng(0)
    for variable in model.weights:
        variable.assign(rng.normal(0.0, 0.1, variable.shape).astype("float32") + ("variance" in variable.path))
    path = _saved(tmp_path, model, "float32")
    policy("mixed_bfloat16")
    low = dla.DLA46C(weights=path, classes=3, input_shape=(32, 32, 3))
    assert {layer.dtype_policy.name for layer in low.layers if layer.weights} == {"mixed_bfloat16"}
    assert {variable.dtype for variable in low.weights} == {"float32"}
    _assert_same_weights(low, model)
    x = rng.standard_normal((4, 32, 32, 3)).astype("float32")
    expected, got = model.predict(x, verbose=0), low.predict(x, verbose=0)
    assert got.dtype == np.float32 and not np.array_equal(got, expected)  # computed in bfloat16, returned in float32
    np.testing.assert_allclose(got, expected, atol=0.05)


def test_export_cli_refuses_a_bfloat16_keras_file(tmp_path, capsys, policy):
    policy("mixed_bfloat16")
    path = str(tmp_path / "low.keras")
    tiny_model().save(path)
    policy("float32")
    output = tmp_path / "m.tflite"
    argv = ["export", "--model", path, "--weights", "none", "--format", "tflite", "--input-size", "32", "32"]
    assert cli.main([*argv, "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "computes in bfloat16" in err and "Traceback" not in err and "Flex" not in err
    assert not output.exists()


# ------------------------------------------------------------------------------------------------------------------
# Non-finite inputs get no answer

NON_FINITE = (np.nan, np.inf, -np.inf)


def _with(value, index, shape=(3, 8, 8, 3), dtype="float32"):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    x[index] = value
    return x


@pytest.mark.parametrize("value", NON_FINITE)
def test_check_finite_names_the_images_and_the_kinds(value):
    for dtype in ("float16", "float32", "float64"):
        for index, item in (((0, 0, 0, 0), 0), ((2, 7, 7, 2), 2), ((1, 3, 4, 1), 1)):
            with pytest.raises(ValueError, match=rf"`x` holds values that are not finite .* in image {item} of 3"):
                checks.check_finite("x", _with(value, index, dtype=dtype))
    many = np.full((7, 2, 2, 1), value, "float32")
    with pytest.raises(ValueError, match=r"in images 0, 1, 2, 3, 4, \.\.\. of 7.*Received: x of shape \(7, 2, 2, 1\)"):
        checks.check_finite("x", many)
    kinds = {"nan": "4 NaN, 0 +inf, 0 -inf", "inf": "0 NaN, 4 +inf, 0 -inf", "-inf": "0 NaN, 0 +inf, 4 -inf"}
    with pytest.raises(ValueError, match=re.escape(kinds[str(value)])):
        checks.check_finite("x", many[:1])
    checks.check_finite("x", np.zeros((2, 4, 4, 3), "uint8"))  # integers cannot hold either
    checks.check_finite("x", np.ones((2, 4, 4, 3), "float32"))


def test_predict_multiscale_refuses_non_finite_images(monkeypatch):
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Softmax()(inputs))
    monkeypatch.setattr(model, "predict", lambda *a, **k: pytest.fail("the model ran"))
    for value in NON_FINITE:
        for index, item in (((1, 2, 3, 0), 1), ((0, 0, 0, 2), 0), ((2, 7, 0, 1), 2)):
            with pytest.raises(ValueError, match=rf"`images` holds values that are not finite .* in image {item} of"):
                segmentation.predict_multiscale(model, _with(value, index), scales=(0.5, 1.0))


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    model = tiny_model()
    return model, export.export_saved_model(model, tmp_path_factory.mktemp("sm") / "m", input_size=(8, 8))


def test_verify_export_refuses_non_finite_inputs(saved_model):
    model, path = saved_model
    for value in NON_FINITE:
        for index, item in (((0, 1, 1, 1), 0), ((2, 0, 7, 0), 2)):
            with pytest.raises(ValueError, match=rf"`inputs` holds values that are not finite .* in image {item} of 3"):
                export.verify_export(model, path, _with(value, index), latency_runs=1)


def test_int8_calibration_refuses_non_finite_representative_images(tmp_path, monkeypatch):
    _no_conversion(monkeypatch)
    model = tiny_model()
    for value in NON_FINITE:
        data = _with(value, (1, 4, 4, 0), shape=(3, 32, 32, 3))
        for given in (data, iter(data), [data[:2], data[2:]]):  # an array, images, batches
            with pytest.raises(ValueError, match=r"`representative_data` holds values that are not finite .* image 1"):
                export.export_tflite(
                    model, tmp_path / "m.tflite", input_size=(32, 32), quantization="int8", representative_data=given
                )
        assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def imagenet_shaped(tmp_path_factory):
    """A 1000-class DLA-46-C weights file, which `keras-dla predict` loads."""
    path = str(tmp_path_factory.mktemp("w") / "dla46_c.weights.h5")
    dla.DLA46C(weights=None, input_shape=(224, 224, 3)).save_weights(path)
    return path


def test_predict_reports_non_finite_images_and_classifies_the_others(tmp_path, capsys, monkeypatch, imagenet_shaped):
    paths = [str(tmp_path / f"{i}.png") for i in range(6)]
    for path in paths:
        write_png(path, np.zeros((4, 4, 3)))  # only their names matter: load_image is replaced
    pixels = {path: np.full((224, 224, 3), 100.0 + i, "float32") for i, path in enumerate(paths)}
    for path, value, where in (
        (paths[1], np.nan, (0, 0, 0)),
        (paths[3], np.inf, (5, 9, 1)),
        (paths[4], -np.inf, (223, 223, 2)),
    ):
        pixels[path][where] = value
    monkeypatch.setattr(predict_command, "load_image", lambda path: pixels[path])
    argv = ["predict", *paths, "--model", "dla46_c", "--weights", imagenet_shaped, "--top", "1"]
    for batch in (32, 2):
        monkeypatch.setattr(predict_command, "BATCH", batch)
        assert cli.main(argv) == 2
        out, err = capsys.readouterr()
        assert out.splitlines()[::2] == [f"{p}:" for p in (paths[0], paths[2], paths[5])]
        errors = [line for line in err.splitlines() if line.startswith("keras-dla predict:")]
        assert [line.rsplit("Received: ", 1)[1] for line in errors] == [paths[1], paths[3], paths[4]]
        assert all("holds pixels that are not finite (NaN, inf)" in line for line in errors)


def test_predict_reports_scores_that_are_not_finite(tmp_path, capsys, monkeypatch):
    model = dla.DLA46C(weights=None, input_shape=(224, 224, 3))
    fc = model.get_layer("fc")
    fc.bias.assign(np.where(np.arange(1000) == 7, np.nan, 0.0).astype("float32"))
    monkeypatch.setitem(dla.BUILDERS, "dla46_c", lambda **kwargs: model)
    monkeypatch.setattr(predict_command, "load_image", lambda path: np.full((224, 224, 3), 90.0, "float32"))
    paths = [str(tmp_path / f"{i}.png") for i in range(3)]
    for path in paths:
        write_png(path, np.zeros((4, 4, 3)))
    assert cli.main(["predict", *paths, "--model", "dla46_c", "--weights", "none"]) == 2
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("keras-dla predict:")]
    assert out == "" and [line.rsplit("Received: ", 1)[1] for line in errors] == paths
    assert all("the model's scores for it are not finite" in line for line in errors)


# ------------------------------------------------------------------------------------------------------------------
# Segmentation labels out of range in any mask


@pytest.mark.parametrize("bad_value, classes", [(5, 5), (40, 5), (254, 5), (12, 10)])
def test_an_out_of_range_label_up_front_names_its_file(tmp_path, bad_value, classes):
    root = make_list_folder(str(tmp_path / "seg"), count=5, classes=min(classes, 5), bad_value=bad_value)
    bad = os.path.join(root, "labels", "train4.png")
    with pytest.raises(ValueError, match=rf"found \[{bad_value}\] in {re.escape(bad)}\. Received: dataset="):
        datasets.segmentation_data(root, classes=classes)
    for i in (0, 2):  # more files with bad labels: the first is named, the others counted
        mask = np.zeros((48, 56), np.uint8)
        mask[0, i] = bad_value
        write_png(os.path.join(root, "labels", f"train{i}.png"), mask)
    first = os.path.join(root, "labels", "train0.png")
    with pytest.raises(ValueError, match=rf"found \[{bad_value}\] in {re.escape(first)} \(and 2 more masks\)\. Rec"):
        datasets.segmentation_data(root, classes=classes)


def _pipeline_error(root, split, classes):
    ds, _ = datasets.segmentation_data(root, split=split, classes=classes, crop_size=32, batch_size=2, training=False)
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        for _ in ds:
            pass
    return caught.value


@pytest.mark.parametrize("bad_value", [5, 77, 254])
def test_a_label_past_the_checked_masks_is_named_as_the_pipeline_reads_it(tmp_path, monkeypatch, bad_value):
    monkeypatch.setattr(datasets, "LABEL_CHECK_LIMIT", 2)
    root = make_list_folder(str(tmp_path / "seg"), count=6, bad_value=bad_value)
    bad = os.path.join(root, "labels", "train5.png")
    error = _pipeline_error(root, "train", 5)
    assert f"The segmentation mask {bad} holds label {bad_value}, outside [0, 5)" in error.message
    sentence = datasets.mask_label_error(error, root)
    assert sentence == (
        f"Segmentation labels should be in [0, 5) or 255 (ignored); the mask {bad} holds {bad_value} (found as "
        f"training read it). Received: dataset={root!r}"
    )
    # The validation split is read the same way.
    val_bad = os.path.join(root, "labels", "val3.png")
    mask = np.zeros((48, 56), np.uint8)
    mask[47, 55] = bad_value
    write_png(val_bad, mask)
    assert f"mask {val_bad} holds {bad_value}" in datasets.mask_label_error(
        _pipeline_error(root, "validation", 5), root
    )
    assert datasets.mask_label_error(tf.errors.InvalidArgumentError(None, None, "Invalid PNG"), root) is None
    assert datasets.mask_label_error(ValueError("x"), root) is None


def test_a_label_out_of_range_mid_fit_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "LABEL_CHECK_LIMIT", 1)
    root = make_list_folder(str(tmp_path / "seg"), count=4, size=(32, 32), classes=3)
    bad = {os.path.join(root, "labels", f"train{i}.png") for i in (1, 2, 3)}
    for path in bad:  # every mask but the one checked up front: the first batch holds one, whatever the shuffle
        mask = np.ones((32, 32), np.uint8)
        mask[5, 5] = 9
        write_png(path, mask)
    output = str(tmp_path / "run")
    config = TrainConfig(
        task="segmentation", model="dla46_cup", dataset=root, classes=3, epochs=1, steps_per_epoch=2, batch_size=2,
        image_size=32, lr=0.01, output=output, verbose=0,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"in \[0, 3\) or 255 \(ignored\); the mask .* holds 9 .*Received") as caught:
        fit.train(config)
    named = str(caught.value).split("the mask ", 1)[1].split(" holds 9", 1)[0]
    assert named in bad and not os.path.exists(output)
