"""keras_dla against timm, ONNX Runtime and OpenVINO, side by side on this machine, at every precision: inference
(float32, bfloat16, int8), training (float32, bfloat16 mixed precision), build time, memory.

Usage:
    python benchmarks/performance.py                       # DLA-34, DLA-60X, DLA-169 at 224x224, batches 1/8/32
    python benchmarks/performance.py --models dla34 --batches 8 --quick
    python benchmarks/performance.py --gpu                 # a lent GPU: mixed precision + XLA against timm AMP
    python benchmarks/performance.py --models dla34 --rounds 3   # every job 3 times, alternating; medians

Every (framework, model, phase) runs in its own fresh process, so each gets the same thread count, nothing leaks
between frameworks (PyTorch and TensorFlow in one process also disagree about import order) and each reports its
own peak resident memory. Timings are medians of repeated calls after warm-up calls, which are excluded. On a
machine whose speed drifts, `--rounds N` runs the whole job list N times, every other round in reverse order, and
reports each figure's median over the rounds.

Paths timed (images per second), each of one precision (`PATHS`):
- `keras_dla fast`: `keras_dla.inference_model(model).serve`, batch norm folded, a frozen TensorFlow graph;
  `keras_dla fast bf16`: the same with `dtype="bfloat16"` (float32 in and out).
- `keras_dla predict`: plain `model.predict(x)` on the unmodified model.
- `tflite fp32` / `tflite int8`: `keras_dla.export.export_tflite` files run by the LiteRT interpreter.
- `keras_dla openvino fp32` / `bf16` / `int8`: `keras_dla.export.export_openvino` files (int8: its NNCF
  quantisation) run by OpenVINO, told float32 (`INFERENCE_PRECISION_HINT`), left at its default (bfloat16 on a CPU
  that has it; the row is left out elsewhere), and int8.
- `timm eager`: timm's model under `torch.inference_mode()`.
- `onnxruntime` / `onnxruntime int8`: timm's model exported with `torch.onnx.export`, run by ONNX Runtime (all graph
  optimisations); int8 by ONNX Runtime's static quantisation (QDQ, int8 per-channel weights).
- `openvino fp32` / `bf16` / `int8`: the same ONNX file run by OpenVINO, as keras_dla's OpenVINO files are; int8
  quantised by NNCF.
- training: one SGD step at batch 16, keras_dla `model.fit` against timm forward/backward/step, in float32 and in
  bfloat16 mixed precision (Keras' `mixed_bfloat16` policy against `torch.autocast("cpu", torch.bfloat16)`). Each
  step is also given as its fraction of the machine's limit at its precision (the matmul peak over `train_flops`),
  timm's too, and as the ratio to timm that a step at that limit would have: the most any implementation could be
  ahead of timm on this machine.
- `(jax)` / `(torch)`: the same keras_dla paths (`serve`, `predict`, the `fit` step) on Keras' JAX and PyTorch
  backends, each job in a process with that `KERAS_BACKEND`; TensorFlow's jobs run with KERAS_BACKEND=tensorflow.
Every int8 file is calibrated on the same images (`calibration_images`). The peers of a precision are the engines the
targets name (float32: ONNX Runtime and OpenVINO; bfloat16: OpenVINO; int8: ONNX Runtime and OpenVINO with NNCF);
each figure is given as a ratio to the best peer of its precision at its batch size. The matmul peaks: the fastest
square matmul at each precision (float32: TensorFlow, OpenVINO; bfloat16: TensorFlow, OpenVINO; int8: ONNX Runtime's
`MatMulInteger`, OpenVINO on FakeQuantize'd operands), the best size and engine; the limit of a model
at a precision is that peak over the model's FLOPs per image (2 x multiply-adds of its convolutions and dense
layers), and each figure is also given as its fraction of that limit.

Writes `<output>/performance.json` and `<output>/performance.png`, and prints the table.
Needs the test extra plus the bench extra: `pip install -e ".[test,bench]"`.
"""

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

MODELS = ("dla34", "dla60x", "dla169")
BATCHES = (1, 8, 32)
TRAIN_BATCH = 16
CLASSES = 1000

# ------------------------------------------------------------------------------------------------------------
# Shared by the worker processes


def peak_rss_mib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def time_call(fn, *, min_calls, min_seconds, warmup=2):
    """Median seconds of one `fn()` call, after `warmup` calls, over at least `min_calls` calls and `min_seconds`."""
    for _ in range(warmup):
        fn()
    samples = []
    start = time.perf_counter()
    while len(samples) < min_calls or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def random_images(batch, size, seed=0):
    import numpy as np

    return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype("float32")


def _tf_threads(threads):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def _layer_flops(layer):
    """FLOPs per image (2 x multiply-adds) of one Conv2D or Dense layer of a built model; 0 for other layers."""
    import keras

    if isinstance(layer, keras.layers.Conv2D):
        kh, kw, cin_per_group, cout = layer.kernel.shape
        _, h, w, _ = layer.output.shape
        return 2 * h * w * kh * kw * cin_per_group * cout
    if isinstance(layer, keras.layers.Dense):
        return 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return 0


def model_flops(model):
    """FLOPs per image (2 x multiply-adds) of the Conv2D and Dense layers of a built Keras model."""
    import keras

    return sum(model_flops(layer) if isinstance(layer, keras.Model) else _layer_flops(layer) for layer in model.layers)


