"""Export any Keras model to a TensorFlow SavedModel or a TFLite (LiteRT) file.

Both formats go through Keras' own export path (`model.export`, which writes a SavedModel with an
`ExportArchive` and, for `format="litert"`, converts that SavedModel with `TFLiteConverter.from_saved_model`);
`TFLiteConverter.from_keras_model` mishandles Keras 3 models (keras#19108) and is not used.

- `export_saved_model`: a SavedModel with a `serving_default` signature, optionally taking uint8 RGB images
  with the preprocessing built in.
- `export_tflite`: a `.tflite` file with a static input shape, float32 or quantized (`"float16"`, `"dynamic"`,
  `"int8"`), TFLite builtin ops only: an op that would need the Flex (select TF ops) runtime is an error.

Writes are atomic: the artefact is built next to its target under a temporary name and renamed into place
only once complete, so a failure leaves nothing behind, and an existing target is refused unless
`overwrite=True`.
"""

import contextlib
import os
import re
import shutil
import sys
import tempfile
import time

import keras
import numpy as np

from keras_dla import checks, files
from keras_dla.export import sidecar
from keras_dla.export.preprocessing import resolve_preprocess
from keras_dla.models import fast_paths
from keras_dla.training.datasets import IMAGE_EXTENSIONS

QUANTIZATIONS = (None, "float16", "dynamic", "int8")  # of TFLite files


class _Preprocess(keras.layers.Layer):
    """Casts uint8 pixels to float32 and applies `fn`: the preprocessing a uint8-input artefact carries."""

    def __init__(self, fn, **kwargs):
        super().__init__(**kwargs)
        self.fn = fn

    def call(self, x):
        return self.fn(keras.ops.cast(x, "float32"))


def _single_input_shape(model):
    if not isinstance(model, keras.Model):
        raise TypeError(f"Export takes a Keras model. Received: model of type {type(model).__name__}")
    try:
        inputs = model.inputs
    except AttributeError:
        inputs = None
    if not inputs:
        raise ValueError(
            "The model has no defined inputs yet; build it on an `keras.Input` (or call it once) before exporting. "
            f"Received: model {model.name!r}"
        )
    if len(inputs) != 1:
        raise ValueError(
            f"Export supports models with exactly one image input. Received: a model with {len(inputs)} inputs"
        )
    return tuple(inputs[0].shape)


