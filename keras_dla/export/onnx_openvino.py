"""Export a Keras model to ONNX (float32, or int8 by ONNX Runtime's static quantisation) and to OpenVINO IR.

Both go through Keras' own exporters (`model.export(path, format="onnx")`, which converts the traced
TensorFlow function with tf2onnx, and `format="openvino"`, which converts it with OpenVINO's `convert_model`),
on the TensorFlow backend. The tensors are then named for what they hold: the input `images`, the output
`probabilities`, `logits` or `log_probabilities` (per-pixel outputs `pixel_probabilities`, ...). The batch size
stays dynamic unless `batch_size` is given; height and width stay as the model has them unless `input_size`
fixes them.

- `export_onnx`: a `.onnx` file; `quantization="int8"` quantises it statically with ONNX Runtime
  (`quantize_static`: QDQ format, int8 weights per channel, uint8 activations calibrated on
  `representative_data`), so the file still takes and returns float32. Unsigned activations with signed weights
  (U8S8) are the pair ONNX Runtime's x86 int8 kernels are built for; int8 activations (S8S8) take slower kernels
  there (docs/performance.md measures both).
- `export_openvino`: an OpenVINO IR model, `model.xml` and its weights `model.bin` beside it, float32. A graph
  that OpenVINO's TensorFlow front end cannot shape (DLA-Up's upsampling) is converted from its ONNX export.
  `quantization="int8"` quantises it with NNCF's post-training quantisation (int8 weights per channel, int8
  activations calibrated on `representative_data`), which OpenVINO's CPU plugin runs with int8 kernels (VNNI, AMX).

Each writes its JSON sidecar (`keras_dla.export.sidecar`) and, like `keras_dla.export`, writes atomically: a failure
leaves nothing behind, an existing target is refused unless `overwrite=True`.
"""

import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile

from keras_dla import checks
from keras_dla.export import atomic, calibration, sidecar, signature
from keras_dla.export.extras import require
from keras_dla.models import fast_paths

QUANTIZATIONS = (None, "int8")
INPUT_NAME = sidecar.INPUT_NAME


def _prepare(model, path, input_size, batch_size, uint8_input, preprocess, overwrite, suffix, what):
    signature.require_tensorflow(what)
    uint8_input, overwrite = checks.flag("uint8_input", uint8_input), checks.flag("overwrite", overwrite)
    if not os.fspath(path).endswith(suffix):
        raise ValueError(f"An {what} file should end in {suffix}. Received: path={os.fspath(path)!r}")
    if model.dtype_policy.name != "float32":
        raise ValueError(
            f"{what} export takes a float32 model; build it without mixed precision (or reload its weights into "
            f"a float32 copy). Received: dtype policy {model.dtype_policy.name!r}"
        )
    shape = signature.static_shape(model, input_size, batch_size)
    target = atomic.check_target(path, overwrite, "file")
    export_model, dtype = signature.export_model(model, shape, uint8_input, preprocess)
    return shape, target, export_model, dtype, uint8_input, overwrite


def _rename_onnx(graph, old, new):
    """Renames the value `old` to `new` wherever `graph` produces or consumes it."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def _name_onnx_tensors(path, out_name):
    """Names the one input `images` and the one output `out_name`, and the dynamic batch dimension `batch`."""
    import onnx

    model = onnx.load(path)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ValueError(
            f"Expected an ONNX graph with one input and one output. Received: inputs {[v.name for v in inputs]}, "
            f"outputs {[v.name for v in graph.output]}"
        )
    _rename_onnx(graph, inputs[0].name, INPUT_NAME)
    _rename_onnx(graph, graph.output[0].name, out_name)
    for value in (inputs[0], graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        if not dim.HasField("dim_value"):
            dim.dim_param = "batch"
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _quantize_onnx(float_path, int8_path, batches):
    """ONNX Runtime's static int8 quantisation of `float_path` (QDQ, per-channel weights), calibrated on batches."""
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self._batches = iter(batches)

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch[0]}

    prepared = float_path + ".prepared.onnx"
    q.quant_pre_process(float_path, prepared)  # shape inference and graph clean-up, as quantize_static advises
    q.quantize_static(
        prepared,
        int8_path,
        Reader(),
        quant_format=q.QuantFormat.QDQ,
        per_channel=True,
        activation_type=q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        calibrate_method=q.CalibrationMethod.MinMax,
    )