def train_flops(model):
    """FLOPs per image of one training step: each Conv2D and Dense layer's forward product, its gradient with
    respect to its input and with respect to its weights (each as many FLOPs as the forward one), less the first
    convolution's input gradient, which no framework computes (the image is not trained)."""
    import keras

    first = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    return 3 * model_flops(model) - _layer_flops(first)


# ------------------------------------------------------------------------------------------------------------
# Workers: each prints one JSON object on its last line


def _peak(run_at, sizes):
    """{size: GFLOP/s} of `run_at(n)()`, one n x n x n matrix product (2 n^3 operations)."""
    best = {}
    for n in sizes:
        seconds = time_call(run_at(n), min_calls=5, min_seconds=1.0)
        best[n] = 2 * n**3 / seconds / 1e9
    return best


def _tf_matmul(dtype):
    import tensorflow as tf

    def run_at(n):
        a = tf.cast(tf.random.normal((n, n)), dtype)
        b = tf.cast(tf.random.normal((n, n)), dtype)
        matmul = tf.function(lambda: tf.matmul(a, b))
        return lambda: matmul().numpy()

    return run_at


def _ort_int8_matmul(threads):
    """ONNX Runtime's `MatMulInteger` (uint8 x int8 -> int32), the kernel its int8 convolutions reduce to."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def run_at(n):
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["a", "b"], ["c"])],
            "matmul_int8",
            [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
            [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])],
            [onnx.numpy_helper.from_array(np.random.default_rng(1).integers(-127, 128, (n, n), dtype=np.int8), "b")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        a = np.random.default_rng(0).integers(0, 256, (n, n), dtype=np.uint8)
        return lambda: session.run(None, {"a": a})

    return run_at


def _openvino_matmul(precision, threads):
    """OpenVINO's CPU matmul at `precision`: float32 (told so), bfloat16 (its default where the CPU has it), or
    int8 (both operands behind FakeQuantize, which its CPU plugin runs as an int8 matmul)."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    def run_at(n):
        parameter = ops.parameter([n, n], ov.Type.f32, name="a")
        weights = np.random.default_rng(1).standard_normal((n, n)).astype("float32")
        a, b = parameter, ops.constant(weights)
        if precision == "int8":
            low, high = ops.constant(np.float32(0)), ops.constant(np.float32(255))
            a = ops.fake_quantize(a, low, high, low, high, 256)
            low, high = ops.constant(np.float32(-128)), ops.constant(np.float32(127))
            b = ops.fake_quantize(ops.constant(np.round(weights * 32).clip(-128, 127)), low, high, low, high, 256)
        config = {"INFERENCE_NUM_THREADS": threads}
        if precision == "float32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        compiled = ov.Core().compile_model(ov.Model([ops.matmul(a, b, False, False)], [parameter]), "CPU", config)
        request = compiled.create_infer_request()
        x = np.random.default_rng(0).uniform(0, 255, (n, n)).astype("float32")
        return lambda: request.infer({0: x})

    return run_at


def work_matmul(args):
    """The machine's measured limit at each precision: the best GFLOP/s (GOP/s for int8) of a square matmul, over
    TensorFlow, ONNX Runtime and OpenVINO (each engine's figures kept under `by_engine`)."""
    _tf_threads(args.threads)
    sizes = (512, 1024, 2048) if args.quick else (1024, 2048, 3072, 4096)
    by_engine = {
        "float32": {
            "tensorflow": _peak(_tf_matmul("float32"), sizes),
            "openvino": _peak(_openvino_matmul("float32", args.threads), sizes),
        },
        "bfloat16": {
            "tensorflow": _peak(_tf_matmul("bfloat16"), sizes),
            "openvino": _peak(_openvino_matmul("bfloat16", args.threads), sizes),
        },
        "int8": {
            "onnxruntime": _peak(_ort_int8_matmul(args.threads), sizes),
            "openvino": _peak(_openvino_matmul("int8", args.threads), sizes),
        },
    }
    best = {p: {engine: max(sizes.values()) for engine, sizes in engines.items()} for p, engines in by_engine.items()}
    return {"gflops": {p: max(engines.values()) for p, engines in best.items()}, "by_engine": best}


def _keras_model(args, **kwargs):
    from keras_dla.models import dla

    start = time.perf_counter()
    model = dla.BUILDERS[args.model](weights=None, input_shape=(args.size, args.size, 3), **kwargs)
    build_s = time.perf_counter() - start
    _trained_like_batch_norms(model)
    return model, build_s


def _trained_like_batch_norms(model, seed=0):
    """Gives every batch norm non-trivial statistics and affine weights, as a trained model has.

    With the initial ones (mean 0, variance 1, beta 0) every folded bias is zero and TensorFlow's graph optimiser
    drops the BiasAdd, which also keeps it from fusing the ReLU into the convolution: a graph that no trained model
    runs. Timed here is the graph of a trained model.
    """
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.gamma.assign(rng.uniform(0.5, 1.5, shape))
            layer.beta.assign(rng.normal(0.0, 0.1, shape))
            layer.moving_mean.assign(rng.normal(0.0, 0.1, shape))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, shape))


