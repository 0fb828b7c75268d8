"""The backend contract: every model on the Keras backend this process runs (TensorFlow, JAX or PyTorch).

CI runs this file once per backend (`KERAS_BACKEND=tensorflow|jax|torch`): every classifier and every named
DLA-Up against its PyTorch reference at an odd input size, through every checkpoint format keras_dla reads;
`.keras` and `.weights.h5` files loaded by plain Keras, without keras_dla, on all three backends; `fit`;
`inference_model(...).serve`; and on JAX and PyTorch, that none of it imports TensorFlow. Nothing here imports
TensorFlow itself.
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import torch

import keras_dla
from keras_dla.models.dla import BUILDERS
from keras_dla.models.dla_up import UP_BUILDERS
from tests import contract, reference, torch_dla_up

BACKEND = keras.backend.backend()
BACKENDS = ("tensorflow", "jax", "torch")
RTOL = ATOL = 1e-4
# Odd sizes: the strided convs round up and the max-pool shortcut pads (see blocks.tree). The authors' graph runs
# only at sizes 32k and 32k - 1, so odd means 32k - 1 against it; DLA-Up pads any size to a multiple of 32 inside.
SIZE = (63, 95)
SEGMENTATION_SIZE = (45, 61)
# Each variant's reference weights reach the model through one of the formats keras_dla reads, so every format
# is used on every backend: the authors' layout (dead `project` tensors) or timm's, in safetensors, a zip `.pth`,
# a legacy (pre-zip) `.pth`, a Keras `.weights.h5`, or a tag given to register_weights (downloaded from a local
# file, converted into the cache, then read back from the cache).
FORMATS = ("safetensors", "pth-zip", "pth-legacy", "weights.h5", "registered")


def images(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def write_checkpoint(state, path, fmt):
    """Writes the PyTorch state dict `{key: numpy array}` to `path` in `fmt`; returns the path."""
    if fmt == "safetensors":
        return reference.save_safetensors(state, path)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    torch.save(tensors, path, _use_new_zipfile_serialization=fmt != "pth-legacy")
    return path


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def load_into_builder(builder, state, fmt, tmp_path, monkeypatch, **kwargs):
    """`builder(weights=...)` with `state` delivered in `fmt` (see FORMATS)."""
    if fmt == "weights.h5":
        donor = builder(weights=write_checkpoint(state, tmp_path / "donor.safetensors", "safetensors"), **kwargs)
        donor.save_weights(tmp_path / "model.weights.h5")
        return builder(weights=str(tmp_path / "model.weights.h5"), **kwargs)
    if fmt == "registered":
        monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
        path = write_checkpoint(state, tmp_path / "mine.pth", "pth-zip")
        keras_dla.register_weights(builder, "mine", str(path), sha256(path))
        builder(weights="mine", **kwargs)  # fetched, verified and converted into the cache
        converted = [f for f in os.listdir(tmp_path / "keras_home" / "models") if f.endswith(".keras_dla.h5")]
        assert len(converted) == 1
        os.remove(path)  # the second load reads the converted cache alone
        return builder(weights="mine", **kwargs)
    suffix = ".safetensors" if fmt == "safetensors" else ".pth"
    return builder(weights=str(write_checkpoint(state, tmp_path / f"model{suffix}", fmt)), **kwargs)


# On TensorFlow tests/test_dla.py and tests/test_dla_up.py compare every classifier and DLA-Up with the same
# references (both checkpoint layouts, several sizes) and tests/test_weights.py reads every format and the cache.
NUMBERS_ON_TENSORFLOW = "test_dla.py, test_dla_up.py and test_weights.py check these numbers on TensorFlow"


@pytest.mark.skipif(BACKEND == "tensorflow", reason=NUMBERS_ON_TENSORFLOW)
@pytest.mark.parametrize("variant", list(BUILDERS))
def test_classifier_equals_timm(variant, tmp_path, monkeypatch):
    timm_model = reference.make_timm_model(variant)
    fmt = FORMATS[list(BUILDERS).index(variant) % len(FORMATS)]
    layout = reference.authors_state_dict if list(BUILDERS).index(variant) % 2 else _timm_layout
    state = layout(timm_model, variant)
    model = load_into_builder(
        BUILDERS[variant], state, fmt, tmp_path, monkeypatch, input_shape=(None, None, 3), classifier_activation=None
    )
    x = images((2, *SIZE, 3))
    expected, _ = reference.timm_outputs(timm_model, x)
    np.testing.assert_allclose(numpy(model(x, training=False)), expected, rtol=RTOL, atol=ATOL)


def _timm_layout(model, variant):
    return reference.timm_state_dict(model)


@pytest.mark.skipif(BACKEND == "tensorflow", reason=NUMBERS_ON_TENSORFLOW)
@pytest.mark.parametrize("variant", list(UP_BUILDERS))
def test_dla_up_equals_the_authors_dlaseg(variant, tmp_path):
    torch_model = torch_dla_up.make_dlaseg(variant, classes=3, down_ratio=4 if variant == "dla34" else 2)
    state = torch_dla_up.authors_state_dict(torch_model, variant)
    path = reference.save_safetensors(state, tmp_path / "dlaseg.safetensors")
    ratio = 4 if variant == "dla34" else 2
    model = UP_BUILDERS[variant](classes=3, down_ratio=ratio, weights=str(path), activation=None)
    height, width = SEGMENTATION_SIZE
    x = images((1, height, width, 3), seed=1)
    padded = np.zeros((1, 64, 64, 3), "float32")  # the authors' model on the zero-padded image, cropped back
    padded[:, :height, :width] = x
    expected = torch_dla_up.logits(torch_model, padded)[:, :height, :width]
    np.testing.assert_allclose(numpy(model(x, training=False)), expected, rtol=RTOL, atol=ATOL)


# Tiny architectures of the two kinds of graph keras_dla builds: a classifier with grouped convs and residual roots,
# and a DLA-Up (the backbone a nested model).
TINY_CLASSIFIER = contract.TINY_ARCHITECTURES["bottleneck"]
TINY_BACKBONE = contract.TINY_ARCHITECTURES["basic"]


# The keras_dla builder and its arguments (JSON, for the processes below) of each small model.
SMALL_MODELS = {
    "classifier": ("DLA", {**TINY_CLASSIFIER, "weights": None, "classes": 5, "input_shape": [None, None, 3]}),
    "segmenter": ("DLAUp", {"backbone": TINY_BACKBONE, "classes": 3, "down_ratio": 4, "weights": None}),
}


def _small_model(kind):
    """The classifier or the DLA-Up (`kind`, a key of SMALL_MODELS) of tiny architecture, with random weights."""
    builder, kwargs = SMALL_MODELS[kind]
    return getattr(keras_dla, builder)(**kwargs)


# Saves the models of argv[2] (SMALL_MODELS as JSON) built by keras_dla on this process's backend into
# folder/<backend>/: `.keras` files, and a second model's `.weights.h5`, with the outputs each gives on x.npy.
SAVE_SMALL_MODELS = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import keras
    import keras_dla
    folder = os.path.join(sys.argv[1], keras.backend.backend())
    os.makedirs(folder)
    x = np.load(os.path.join(sys.argv[1], "x.npy"))
    expected, configs = {}, []
    for name, (builder, kwargs) in json.loads(sys.argv[2]).items():
        model, other = getattr(keras_dla, builder)(**kwargs), getattr(keras_dla, builder)(**kwargs)
        configs.append(json.dumps(model.get_config()))
        model.save(os.path.join(folder, f"{name}.keras"))
        other.save_weights(os.path.join(folder, f"{name}_other.weights.h5"))
        expected[name] = keras.ops.convert_to_numpy(model(x, training=False))
        expected[name + "_other"] = keras.ops.convert_to_numpy(other(x, training=False))
    np.savez(os.path.join(folder, "expected.npz"), **expected)
    print(json.dumps({"keras_dla_in_config": any("keras_dla" in c for c in configs)}))
    """
)