def _calibration_batches(model_shape, representative_data, dtype, steps, verbose):
    """The one-image calibration batches of an int8 export (a dynamic height and width: the images' own)."""
    calibration_shape = (1, *model_shape[1:])
    if None in model_shape[1:3] and hasattr(representative_data, "shape"):
        calibration_shape = (1, *representative_data.shape[1:])
    return calibration.representative_dataset(
        representative_data, calibration_shape, dtype, steps, checks.flag("verbose", verbose)
    )


def export_onnx(
    model,
    path,
    *,
    input_size=None,
    batch_size=None,
    quantization=None,
    representative_data=None,
    calibration_steps=200,
    uint8_input=False,
    preprocess="imagenet",
    labels=None,
    opset=None,
    overwrite=False,
    verbose=False,
):
    """Exports `model` as an ONNX file (run it with ONNX Runtime) and writes its JSON sidecar.

    Args:
        model: a float32 Keras model with one image input (batch, height, width, channels).
        path: the `.onnx` file to create.
        input_size: optional `(height, width)` to fix; by default the model's own (possibly dynamic) size.
        batch_size: optional static batch size; `None` keeps it dynamic (`batch`).
        quantization: `None` (float32) or `"int8"` (ONNX Runtime static quantisation, QDQ: int8 weights per
            channel, uint8 activations calibrated on `representative_data`; the file still takes and returns
            float32). CPUs without VNNI compute uint8 x int8 products with an instruction that can saturate
            (ONNX Runtime's quantisation guide): check the parity report there.
        representative_data: for `"int8"`: images `(N, H, W, C)` in the form the file takes (as the Keras model
            takes them, or uint8 pixels with `uint8_input`). Real images calibrate best.
        calibration_steps: at most this many representative images are used.
        uint8_input: the file takes uint8 RGB pixels in [0, 255] and applies `preprocess` itself.
        preprocess: a name in `keras_dla.export.preprocessing.PREPROCESSING` or a callable (see `export_saved_model`).
        labels: optional file of class names (one a line) for the sidecar.
        opset: ONNX opset (default: tf2onnx's).
        overwrite: replace an existing `path` (and its sidecar); otherwise an existing path is an error.
        verbose: show the progress of int8 calibration.

    Returns:
        The absolute path of the `.onnx` file; its contract is in `path + ".json"`.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantization` should be one of {QUANTIZATIONS}. Received: quantization={quantization!r}")
    calibration_steps = checks.positive_int("calibration_steps", calibration_steps)
    shape, target, export_model, dtype, uint8_input, overwrite = _prepare(
        model, path, input_size, batch_size, uint8_input, preprocess, overwrite, ".onnx", "ONNX"
    )
    require("onnx", "tf2onnx", "onnx", "onnxruntime")
    batches = None
    if quantization == "int8":
        batches = _calibration_batches(shape, representative_data, dtype, calibration_steps, verbose)
    out_name = sidecar.output_name(model)
    with atomic.atomic_target(target, overwrite, is_dir=False) as tmp:
        float_path = os.path.join(os.path.dirname(tmp), "float.onnx")
        export_model.export(
            float_path,
            format="onnx",
            input_signature=signature.input_signature(shape, dtype),
            opset_version=opset,
            verbose=False,
        )
        _name_onnx_tensors(float_path, out_name)
        if quantization == "int8":
            _quantize_onnx(float_path, tmp, batches())
        else:
            os.replace(float_path, tmp)
    quant = None
    if quantization == "int8":
        quant = {
            "scheme": "int8 static, ONNX Runtime QDQ",
            "weights": "int8, per output channel",
            "activations": "uint8, per tensor, MinMax calibration",
            "calibration_images": batches.count,
            "input_output": f"{dtype} in, float32 out (quantised inside the graph)",
        }
    contract = sidecar.describe(
        model,
        format="onnx",
        input_name=INPUT_NAME,
        input_shape=shape,
        input_dtype=dtype,
        output_name=out_name,
        uint8_input=uint8_input,
        preprocess=preprocess,
        labels=labels,
        quantization=quant,
    )
    sidecar.write_sidecar(target, contract)
    return target


@contextlib.contextmanager
def _workdir_beside(path):
    workdir = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path))
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _openvino_model(ov, model, signature, workdir):
    """`model` as an `openvino.Model`: by Keras' exporter, else converted from its ONNX export.

    Grouped convolutions are traced as Keras' own grouped convolution, which OpenVINO reads as its
    `GroupConvolution`; TensorFlow's CPU form of them (`keras_dla.models.fast_paths`: dense convolutions over
    block-diagonal kernels, built with `MatrixDiagV3`) has no conversion rule in OpenVINO's TensorFlow front end
    (2026.4). That front end also mis-shapes DLA-Up's upsampling (a channel tile feeding a depthwise convolution: it
    tiles the wrong axis and then refuses the GroupConvolution); its ONNX front end reads the same computation as
    tf2onnx writes it, and tf2onnx takes the block-diagonal form (it cannot convert the XLA function Keras' grouped
    convolution is on TensorFlow).
    """
    traced = os.path.join(workdir, "traced.xml")
    try:
        with fast_paths.native_grouped_convs():
            model.export(traced, format="openvino", input_signature=signature, verbose=False)
    except RuntimeError as e:  # OpenVINO's converter reports a graph it cannot shape as a RuntimeError
        require("onnx", "tf2onnx", "onnx")
        first = (str(e).strip().splitlines() or [""])[0]
        if "Check '" not in first:
            raise
        through = os.path.join(workdir, "traced.onnx")
        model.export(through, format="onnx", input_signature=signature, verbose=False)
        return ov.convert_model(through)
    return ov.Core().read_model(traced)


@contextlib.contextmanager
def _torch_unimported():
    """While NNCF runs, a PyTorch not yet imported reads as absent.

    NNCF (3.4) imports PyTorch whenever it is installed: on import, to register its tensor functions for torch
    tensors (`nncf/tensor/functions/__init__.py`), and in `nncf.quantize`, to ask whether the model is a torch one
    (`nncf/common/utils/backend.py`); both treat an ImportError as "no PyTorch". Quantising an OpenVINO model needs
    none of it, and keras_dla imports PyTorch only on the PyTorch backend.
    """
    if "torch" in sys.modules:
        yield
        return
    sys.modules["torch"] = None  # `import torch` raises ImportError while this entry is None
    try:
        yield
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]


def _quantize_openvino(converted, samples, verbose):
    """NNCF's post-training int8 quantisation of the `openvino.Model` `converted`, calibrated on `samples`."""
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    quiet = contextlib.ExitStack()
    if not verbose:  # NNCF logs its steps at INFO and draws its progress bars on standard output
        nncf_logger.setLevel(logging.WARNING)
        quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
    try:
        with _torch_unimported(), quiet:
            (nncf,) = require("openvino", "nncf")
            return nncf.quantize(
                converted,
                nncf.Dataset(samples),
                preset=nncf.QuantizationPreset.PERFORMANCE,  # symmetric int8 weights and activations
                subset_size=len(samples),
                # NNCF's full bias correction, slower to calibrate than its default fast one and closer to the
                # float model (the top-1 agreements of both are in docs/export.md).
                fast_bias_correction=False,
            )
    finally:
        nncf_logger.setLevel(level)