def work_keras_inference(args):
    import keras

    import keras_dla

    _tf_threads(args.threads)
    if args.gpu:
        keras.mixed_precision.set_global_policy("mixed_float16")
    model, build_s = _keras_model(args)
    result = {"build_s": build_s, "flops": model_flops(model), "rates": {}}
    start = time.perf_counter()
    fast = keras_dla.inference_model(model, jit_compile=bool(args.gpu))
    result["fold_s"] = time.perf_counter() - start
    for batch in args.batches:
        x = random_images(batch, args.size)
        result["rates"].setdefault("keras_dla fast", {})[batch] = batch / time_call(
            lambda x=x: fast.serve(x).numpy(), min_calls=args.calls, min_seconds=args.seconds
        )
        result["rates"].setdefault("keras_dla predict", {})[batch] = batch / time_call(
            lambda x=x: model.predict(x, batch_size=len(x), verbose=0), min_calls=args.calls, min_seconds=args.seconds
        )
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def work_keras_bf16(args):
    """`inference_model(model, dtype="bfloat16").serve`: bfloat16 inside, float32 in and out."""
    import keras_dla

    _tf_threads(args.threads)
    model, _ = _keras_model(args)
    fast = keras_dla.inference_model(model, dtype="bfloat16")
    rates = {}
    for batch in args.batches:
        x = random_images(batch, args.size)
        rates[batch] = batch / time_call(
            lambda x=x: fast.serve(x).numpy(), min_calls=args.calls, min_seconds=args.seconds
        )
    return {"rates": {"keras_dla fast bf16": rates}, "peak_rss_mib": peak_rss_mib()}


def work_keras_train(args, precision="float32"):
    import keras
    import numpy as np
    import tensorflow as tf

    _tf_threads(args.threads)
    if args.gpu:
        keras.mixed_precision.set_global_policy("mixed_float16")
    elif precision == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model, _ = _keras_model(args)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        jit_compile=bool(args.gpu or args.jit),
    )
    x = random_images(TRAIN_BATCH, args.size)
    y = np.random.default_rng(1).integers(0, CLASSES, TRAIN_BATCH)
    data = tf.data.Dataset.from_tensors((x, y)).repeat()

    step_s = _median_step_s(model, x=data, steps_per_epoch=max(args.calls, 3) + 2)
    return {"train_step_s": step_s, "train_flops": train_flops(model), "peak_rss_mib": peak_rss_mib()}


def _median_step_s(model, **fit_args):
    """The median seconds of one `model.fit` step over an epoch of `fit_args`, the first two steps left out."""
    import keras

    durations = []

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # waits for the step to finish
            durations.append(time.perf_counter() - self.start)

    model.fit(epochs=1, verbose=0, callbacks=[StepTimer()], **fit_args)
    return statistics.median(durations[2:])  # the first steps trace and warm up


def work_tflite(args):
    import numpy as np

    from keras_dla import export
    from keras_dla.export import runtime

    _tf_threads(args.threads)
    model, _ = _keras_model(args)
    result = {"rates": {}, "convert_s": {}}
    calibration = calibration_images(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        for name, quantization in (("tflite fp32", None), ("tflite int8", "int8")):
            path = os.path.join(tmp, f"{name.replace(' ', '_')}.tflite")
            start = time.perf_counter()
            export.export_tflite(
                model,
                path,
                quantization=quantization,
                representative_data=calibration,
                calibration_steps=8,
                verbose=False,
            )
            result["convert_s"][name] = time.perf_counter() - start
            interpreter = runtime.tflite_interpreter(path, args.threads)
            detail = interpreter.get_input_details()[0]
            for batch in args.batches:
                interpreter.resize_tensor_input(detail["index"], [batch, args.size, args.size, 3])
                interpreter.allocate_tensors()
                detail = interpreter.get_input_details()[0]
                x = random_images(batch, args.size)
                if detail["dtype"] == np.int8:
                    scale, zero = detail["quantization"]
                    x = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)

                def run(x=x, index=detail["index"], interpreter=interpreter):
                    interpreter.set_tensor(index, x)
                    interpreter.invoke()

                result["rates"].setdefault(name, {})[batch] = batch / time_call(
                    run, min_calls=args.calls, min_seconds=args.seconds
                )
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def _timm_model(args):
    import timm
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = timm.create_model(args.model, pretrained=False, num_classes=CLASSES)
    build_s = time.perf_counter() - start
    device = "cuda" if args.gpu else "cpu"
    model = model.to(device)
    if args.gpu:
        model = model.to(memory_format=torch.channels_last)
    return model, build_s, device


def _torch_images(batch, size, device, gpu):
    import torch

    x = torch.from_numpy(random_images(batch, size)).permute(0, 3, 1, 2).contiguous().to(device)
    return x.to(memory_format=torch.channels_last) if gpu else x


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def work_timm_inference(args):
    import torch

    model, build_s, device = _timm_model(args)
    model.eval()
    result = {"build_s": build_s, "rates": {}}
    for batch in args.batches:
        x = _torch_images(batch, args.size, device, args.gpu)

        def run(x=x):
            with torch.inference_mode(), torch.autocast(device, enabled=bool(args.gpu)):
                model(x)
            _sync(device)

        result["rates"].setdefault("timm eager", {})[batch] = batch / time_call(
            run, min_calls=args.calls, min_seconds=args.seconds
        )
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def work_timm_train(args, precision="float32"):
    import torch

    model, _, device = _timm_model(args)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(enabled=bool(args.gpu))
    x = _torch_images(TRAIN_BATCH, args.size, device, args.gpu)
    y = torch.randint(0, CLASSES, (TRAIN_BATCH,), generator=torch.Generator().manual_seed(1)).to(device)
    # GPU: float16 autocast with loss scaling (AMP); CPU bfloat16: bfloat16 autocast, which needs no scaling.
    autocast = {"device_type": device, "enabled": bool(args.gpu)}
    if precision == "bfloat16" and not args.gpu:
        autocast = {"device_type": device, "dtype": torch.bfloat16, "enabled": True}

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(**autocast):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        float(loss)
        _sync(device)

    seconds = time_call(step, min_calls=max(args.calls, 3), min_seconds=0)
    return {"train_step_s": seconds, "peak_rss_mib": peak_rss_mib()}


