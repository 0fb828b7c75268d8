"""keras_dla against timm and ONNX Runtime, side by side on this machine: inference, training, build time, memory.

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

Paths timed (images per second):
- `keras_dla fast`: `keras_dla.inference_model(model).serve`, batch norm folded, a traced `tf.function`.
- `keras_dla predict`: plain `model.predict(x)` on the unmodified model.
- `tflite fp32` / `tflite int8`: `keras_dla.export.export_tflite` files run by the LiteRT interpreter.
- `timm eager`: timm's model under `torch.inference_mode()`.
- `onnxruntime`: timm's model exported with `torch.onnx.export`, run by ONNX Runtime (all graph optimisations).
- training: one SGD step at batch 16, keras_dla `model.fit` against timm forward/backward/step.
- `(jax)` / `(torch)`: the same keras_dla paths (`serve`, `predict`, the `fit` step) on Keras' JAX and PyTorch
  backends, each job in a process with that `KERAS_BACKEND`; TensorFlow's jobs run with KERAS_BACKEND=tensorflow.
The matmul peak is TensorFlow's float32 matmul at its best square size; the ceiling of a model is that peak over the
model's FLOPs per image (2 x multiply-adds of its convolutions and dense layers).

Writes `<output>/performance.json` and `<output>/performance.png`, and prints the table.
Needs the test extra plus the bench extra: `pip install -e ".[test,bench]"`.
"""

import argparse
import datetime
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


def model_flops(model):
    """FLOPs per image (2 x multiply-adds) of the Conv2D and Dense layers of a built Keras model."""
    import keras

    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            flops += model_flops(layer)
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin_per_group, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            flops += 2 * h * w * kh * kw * cin_per_group * cout
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return flops


# ------------------------------------------------------------------------------------------------------------
# Workers: each prints one JSON object on its last line


def work_matmul(args):
    import tensorflow as tf

    _tf_threads(args.threads)
    best = {}
    sizes = (512, 1024, 2048) if args.quick else (1024, 2048, 3072, 4096)
    for n in sizes:
        a = tf.random.normal((n, n))
        b = tf.random.normal((n, n))
        matmul = tf.function(lambda a=a, b=b: tf.matmul(a, b))
        seconds = time_call(lambda matmul=matmul: matmul().numpy(), min_calls=5, min_seconds=1.0)
        best[n] = 2 * n**3 / seconds / 1e9
    return {"gflops": max(best.values()), "by_size": best}


def _keras_model(args, **kwargs):
    import keras_dla

    start = time.perf_counter()
    model = keras_dla.models.dla.BUILDERS[args.model](weights=None, input_shape=(args.size, args.size, 3), **kwargs)
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


def work_keras_train(args):
    import keras
    import numpy as np
    import tensorflow as tf

    _tf_threads(args.threads)
    if args.gpu:
        keras.mixed_precision.set_global_policy("mixed_float16")
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
    return {"train_step_s": step_s, "peak_rss_mib": peak_rss_mib()}


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
    calibration = random_images(8, args.size, seed=2)
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


def work_timm_train(args):
    import torch

    model, _, device = _timm_model(args)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(enabled=bool(args.gpu))
    x = _torch_images(TRAIN_BATCH, args.size, device, args.gpu)
    y = torch.randint(0, CLASSES, (TRAIN_BATCH,), generator=torch.Generator().manual_seed(1)).to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, enabled=bool(args.gpu)):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        float(loss)
        _sync(device)

    seconds = time_call(step, min_calls=max(args.calls, 3), min_seconds=0)
    return {"train_step_s": seconds, "peak_rss_mib": peak_rss_mib()}


def work_onnxruntime(args):
    import onnxruntime as ort
    import torch

    model, _, _ = _timm_model(args)
    model.eval()
    result = {"rates": {}}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
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
        result["export_s"] = time.perf_counter() - start
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        for batch in args.batches:
            x = random_images(batch, args.size).transpose(0, 3, 1, 2).copy()
            result["rates"].setdefault("onnxruntime", {})[batch] = batch / time_call(
                lambda x=x: session.run(None, {"images": x}), min_calls=args.calls, min_seconds=args.seconds
            )
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
    "keras_train": work_keras_train,
    "jax_inference": work_backend_inference,
    "jax_train": work_backend_train,
    "torch_inference": work_backend_inference,
    "torch_train": work_backend_train,
    "tflite": work_tflite,
    "timm_inference": work_timm_inference,
    "timm_train": work_timm_train,
    "onnxruntime": work_onnxruntime,
}
CPU_ONLY = ("tflite", "onnxruntime")
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