# Loads every backend's files of SAVE_SMALL_MODELS with plain Keras (safe_mode left on), without keras_dla.
LOAD_WITH_PLAIN_KERAS = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import keras
    root = sys.argv[1]
    x = np.load(os.path.join(root, "x.npy"))
    for saved_on in sys.argv[2:]:
        folder = os.path.join(root, saved_on)
        out = {}
        for name in ("classifier", "segmenter"):
            model = keras.models.load_model(os.path.join(folder, f"{name}.keras"))
            out[name] = keras.ops.convert_to_numpy(model(x, training=False))
            model.load_weights(os.path.join(folder, f"{name}_other.weights.h5"))
            out[name + "_other"] = keras.ops.convert_to_numpy(model(x, training=False))
        np.savez(os.path.join(folder, f"loaded_on_{keras.backend.backend()}.npz"), **out)
    print(json.dumps({"keras_dla": "keras_dla" in sys.modules, "tensorflow": "tensorflow" in sys.modules}))
    """
)


def _run_elsewhere(script, backend, *args):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=600, cwd="/"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="the TensorFlow pass saves and loads these files on every backend, a process each"
)
def test_files_load_with_plain_keras_on_every_backend(tmp_path):
    """`.keras` and `.weights.h5` files saved on each backend load in processes without keras_dla, on all backends,
    and give the outputs they gave where they were saved."""
    np.save(tmp_path / "x.npy", images((1, *SIZE, 3), seed=2))
    for backend in BACKENDS:
        saved = _run_elsewhere(SAVE_SMALL_MODELS, backend, str(tmp_path), json.dumps(SMALL_MODELS))
        assert not saved["keras_dla_in_config"]
    for backend in BACKENDS:
        modules = _run_elsewhere(LOAD_WITH_PLAIN_KERAS, backend, str(tmp_path), *BACKENDS)
        assert not modules["keras_dla"]
        if backend != "tensorflow":
            assert not modules["tensorflow"], f"loading on {backend} imported TensorFlow"
    for saved_on in BACKENDS:
        expected = np.load(tmp_path / saved_on / "expected.npz")
        for name in SMALL_MODELS:
            assert not np.allclose(expected[name], expected[name + "_other"])
        for loaded_on in BACKENDS:
            got = np.load(tmp_path / saved_on / f"loaded_on_{loaded_on}.npz")
            for key in expected.files:
                np.testing.assert_allclose(
                    got[key],
                    expected[key],
                    rtol=RTOL,
                    atol=ATOL,
                    err_msg=f"{key} saved on {saved_on}, loaded on {loaded_on}",
                )


def test_fit_trains_and_round_trips(tmp_path):
    model = keras_dla.DLA(**TINY_CLASSIFIER, weights=None, classes=3, input_shape=(32, 32, 3))
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
    before = [numpy(w).copy() for w in model.trainable_weights]
    x, y = images((8, 32, 32, 3), seed=3), np.arange(8) % 3
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and len(losses) == 2
    assert any(not np.allclose(b, numpy(w)) for b, w in zip(before, model.trainable_weights, strict=True))
    model.save_weights(tmp_path / "trained.weights.h5")
    again = keras_dla.DLA(
        **TINY_CLASSIFIER, weights=str(tmp_path / "trained.weights.h5"), classes=3, input_shape=(32, 32, 3)
    )
    np.testing.assert_allclose(numpy(again(x, training=False)), numpy(model(x, training=False)), rtol=RTOL, atol=1e-6)


def test_segmentation_loss_equals_torch_nll_ignoring_255():
    """The DLA-Up training loss on this backend: PyTorch's NLLLoss(ignore_index=255) of the log-softmax."""
    from keras_dla.training.segmentation import SegmentationCrossEntropy

    rng = np.random.default_rng(5)
    logits = (3 * rng.standard_normal((2, 9, 11, 4))).astype("float32")
    labels = rng.integers(0, 4, (2, 9, 11))
    labels[0, :3] = 255
    log_probs = torch.log_softmax(torch.from_numpy(logits).permute(0, 3, 1, 2), dim=1)
    expected = float(torch.nn.NLLLoss(ignore_index=255)(log_probs, torch.from_numpy(labels)))
    np.testing.assert_allclose(float(SegmentationCrossEntropy(from_logits=True)(labels, logits)), expected, rtol=1e-5)
    probabilities = numpy(keras.ops.softmax(logits))
    np.testing.assert_allclose(float(SegmentationCrossEntropy()(labels[..., None], probabilities)), expected, rtol=1e-5)
    assert float(SegmentationCrossEntropy(from_logits=True)(np.full_like(labels, 255), logits)) == 0.0