def _require_tensorflow(format_name):
    """SavedModel and TFLite are TensorFlow's formats: on another backend, say which way works."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ValueError(
            f"{format_name} export runs on the TensorFlow backend. Save the weights (`model.save_weights("
            f"'model.weights.h5')`) and export them from a process with KERAS_BACKEND=tensorflow "
            f"(`keras-dla export` does this whatever KERAS_BACKEND is set). Received: backend {backend!r}"
        )


def _static_shape(model, input_size, batch_size):
    """The full input shape `(batch, height, width, channels)` of the exported signature."""
    batch_size = checks.positive_int("batch_size", batch_size, optional=True)
    shape = _single_input_shape(model)
    if len(shape) != 4:
        raise ValueError(f"Export expects a model taking 4D images (batch, H, W, C). Received: input shape {shape}")
    height, width, channels = shape[1:]
    if input_size is not None:
        if (
            not isinstance(input_size, (tuple, list))
            or len(input_size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in input_size)
        ):
            raise ValueError(
                "`input_size` should be a pair of positive integers (height, width). "
                f"Received: input_size={input_size!r}"
            )
        for built, wanted in zip((height, width), input_size, strict=True):
            if built is not None and built != wanted:
                raise ValueError(
                    f"The model was built for a static input of {shape[1:3]}; build it with `input_shape=(None, None, "
                    f"{channels})` or the wanted size to export another. Received: input_size={tuple(input_size)}"
                )
        height, width = input_size
    if channels is None:
        raise ValueError(f"Export needs a model with a known channel count. Received: input shape {shape}")
    return (batch_size, height, width, channels)


def _export_model(model, shape, uint8_input, preprocess):
    """The model to hand to `model.export`: `model` itself, or `model` behind a uint8 preprocessing input."""
    if not uint8_input:
        return model, model.inputs[0].dtype
    if preprocess == "imagenet" and shape[-1] != 3:
        raise ValueError(
            f"preprocess='imagenet' normalises RGB images; the model takes {shape[-1]} channel(s). Pass "
            f"preprocess='unit', 'fashion_mnist', 'none' or a callable. Received: preprocess={preprocess!r}"
        )
    inputs = keras.Input(batch_shape=shape, dtype="uint8", name="image")
    outputs = model(_Preprocess(resolve_preprocess(preprocess), name="preprocess")(inputs))
    return keras.Model(inputs, outputs, name=f"{model.name}_uint8"), "uint8"


def _input_signature(shape, dtype):
    import tensorflow as tf

    return [tf.TensorSpec(shape, tf.as_dtype(dtype), name="image")]


def _check_target(path, overwrite, kind):
    """The absolute output path, once `path` may be written as a `kind` ("file" or "folder")."""
    path = os.fspath(path)
    if not path:
        raise ValueError(f"An output path is needed. Received: path={path!r}")
    if os.path.lexists(path) and not overwrite:
        raise ValueError(
            f"The output path exists; pass `overwrite=True` (`--overwrite`) to replace it. Received: path={path!r}"
        )
    checks.check_output(path, kind, what="the output")  # also: a file for a folder, or the reverse
    return os.path.abspath(path)


@contextlib.contextmanager
def _atomic_target(path, overwrite, is_dir):
    """Yields a temporary path next to `path`; renames it to `path` on success, removes it on any failure."""
    path = _check_target(path, overwrite, "folder" if is_dir else "file")
    parent = os.path.dirname(path)
    created = []
    probe = parent
    while probe and not os.path.isdir(probe):
        created.append(probe)
        probe = os.path.dirname(probe)
    os.makedirs(parent, exist_ok=True)
    # The work folder is named after this process (`files.remove_stale`): what a killed export left is removed here.
    prefix = f".{os.path.basename(path)}."
    files.remove_stale(parent, prefix, suffix=".tmp")
    files.remove_stale(parent)  # and the temporary files of killed writers there (a sidecar's)
    workdir = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.", suffix=".tmp", dir=parent)
    # `.tflite` suffix: Keras' LiteRT exporter insists on it.
    tmp = os.path.join(workdir, "saved_model" if is_dir else "model.tflite")
    previous_tempdir = tempfile.tempdir
    try:
        # Keras' LiteRT exporter writes its intermediate SavedModel in the temporary folder: in the work folder,
        # it goes with it, also after a kill.
        tempfile.tempdir = workdir
        yield tmp
        if not os.path.exists(tmp):
            raise RuntimeError(f"The exporter wrote nothing at {tmp}")
        old = None
        if os.path.lexists(path):  # overwrite=True: move the old artefact aside first, drop it after.
            old = os.path.join(workdir, "previous")
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
            raise
    finally:
        tempfile.tempdir = previous_tempdir
        shutil.rmtree(workdir, ignore_errors=True)
        for leftover in created:  # empty parents this call created, when the export failed
            if os.path.isdir(leftover) and not os.listdir(leftover):
                os.rmdir(leftover)


def export_saved_model(
    model,
    path,
    *,
    input_size=None,
    batch_size=None,
    uint8_input=False,
    preprocess="imagenet",
    labels=None,
    overwrite=False,
):
    """Exports `model` as a TensorFlow SavedModel with a `serving_default` signature.

    Args:
        model: a Keras model with one image input (batch, height, width, channels).
        path: the SavedModel directory to create.
        input_size: optional `(height, width)` to fix in the signature; by default the model's own input shape
            (height and width may stay dynamic).
        batch_size: optional static batch size of the signature; `None` keeps it dynamic.
        uint8_input: if True, the signature takes uint8 RGB pixels in [0, 255] and applies `preprocess`
            before the model, so that callers send raw images.
        preprocess: with `uint8_input`, a name in `PREPROCESSING` (`"imagenet"`: the DLA normalisation,
            `"unit"`: x / 255, `"none"`) or a callable on float32 tensors.
        labels: optional file of class names (one a line) for the JSON sidecar (`keras_dla.export.sidecar`) written
            beside the SavedModel as `<path>.json`.
        overwrite: replace an existing `path`; otherwise an existing path is an error.

    Returns:
        The absolute path of the SavedModel.

    Example:
    ```python
    model = keras_dla.DLA34(weights=None, classes=10, classifier_activation=None)
    keras_dla.export.export_saved_model(model, "dla34_savedmodel", uint8_input=True)
    serve = tf.saved_model.load("dla34_savedmodel").signatures["serving_default"]
    ```
    """
    _require_tensorflow("SavedModel")
    uint8_input, overwrite = checks.flag("uint8_input", uint8_input), checks.flag("overwrite", overwrite)
    shape = _static_shape(model, input_size, batch_size)
    target = _check_target(path, overwrite, "folder")
    export_model, dtype = _export_model(model, shape, uint8_input, preprocess)
    with _atomic_target(target, overwrite, is_dir=True) as tmp:
        export_model.export(tmp, format="tf_saved_model", input_signature=_input_signature(shape, dtype), verbose=False)
    sidecar.write_tf_sidecar(model, target, "saved_model", shape, dtype, uint8_input, preprocess, labels)
    return target


def _representative_dataset(data, shape, dtype, steps, verbose=False):
    """A converter `representative_dataset`: one-image batches of `data`, in the exported input's dtype.

    With `verbose`, the images are counted as the converter calibrates on them (about half a second each for
    DLA-34 at 224x224 on a 2-core CPU): a progress bar on a terminal, a line every 10 s in a log.
    """
    if data is None:
        raise ValueError(
            "int8 quantization calibrates on representative images; pass `representative_data` "
            "(`--representative`). Received: representative_data=None"
        )
    if isinstance(data, np.ndarray):
        if data.ndim == len(shape) - 1:
            data = data[None]
        if data.ndim != len(shape) or tuple(data.shape[1:]) != tuple(shape[1:]):
            raise ValueError(
                f"Representative images should have shape (N, {', '.join(map(str, shape[1:]))}). "
                f"Received: shape={data.shape}"
            )
        if len(data) == 0:
            raise ValueError("Representative data should hold at least one image. Received: 0 images")
        checks.check_finite("representative_data", data[:steps])
        samples = list(data[:steps])
    else:
        samples = []
        for item in data:
            if isinstance(item, (tuple, list, dict)):
                raise ValueError(
                    "Representative data should yield images or batches of images, not tuples or dicts such as "
                    "(image, label) pairs; keep the images, e.g. `ds.map(lambda x, y: x)`. "
                    f"Received: an item of type {type(item).__name__}"
                )
            item = np.asarray(keras.ops.convert_to_numpy(item))
            samples.extend(item if item.ndim == len(shape) else [item])
            if len(samples) >= steps:
                break
        samples = samples[:steps]
        if not samples:
            raise ValueError("Representative data should hold at least one image. Received: an empty iterable")
        for s in samples:
            if tuple(s.shape) != tuple(shape[1:]):
                raise ValueError(
                    f"Representative images should have shape {tuple(shape[1:])}. Received: shape={s.shape}"
                )
        checks.check_finite("representative_data", np.stack(samples))

    def generate():
        if verbose:
            print(f"Calibrating int8 on {len(samples)} representative image(s)", flush=True)
        report = _progress(len(samples), "images calibrated") if verbose else (lambda done: None)
        for done, s in enumerate(samples, 1):
            yield [np.asarray(s, dtype=dtype)[None]]
            report(done)

    return generate


def _progress(total, what, log_every_s=10.0):
    """`report(done)`: Keras' progress bar on a terminal; in a log, a plain line every `log_every_s` and at the end."""
    if sys.stdout.isatty():
        bar = keras.utils.Progbar(total, unit_name="image")
        return bar.update
    start = last = time.perf_counter()

    def report(done):
        nonlocal last
        now = time.perf_counter()
        if done == total or now - last >= log_every_s:
            print(f"  {done}/{total} {what} ({now - start:.0f} s)", flush=True)
            last = now

    return report