def export_openvino(
    model,
    path,
    *,
    input_size=None,
    batch_size=None,
    quantization=None,
    representative_data=None,
    calibration_steps=200,
    uint8_input=False,
    preprocess="imagenet",
    labels=None,
    overwrite=False,
    verbose=False,
):
    """Exports `model` as OpenVINO IR (`path`, an `.xml` file, and its weights beside it as `.bin`).

    Args: as `export_onnx`; `quantization="int8"` quantises with NNCF (`pip install nncf`): int8 weights per
    output channel and int8 activations calibrated on `representative_data`, the file still taking and returning
    float32 (or uint8 pixels with `uint8_input`). Returns the absolute path of the `.xml` file; its contract is in
    `path + ".json"`. Run it with `openvino.Core().compile_model(path, "CPU")`: on CPUs with bfloat16 (AMX,
    AVX512_BF16) OpenVINO then computes the float parts in bfloat16, its fastest setting there, unless given
    `{"INFERENCE_PRECISION_HINT": "f32"}` (what `keras_dla.export.verify_export` and `keras-dla predict` give it).
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantization` should be one of {QUANTIZATIONS}. Received: quantization={quantization!r}")
    calibration_steps = checks.positive_int("calibration_steps", calibration_steps)
    shape, target, export_model, dtype, uint8_input, overwrite = _prepare(
        model, path, input_size, batch_size, uint8_input, preprocess, overwrite, ".xml", "OpenVINO"
    )
    weights = target[: -len(".xml")] + ".bin"
    if os.path.lexists(weights) and not overwrite:
        raise ValueError(
            f"The weights file beside the output exists; pass `overwrite=True` (`--overwrite`) to replace it. "
            f"Received: path={os.fspath(path)!r}"
        )
    (ov,) = require("openvino", "openvino")
    batches = None
    if quantization == "int8":  # checked before anything is converted; NNCF shows its own progress
        batches = _calibration_batches(shape, representative_data, dtype, calibration_steps, verbose=False)
        with _torch_unimported():
            require("openvino", "nncf")
    out_name = sidecar.output_name(model)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with _workdir_beside(target) as workdir:
        converted = _openvino_model(ov, export_model, signature.input_signature(shape, dtype), workdir)
        if len(converted.inputs) != 1 or len(converted.outputs) != 1:
            raise ValueError(
                "Expected an OpenVINO model with one input and one output. Received: "
                f"{len(converted.inputs)} inputs, {len(converted.outputs)} outputs"
            )
        converted.inputs[0].get_tensor().set_names({INPUT_NAME})
        converted.outputs[0].get_tensor().set_names({out_name})
        if quantization == "int8":
            samples = [batch[0] for batch in batches()]
            converted = _quantize_openvino(converted, samples, checks.flag("verbose", verbose))
        named = os.path.join(workdir, "model.xml")
        ov.serialize(converted, named)
        # The weights first: the .xml, which readers open, appears only once its .bin is in place.
        os.replace(named[: -len(".xml")] + ".bin", weights)
        os.replace(named, target)
    quant = None
    if quantization == "int8":
        quant = {
            "scheme": "int8 static, NNCF post-training quantization (OpenVINO)",
            "weights": "int8, per output channel, symmetric",
            "activations": "int8, per tensor, calibrated",
            "calibration_images": batches.count,
            "input_output": f"{dtype} in, float32 out (quantised inside the graph)",
        }
    contract = sidecar.describe(
        model,
        format="openvino",
        input_name=INPUT_NAME,
        input_shape=shape,
        input_dtype=dtype,
        output_name=out_name,
        uint8_input=uint8_input,
        preprocess=preprocess,
        labels=labels,
        quantization=quant,
    )
    contract["weights_file"] = os.path.basename(weights)
    sidecar.write_sidecar(target, contract)
    return target
