"""Export any Keras model to a TensorFlow SavedModel or a TFLite (LiteRT) file, and measure the result.

Both formats go through Keras' own export path (`model.export`, which writes a SavedModel with an
`ExportArchive` and, for `format="litert"`, converts that SavedModel with `TFLiteConverter.from_saved_model`);
`TFLiteConverter.from_keras_model` mishandles Keras 3 models (keras#19108) and is not used.

- `export_saved_model`: a SavedModel with a `serving_default` signature, optionally taking uint8 RGB images
  with the preprocessing built in.
- `export_tflite`: a `.tflite` file with a static input shape, float32 or quantized (`"float16"`, `"dynamic"`,
  `"int8"`), TFLite builtin ops only: an op that would need the Flex (select TF ops) runtime is an error.
- `verify_export`: runs the artefact next to the Keras model and reports the largest difference, top-1 or
  pixel agreement, file size and single-image latency.

Writes are atomic: the artefact is built next to its target under a temporary name and renamed into place
only once complete, so a failure leaves nothing behind, and an existing target is refused unless
`overwrite=True`.
"""

import contextlib
import dataclasses
import os
import re
import shutil
import sys
import tempfile
import time

import keras
import numpy as np

from keras_dla import checks, layers
from keras_dla.imagenet import preprocess_input

FORMATS = ("saved_model", "tflite")
QUANTIZATIONS = (None, "float16", "dynamic", "int8")
SERVING_SIGNATURE = "serving_default"


def _unit_scale(x):
    return keras.ops.cast(x, "float32") / 255.0


def _identity(x):
    return keras.ops.cast(x, "float32")


def _fashion_mnist_normalise(x):
    from keras_dla import fashion_mnist

    return (keras.ops.cast(x, "float32") / 255.0 - fashion_mnist.MEAN) / fashion_mnist.STD