def calibration_images(size, nchw=False):
    """The images every int8 path calibrates on (TFLite, NNCF and ONNX Runtime alike): 8 images, NHWC or NCHW."""
    images = random_images(8, size, seed=2)
    return images.transpose(0, 3, 1, 2).copy() if nchw else images


def _timm_onnx(args, path):
    """timm's model exported to ONNX at `path` (input `images`, NCHW, dynamic batch); returns the export seconds."""
    import torch

    model, _, _ = _timm_model(args)
    model.eval()
    example = _torch_images(1, args.size, "cpu", False)
    start = time.perf_counter()
    torch.onnx.export(
        model,
        (example,),
        path,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    return time.perf_counter() - start


def _ort_int8(float_path, int8_path, size):
    """ONNX Runtime's static int8 quantisation with the settings of keras_dla's ONNX int8 export (QDQ, int8
    per-channel weights, uint8 activations, MinMax calibration), on `calibration_images`."""
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self._images = iter(calibration_images(size, nchw=True))

        def get_next(self):
            image = next(self._images, None)
            return None if image is None else {"images": image[None]}

    prepared = float_path + ".prepared.onnx"
    q.quant_pre_process(float_path, prepared)
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


def work_onnxruntime(args):
    """timm's ONNX file in ONNX Runtime, float32 and statically quantised to int8."""
    import onnxruntime as ort

    result = {"rates": {}}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        result["export_s"] = _timm_onnx(args, path)
        int8_path = os.path.join(tmp, "model_int8.onnx")
        start = time.perf_counter()
        _ort_int8(path, int8_path, args.size)
        result["quantize_s"] = time.perf_counter() - start
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        for name, file in (("onnxruntime", path), ("onnxruntime int8", int8_path)):
            session = ort.InferenceSession(file, options, providers=["CPUExecutionProvider"])
            for batch in args.batches:
                x = random_images(batch, args.size).transpose(0, 3, 1, 2).copy()
                result["rates"].setdefault(name, {})[batch] = batch / time_call(
                    lambda x=x, session=session: session.run(None, {"images": x}),
                    min_calls=args.calls,
                    min_seconds=args.seconds,
                )
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def _openvino_rates(prefix, float_path, int8_model, args, nchw):
    """Images/s of OpenVINO running a float model told float32, the same at OpenVINO's default precision (a row
    only where that is bfloat16), and an int8 model: `{f"{prefix} fp32": {batch: rate}, ...}`."""
    import openvino as ov

    core = ov.Core()
    threads = {"INFERENCE_NUM_THREADS": args.threads}
    compiled = {
        "fp32": core.compile_model(float_path, "CPU", {**threads, "INFERENCE_PRECISION_HINT": "f32"}),
        "default": core.compile_model(float_path, "CPU", threads),
        "int8": core.compile_model(int8_model, "CPU", threads),
    }
    default = str(compiled["default"].get_property("INFERENCE_PRECISION_HINT")).lower()
    rates = {}
    for tag, model in compiled.items():
        if tag == "default":
            if "bf16" not in default and "bfloat16" not in default:
                continue
            tag = "bf16"
        request = model.create_infer_request()
        for batch in args.batches:
            x = random_images(batch, args.size)
            x = x.transpose(0, 3, 1, 2).copy() if nchw else x
            rates.setdefault(f"{prefix} {tag}", {})[batch] = batch / time_call(
                lambda x=x, request=request: request.infer({0: x}), min_calls=args.calls, min_seconds=args.seconds
            )
    return rates


def nncf_int8(onnx_path, size):
    """The OpenVINO model of an ONNX file quantised by NNCF on `calibration_images`, as keras_dla's
    `export_openvino(quantization="int8")` quantises."""
    import nncf
    import openvino as ov

    calibration = nncf.Dataset([x[None] for x in calibration_images(size, nchw=True)])
    return nncf.quantize(
        ov.Core().read_model(onnx_path),
        calibration,
        preset=nncf.QuantizationPreset.PERFORMANCE,
        fast_bias_correction=False,
    )


def work_openvino(args):
    """timm's ONNX file in OpenVINO: float32, its default precision, and int8 quantised by NNCF."""

    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        result["export_s"] = _timm_onnx(args, path)
        start = time.perf_counter()
        int8 = nncf_int8(path, args.size)
        result["quantize_s"] = time.perf_counter() - start
        result["rates"] = _openvino_rates("openvino", path, int8, args, nchw=True)
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def work_keras_openvino(args):
    """keras_dla's own OpenVINO files (`export_openvino`, float32 and NNCF int8) in OpenVINO, as the peers run."""
    from keras_dla.export import onnx_openvino

    _tf_threads(args.threads)
    model, _ = _keras_model(args)
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        float_path = onnx_openvino.export_openvino(model, os.path.join(tmp, "fp32.xml"))
        start = time.perf_counter()
        int8_path = onnx_openvino.export_openvino(
            model,
            os.path.join(tmp, "int8.xml"),
            quantization="int8",
            representative_data=calibration_images(args.size),
            calibration_steps=8,
        )
        result["quantize_s"] = time.perf_counter() - start
        result["rates"] = _openvino_rates("keras_dla openvino", float_path, int8_path, args, nchw=False)
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def _threads(threads):
    """The thread count for the backend Keras runs on (JAX's CPU client uses every core; it has no setting)."""
    import keras

    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(threads)
    elif keras.backend.backend() == "tensorflow":
        _tf_threads(threads)


def work_backend_inference(args):
    """`inference_model(model).serve` and `predict` on the backend of KERAS_BACKEND (set by `run_worker`)."""
    import keras

    import keras_dla

    backend = keras.backend.backend()
    _threads(args.threads)
    model, build_s = _keras_model(args)
    result = {"build_s": build_s, "rates": {}}
    fast = keras_dla.inference_model(model)
    for batch in args.batches:
        x = random_images(batch, args.size)
        result["rates"].setdefault(f"keras_dla fast ({backend})", {})[batch] = batch / time_call(
            lambda x=x: keras.ops.convert_to_numpy(fast.serve(x)), min_calls=args.calls, min_seconds=args.seconds
        )
        result["rates"].setdefault(f"keras_dla predict ({backend})", {})[batch] = batch / time_call(
            lambda x=x: model.predict(x, batch_size=len(x), verbose=0), min_calls=args.calls, min_seconds=args.seconds
        )
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def work_backend_train(args):
    """One SGD step of `model.fit` at batch TRAIN_BATCH on the backend of KERAS_BACKEND, from NumPy arrays."""
    import keras
    import numpy as np

    _threads(args.threads)
    model, _ = _keras_model(args)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy")
    steps = max(args.calls, 3) + 2
    x = np.concatenate([random_images(TRAIN_BATCH, args.size)] * steps)
    y = np.random.default_rng(1).integers(0, CLASSES, len(x))
    step_s = _median_step_s(model, x=x, y=y, batch_size=TRAIN_BATCH, shuffle=False)
    return {"train_step_s": step_s, "peak_rss_mib": peak_rss_mib()}


WORKERS = {
    "matmul": work_matmul,
    "keras_inference": work_keras_inference,
    "keras_bf16": work_keras_bf16,
    "keras_train": work_keras_train,
    "keras_train_bf16": functools.partial(work_keras_train, precision="bfloat16"),
    "jax_inference": work_backend_inference,
    "jax_train": work_backend_train,
    "torch_inference": work_backend_inference,
    "torch_train": work_backend_train,
    "tflite": work_tflite,
    "keras_openvino": work_keras_openvino,
    "timm_inference": work_timm_inference,
    "timm_train": work_timm_train,
    "timm_train_bf16": functools.partial(work_timm_train, precision="bfloat16"),
    "onnxruntime": work_onnxruntime,
    "openvino": work_openvino,
}
# The jobs of the CPU's precisions and engines, left out with --gpu (which times mixed precision and XLA instead).
CPU_ONLY = ("tflite", "onnxruntime", "openvino", "keras_openvino", "keras_bf16", "keras_train_bf16", "timm_train_bf16")
# The Keras backend of each job that runs keras_dla; every other job leaves KERAS_BACKEND as it is.
BACKEND_OF_JOB = {"jax_inference": "jax", "jax_train": "jax", "torch_inference": "torch", "torch_train": "torch"}


# ------------------------------------------------------------------------------------------------------------
# The parent: runs the workers, collects, prints, writes


def run_worker(job, model, args):
    command = [sys.executable, os.path.abspath(__file__), "--worker", job, "--model", model or "none"]
    command += ["--threads", str(args.threads), "--size", str(args.size), "--calls", str(args.calls)]
    command += ["--seconds", str(args.seconds), "--batches", *map(str, args.batches)]
    command += ["--gpu"] * bool(args.gpu) + ["--quick"] * bool(args.quick) + ["--jit"] * bool(args.jit)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS=str(args.threads))
    env["KERAS_BACKEND"] = BACKEND_OF_JOB.get(job, "tensorflow")
    if not args.gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        print(f"  {job} {model or ''} TIMED OUT after {args.worker_timeout} s", flush=True)
        return None
    elapsed = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        print(f"  {job} {model or ''} FAILED ({done.returncode}):\n    " + "\n    ".join(tail), flush=True)
        return None
    print(f"  {job:16s} {model or '':8s} done in {elapsed:5.1f} s", flush=True)
    return json.loads(lines[-1])