@pytest.mark.parametrize("kind", ["classifier", "segmenter"])
def test_inference_model_serve_equals_the_model(kind):
    model = _small_model(kind)
    fast = keras_dla.inference_model(model)
    for shape in ((1, *SIZE, 3), (3, 64, 48, 3)):
        x = images(shape, seed=4)
        expected = numpy(model(x, training=False))
        np.testing.assert_allclose(numpy(fast.serve(x)), expected, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(fast.predict(x, verbose=0), expected, rtol=RTOL, atol=ATOL)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in fast.layers)
    with pytest.raises(ValueError, match="Received: shape"):
        fast.serve(images((1, *SIZE, 4)))


@pytest.mark.parametrize("kind", ["classifier", "segmenter"])
def test_include_preprocessing_takes_raw_pixels_and_the_same_weights(kind, tmp_path):
    """`include_preprocessing=True` computes model(preprocess_input(x)) from [0, 255] pixels; weights files load
    both ways, through keras_dla and through plain `load_weights`."""
    build = {
        "classifier": lambda **k: keras_dla.DLA(
            **TINY_CLASSIFIER, **{"weights": None, "classes": 5, "input_shape": (None, None, 3), **k}
        ),
        "segmenter": lambda **k: keras_dla.DLAUp(
            TINY_BACKBONE, **{"classes": 3, "down_ratio": 4, "weights": None, **k}
        ),
    }[kind]
    plain = build()
    plain.save_weights(tmp_path / "plain.weights.h5")
    raw = build(include_preprocessing=True, weights=str(tmp_path / "plain.weights.h5"))
    assert any(isinstance(layer, keras.layers.Normalization) for layer in raw.layers)
    pixels = np.random.default_rng(7).uniform(0, 255, (2, *SIZE, 3)).astype("float32")
    expected = numpy(plain(keras_dla.preprocess_input(pixels), training=False))
    np.testing.assert_allclose(numpy(raw(pixels, training=False)), expected, rtol=RTOL, atol=ATOL)
    raw.save_weights(tmp_path / "raw.weights.h5")
    again = build()
    again.load_weights(tmp_path / "raw.weights.h5")
    np.testing.assert_allclose(numpy(again(keras_dla.preprocess_input(pixels), training=False)), expected, atol=1e-6)
    with pytest.raises(ValueError, match="needs 3 input channels. Received: input_shape=\\(None, None, 1\\)"):
        build(include_preprocessing=True, input_shape=(None, None, 1))