# What a uint8-input artefact computes on its pixels before the model: by name, or any callable.
PREPROCESSING = {
    "imagenet": preprocess_input,  # the DLA ImageNet weights: (x / 255 - mean) / std
    "fashion_mnist": _fashion_mnist_normalise,  # the demo's Fashion-MNIST models: (x / 255 - 0.286) / 0.353
    "unit": _unit_scale,  # x / 255
    "none": _identity,
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def _resolve_preprocess(preprocess):
    if callable(preprocess):
        return preprocess
    if preprocess in PREPROCESSING:
        return PREPROCESSING[preprocess]
    raise ValueError(
        f"`preprocess` should be a callable or one of {sorted(PREPROCESSING)}. Received: preprocess={preprocess!r}"
    )


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
    outputs = model(_Preprocess(_resolve_preprocess(preprocess), name="preprocess")(inputs))
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
    workdir = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    # `.tflite` suffix: Keras' LiteRT exporter insists on it.
    tmp = os.path.join(workdir, "saved_model" if is_dir else "model.tflite")
    try:
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
    uint8_input, overwrite = checks.flag("uint8_input", uint8_input), checks.flag("overwrite", overwrite)
    shape = _static_shape(model, input_size, batch_size)
    target = _check_target(path, overwrite, "folder")
    export_model, dtype = _export_model(model, shape, uint8_input, preprocess)
    with _atomic_target(target, overwrite, is_dir=True) as tmp:
        export_model.export(tmp, format="tf_saved_model", input_signature=_input_signature(shape, dtype), verbose=False)
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
    """Fits grey images to `size` as the classification pipeline does (`keras_dla.augment.fit_small`)."""
    from keras_dla.augment import fit_small

    return np.clip(np.round(np.asarray(fit_small(images, size))), 0, 255).astype(np.uint8)


def load_images(source, size, channels=3, *, count=256):
    """Real images for calibration and parity checks: uint8 pixels `(N, height, width, channels)`.

    Args:
        source: `"fashion_mnist"` (the test split, read by `keras_dla.fashion_mnist.load_data`; grey images are
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
        from keras_dla import fashion_mnist

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
        overwrite: replace an existing `path`; otherwise an existing path is an error.
        verbose: show the progress of int8 calibration (the long part of an int8 export).

    Returns:
        The absolute path of the `.tflite` file.

    Raises:
        ValueError: bad arguments, or a model with ops that TFLite's builtin op set lacks (Flex ops).
    """
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantization` should be one of {QUANTIZATIONS}. Received: quantization={quantization!r}")
    integer_io, uint8_input = checks.flag("integer_io", integer_io), checks.flag("uint8_input", uint8_input)
    overwrite, verbose = checks.flag("overwrite", overwrite), checks.flag("verbose", verbose)
    if integer_io and quantization != "int8":
        raise ValueError(f"`integer_io=True` needs `quantization='int8'`. Received: quantization={quantization!r}")
    calibration_steps = checks.positive_int("calibration_steps", calibration_steps)
    shape = _static_shape(model, input_size, 1)
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
    with _atomic_target(target, overwrite, is_dir=False) as tmp, layers.native_grouped_convs():
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
    return target


def export(model, path, *, format="saved_model", quantization=None, **kwargs):
    """Exports `model` in `format` (`"saved_model"` or `"tflite"`); see `export_saved_model`, `export_tflite`."""
    if format not in FORMATS:
        raise ValueError(f"`format` should be one of {FORMATS}. Received: format={format!r}")
    if format == "saved_model":
        if quantization is not None:
            raise ValueError(
                f"Quantization applies to the TFLite format only. Received: format='saved_model', "
                f"quantization={quantization!r}"
            )
        return export_saved_model(model, path, **kwargs)
    return export_tflite(model, path, quantization=quantization, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Verification


@dataclasses.dataclass
class ExportReport:
    """How an exported artefact compares with its Keras model.

    Attributes:
        path: the artefact.
        format: `"saved_model"` or `"tflite"`.
        size_bytes: file size (a SavedModel: all of its files).
        samples: images compared.
        max_abs_diff: largest absolute difference of any output value.
        max_rel_diff: `max_abs_diff` relative to the largest absolute Keras output value.
        top1_agreement: classifiers (2D outputs): fraction of images whose arg-max class is the same.
        pixel_agreement: segmentation (4D outputs): fraction of pixels whose arg-max class is the same.
        latency_ms: median single-image latency of the artefact, in milliseconds.
        keras_latency_ms: the same for the Keras model, measured the same way.
        input_dtype: what the artefact takes (`float32`, `uint8` or `int8`).
    """

    path: str
    format: str
    size_bytes: int
    samples: int
    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float | None
    pixel_agreement: float | None
    latency_ms: float
    keras_latency_ms: float
    input_dtype: str

    def summary(self):
        agreement = ""
        if self.top1_agreement is not None:
            agreement = f", top-1 agreement {100 * self.top1_agreement:.2f}%"
        if self.pixel_agreement is not None:
            agreement = f", pixel agreement {100 * self.pixel_agreement:.2f}%"
        return (
            f"{self.format} {self.path}: {self.size_bytes / 2**20:.2f} MiB, {self.samples} images, "
            f"max abs diff {self.max_abs_diff:.3g} (relative {self.max_rel_diff:.3g}){agreement}, "
            f"latency {self.latency_ms:.2f} ms/image (Keras {self.keras_latency_ms:.2f} ms)"
        )


def _size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _tflite_interpreter(path, num_threads):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # LiteRT not installed: TensorFlow's own (deprecated) copy of the same interpreter
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=path, num_threads=num_threads)


class _Runner:
    """Calls an artefact on one batch: `run(x) -> float32 output`, with quantized I/O handled."""

    def __init__(self, path, num_threads):
        self.path = path
        if os.path.isdir(path):
            import tensorflow as tf

            self.format = "saved_model"
            if not os.path.isfile(os.path.join(path, "saved_model.pb")):
                raise ValueError(f"The folder holds no SavedModel (no saved_model.pb). Received: path={path!r}")
            loaded = tf.saved_model.load(path)
            if SERVING_SIGNATURE not in loaded.signatures:
                raise ValueError(
                    f"The SavedModel has no '{SERVING_SIGNATURE}' signature. Received: signatures "
                    f"{sorted(loaded.signatures)} in {path}"
                )
            self._loaded = loaded  # keeps the variables alive
            self._fn = loaded.signatures[SERVING_SIGNATURE]
            specs = self._fn.structured_input_signature[1]
            if len(specs) != 1:
                raise ValueError(f"Expected a signature with one input. Received: inputs {sorted(specs)}")
            ((self._input_name, spec),) = specs.items()
            self.shape = tuple(spec.shape)
            self.dtype = np.dtype(spec.dtype.as_numpy_dtype)
            self._in_quant = None
            self._out_quant = None
        elif os.path.isfile(path):
            self.format = "tflite"
            try:
                interpreter = _tflite_interpreter(path, num_threads)
            except ValueError as e:  # the interpreter's "not a valid Flatbuffer buffer" names no file
                raise ValueError(f"Not a TFLite model: {str(e).strip()}. Received: path={path!r}") from None
            self._runner = interpreter.get_signature_runner(SERVING_SIGNATURE)
            inputs = self._runner.get_input_details()
            if len(inputs) != 1:
                raise ValueError(f"Expected a TFLite model with one input. Received: inputs {sorted(inputs)}")
            ((self._input_name, details),) = inputs.items()
            self.shape = tuple(details["shape"])
            self.dtype = np.dtype(details["dtype"])
            self._in_quant = details["quantization"] if self.dtype == np.int8 else None
            outputs = self._runner.get_output_details()
            self._out_quant = {name: d["quantization"] for name, d in outputs.items() if d["dtype"] == np.int8}
        else:
            raise ValueError(f"No exported model at this path. Received: path={path!r}")

    def feed_dtype(self):
        """The dtype of the images the caller prepares: uint8 pixels, or float (quantized here for int8)."""
        return np.dtype("uint8") if self.dtype == np.uint8 else np.dtype("float32")

    def __call__(self, x):
        if self.format == "saved_model":
            outputs = self._fn(**{self._input_name: x})
            return {k: np.asarray(v) for k, v in outputs.items()}
        if self._in_quant is not None:
            scale, zero = self._in_quant
            x = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
        outputs = self._runner(**{self._input_name: x})
        result = {}
        for name, value in outputs.items():
            if name in self._out_quant:
                scale, zero = self._out_quant[name]
                value = (value.astype(np.float32) - zero) * scale
            result[name] = np.asarray(value, dtype=np.float32)
        return result


def _median_ms(fn, x, runs):
    fn(x)  # warm-up: first calls allocate and trace
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def _flatten_outputs(keras_out, exported):
    """Pairs Keras outputs with the artefact's (named `output_0`, ... or by the model's dict keys)."""
    if isinstance(keras_out, dict) and set(keras_out) == set(exported):
        return [(np.asarray(keras_out[k]), exported[k]) for k in sorted(keras_out)]
    flat = keras.tree.flatten(keras_out)
    names = sorted(exported, key=lambda n: (len(n), n))
    if len(flat) != len(names):
        raise ValueError(f"The artefact has {len(names)} outputs and the Keras model {len(flat)}. Received: {names}")
    pairs = [(np.asarray(k), exported[n]) for k, n in zip(flat, names, strict=True)]
    for k, e in pairs:
        if k.shape != e.shape:
            raise ValueError(
                f"The Keras model's output has shape {k.shape} and the artefact's {e.shape}: was the artefact "
                f"exported from this model? Received: artefact outputs {names}"
            )
    return pairs


def verify_export(
    model,
    path,
    inputs=None,
    *,
    num_random=4,
    seed=0,
    preprocess="imagenet",
    latency_runs=10,
    num_threads=None,
):
    """Runs an exported artefact and its Keras model on the same images and measures how far they agree.

    Args:
        model: the Keras model that was exported.
        path: the SavedModel directory (loaded with `tf.saved_model.load`) or `.tflite` file (run with the
            `ai_edge_litert` interpreter, or `tf.lite.Interpreter` when LiteRT is not installed).
        inputs: optional images `(N, H, W, C)` in the form the artefact takes: uint8 pixels for a uint8-input
            artefact, otherwise what the Keras model takes. Real images make the agreement meaningful.
        num_random: when `inputs` is None, compare on this many random images (standard normal floats, or
            uniform uint8 pixels for a uint8-input artefact).
        seed: seed of the random images.
        preprocess: for a uint8-input artefact, the preprocessing it carries (to feed the Keras model the same).
        latency_runs: timed single-image runs (after one warm-up) for the latency medians.
        num_threads: TFLite interpreter threads (`None`: the interpreter's default).

    Returns:
        An `ExportReport`.
    """
    latency_runs = checks.positive_int("latency_runs", latency_runs)
    runner = _Runner(os.fspath(path), num_threads)
    shape = runner.shape
    if inputs is None:
        if not isinstance(num_random, int) or num_random < 1:
            raise ValueError(f"`num_random` should be a positive integer. Received: num_random={num_random!r}")
        if None in shape[1:] or -1 in shape[1:]:
            model_shape = tuple(model.inputs[0].shape)
            dims = zip(shape[1:], model_shape[1:], strict=True)
            shape = (shape[0],) + tuple(m if s in (None, -1) else s for s, m in dims)
            if None in shape[1:]:
                raise ValueError(
                    "The artefact and the model take any image size; pass `inputs` to verify on. "
                    f"Received: inputs=None, input shape {runner.shape}"
                )
        rng = np.random.default_rng(seed)
        size = (num_random,) + tuple(shape[1:])
        if runner.feed_dtype() == np.uint8:
            inputs = rng.integers(0, 256, size=size, dtype=np.uint8)
        else:
            inputs = rng.standard_normal(size, dtype=np.float32)
    else:
        inputs = np.asarray(keras.ops.convert_to_numpy(inputs))
        dims = zip(shape[1:], inputs.shape[1:], strict=False)
        if inputs.ndim != len(shape) or not len(inputs) or any(s not in (None, -1, i) for s, i in dims):
            raise ValueError(
                f"`inputs` should be a batch of images of shape (N, {', '.join(map(str, shape[1:]))}). "
                f"Received: shape={inputs.shape}"
            )
        if runner.feed_dtype() == np.uint8 and inputs.dtype != np.uint8:
            if not (np.all(np.isfinite(inputs)) and np.all(inputs == np.round(inputs))) or np.any(
                (inputs < 0) | (inputs > 255)
            ):
                raise ValueError(
                    "The artefact takes uint8 pixels; `inputs` should be whole numbers in [0, 255]. "
                    f"Received: {inputs.dtype} inputs in [{inputs.min():.3g}, {inputs.max():.3g}]"
                )
        inputs = inputs.astype(runner.feed_dtype())
    if runner.feed_dtype() == np.uint8:
        keras_inputs = keras.ops.convert_to_numpy(_resolve_preprocess(preprocess)(inputs))
    else:
        keras_inputs = inputs.astype(np.float32)

    # The artefact: one image at a time when its batch is static (TFLite), all at once otherwise.
    step = len(inputs) if shape[0] in (None, -1) else shape[0]
    if len(inputs) % step:
        raise ValueError(
            f"The artefact takes batches of {step} images; pass a multiple of {step}. Received: {len(inputs)} images"
        )
    exported = [runner(inputs[i : i + step]) for i in range(0, len(inputs), step)]
    exported = {k: np.concatenate([e[k] for e in exported]) for k in exported[0]}
    # predict_on_batch traces the model once; eager calls of a deep functional model cost far more per image.
    chunks = [model.predict_on_batch(keras_inputs[i : i + 32]) for i in range(0, len(keras_inputs), 32)]
    reference = keras.tree.map_structure(lambda *c: np.concatenate(c), *chunks)
    pairs = [(k.astype(np.float32), e) for k, e in _flatten_outputs(reference, exported)]

    max_abs = max(float(np.max(np.abs(k - e))) for k, e in pairs)
    scale = max(float(np.max(np.abs(k))) for k, _ in pairs)
    top1 = pixels = None
    k, e = pairs[0]
    if k.ndim == 2 and k.shape[-1] > 1:
        top1 = float(np.mean(np.argmax(k, -1) == np.argmax(e, -1)))
    elif k.ndim == 4 and k.shape[-1] > 1:
        pixels = float(np.mean(np.argmax(k, -1) == np.argmax(e, -1)))

    one = inputs[:1]
    latency = _median_ms(runner, one, latency_runs)
    keras_one = keras_inputs[:1]
    keras_latency = _median_ms(model.predict_on_batch, keras_one, latency_runs)
    return ExportReport(
        path=os.path.abspath(path),
        format=runner.format,
        size_bytes=_size(path),
        samples=len(inputs),
        max_abs_diff=max_abs,
        max_rel_diff=max_abs / scale if scale > 0 else max_abs,
        top1_agreement=top1,
        pixel_agreement=pixels,
        latency_ms=latency,
        keras_latency_ms=keras_latency,
        input_dtype=str(runner.dtype),
    )