def collect(args):
    """Runs every job `args.rounds` times, alternating: round r runs the jobs in order, the next in reverse order,
    so a machine that speeds up or slows down during the run affects every framework alike. Each figure is the
    median over the rounds (a job that failed in a round is left out); `per_round` keeps the per-round results
    when there is more than one (`rounds`, added by `main`, is their number)."""
    jobs = [j for j in WORKERS if j != "matmul" and not (args.gpu and j in CPU_ONLY) and j not in args.skip]
    order = [("matmul", None)] + [(job, model) for model in args.models for job in jobs]
    rounds = []
    for r in range(args.rounds):
        print(f"round {r + 1} of {args.rounds}:" if args.rounds > 1 else "jobs:", flush=True)
        done = {}
        for job, model in order if r % 2 == 0 else order[::-1]:
            done[(job, model)] = run_worker(job, model, args)
        rounds.append(
            {
                "matmul": done[("matmul", None)],
                "models": {m: {job: done[(job, m)] for job in jobs} for m in args.models},
            }
        )
    matmul = median_of([r["matmul"] for r in rounds])
    results = {
        "matmul_gflops": matmul["gflops"] if matmul else None,
        "matmul_by_engine": matmul.get("by_engine") if matmul else None,
        "models": {m: {job: median_of([r["models"][m][job] for r in rounds]) for job in jobs} for m in args.models},
    }
    if args.rounds > 1:
        results["per_round"] = rounds
    return results