def rows_of(results, batches):
    """The table: one row per (model, path, batch) with images/s and the ratios the targets are about."""
    peak = results.get("matmul_gflops")
    rows = []
    for model, jobs in results["models"].items():
        rates = {}
        for job in jobs.values():
            for path, by_batch in ((job or {}).get("rates") or {}).items():
                rates[path] = {int(b): r for b, r in by_batch.items()}
        flops = (jobs.get("keras_inference") or {}).get("flops")
        for path, by_batch in rates.items():
            for batch in batches:
                rate = by_batch.get(batch)
                if rate is None:
                    continue
                timm = rates.get("timm eager", {}).get(batch)
                onnx = rates.get("onnxruntime", {}).get(batch)
                ceiling = peak * 1e9 / flops if peak and flops else None
                rows.append(
                    {
                        "model": model,
                        "path": path,
                        "batch": batch,
                        "images_per_s": rate,
                        "vs_timm": rate / timm if timm else None,
                        "vs_onnxruntime": rate / onnx if onnx else None,
                        "of_matmul_ceiling": rate / ceiling if ceiling else None,
                    }
                )
    return rows


def train_rows(results):
    rows = []
    for model, jobs in results["models"].items():
        keras_step = (jobs.get("keras_train") or {}).get("train_step_s")
        timm_step = (jobs.get("timm_train") or {}).get("train_step_s")
        backend_steps = {b: (jobs.get(f"{b}_train") or {}).get("train_step_s") for b in ("jax", "torch")}
        rows.append(
            {
                "model": model,
                "keras_dla_images_per_s": TRAIN_BATCH / keras_step if keras_step else None,
                **{f"keras_dla_{b}_images_per_s": TRAIN_BATCH / t if t else None for b, t in backend_steps.items()},
                "timm_images_per_s": TRAIN_BATCH / timm_step if timm_step else None,
                "vs_timm": timm_step / keras_step if keras_step and timm_step else None,
                "keras_dla_peak_rss_mib": (jobs.get("keras_train") or {}).get("peak_rss_mib"),
                "timm_peak_rss_mib": (jobs.get("timm_train") or {}).get("peak_rss_mib"),
            }
        )
    return rows


def _fmt(value, pattern):
    return "-" if value is None else format(value, pattern)


def print_tables(results):
    print(f"\nmatmul peak: {_fmt(results.get('matmul_gflops'), '.0f')} GFLOP/s float32, {results['threads']} threads")
    print("\ninference (images/s)")
    print(f"{'model':8s} {'path':18s} {'batch':>5s} {'img/s':>8s} {'x timm':>7s} {'x ORT':>7s} {'ceiling':>8s}")
    for r in results["inference"]:
        print(
            f"{r['model']:8s} {r['path']:18s} {r['batch']:5d} {r['images_per_s']:8.1f} {_fmt(r['vs_timm'], '7.2f')} "
            f"{_fmt(r['vs_onnxruntime'], '7.2f')} {_fmt(r['of_matmul_ceiling'], '8.0%')}"
        )
    print(f"\ntraining step, batch {TRAIN_BATCH} (images/s)")
    print(
        f"{'model':8s} {'keras_dla':>10s} {'jax':>6s} {'torch':>6s} {'timm':>8s} {'x timm':>7s} "
        f"{'RSS MiB':>9s} {'timm RSS':>9s}"
    )
    for r in results["training"]:
        print(
            f"{r['model']:8s} {_fmt(r['keras_dla_images_per_s'], '10.1f')} "
            f"{_fmt(r.get('keras_dla_jax_images_per_s'), '6.1f')} "
            f"{_fmt(r.get('keras_dla_torch_images_per_s'), '6.1f')} "
            f"{_fmt(r['timm_images_per_s'], '8.1f')} "
            f"{_fmt(r['vs_timm'], '7.2f')} {_fmt(r['keras_dla_peak_rss_mib'], '9.0f')} "
            f"{_fmt(r['timm_peak_rss_mib'], '9.0f')}"
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = results["inference"]
    models = list(results["models"])
    paths = sorted({r["path"] for r in rows}, key=lambda p: (not p.startswith("keras"), p))
    batches = results["batches"]
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.5), squeeze=False)
    width = 0.8 / max(len(paths), 1)
    for ax, model in zip(axes[0], models, strict=True):
        for i, p in enumerate(paths):
            values = [
                next((r["images_per_s"] for r in rows if (r["model"], r["path"], r["batch"]) == (model, p, b)), 0)
                for b in batches
            ]
            ax.bar(np.arange(len(batches)) + (i - (len(paths) - 1) / 2) * width, values, width, label=p)
        flops = (results["models"][model].get("keras_inference") or {}).get("flops")
        if results.get("matmul_gflops") and flops:
            ax.axhline(results["matmul_gflops"] * 1e9 / flops, color="black", ls="--", lw=1, label="matmul ceiling")
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        ax.set_title(f"{model}, {results['size']}x{results['size']}")
        ax.set_ylabel("images / s")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{results['machine']['cpu']}, {results['threads']} threads, {results['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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