@pytest.mark.parametrize("kind", ["classifier", "segmenter"])
def test_bfloat16_inference_model_takes_and_gives_float32(kind):
    """`dtype="bfloat16"` computes in bfloat16 inside (its rounding shows) with float32 in and out."""
    # Seeded weights: the rounding's largest effect on a random DLA-Up's probabilities varies with the weights, and
    # some draws reach the bound below.
    keras.utils.set_random_seed(0)
    model = _small_model(kind)
    fast = keras_dla.inference_model(model, dtype="bfloat16")
    x = images((2, *SIZE, 3), seed=5)
    expected = numpy(model(x, training=False))
    for got in (numpy(fast.serve(x)), fast.predict(x, verbose=0)):
        assert got.dtype == np.float32
        assert 1e-6 < np.abs(got - expected).max() < 0.05, np.abs(got - expected).max()
    nested = [layer for layer in fast.layers if isinstance(layer, keras.Model)]
    layers = [layer for m in [fast, *nested] for layer in m.layers if layer.weights and layer not in nested]
    assert {layer.dtype_policy.name for layer in layers} == {"mixed_bfloat16"}
    assert all(v.dtype == "float32" for v in fast.weights)  # weights stay float32; layers cast them
    with pytest.raises(ValueError, match="Received: dtype='float16'"):
        keras_dla.inference_model(model, dtype="float16")