def median_of(values):
    """The element-wise median of equally shaped JSON results (numbers in nested dicts); None entries are skipped."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    first = values[0]
    if isinstance(first, dict):
        keys = [k for k in first if all(isinstance(v, dict) and k in v for v in values)]
        return {k: median_of([v[k] for v in values]) for k in keys}
    if isinstance(first, bool) or not isinstance(first, int | float):
        return first
    return statistics.median(values)


# Each timed path: who runs it and at which precision. The peers are the engines the targets compare keras_dla's
# paths with; timm eager is the reference implementation. The backends' rows ("keras_dla fast (jax)", ...) are
# keras_dla's float32 paths.
PATHS = {
    "keras_dla fast": ("keras_dla", "float32"),
    "keras_dla predict": ("keras_dla", "float32"),
    "tflite fp32": ("keras_dla", "float32"),
    "keras_dla openvino fp32": ("keras_dla", "float32"),
    "keras_dla fast bf16": ("keras_dla", "bfloat16"),
    "keras_dla openvino bf16": ("keras_dla", "bfloat16"),
    "tflite int8": ("keras_dla", "int8"),
    "keras_dla openvino int8": ("keras_dla", "int8"),
    "timm eager": ("reference", "float32"),
    "onnxruntime": ("peer", "float32"),
    "openvino fp32": ("peer", "float32"),
    "openvino bf16": ("peer", "bfloat16"),
    "onnxruntime int8": ("peer", "int8"),
    "openvino int8": ("peer", "int8"),
}
PRECISIONS = ("float32", "bfloat16", "int8")


def path_kind(path):
    """(who, precision) of a timed path."""
    return PATHS.get(path, ("keras_dla", "float32"))


def _peaks(results):
    """{precision: GFLOP/s} of the matmul job (older results hold one float32 figure)."""
    peak = results.get("matmul_gflops")
    return peak if isinstance(peak, dict) else {"float32": peak} if peak else {}


def rows_of(results, batches):
    """The table: one row per (model, path, batch) with images/s, its ratio to the best peer of its precision (and
    to timm eager), and its fraction of the machine's limit at its precision."""
    peaks = _peaks(results)
    rows = []
    for model, jobs in results["models"].items():
        rates = {}
        for job in jobs.values():
            for path, by_batch in ((job or {}).get("rates") or {}).items():
                rates[path] = {int(b): r for b, r in by_batch.items()}
        flops = (jobs.get("keras_inference") or {}).get("flops")
        for path, by_batch in sorted(rates.items(), key=lambda item: _path_order(item[0])):
            who, precision = path_kind(path)
            for batch in batches:
                rate = by_batch.get(batch)
                if rate is None:
                    continue
                peers = [r.get(batch) for p, r in rates.items() if path_kind(p) == ("peer", precision) and r.get(batch)]
                timm = rates.get("timm eager", {}).get(batch)
                limit = peaks[precision] * 1e9 / flops if peaks.get(precision) and flops else None
                rows.append(
                    {
                        "model": model,
                        "path": path,
                        "who": who,
                        "precision": precision,
                        "batch": batch,
                        "images_per_s": rate,
                        "vs_best_peer": rate / max(peers) if peers else None,
                        "vs_timm": rate / timm if timm else None,
                        "of_limit": rate / limit if limit else None,
                    }
                )
    return rows


def _path_order(path):
    who, precision = path_kind(path)
    return (PRECISIONS.index(precision) if precision in PRECISIONS else 9, who != "keras_dla", path)


def best_rows(rows):
    """Per (model, precision, batch): keras_dla's fastest path against the fastest peer, the targets' comparison."""
    best = []
    keys = sorted(
        {(r["model"], r["precision"], r["batch"]) for r in rows}, key=lambda k: (k[0], _precision_i(k[1]), k[2])
    )
    for model, precision, batch in keys:
        same = [r for r in rows if (r["model"], r["precision"], r["batch"]) == (model, precision, batch)]
        ours = max((r for r in same if r["who"] == "keras_dla"), key=lambda r: r["images_per_s"], default=None)
        peer = max((r for r in same if r["who"] == "peer"), key=lambda r: r["images_per_s"], default=None)
        if ours and peer:
            best.append(
                {
                    "model": model,
                    "precision": precision,
                    "batch": batch,
                    "keras_dla_path": ours["path"],
                    "keras_dla_images_per_s": ours["images_per_s"],
                    "peer_path": peer["path"],
                    "peer_images_per_s": peer["images_per_s"],
                    "ratio": ours["images_per_s"] / peer["images_per_s"],
                }
            )
    return best


