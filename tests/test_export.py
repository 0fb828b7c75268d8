"""Export to SavedModel and TFLite: parity with Keras for every model, each quantization, the uint8 signature,
reloading, and the refusals (bad arguments, Flex ops, existing paths) that must leave nothing behind."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dla import export
from keras_dla.export import calibration, normalisations, runtime, verify
from keras_dla.models import dla, dla_up
from keras_dla.models.imagenet import preprocess_input
from keras_dla.training import fashion_mnist
from keras_dla.training.images import fit_images, load_images
from tests import contract, variants

SIZE = 32  # the smallest input DLA takes: TFLite conversion time grows with the graph, not the pixels
TOLERANCE = 1e-4  # max abs difference of float32 logits (the target)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def trained_looking(model, size, seed=0):
    """Gives `model` random weights that look trained, in place, and returns it.

    With Keras' initial BatchNorm statistics the logits of the deeper DLAs grow to thousands, where float32
    round-off alone exceeds 1e-4. As tests/reference.py does for PyTorch: BatchNorm statistics are measured
    on random images (one training-mode pass with momentum 0), then perturbed, and the BatchNorm that closes
    each residual branch or aggregation root gets a small scale.
    """
    rng = np.random.default_rng(seed)
    bns = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    names = {layer.name for layer in _all_layers(model)}
    for bn in bns:
        bn.gamma.assign(rng.uniform(0.5, 1.5, bn.gamma.shape).astype("float32"))
        bn.beta.assign(rng.uniform(-0.2, 0.2, bn.beta.shape).astype("float32"))
        bn.momentum = 0.0
    model(rng.standard_normal((4, size, size, 3)).astype("float32"), training=True)
    for bn in bns:
        bn.momentum = dla.blocks.BN_MOMENTUM
        shape = bn.moving_mean.shape
        bn.moving_mean.assign(bn.moving_mean.numpy() + 0.1 * rng.standard_normal(shape).astype("float32"))
        bn.moving_variance.assign(bn.moving_variance.numpy() * rng.uniform(0.8, 1.25, shape).astype("float32"))
        basic_end = bn.name.endswith("bn2") and f"{bn.name[:-3]}bn3" not in names
        if bn.name.endswith(("bn3", "root_bn")) or basic_end:  # layer names: module paths, "_" for "."
            bn.gamma.assign(rng.uniform(0.05, 0.3, bn.gamma.shape).astype("float32"))
    return model


def images(count, size=SIZE, seed=1):
    return np.random.default_rng(seed).standard_normal((count, size, size, 3)).astype("float32")


def classifier(variant, seed=0):
    model = dla.DLA(variant, weights=None, input_shape=(None, None, 3), classes=10, classifier_activation=None)
    return trained_looking(model, SIZE, seed)


@pytest.fixture(scope="module")
def small_model():
    """DLA-X-46-C (the smallest DLA) with trained-looking weights: the quantization tests' model."""
    return classifier("dla46x_c")


@pytest.fixture(scope="module")
def float32_tflite(small_model, tmp_path_factory):
    return export.export_tflite(small_model, tmp_path_factory.mktemp("f32") / "m.tflite", input_size=(SIZE, SIZE))