def _fit(images, size):
    """Fits grey images to `size` as the classification pipeline does (`keras_dla.training.augment.fit_small`)."""
    from keras_dla.training.augment import fit_small

    return np.clip(np.round(np.asarray(fit_small(images, size))), 0, 255).astype(np.uint8)


def load_images(source, size, channels=3, *, count=256):
    """Real images for calibration and parity checks: uint8 pixels `(N, height, width, channels)`.

    Args:
        source: `"fashion_mnist"` (the test split, read by `keras_dla.training.fashion_mnist.load_data`; grey images are
            fitted to `size` as training does, then repeated to `channels`), or a folder of image files (read in
            sorted order, walked recursively, resized to `size`).
        size: `(height, width)`.
        channels: 3 (RGB) or 1 (grey).
        count: at most this many images.
    """
    if channels not in (1, 3):
        raise ValueError(f"Images are loaded as grey (1) or RGB (3) channels. Received: channels={channels!r}")
    if not (isinstance(size, (tuple, list)) and len(size) == 2):
        raise ValueError(f"`size` should be a pair of positive integers (height, width). Received: size={size!r}")
    size = tuple(checks.positive_int("size", s) for s in size)
    count = checks.positive_int("count", count)
    source = os.fspath(source)
    if source == "fashion_mnist":
        from keras_dla.training import fashion_mnist

        _, (images, _) = fashion_mnist.load_data()
        images = _fit(images[:count, :, :, None].astype(np.float32), size)
        return np.repeat(images, channels, axis=-1) if channels == 3 else images
    if not os.path.isdir(source):
        raise ValueError(f"Expected 'fashion_mnist' or a folder of images. Received: {source!r}")
    files = sorted(
        os.path.join(folder, name)
        for folder, _, names in os.walk(source)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )[:count]
    if not files:
        raise ValueError(f"The folder holds no {'/'.join(IMAGE_EXTENSIONS)} images. Received: {source!r}")
    mode = "rgb" if channels == 3 else "grayscale"
    images = []
    for f in files:
        try:
            image = keras.utils.load_img(f, color_mode=mode, target_size=size)
        except Exception as e:  # PIL raises several kinds for a file it cannot read
            raise ValueError(f"Cannot read the image {f}: {type(e).__name__}. Received: {source!r}") from e
        images.append(keras.utils.img_to_array(image))
    return np.clip(np.round(np.stack(images)), 0, 255).astype(np.uint8)