def _precision_i(precision):
    return PRECISIONS.index(precision) if precision in PRECISIONS else 9


def _step_rate(job):
    step = (job or {}).get("train_step_s")
    return TRAIN_BATCH / step if step else None


def train_rows(results):
    """One row per (model, precision): keras_dla's `fit` step (and its JAX and PyTorch backends' in float32)
    against timm's SGD step at the same precision, each with its fraction of the machine's limit at that precision
    (the matmul peak over `train_flops`), and the most any implementation at that limit could be ahead of timm."""
    peaks = _peaks(results)
    rows = []
    for model, jobs in results["models"].items():
        for precision, suffix in (("float32", ""), ("bfloat16", "_bf16")):
            keras_job = jobs.get(f"keras_train{suffix}") or {}
            keras_rate = _step_rate(keras_job)
            timm_rate = _step_rate(jobs.get(f"timm_train{suffix}"))
            if keras_rate is None and timm_rate is None:
                continue
            flops = keras_job.get("train_flops")
            limit = peaks[precision] * 1e9 / flops if peaks.get(precision) and flops else None
            row = {
                "model": model,
                "precision": precision,
                "keras_dla_images_per_s": keras_rate,
                "timm_images_per_s": timm_rate,
                "vs_timm": keras_rate / timm_rate if keras_rate and timm_rate else None,
                "limit_images_per_s": limit,
                "keras_dla_of_limit": keras_rate / limit if keras_rate and limit else None,
                "timm_of_limit": timm_rate / limit if timm_rate and limit else None,
                "at_limit_vs_timm": limit / timm_rate if timm_rate and limit else None,
                "keras_dla_peak_rss_mib": keras_job.get("peak_rss_mib"),
                "timm_peak_rss_mib": (jobs.get(f"timm_train{suffix}") or {}).get("peak_rss_mib"),
            }
            if precision == "float32":
                for backend in ("jax", "torch"):
                    row[f"keras_dla_{backend}_images_per_s"] = _step_rate(jobs.get(f"{backend}_train"))
            rows.append(row)
    return rows


def _fmt(value, pattern):
    """`value` formatted by `pattern`; a missing one as "-" in the pattern's width, so the columns stay aligned."""
    if value is None:
        width = pattern.split(".")[0]  # "6.1f" -> "6"
        return "-".rjust(int(width) if width.isdigit() else 0)
    return format(value, pattern)


def print_tables(results):
    peaks = _peaks(results)
    print(
        "\nmatmul peaks (the limits): "
        + ", ".join(f"{p} {_fmt(peaks.get(p), '.0f')} GFLOP/s" for p in PRECISIONS if p in peaks)
        + f"; {results['threads']} threads"
    )
    print("\ninference (images/s)")
    print(
        f"{'model':8s} {'precision':9s} {'path':24s} {'batch':>5s} {'img/s':>8s} {'x peer':>7s} {'x timm':>7s} "
        f"{'limit':>6s}"
    )
    for r in results["inference"]:
        print(
            f"{r['model']:8s} {r.get('precision', '-'):9s} {r['path']:24s} {r['batch']:5d} {r['images_per_s']:8.1f} "
            f"{_fmt(r.get('vs_best_peer'), '7.2f')} {_fmt(r['vs_timm'], '7.2f')} {_fmt(r.get('of_limit'), '6.0%')}"
        )
    if results.get("best"):
        print("\nkeras_dla's fastest path against the fastest peer, per precision (images/s)")
        print(f"{'model':8s} {'precision':9s} {'batch':>5s} {'keras_dla':>34s} {'best peer':>26s} {'ratio':>6s}")
        for r in results["best"]:
            ours = f"{r['keras_dla_path']} {r['keras_dla_images_per_s']:.1f}"
            peer = f"{r['peer_path']} {r['peer_images_per_s']:.1f}"
            print(f"{r['model']:8s} {r['precision']:9s} {r['batch']:5d} {ours:>34s} {peer:>26s} {r['ratio']:6.2f}")
    print(f"\ntraining step, batch {TRAIN_BATCH} (images/s; limit: the matmul peak over the step's FLOPs)")
    print(
        f"{'model':8s} {'precision':9s} {'keras_dla':>10s} {'jax':>6s} {'torch':>6s} {'timm':>8s} {'x timm':>7s} "
        f"{'limit':>6s} {'ours':>5s} {'timm':>5s} {'max x':>6s} {'RSS MiB':>9s} {'timm RSS':>9s}"
    )
    for r in results["training"]:
        print(
            f"{r['model']:8s} {r.get('precision', 'float32'):9s} {_fmt(r['keras_dla_images_per_s'], '10.1f')} "
            f"{_fmt(r.get('keras_dla_jax_images_per_s'), '6.1f')} "
            f"{_fmt(r.get('keras_dla_torch_images_per_s'), '6.1f')} "
            f"{_fmt(r['timm_images_per_s'], '8.1f')} {_fmt(r['vs_timm'], '7.2f')} "
            f"{_fmt(r.get('limit_images_per_s'), '6.1f')} {_fmt(r.get('keras_dla_of_limit'), '5.0%')} "
            f"{_fmt(r.get('timm_of_limit'), '5.0%')} {_fmt(r.get('at_limit_vs_timm'), '6.2f')} "
            f"{_fmt(r['keras_dla_peak_rss_mib'], '9.0f')} {_fmt(r['timm_peak_rss_mib'], '9.0f')}"
        )
    print("\nbuild time and inference peak memory")
    header = (("GFLOP", 6), ("keras s", 8), ("jax s", 6), ("torch s", 7), ("timm s", 7))
    header += (("keras MiB", 10), ("timm MiB", 9), ("ORT MiB", 8))
    print(f"{'model':8s} " + " ".join(f"{h:>{w}s}" for h, w in header))
    for model, jobs in results["models"].items():
        k, t, o = (jobs.get(j) or {} for j in ("keras_inference", "timm_inference", "onnxruntime"))
        j, p = (jobs.get(j) or {} for j in ("jax_inference", "torch_inference"))
        print(
            f"{model:8s} {_fmt(k.get('flops') and k['flops'] / 1e9, '6.2f')} {_fmt(k.get('build_s'), '8.2f')} "
            f"{_fmt(j.get('build_s'), '6.2f')} {_fmt(p.get('build_s'), '7.2f')} "
            f"{_fmt(t.get('build_s'), '7.2f')} {_fmt(k.get('peak_rss_mib'), '10.0f')} "
            f"{_fmt(t.get('peak_rss_mib'), '9.0f')} {_fmt(o.get('peak_rss_mib'), '8.0f')}"
        )


