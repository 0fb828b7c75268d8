"""Run an exported artefact in its own runtime: `Runner(path)(images)` -> `{output name: float32 array}`.

A SavedModel folder runs in TensorFlow (`tf.saved_model.load`, its `serving_default` signature), a `.tflite` file
in the LiteRT interpreter (TensorFlow's own copy when `ai_edge_litert` is not installed), an `.onnx` file in ONNX
Runtime and an OpenVINO `.xml` file in OpenVINO, each on the CPU and imported only when such a file is run.
`keras_dla.export.verify` compares a `Runner` with the Keras model; `keras-dla predict` classifies with one.
"""

import os

import numpy as np

from keras_dla.export.extras import require
from keras_dla.export.sidecar import SERVING_SIGNATURE

# ONNX Runtime's names of the input types an exported image model may take.
ONNX_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


def tflite_interpreter(path, num_threads):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # LiteRT not installed: TensorFlow's own (deprecated) copy of the same interpreter
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=path, num_threads=num_threads)


class Runner:
    """Calls an artefact on one batch: `runner(x)` -> `{output name: float32 array}`, with quantized I/O handled.

    Attributes:
        format: `"saved_model"`, `"tflite"`, `"onnx"` or `"openvino"`.
        input_name, output_names: the artefact's own names of its input and outputs (its signature's, for a
            SavedModel or TFLite file), which its sidecar states.
        shape, dtype: of the input the artefact takes (`None` for a dynamic size).
    """

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
            ((self.input_name, spec),) = specs.items()
            self.output_names = list(self._fn.structured_outputs)
            self.shape = tuple(spec.shape)
            self.dtype = np.dtype(spec.dtype.as_numpy_dtype)
            self._in_quant = None
            self._out_quant = None
        elif os.path.isfile(path) and path.endswith(".onnx"):
            self._init_onnx(path, num_threads)
        elif os.path.isfile(path) and path.endswith(".xml"):
            self._init_openvino(path, num_threads)
        elif os.path.isfile(path):
            self.format = "tflite"
            try:
                interpreter = tflite_interpreter(path, num_threads)
            except ValueError as e:  # the interpreter's "not a valid Flatbuffer buffer" names no file
                raise ValueError(f"Not a TFLite model: {str(e).strip()}. Received: path={path!r}") from None
            self._runner = interpreter.get_signature_runner(SERVING_SIGNATURE)
            inputs = self._runner.get_input_details()
            if len(inputs) != 1:
                raise ValueError(f"Expected a TFLite model with one input. Received: inputs {sorted(inputs)}")
            ((self.input_name, details),) = inputs.items()
            self.shape = tuple(details["shape"])
            self.dtype = np.dtype(details["dtype"])
            self._in_quant = details["quantization"] if self.dtype == np.int8 else None
            outputs = self._runner.get_output_details()
            self.output_names = list(outputs)
            self._out_quant = {name: d["quantization"] for name, d in outputs.items() if d["dtype"] == np.int8}
        else:
            raise ValueError(f"No exported model at this path. Received: path={path!r}")

    def _init_onnx(self, path, num_threads):
        (ort,) = require("onnx", "onnxruntime")
        self.format = "onnx"
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        try:
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types, over several lines
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise ValueError(f"Not an ONNX model ONNX Runtime can run: {first}. Received: path={path!r}") from None
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"Expected an ONNX model with one input. Received: inputs {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        self.dtype = np.dtype(ONNX_TYPES.get(inputs[0].type, "float32"))
        self.output_names = [o.name for o in session.get_outputs()]
        self._session = session
        self._in_quant = None
        self._out_quant = {}

    def _init_openvino(self, path, num_threads):
        (ov,) = require("openvino", "openvino")
        self.format = "openvino"
        core = ov.Core()
        # float32 as exported: OpenVINO's CPU plugin otherwise computes in bfloat16 on CPUs that have it (AMX,
        # AVX512_BF16; its INFERENCE_PRECISION_HINT documentation), and the parity checks would measure that rounding.
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = num_threads
        try:
            compiled = core.compile_model(path, "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError with its own multi-line report
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise ValueError(f"Not an OpenVINO model OpenVINO can run: {first}. Received: path={path!r}") from None
        if len(compiled.inputs) != 1:
            raise ValueError(f"Expected an OpenVINO model with one input. Received: {len(compiled.inputs)} inputs")
        given = compiled.inputs[0]
        self.input_name = given.get_any_name()
        self.shape = tuple(d.get_length() if d.is_static else None for d in given.get_partial_shape())
        self.dtype = np.dtype(given.get_element_type().to_dtype())
        self.output_names = [o.get_any_name() for o in compiled.outputs]
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._in_quant = None
        self._out_quant = {}

    def feed_dtype(self):
        """The dtype of the images the caller prepares: uint8 pixels, or float (quantized here for int8)."""
        return np.dtype("uint8") if self.dtype == np.uint8 else np.dtype("float32")

    def __call__(self, x):
        if self.format == "onnx":
            outputs = self._session.run(None, {self.input_name: x})
            return {n: np.asarray(v, dtype=np.float32) for n, v in zip(self.output_names, outputs, strict=True)}
        if self.format == "openvino":
            results = self._request.infer({0: x})
            return {
                n: np.asarray(results[o], dtype=np.float32)
                for n, o in zip(self.output_names, self._compiled.outputs, strict=True)
            }
        if self.format == "saved_model":
            outputs = self._fn(**{self.input_name: x})
            return {k: np.asarray(v) for k, v in outputs.items()}
        if self._in_quant is not None:
            scale, zero = self._in_quant
            x = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
        outputs = self._runner(**{self.input_name: x})
        result = {}
        for name, value in outputs.items():
            if name in self._out_quant:
                scale, zero = self._out_quant[name]
                value = (value.astype(np.float32) - zero) * scale
            result[name] = np.asarray(value, dtype=np.float32)
        return result