LOW_PRECISION = ("bfloat16", "float16")


def _low_precision_layer(model):
    """`(layer, dtype)` of the first layer (nested models entered) computing in or holding bfloat16 / float16."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.Model):  # a nested model's own layers are visited one by one
            continue
        policy = getattr(layer, "dtype_policy", None)
        dtypes = [getattr(policy, "compute_dtype", None), getattr(policy, "variable_dtype", None)]
        dtypes += [keras.backend.standardize_dtype(v.dtype) for v in layer.weights]
        found = next((d for d in dtypes if d in LOW_PRECISION), None)
        if found is not None:
            return layer, found
    return None, None


def _check_float32(model):
    """Refuses a bfloat16 / float16 model before converting: TFLite's builtin ops have no convolutions or matrix
    products in those types, so the converter would stop on a list of Flex ops that does not say why."""
    layer, dtype = _low_precision_layer(model)
    if layer is not None:
        policy = getattr(layer.dtype_policy, "name", layer.dtype_policy)
        raise ValueError(
            f"TFLite export takes a float32 model and {model.name} computes in {dtype} (layer {layer.name!r}, dtype "
            f"policy {policy!r}), and TFLite's builtin ops have no {dtype} convolutions: build the model under the "
            "'float32' policy (`keras.mixed_precision.set_global_policy('float32')`), load the weights into it "
            "(`model.save_weights` then `load_weights`; `keras-dla export --weights` does this from a weights file) "
            f"and export that, with `quantization='float16'` for a smaller file. Received: a {dtype} model"
        )


def _flex_ops(message):
    found = re.search(r"TF Select ops: ([^\n]+)", message)
    return found.group(1).strip() if found else None


def export_tflite(
    model,
    path,
    *,
    input_size=None,
    quantization=None,
    representative_data=None,
    calibration_steps=200,
    integer_io=False,
    uint8_input=False,
    preprocess="imagenet",
    labels=None,
    overwrite=False,
    verbose=True,
):
    """Exports `model` as a TFLite (LiteRT) flatbuffer with a static input and TFLite builtin ops only.

    Args:
        model: a Keras model with one image input (batch, height, width, channels).
        path: the `.tflite` file to create.
        input_size: `(height, width)` of the static input; needed when the model's own input size is dynamic.
            The batch size is 1.
        quantization: `None` (float32), `"float16"` (float16 weights), `"dynamic"` (int8 weights, float
            activations) or `"int8"` (int8 weights and activations, calibrated on `representative_data`).
        representative_data: for `"int8"`: an array `(N, H, W, C)` or an iterable of images or batches, in
            the form the exported model takes (float as the Keras model takes them, or uint8 pixels with
            `uint8_input`). Real images calibrate best.
        calibration_steps: at most this many representative images are used.
        integer_io: with `"int8"`, make the input (when float) and the output int8 too, for integer-only
            accelerators; the scales and zero points are in the interpreter's tensor details.
        uint8_input: if True, the model takes uint8 RGB pixels and applies `preprocess` first.
        preprocess: see `export_saved_model`.
        labels: see `export_saved_model` (the sidecar is `<path>.json`).
        overwrite: replace an existing `path`; otherwise an existing path is an error.
        verbose: show the progress of int8 calibration (the long part of an int8 export).

    Returns:
        The absolute path of the `.tflite` file.

    Raises:
        ValueError: bad arguments, a bfloat16 or float16 model (mixed precision), or a model with ops that
            TFLite's builtin op set lacks (Flex ops).
    """
    _require_tensorflow("TFLite")
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantization` should be one of {QUANTIZATIONS}. Received: quantization={quantization!r}")
    integer_io, uint8_input = checks.flag("integer_io", integer_io), checks.flag("uint8_input", uint8_input)
    overwrite, verbose = checks.flag("overwrite", overwrite), checks.flag("verbose", verbose)
    if integer_io and quantization != "int8":
        raise ValueError(f"`integer_io=True` needs `quantization='int8'`. Received: quantization={quantization!r}")
    calibration_steps = checks.positive_int("calibration_steps", calibration_steps)
    shape = _static_shape(model, input_size, 1)
    _check_float32(model)
    if None in shape:
        raise ValueError(
            "TFLite export needs a static input size; pass `input_size=(height, width)` (`--input-size H W`). "
            f"Received: input shape {tuple(model.inputs[0].shape)}"
        )
    target = _check_target(path, overwrite, "file")
    export_model, dtype = _export_model(model, shape, uint8_input, preprocess)

    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no SELECT_TF_OPS: a Flex op fails the conversion
    options = {}
    if quantization == "float16":
        options.update(optimizations=[tf.lite.Optimize.DEFAULT], target_spec={"supported_types": [tf.float16]})
    elif quantization == "dynamic":
        options.update(optimizations=[tf.lite.Optimize.DEFAULT])
    elif quantization == "int8":
        options.update(
            optimizations=[tf.lite.Optimize.DEFAULT],
            representative_dataset=_representative_dataset(
                representative_data, shape, dtype, calibration_steps, verbose
            ),
        )
        # uint8 pixels stay a (non-quantized) uint8 input feeding a Cast, which is a builtin float op.
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8] + ([tf.lite.OpsSet.TFLITE_BUILTINS] if uint8_input else [])
        if integer_io:
            if not uint8_input:
                options["inference_input_type"] = tf.int8
            options["inference_output_type"] = tf.int8
    options["target_spec"] = {**options.get("target_spec", {}), "supported_ops": ops}

    # TFLite has grouped convolutions: trace DLA-X's as such, not as the CPU's block-diagonal chunks.
    with _atomic_target(target, overwrite, is_dir=False) as tmp, fast_paths.native_grouped_convs():
        try:
            export_model.export(
                tmp, format="litert", input_signature=_input_signature(shape, dtype), verbose=False, **options
            )
        except Exception as e:  # the converter raises its own ConverterError; turn Flex into a clear ValueError
            flex = _flex_ops(str(e))
            if flex is None:
                raise
            raise ValueError(
                "The model uses TensorFlow ops that TFLite's builtin op set lacks and would need the Flex "
                f"(select TF ops) runtime, which keras_dla does not export. Received: a model with the ops {flex}"
            ) from None
        from keras_dla.export import tflite_metadata

        # The file's contract for MediaPipe and the Android Task Library, in the file before it is renamed into place.
        tflite_metadata.write_metadata(tmp, preprocess=preprocess, labels=labels, name=model.name)
    sidecar.write_tf_sidecar(
        model, target, "tflite", shape, dtype, uint8_input, preprocess, labels, quantization=quantization
    )
    return target