NO_TENSORFLOW = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    import keras_dla
    folder = sys.argv[1]
    x = np.zeros((2, 32, 32, 3), "float32")
    model = keras_dla.DLA46XC(weights=f"{folder}/w.safetensors", input_shape=(32, 32, 3))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x, np.array([0, 1]), epochs=1, verbose=0)
    model.predict(x, verbose=0)
    keras_dla.DLAUp(json.loads(sys.argv[2]), classes=3, weights=None).predict(x, verbose=0)
    model.save_weights(f"{folder}/w.weights.h5")
    keras_dla.DLA46XC(weights=f"{folder}/w.weights.h5", input_shape=(32, 32, 3))
    keras.models.load_model(f"{folder}/m.keras")
    print(json.dumps({"tensorflow": "tensorflow" in sys.modules}))
    """
)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="the TensorFlow backend imports TensorFlow by definition")
def test_jax_and_torch_never_import_tensorflow(tmp_path):
    """Import, build, load every kind of file, fit and predict, in a fresh process: TensorFlow is never imported."""
    timm_model = reference.make_timm_model("dla46x_c")
    reference.save_safetensors(reference.timm_state_dict(timm_model), tmp_path / "w.safetensors")
    _small_model("classifier").save(tmp_path / "m.keras")
    assert not _run_elsewhere(NO_TENSORFLOW, BACKEND, str(tmp_path), json.dumps(TINY_BACKBONE))["tensorflow"]


INFERENCE_MODEL = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras_dla
    from keras.src.utils import module_utils
    x = np.random.default_rng(0).uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    errors = []
    for builder, kwargs in json.loads(sys.argv[1]).values():
        model = getattr(keras_dla, builder)(**kwargs)
        fast = keras_dla.inference_model(model)
        served = np.asarray(fast.serve(x).detach() if hasattr(fast.serve(x), "detach") else fast.serve(x))
        errors.append(float(np.abs(served - np.asarray(model.predict(x, verbose=0))).max()))
    print(json.dumps({"tensorflow": "tensorflow" in sys.modules, "errors": errors,
                      "restored": module_utils.tensorflow._available is None}))
    """
)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="the TensorFlow backend imports TensorFlow by definition")
def test_inference_model_imports_no_tensorflow():
    """A classifier and a DLA-Up (nested backbone) folded and served without TensorFlow, equal to the model."""
    done = _run_elsewhere(INFERENCE_MODEL, BACKEND, json.dumps(SMALL_MODELS))
    assert not done["tensorflow"]
    assert done["restored"]  # Keras' lazy TensorFlow module asks again next time
    assert max(done["errors"]) < 1e-4