def tiny_model(extra=None):
    """A few-layer CNN: the export code serves any Keras model, and the refusal tests need speed."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    if extra is not None:
        x = extra(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


# DLA-34 and a tiny architecture of each kind of block in the default run (TFLite conversion time grows with the
# graph); every named variant with `-m slow`.
EXPORTED = [*variants.tier(("dla34",)), *(f"tiny_{kind}" for kind in contract.TINY_ARCHITECTURES)]


@pytest.mark.parametrize("variant", EXPORTED)
def test_classifier_exports_match_keras(variant, tmp_path):
    if variant.startswith("tiny_"):
        architecture = contract.TINY_ARCHITECTURES[variant.removeprefix("tiny_")]
        built = dla.DLA(
            **architecture, weights=None, input_shape=(None, None, 3), classes=10, classifier_activation=None
        )
        model = trained_looking(built, SIZE)
    else:
        model = classifier(variant)
    inputs = images(3)

    lite = export.export_tflite(model, tmp_path / "model.tflite", input_size=(SIZE, SIZE))
    report = export.verify_export(model, lite, inputs, latency_runs=1)
    assert report.format == "tflite" and report.samples == 3
    assert report.max_abs_diff <= TOLERANCE, report.summary()
    assert report.top1_agreement == 1.0
    assert report.size_bytes == os.path.getsize(lite) > 3.5 * model.count_params()  # float32, BatchNorm folded

    saved = export.export_saved_model(model, tmp_path / "saved_model")
    # The SavedModel keeps the dynamic input size: compare at the exported size and at an odd one.
    for batch in (inputs, images(2, 33)):
        report = export.verify_export(model, saved, batch, latency_runs=1)
        assert report.format == "saved_model"
        assert report.max_abs_diff <= TOLERANCE, report.summary()
        assert report.top1_agreement == 1.0
    # ONNX and OpenVINO: a grouped convolution reaches ONNX as dense convolutions over block-diagonal kernels and
    # OpenVINO as its GroupConvolution (keras_dla.export.onnx_openvino).
    for name in ("model.onnx", "model.xml"):
        path = export.export(model, tmp_path / name, format="onnx" if name.endswith(".onnx") else "openvino")
        report = export.verify_export(model, path, inputs, latency_runs=1)
        assert report.max_abs_diff <= TOLERANCE, report.summary()
        assert report.top1_agreement == 1.0
    # No temporary leftovers; each artefact has its JSON sidecar (keras_dla.export.sidecar).
    assert sorted(os.listdir(tmp_path)) == [
        "model.bin", "model.onnx", "model.onnx.json", "model.tflite", "model.tflite.json", "model.xml",
        "model.xml.json", "saved_model", "saved_model.json",
    ]  # fmt: skip


def test_dla_up_exports_match_keras(tmp_path):
    model = dla_up.DLAUp("dla34", classes=5, activation=None, input_shape=(None, None, 3))
    trained_looking(model, 64)
    inputs = images(2, 64)

    lite = export.export_tflite(model, tmp_path / "up.tflite", input_size=(64, 64))
    report = export.verify_export(model, lite, inputs, latency_runs=1)
    assert report.max_abs_diff <= TOLERANCE, report.summary()
    assert report.pixel_agreement >= 0.999 and report.top1_agreement is None

    saved = export.export_saved_model(model, tmp_path / "up_saved_model")
    for batch in (inputs, images(1, 45)):  # 45: the model pads to 64 inside and crops back
        report = export.verify_export(model, saved, batch, latency_runs=1)
        assert report.max_abs_diff <= TOLERANCE, report.summary()
        assert report.pixel_agreement >= 0.999


def test_saved_model_reloads_as_tfsmlayer(small_model, tmp_path):
    path = export.export_saved_model(small_model, tmp_path / "sm")
    layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default")
    inputs = images(2, 40)
    (output,) = layer(inputs).values()
    expected = small_model.predict_on_batch(inputs)
    np.testing.assert_allclose(np.asarray(output), expected, rtol=0, atol=TOLERANCE)
    # And as a layer of a new Keras model.
    wrapper_in = keras.Input((40, 40, 3))
    wrapper = keras.Model(wrapper_in, layer(wrapper_in)["logits"])  # the output named for what it holds
    np.testing.assert_allclose(wrapper.predict_on_batch(inputs), expected, rtol=0, atol=TOLERANCE)


def test_uint8_signature_builds_the_preprocessing_in(small_model, tmp_path):
    pixels = np.random.default_rng(3).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    expected = small_model.predict_on_batch(preprocess_input(pixels))

    saved = export.export_saved_model(small_model, tmp_path / "sm", input_size=(SIZE, SIZE), uint8_input=True)
    serve = tf.saved_model.load(saved).signatures["serving_default"]
    spec = serve.structured_input_signature[1]["images"]  # tensors named for what they hold
    assert spec.dtype == tf.uint8 and tuple(spec.shape) == (None, SIZE, SIZE, 3)
    assert list(serve.structured_outputs) == ["logits"]  # the classifier has no softmax
    output = serve(images=tf.constant(pixels))["logits"]
    np.testing.assert_allclose(output.numpy(), expected, rtol=0, atol=TOLERANCE)

    lite = export.export_tflite(small_model, tmp_path / "m.tflite", input_size=(SIZE, SIZE), uint8_input=True)
    signature = runtime.tflite_interpreter(lite, None).get_signature_list()
    assert signature == {"serving_default": {"inputs": ["images"], "outputs": ["logits"]}}
    report = export.verify_export(small_model, lite, pixels, latency_runs=1)
    assert report.input_dtype == "uint8"
    assert report.max_abs_diff <= TOLERANCE and report.top1_agreement == 1.0


def _tflite_details(path):
    interpreter = runtime.tflite_interpreter(os.fspath(path), None)
    return interpreter.get_input_details()[0], interpreter.get_output_details()[0], interpreter.get_tensor_details()


def test_float16_is_half_size_within_1e2_relative(small_model, float32_tflite, tmp_path):
    path = export.export_tflite(small_model, tmp_path / "m.tflite", input_size=(SIZE, SIZE), quantization="float16")
    report = export.verify_export(small_model, path, images(8), latency_runs=1)
    assert report.max_rel_diff <= 1e-2, report.summary()
    assert report.top1_agreement >= 7 / 8
    assert os.path.getsize(path) < 0.55 * os.path.getsize(float32_tflite)
    assert any(t["dtype"] == np.float16 for t in _tflite_details(path)[2])


def test_dynamic_range_quantization(small_model, float32_tflite, tmp_path):
    path = export.export_tflite(small_model, tmp_path / "m.tflite", input_size=(SIZE, SIZE), quantization="dynamic")
    report = export.verify_export(small_model, path, images(8), latency_runs=1)
    assert report.max_rel_diff <= 0.05, report.summary()
    assert os.path.getsize(path) < 0.35 * os.path.getsize(float32_tflite)
    inputs, outputs, _ = _tflite_details(path)
    assert inputs["dtype"] == outputs["dtype"] == np.float32


def test_int8_with_integer_io(small_model, float32_tflite, tmp_path):
    representative = images(32, seed=5)
    path = export.export_tflite(
        small_model,
        tmp_path / "m.tflite",
        input_size=(SIZE, SIZE),
        quantization="int8",
        representative_data=representative,
        integer_io=True,
    )
    inputs, outputs, tensors = _tflite_details(path)
    assert inputs["dtype"] == outputs["dtype"] == np.int8
    assert inputs["quantization"][0] > 0  # a real scale: verify_export quantizes the float images with it
    float_tensors = [t["name"] for t in tensors if t["dtype"] == np.float32]
    assert not float_tensors, float_tensors[:5]  # full-integer: no float op left
    assert os.path.getsize(path) < 0.35 * os.path.getsize(float32_tflite)
    # Images from the calibration distribution: the int8 model follows the float one.
    report = export.verify_export(small_model, path, images(16, seed=6), latency_runs=1)
    assert report.input_dtype == "int8"
    assert report.max_rel_diff <= 0.15, report.summary()


def test_int8_calibration_shows_its_progress(tmp_path, capfd):
    representative = np.random.default_rng(0).standard_normal((5, 8, 8, 3)).astype("float32")
    int8 = dict(input_size=(8, 8), quantization="int8", representative_data=representative, calibration_steps=4)
    export.export_tflite(tiny_model(), tmp_path / "shown.tflite", **int8)
    out = capfd.readouterr().out
    assert "Calibrating int8 on 4 representative image(s)" in out and "  4/4 images calibrated (" in out
    export.export_tflite(tiny_model(), tmp_path / "quiet.tflite", verbose=False, **int8)
    assert "Calibrating" not in capfd.readouterr().out
    export.export_tflite(tiny_model(), tmp_path / "float.tflite", input_size=(8, 8))  # nothing to calibrate
    assert "Calibrating" not in capfd.readouterr().out
    report = calibration.progress(3, "images calibrated", log_every_s=0)  # a line per image when it is time
    for done in (1, 2, 3):
        report(done)
    lines = capfd.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"  {i}/3 images calibrated" for i in (1, 2, 3)]
    with pytest.raises(ValueError, match="`verbose` should be True or False. Received: verbose='no'"):
        export.export_tflite(tiny_model(), tmp_path / "x.tflite", verbose="no", **int8)


@pytest.fixture(scope="module")
def fashion_model():
    """A DLA-46-C trained briefly on real Fashion-MNIST (as the demo: 28 -> 32 padded, RGB, normalised)."""
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
    fit = fit_images(x_train[:4096, :, :, None].astype("float32"), (SIZE, SIZE))
    train_pixels = np.repeat(fit, 3, axis=-1)
    test_pixels = load_images("fashion_mnist", (SIZE, SIZE), count=1000)
    normalise = export.PREPROCESSING["fashion_mnist"]
    model = dla.DLA("dla46_c", weights=None, input_shape=(SIZE, SIZE, 3), classes=10, classifier_activation=None)
    model.compile(
        keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False
    )
    model.fit(np.asarray(normalise(train_pixels)), y_train[:4096], batch_size=64, epochs=2, verbose=0)
    return model, train_pixels, test_pixels, y_test[:1000]


@pytest.mark.slow
def test_int8_keeps_top1_on_real_images(fashion_model, tmp_path):
    model, train_pixels, test_pixels, labels = fashion_model
    normalise = export.PREPROCESSING["fashion_mnist"]
    path = export.export_tflite(
        model,
        tmp_path / "fashion.tflite",
        quantization="int8",
        representative_data=train_pixels[:200],
        uint8_input=True,  # the phone's model: raw pixels in, the normalisation inside
        preprocess=normalise,
    )
    report = export.verify_export(model, path, test_pixels, preprocess=normalise, latency_runs=1)
    assert report.samples == 1000 and report.input_dtype == "uint8"
    assert report.top1_agreement >= 0.95, report.summary()

    keras_accuracy = np.mean(np.argmax(model.predict(np.asarray(normalise(test_pixels)), verbose=0), -1) == labels)
    runner = runtime.Runner(path, None)
    int8_predictions = [np.argmax(next(iter(runner(test_pixels[i : i + 1]).values()))) for i in range(1000)]
    int8_accuracy = np.mean(np.asarray(int8_predictions) == labels)
    assert keras_accuracy > 0.6  # a model that learned something, so agreement means something
    assert keras_accuracy - int8_accuracy <= 0.01, (keras_accuracy, int8_accuracy)


def test_verify_runs_on_random_inputs_by_default(small_model, float32_tflite):
    report = export.verify_export(small_model, float32_tflite, num_random=3, latency_runs=2)
    assert report.samples == 3 and report.max_abs_diff <= TOLERANCE
    assert report.latency_ms > 0 and report.keras_latency_ms > 0
    assert "top-1 agreement 100.00%" in report.summary()


def test_verify_reports_a_real_difference(small_model, float32_tflite):
    """The comparison can fail: against the model with negated logits, every class disagrees."""
    other = keras.models.clone_model(small_model)
    other.set_weights(small_model.get_weights())
    fc = other.get_layer("fc")
    fc.set_weights([-w for w in fc.get_weights()])
    report = export.verify_export(other, float32_tflite, images(8), latency_runs=1)
    assert report.max_abs_diff > 1e-2
    assert report.top1_agreement == 0.0


# ---------------------------------------------------------------------------------------------------------
# Refusals: clear errors and nothing left behind


def test_unknown_format_and_quantization(tmp_path):
    model = tiny_model()
    with pytest.raises(ValueError, match=r"Received: format='coreml'"):
        export.export(model, tmp_path / "m", format="coreml")
    with pytest.raises(ValueError, match=r"Received: quantization='int4'"):
        export.export_tflite(model, tmp_path / "m.tflite", input_size=(8, 8), quantization="int4")
    with pytest.raises(ValueError, match=r"TFLite format only. .*quantization='float16'"):
        export.export(model, tmp_path / "m", format="saved_model", quantization="float16")
    with pytest.raises(ValueError, match=r"integer_io=True.*Received: quantization=None"):
        export.export_tflite(model, tmp_path / "m.tflite", input_size=(8, 8), integer_io=True)
    assert os.listdir(tmp_path) == []


def test_int8_needs_representative_data(tmp_path):
    with pytest.raises(ValueError, match=r"representative.*Received: representative_data=None"):
        export.export_tflite(tiny_model(), tmp_path / "m.tflite", input_size=(8, 8), quantization="int8")
    with pytest.raises(ValueError, match=r"Received: shape=\(4, 9, 9, 3\)"):
        export.export_tflite(
            tiny_model(),
            tmp_path / "m.tflite",
            input_size=(8, 8),
            quantization="int8",
            representative_data=np.zeros((4, 9, 9, 3), "float32"),
        )
    assert os.listdir(tmp_path) == []


def test_bad_export_arguments_are_named_before_anything_is_written(tmp_path):
    model = tiny_model()
    pixels = np.zeros((4, 8, 8, 3), "float32")
    int8 = dict(input_size=(8, 8), quantization="int8", representative_data=pixels)
    with pytest.raises(ValueError, match=r"`calibration_steps` should be a positive integer. .*=0"):
        export.export_tflite(model, tmp_path / "m.tflite", calibration_steps=0, **int8)  # was a float model
    pairs = tf.data.Dataset.from_tensor_slices((pixels, np.zeros(4, "int32"))).batch(2)
    with pytest.raises(ValueError, match=r"not tuples or dicts such as \(image, label\) pairs.*ds.map"):
        export.export_tflite(model, tmp_path / "m.tflite", **{**int8, "representative_data": pairs})
    with pytest.raises(ValueError, match=r"`batch_size` should be None or a positive integer. .*=0"):
        export.export_saved_model(model, tmp_path / "m", batch_size=0)
    with pytest.raises(ValueError, match=r"`uint8_input` should be True or False. Received: uint8_input='no'"):
        export.export_saved_model(model, tmp_path / "m", uint8_input="no")  # was taken as True
    with pytest.raises(ValueError, match=r"`integer_io` should be True or False"):
        export.export_tflite(model, tmp_path / "m.tflite", integer_io="yes", **int8)
    with pytest.raises(TypeError, match=r"Export takes a Keras model. Received: model of type str"):
        export.export_saved_model("model", tmp_path / "m")
    with pytest.raises(ValueError, match=r"no defined inputs yet"):
        export.export_saved_model(keras.Sequential([keras.layers.Dense(2)]), tmp_path / "m")
    grey_input = keras.Input((8, 8, 1))
    grey = keras.Model(grey_input, keras.layers.Conv2D(2, 3)(grey_input))
    with pytest.raises(ValueError, match=r"preprocess='imagenet' normalises RGB images; the model takes 1 channel"):
        export.export_saved_model(grey, tmp_path / "m", uint8_input=True)
    assert os.listdir(tmp_path) == []

    folder = tmp_path / "saved"
    export.export_saved_model(model, folder, input_size=(8, 8))
    with pytest.raises(ValueError, match=r"the output .*saved is an existing folder; give a file path"):
        export.export_tflite(model, folder, input_size=(8, 8), overwrite=True)
    assert (folder / "saved_model.pb").is_file()
    with pytest.raises(ValueError, match=r"`latency_runs` should be a positive integer"):
        export.verify_export(model, folder, latency_runs=0)
    with pytest.raises(ValueError, match=r"batch of images of shape \(N, 8, 8, 3\). Received: shape=\(0, 8, 8, 3\)"):
        export.verify_export(model, folder, np.zeros((0, 8, 8, 3), "float32"))


def test_verify_export_names_what_does_not_fit(tmp_path):
    model = tiny_model()
    (tmp_path / "w.tflite").write_text("not a model")
    with pytest.raises(ValueError, match=r"Not a TFLite model: .*Received: path=.*w.tflite"):
        export.verify_export(model, tmp_path / "w.tflite")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"holds no SavedModel \(no saved_model.pb\)"):
        export.verify_export(model, tmp_path / "empty")
    pixels = tmp_path / "pixels"
    export.export_saved_model(model, pixels, input_size=(8, 8), uint8_input=True, preprocess="unit")
    normal = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype("float32")
    with pytest.raises(ValueError, match=r"takes uint8 pixels; `inputs` should be whole numbers in \[0, 255\]"):
        export.verify_export(model, pixels, normal, preprocess="unit")
    assert export.verify_export(model, pixels, np.full((2, 8, 8, 3), 7.0), preprocess="unit").max_abs_diff < 1e-5
    other_input = keras.Input((None, None, 3))
    other = keras.Model(other_input, keras.layers.Dense(7)(keras.layers.GlobalAveragePooling2D()(other_input)))
    with pytest.raises(ValueError, match=r"output has shape \(2, 7\) and the artefact's \(2, 3\): was the artefact"):
        export.verify_export(other, pixels, np.zeros((2, 8, 8, 3), "uint8"), preprocess="unit")


def test_named_normalisations_are_those_of_the_weights_and_the_data():
    # export states and computes the normalisations from its own numbers: they must stay the models' and the data's.
    from keras_dla.models import imagenet

    mean, std = normalisations.NORMALISATIONS["imagenet"]
    np.testing.assert_allclose(mean, 255 * np.asarray(imagenet.MEAN))
    np.testing.assert_allclose(std, 255 * np.asarray(imagenet.STD))
    (mean,), (std,) = normalisations.NORMALISATIONS["fashion_mnist"]
    assert (mean, std) == pytest.approx((255 * fashion_mnist.MEAN, 255 * fashion_mnist.STD))
    pixels = np.array([0.0, 73.0, 255.0], "float32")[None, None, :, None]
    expected = (pixels / 255.0 - fashion_mnist.MEAN) / fashion_mnist.STD
    computed = keras.ops.convert_to_numpy(export.PREPROCESSING["fashion_mnist"](pixels))
    np.testing.assert_allclose(computed, expected, rtol=1e-5, atol=1e-6)


def test_load_images_names_bad_size_and_count(tmp_path):
    for size in (32, (0, 0), (-3, 32)):
        with pytest.raises(ValueError, match=r"`size` should be"):
            load_images("fashion_mnist", size)
    with pytest.raises(ValueError, match=r"`count` should be a positive integer. Received: count=0"):
        load_images("fashion_mnist", (32, 32), count=0)
    assert load_images("fashion_mnist", (np.int64(32), 32), count=np.int64(2)).shape == (
        2,
        32,
        32,
        3,
    )


def test_tflite_needs_a_static_size(tmp_path):
    with pytest.raises(ValueError, match=r"static input size.*Received: input shape \(None, None, None, 3\)"):
        export.export_tflite(tiny_model(), tmp_path / "m.tflite")
    with pytest.raises(ValueError, match=r"Received: input_size=\(0, 8\)"):
        export.export_tflite(tiny_model(), tmp_path / "m.tflite", input_size=(0, 8))
    assert os.listdir(tmp_path) == []


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    model = tiny_model()
    target = tmp_path / "m.tflite"
    target.write_bytes(b"keep me")
    with pytest.raises(ValueError, match=r"overwrite.*Received: path="):
        export.export_tflite(model, target, input_size=(8, 8))
    assert target.read_bytes() == b"keep me"
    saved = tmp_path / "sm"
    saved.mkdir()
    with pytest.raises(ValueError, match=r"overwrite"):
        export.export_saved_model(model, saved)
    assert os.listdir(saved) == []

    export.export_tflite(model, target, input_size=(8, 8), overwrite=True)
    export.export_saved_model(model, saved, overwrite=True)
    assert export.verify_export(model, target, num_random=2, latency_runs=1).max_abs_diff <= TOLERANCE
    report = export.verify_export(model, saved, images(2, 8), latency_runs=1)
    assert report.max_abs_diff <= TOLERANCE
    assert sorted(os.listdir(tmp_path)) == ["m.tflite", "m.tflite.json", "sm", "sm.json"]


class Determinant(keras.layers.Layer):
    """tf.linalg.det has no TFLite builtin kernel: converting it needs Flex (select TF ops)."""

    def call(self, x):
        return x * tf.linalg.det(x[:, :2, :2, 0])[:, None, None, None]


def test_flex_op_is_an_error_and_leaves_nothing(tmp_path):
    target = tmp_path / "new" / "dir" / "m.tflite"
    with pytest.raises(ValueError, match=r"Flex.*Received: a model with the ops MatrixDeterminant"):
        export.export_tflite(tiny_model(Determinant()), target, input_size=(8, 8))
    assert os.listdir(tmp_path) == []  # neither the file, the temporary folder nor the parents made for it


def test_failure_midway_leaves_no_partial_saved_model(tmp_path, monkeypatch):
    def broken_export(self, filepath, **kwargs):
        os.makedirs(filepath)
        with open(os.path.join(filepath, "saved_model.pb"), "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "export", broken_export)
    with pytest.raises(OSError, match="disk full"):
        export.export_saved_model(tiny_model(), tmp_path / "sm")
    assert os.listdir(tmp_path) == []


def test_report_names_the_agreement_its_outputs_have():
    fields = dict(path="m.tflite", format="tflite", size_bytes=2**20, samples=4, max_abs_diff=1e-6, max_rel_diff=1e-7)
    fields.update(latency_ms=1.0, keras_latency_ms=2.0, input_dtype="float32")
    classifier = verify.ExportReport(top1_agreement=0.75, pixel_agreement=None, **fields)
    segmenter = verify.ExportReport(top1_agreement=None, pixel_agreement=0.5, **fields)
    neither = verify.ExportReport(top1_agreement=None, pixel_agreement=None, **fields)
    assert classifier.agreement() == "top-1 agreement 75.00%" and "top-1 agreement 75.00%," in classifier.summary()
    assert segmenter.agreement() == "pixel agreement 50.00%" and "pixel agreement 50.00%," in segmenter.summary()
    assert neither.agreement() == "" and "agreement" not in neither.summary()
    assert neither.summary().startswith("tflite m.tflite: 1.00 MiB, 4 images, max abs diff 1e-06 (relative 1e-07), ")