def plot(results, path):
    """One panel per (model, precision): images/s of each path at each batch size, the precision's limit dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = results["inference"]
    models = list(results["models"])
    precisions = [p for p in PRECISIONS if any(r.get("precision", "float32") == p for r in rows)] or ["float32"]
    peaks = _peaks(results)
    batches = results["batches"]
    fig, axes = plt.subplots(
        len(models), len(precisions), figsize=(5.5 * len(precisions), 6.0 * len(models)), squeeze=False
    )
    for row_axes, model in zip(axes, models, strict=True):
        flops = (results["models"][model].get("keras_inference") or {}).get("flops")
        for ax, precision in zip(row_axes, precisions, strict=True):
            paths = sorted(
                {r["path"] for r in rows if r["model"] == model and r.get("precision", "float32") == precision},
                key=_path_order,
            )
            width = 0.8 / max(len(paths), 1)
            for i, p in enumerate(paths):
                values = [
                    next((r["images_per_s"] for r in rows if (r["model"], r["path"], r["batch"]) == (model, p, b)), 0)
                    for b in batches
                ]
                hatch = "" if path_kind(p)[0] == "keras_dla" else "//"
                ax.bar(
                    np.arange(len(batches)) + (i - (len(paths) - 1) / 2) * width, values, width, label=p, hatch=hatch
                )
            if peaks.get(precision) and flops:
                ax.axhline(peaks[precision] * 1e9 / flops, color="black", ls="--", lw=1, label="matmul limit")
            ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
            ax.set_title(f"{model}, {precision}, {results['size']}x{results['size']}")
            ax.set_ylabel("images / s")
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)
    fig.suptitle(
        f"keras_dla (plain bars) and peers (hatched); {results['machine']['cpu']}, {results['threads']} threads, "
        f"{results['date']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="every framework uses this many")
    parser.add_argument("--calls", type=int, default=7, help="at least this many timed calls per median")
    parser.add_argument("--seconds", type=float, default=2.0, help="and at least this long")
    parser.add_argument("--worker-timeout", type=float, default=900, help="seconds before a job is abandoned")
    parser.add_argument("--skip", nargs="*", default=[], choices=[j for j in WORKERS if j != "matmul"])
    parser.add_argument("--jit", action="store_true", help="keras_dla training with XLA on CPU too")
    parser.add_argument("--gpu", action="store_true", help="GPU mode: mixed precision + XLA vs timm AMP")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer matmul sizes")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every job this many times, alternating; report the medians"
    )
    parser.add_argument("--output", default="benchmarks/results")
    parser.add_argument(
        "--report", metavar="JSON", help="print the tables and redraw the chart of an earlier run's performance.json"
    )
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in args.models:
        if name not in MODELS + ("dla46_c", "dla60", "dla102", "dla102x"):
            parser.error(f"unknown model {name!r}")
    if args.threads < 1 or args.size < 32 or min(args.batches) < 1 or args.rounds < 1:
        parser.error("--threads, --batches and --rounds should be positive and --size at least 32")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return
    if args.report:
        with open(args.report, encoding="utf-8") as f:
            results = json.load(f)
        print_tables(results)
        plot(results, os.path.join(os.path.dirname(args.report), "performance.png"))
        return
    started = time.perf_counter()
    results = collect(args)
    results.update(
        date=datetime.date.today().isoformat(),
        threads=args.threads,
        size=args.size,
        batches=args.batches,
        rounds=args.rounds,
        gpu=args.gpu,
        machine={"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()},
    )
    results["inference"] = rows_of(results, args.batches)
    results["best"] = best_rows(results["inference"])
    results["training"] = train_rows(results)
    results["wall_s"] = time.perf_counter() - started
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "performance.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print_tables(results)
    plot(results, os.path.join(args.output, "performance.png"))
    print(f"\nwrote {args.output}/performance.json and performance.png in {results['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