def test_layer_names_map_to_every_checkpoint_key():
    """Every weight of a DLA-Up (backbone included) has a PyTorch key, and the names map back and forth exactly."""
    from keras_dla.weights import convert, names

    model = keras_dla.DLA34Up(classes=3, weights=None)
    for _, layer in convert.named_layers(model):
        assert "." not in layer.name
        assert names.keras_name(names.module_path(layer.name)) == layer.name
    torch_model = torch_dla_up.make_dlaseg("dla34", classes=3)
    # The backbone's ImageNet classifier `base.fc` is built upstream but never run (dla_up.BASE_FC_NOTE).
    keys = [
        k for k in torch_model.state_dict() if not k.endswith("num_batches_tracked") and not k.startswith("base.fc.")
    ]
    expected = {k.rsplit(".", 1)[0] for k in keys}
    got = {path for path, layer in convert.named_layers(model) if layer.weights}
    assert got == expected


def test_weights_files_of_keras_dla_0_1_still_load(tmp_path):
    """A `.weights.h5` of keras_dla 0.1 (its own batch-norm and grouped-conv classes) loads into today's model.

    Keras names the stored weights after each layer's class: giving a model's layers 0.1's class names makes Keras
    write the file exactly as 0.1 did (checked once against 0.1's own code, DLA-Up's upsampling too).
    """

    class FusedBatchNormalization(keras.layers.BatchNormalization):
        pass

    class ChunkedGroupConv2D(keras.layers.Conv2D):
        pass

    old = keras_dla.DLA46XC(weights=None, classes=7, input_shape=(None, None, 3))
    for i, weight in enumerate(old.weights):
        weight.assign(images(weight.shape, seed=i) * 0.1 + (1.0 if "variance" in weight.path else 0.0))
    x = images((1, *SIZE, 3), seed=5)
    expected = numpy(old(x, training=False))
    for layer in old.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.__class__ = FusedBatchNormalization
        elif isinstance(layer, keras.layers.Conv2D) and layer.groups > 1:
            layer.__class__ = ChunkedGroupConv2D
    old.save_weights(tmp_path / "old.weights.h5")
    model = keras_dla.DLA46XC(weights=str(tmp_path / "old.weights.h5"), classes=7, input_shape=(None, None, 3))
    np.testing.assert_allclose(numpy(model(x, training=False)), expected, rtol=RTOL, atol=1e-6)
    with pytest.raises(ValueError, match="a weights file of keras_dla 0.1"):
        keras_dla.DLA46XC(weights=str(tmp_path / "old.weights.h5"), classes=8, input_shape=(None, None, 3))


EXPORT_ON_THIS_BACKEND = textwrap.dedent(
    """
    import json, sys
    import keras_dla, keras_dla.export
    model = keras_dla.DLA(**json.loads(sys.argv[2]), weights=None, classes=3, input_shape=(32, 32, 3))
    try:
        keras_dla.export.export_tflite(model, sys.argv[1] + "/m.tflite")
        said = None
    except ValueError as e:
        said = str(e)
    print(json.dumps({"said": said, "tensorflow": "tensorflow" in sys.modules}))
    """
)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="exports are TensorFlow's: this is about the other backends")
def test_export_says_what_works_and_the_cli_exports_anyway(tmp_path):
    said = _run_elsewhere(EXPORT_ON_THIS_BACKEND, BACKEND, str(tmp_path), json.dumps(TINY_BACKBONE))["said"]
    assert said and "runs on the TensorFlow backend" in said and f"Received: backend {BACKEND!r}" in said
    assert "\n" not in said
    command = [sys.executable, "-m", "keras_dla.cli", "export", "--model", "dla46_c", "--weights", "none"]
    command += ["--format", "saved_model", "--input-size", "32", "32", "--classes", "3", "--samples", "1"]
    command += ["--output", str(tmp_path / "saved")]
    env = {**os.environ, "KERAS_BACKEND": BACKEND, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"runs on the TensorFlow backend (KERAS_BACKEND is {BACKEND!r})" in done.stderr
    assert (tmp_path / "saved" / "saved_model.pb").is_file()
