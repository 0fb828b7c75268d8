"""Export any Keras model to a TensorFlow SavedModel or a TFLite (LiteRT) file.

Both formats go through Keras' own export path (`model.export`, which writes a SavedModel with an
`ExportArchive` and, for `format="litert"`, converts that SavedModel with `TFLiteConverter.from_saved_model`);
`TFLiteConverter.from_keras_model` mishandles Keras 3 models (keras#19108) and is not used.

- `export_saved_model`: a SavedModel with a `serving_default` signature, optionally taking uint8 RGB images
  with the preprocessing built in.
- `export_tflite`: a `.tflite` file with a static input shape, float32 or quantized (`"float16"`, `"dynamic"`,
  `"int8"`), TFLite builtin ops only: an op that would need the Flex (select TF ops) runtime is an error.

Both signatures name their tensors for what they hold, as the ONNX and OpenVINO exports do: the input `images`,
the output `probabilities`, `logits` or `log_probabilities` (`pixel_...` for a per-pixel output), as the sidecar
(`keras_dla.export.sidecar.output_name`) states them; the TFLite metadata gives the same names.

Writes are atomic (`keras_dla.export.atomic`): the artefact is built next to its target under a temporary name and
renamed into place only once complete, so a failure leaves nothing behind, and an existing target is refused unless
`overwrite=True`.
"""

import re

import keras

from keras_dla import checks
from keras_dla.export import atomic, calibration, sidecar, signature
from keras_dla.export.runtime import tflite_interpreter
from keras_dla.models import fast_paths

QUANTIZATIONS = (None, "float16", "dynamic", "int8")  # of TFLite files


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
    signature.require_tensorflow("SavedModel")
    uint8_input, overwrite = checks.flag("uint8_input", uint8_input), checks.flag("overwrite", overwrite)
    shape = signature.static_shape(model, input_size, batch_size)
    target = atomic.check_target(path, overwrite, "folder")
    export_model, dtype = signature.export_model(model, shape, uint8_input, preprocess, _output_name(model))
    with atomic.atomic_target(target, overwrite, is_dir=True) as tmp:
        export_model.export(
            tmp, format="tf_saved_model", input_signature=signature.input_signature(shape, dtype), verbose=False
        )
    _write_sidecar(model, target, "saved_model", shape, dtype, uint8_input, preprocess, labels)
    return target


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
    signature.require_tensorflow("TFLite")
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantization` should be one of {QUANTIZATIONS}. Received: quantization={quantization!r}")
    integer_io, uint8_input = checks.flag("integer_io", integer_io), checks.flag("uint8_input", uint8_input)
    overwrite, verbose = checks.flag("overwrite", overwrite), checks.flag("verbose", verbose)
    if integer_io and quantization != "int8":
        raise ValueError(f"`integer_io=True` needs `quantization='int8'`. Received: quantization={quantization!r}")
    calibration_steps = checks.positive_int("calibration_steps", calibration_steps)
    shape = signature.static_shape(model, input_size, 1)
    _check_float32(model)
    if None in shape:
        raise ValueError(
            "TFLite export needs a static input size; pass `input_size=(height, width)` (`--input-size H W`). "
            f"Received: input shape {tuple(model.inputs[0].shape)}"
        )
    target = atomic.check_target(path, overwrite, "file")
    export_model, dtype = signature.export_model(model, shape, uint8_input, preprocess, _output_name(model))

    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no SELECT_TF_OPS: a Flex op fails the conversion
    options = {}
    if quantization == "float16":
        options.update(optimizations=[tf.lite.Optimize.DEFAULT], target_spec={"supported_types": [tf.float16]})
    elif quantization == "dynamic":
        options.update(optimizations=[tf.lite.Optimize.DEFAULT])
    elif quantization == "int8":
        options.update(
            optimizations=[tf.lite.Optimize.DEFAULT],
            representative_dataset=calibration.representative_dataset(
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
    with atomic.atomic_target(target, overwrite, is_dir=False) as tmp, fast_paths.native_grouped_convs():
        try:
            export_model.export(
                tmp, format="litert", input_signature=signature.input_signature(shape, dtype), verbose=False, **options
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
    _write_sidecar(model, target, "tflite", shape, dtype, uint8_input, preprocess, labels, quantization=quantization)
    return target


TFLITE_QUANTIZATIONS = {
    "float16": "float16 weights, float32 computation",
    "dynamic": "int8 weights, float32 activations (dynamic range)",
    "int8": "int8 weights (per channel) and activations (per tensor), calibrated",
}


def _output_name(model):
    """The signature's name of `model`'s output (`keras_dla.export.sidecar.output_name`), for a model of one output;
    None for several, which keep Keras' names (`output_0`, ... or the model's own dict keys)."""
    return sidecar.output_name(model) if len(model.outputs) == 1 else None


def _tflite_io_quantization(path):
    """The dtype, scale and zero point of a `.tflite` file's input and output, as its signature runner has them."""
    runner = tflite_interpreter(path, None).get_signature_runner(sidecar.SERVING_SIGNATURE)
    found = {}
    for side, details in (("input", runner.get_input_details()), ("output", runner.get_output_details())):
        for detail in details.values():
            scale, zero_point = detail["quantization"]
            found[side] = {"dtype": str(detail["dtype"].__name__), "scale": float(scale), "zero_point": int(zero_point)}
    return found


def _write_sidecar(model, target, format, shape, dtype, uint8_input, preprocess, labels, quantization=None):
    """The sidecar of a SavedModel or TFLite export: `sidecar.describe`, then `sidecar.write_sidecar`."""
    quant = None
    if quantization is not None:
        quant = {"scheme": TFLITE_QUANTIZATIONS[quantization]}
        if quantization == "int8":
            quant.update(_tflite_io_quantization(target))
    contract = sidecar.describe(
        model,
        format=format,
        input_name=sidecar.INPUT_NAME,
        input_shape=shape,
        input_dtype=dtype,
        output_name=_output_name(model) or "output_0",
        uint8_input=uint8_input,
        preprocess=preprocess,
        labels=labels,
        quantization=quant,
    )
    if quant is not None and "input" in quant:  # integer I/O: what the file takes, not what the model took
        contract["input"]["dtype"] = quant["input"]["dtype"]
    if format == "tflite":
        contract["signature"] = sidecar.SERVING_SIGNATURE
    return sidecar.write_sidecar(target, contract)
