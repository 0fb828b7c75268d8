"""Measure an exported artefact against its Keras model: `verify_export` and its `ExportReport`.

`verify_export` runs a SavedModel (with `tf.saved_model.load`), a `.tflite` file (with the LiteRT
interpreter), an `.onnx` file (with ONNX Runtime) or an OpenVINO `.xml` file (with OpenVINO's CPU plugin)
next to the Keras model it came from, on the same images, and reports the largest difference,
top-1 or pixel agreement, file size and single-image latency. `keras_dla.export` writes the artefacts.
"""

import dataclasses
import os
import time

import keras
import numpy as np

from keras_dla import checks
from keras_dla.export.preprocessing import resolve_preprocess
from keras_dla.export.runtime import Runner


@dataclasses.dataclass
class ExportReport:
    """How an exported artefact compares with its Keras model.

    Attributes:
        path: the artefact.
        format: `"saved_model"`, `"tflite"`, `"onnx"` or `"openvino"`.
        size_bytes: file size (a SavedModel: all of its files; OpenVINO: the .xml and its .bin).
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

    def agreement(self):
        """`"top-1 agreement 99.61%"` or `"pixel agreement ..."`, whichever the outputs have; `""` for neither."""
        if self.top1_agreement is not None:
            return f"top-1 agreement {100 * self.top1_agreement:.2f}%"
        if self.pixel_agreement is not None:
            return f"pixel agreement {100 * self.pixel_agreement:.2f}%"
        return ""

    def summary(self):
        agreement = f", {self.agreement()}" if self.agreement() else ""
        return (
            f"{self.format} {self.path}: {self.size_bytes / 2**20:.2f} MiB, {self.samples} images, "
            f"max abs diff {self.max_abs_diff:.3g} (relative {self.max_rel_diff:.3g}){agreement}, "
            f"latency {self.latency_ms:.2f} ms/image (Keras {self.keras_latency_ms:.2f} ms)"
        )


def _size(path):
    if os.path.isfile(path) and path.endswith(".xml"):  # OpenVINO IR: the graph and its weights beside it
        weights = path[: -len(".xml")] + ".bin"
        return os.path.getsize(path) + (os.path.getsize(weights) if os.path.isfile(weights) else 0)
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _median_ms(fn, x, runs):
    fn(x)  # warm-up: first calls allocate and trace
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def _flatten_outputs(keras_out, exported):
    """Pairs Keras outputs with the artefact's: one with one, or by name (the model's dict keys, or in order)."""
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
        path: the SavedModel directory (loaded with `tf.saved_model.load`), `.tflite` file (run with the
            `ai_edge_litert` interpreter, or `tf.lite.Interpreter` when LiteRT is not installed), `.onnx` file
            (ONNX Runtime, CPU) or OpenVINO `.xml` file (OpenVINO, CPU).
        inputs: optional images `(N, H, W, C)` in the form the artefact takes: uint8 pixels for a uint8-input
            artefact, otherwise what the Keras model takes. Real images make the agreement meaningful. They must
            be finite: a NaN or an infinity is refused, as no parity can be measured on it.
        num_random: when `inputs` is None, compare on this many random images (standard normal floats, or
            uniform uint8 pixels for a uint8-input artefact).
        seed: seed of the random images.
        preprocess: for a uint8-input artefact, the preprocessing it carries (to feed the Keras model the same).
        latency_runs: timed single-image runs (after one warm-up) for the latency medians.
        num_threads: runtime threads (`None`: the runtime's default).

    Returns:
        An `ExportReport`.
    """
    latency_runs = checks.positive_int("latency_runs", latency_runs)
    runner = Runner(os.fspath(path), num_threads)
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
        checks.check_finite("inputs", inputs)
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
        keras_inputs = keras.ops.convert_to_numpy(resolve_preprocess(preprocess)(inputs))
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
        size_bytes=_size(os.fspath(path)),
        samples=len(inputs),
        max_abs_diff=max_abs,
        max_rel_diff=max_abs / scale if scale > 0 else max_abs,
        top1_agreement=top1,
        pixel_agreement=pixels,
        latency_ms=latency,
        keras_latency_ms=keras_latency,
        input_dtype=str(runner.dtype),
    )
