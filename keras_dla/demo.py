"""The demo: a real DLA run on real data in minutes, from training to checked TFLite and SavedModel files.

`keras-dla demo` trains a DLA classifier on the real Fashion-MNIST images with `model.fit` under a
MirroredStrategy over the available devices (`keras_dla.training`, resumable like `keras-dla train`), evaluates
it on the 10,000 test images, exports a SavedModel and a TFLite file (`keras_dla.export`) and checks them against
the Keras model on real test images, then writes into the output folder:

    report.md, report.json    accuracy, per-class accuracy, timings of every phase, export parity
    curves.png                loss and accuracy per epoch (train, and test as monitored during training)
    confusion_matrix.png      on the 10,000 test images
    samples.png               test images with the predicted and true classes
    model.weights.h5          the final weights; saved_model/ and model.tflite, the exports
    train/                    the training run folder (backup, history.csv, TensorBoard logs)

The reported accuracy is that of the final epoch's weights, not of the epoch that scored best on the test
set (the test set is monitored during training, never used to choose). `keras-dla demo --task segmentation`
does the same for DLA-Up on "Fashion-MNIST scenes" (composed 64x64 canvases of real garments, see
`keras_dla.training.fashion_mnist`), reporting mean IoU and pixel accuracy on 1,000 test scenes.
"""

import json
import os
import platform
import time

import keras
import numpy as np
import tensorflow as tf

from keras_dla import checks, export, files
from keras_dla.training import datasets, distribute, evaluation, fit, plots, run_folder
from keras_dla.training.choices import IGNORE_LABEL
from keras_dla.training.config import TrainConfig

# The defaults are sized for a CPU: the small DLA-46-C (DLA-46-C-Up) at 32x32 (64x64 scenes) for a few epochs. So
# few epochs underfit with the authors' SGD and schedule, hence AdamW, label smoothing and a cosine schedule.
DEFAULTS = {
    "classification": dict(
        model="dla46_c", epochs=10, batch_size=256, lr=8e-3, image_size=32, optimizer="adamw", weight_decay=0.05
    ),
    "segmentation": dict(
        model="dla46_cup", epochs=7, batch_size=32, lr=2e-3, image_size=64, optimizer="adamw", weight_decay=0.05
    ),
}
LABEL_SMOOTHING = 0.1
STEPS_PER_EXECUTION = 10  # train steps per graph call: the small model's per-step overhead is a large share
MAX_CPU_REPLICAS = 4  # on a CPU the demo trains one single-threaded replica per core, up to this many
PARITY_IMAGES = 256  # real test images the exports are compared on


def _default_devices():
    """One logical device per core on a CPU-only machine (up to MAX_CPU_REPLICAS), None (every GPU) otherwise."""
    if tf.config.list_physical_devices("GPU"):
        return None
    wanted = max(1, min(os.cpu_count() or 1, MAX_CPU_REPLICAS))
    try:
        distribute.configure_devices(wanted)
    except ValueError:  # TensorFlow already runs in this process (a notebook, the tests): keep its devices
        return None
    return wanted


def _timer():
    start = time.perf_counter()
    return lambda: round(time.perf_counter() - start, 1)


def _plain_copy(model, build):
    """The trained model rebuilt outside the strategy scope (no mirrored variables) for export."""
    plain = build()
    plain.set_weights(model.get_weights())
    return plain


def _export_and_check(plain, output, inputs, timings):
    """SavedModel and TFLite exports of `plain`, each compared with it on `inputs` (real test images)."""
    clock = _timer()
    saved = export.export_saved_model(plain, os.path.join(output, "saved_model"), overwrite=True)
    lite = export.export_tflite(plain, os.path.join(output, "model.tflite"), overwrite=True)
    timings["export_s"] = clock()
    clock = _timer()
    parity = {}
    for name, path in (("saved_model", saved), ("tflite", lite)):
        report = export.verify_export(plain, path, inputs, latency_runs=5)
        parity[name] = {
            "path": os.path.relpath(report.path, output),
            "size_mib": round(report.size_bytes / 2**20, 3),
            "images": report.samples,
            "max_abs_diff": report.max_abs_diff,
            "top1_agreement": report.top1_agreement,
            "pixel_agreement": report.pixel_agreement,
            "latency_ms": round(report.latency_ms, 3),
            "keras_latency_ms": round(report.keras_latency_ms, 3),
        }
    timings["export_check_s"] = clock()
    return parity


def run_demo(
    output="dla_demo",
    *,
    task="classification",
    model=None,
    epochs=None,
    batch_size=None,
    lr=None,
    image_size=None,
    train_limit=None,
    test_limit=None,
    devices=None,
    seed=0,
    verbose="auto",
):
    """Runs the demo into `output` and returns the report dict (also in output/report.json).

    Args:
        output: the output folder; a demo killed midway resumes its training there when run again.
        task: `"classification"` (DLA on Fashion-MNIST) or `"segmentation"` (DLA-Up on Fashion-MNIST scenes).
        model, epochs, batch_size, lr, image_size: override `DEFAULTS[task]`.
        train_limit, test_limit: use only the first examples (quick runs, tests); the defaults use all of them.
        devices: `--devices` of `keras-dla train` (split the CPU into logical devices).
        seed: seed of the data order, augmentation and initialisation.
    """
    task = checks.one_of("task", task, DEFAULTS, what="demo task")
    checks.check_output(output, "folder", what="`output`")
    settings = dict(DEFAULTS[task])
    overrides = dict(model=model, epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size)
    # `is not None`: a 0 given on purpose goes on to the checks (`train` names it) instead of meaning "default".
    settings.update({k: v for k, v in overrides.items() if v is not None})
    test_limit = checks.positive_int("test_limit", test_limit, optional=True)  # now: it is read after training
    segmentation = task == "segmentation"
    dataset = "fashion_mnist_scenes" if segmentation else "fashion_mnist"
    config = TrainConfig(
        task=task,
        model=settings["model"],
        dataset=dataset,
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        schedule="cosine",
        output=os.path.join(output, "train"),
        strategy="mirrored",
        devices=_default_devices() if devices is None else devices,
        image_size=settings["image_size"],
        seed=seed,
        optimizer=settings["optimizer"],
        weight_decay=settings["weight_decay"],
        label_smoothing=0.0 if segmentation else LABEL_SMOOTHING,
        steps_per_execution=STEPS_PER_EXECUTION,
        limit=train_limit,
        verbose=verbose,
        # A few epochs learn faster from flips alone than with the random shifts, scales and rotations of
        # longer runs.
        augment="flip",
    )
    total = _timer()
    timings = {}

    clock = _timer()
    result = fit.train(config)  # checks every argument first; creates output/train
    timings["train_s"] = clock()
    os.makedirs(output, exist_ok=True)
    model = result.pop("model_object")
    size = settings["image_size"]

    clock = _timer()
    load = datasets.segmentation_data if segmentation else datasets.classification_data
    size_arg = dict(crop_size=size) if segmentation else dict(image_size=size)
    test_ds, info = load(dataset, split="validation", batch_size=250, limit=test_limit, **size_arg)
    scores, labels = evaluation.predict_dataset(model, test_ds)
    predictions = np.argmax(scores, axis=-1)
    matrix = evaluation.confusion_matrix(labels, predictions, info.num_classes, ignore=IGNORE_LABEL)
    timings["evaluate_s"] = clock()

    report = {
        "task": task,
        "model": settings["model"],
        "dataset": dataset,
        "test_examples": int(len(labels)),
        "epochs": result["epochs_completed"],
        "batch_size": settings["batch_size"],
        "replicas": result["replicas"],
        "strategy": result["strategy"],
        "input_size": size,
        "parameters": int(model.count_params()),
    }
    names = info.class_names
    if segmentation:
        ious = evaluation.iou_per_class(matrix)
        report["mean_iou"] = float(np.nanmean(ious))
        report["pixel_accuracy"] = float(np.trace(matrix) / max(matrix.sum(), 1))
        report["iou_per_class"] = {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, ious, strict=True)}
    else:
        report["test_accuracy"] = float(np.mean(predictions == labels))
        per_class = evaluation.accuracy_per_class(matrix)
        report["accuracy_per_class"] = {n: float(v) for n, v in zip(names, per_class, strict=True)}

    # Export a replica-free copy of the trained model and check both artefacts on real test images.
    builder = (
        (lambda: fit.build_segmenter(config.model, info.num_classes, (size, size, 1), "none", 2))
        if segmentation
        else (lambda: fit.build_classifier(config.model, info.num_classes, (size, size, 1), "none"))
    )
    plain = _plain_copy(model, builder)
    run_folder.save_weights_atomically(plain, os.path.join(output, "model.weights.h5"))
    parity_images = np.concatenate([x.numpy() for x, _ in test_ds.take(-(-PARITY_IMAGES // 250))])[:PARITY_IMAGES]
    report["export"] = _export_and_check(plain, output, parity_images, timings)

    clock = _timer()
    plots.plot_history(
        run_folder.read_history(os.path.join(config.output, "history.csv")),
        os.path.join(output, "curves.png"),
        title=f"{settings['model']} on {dataset} (validation = test split, monitored only)",
    )
    plots.plot_confusion(matrix, names, os.path.join(output, "confusion_matrix.png"))
    raw = np.concatenate([x.numpy() for x, _ in test_ds.take(1)])[..., 0] * info.std[0] + info.mean[0]
    if segmentation:
        plots.plot_segmentation_samples(raw, labels, predictions, info.num_classes, os.path.join(output, "samples.png"))
    else:
        plots.plot_samples(raw, labels, predictions, names, os.path.join(output, "samples.png"))
    timings["pictures_s"] = clock()
    timings["total_s"] = total()
    report["timings"] = timings
    report["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "devices": [d.name for d in tf.config.list_logical_devices() if d.device_type in ("CPU", "GPU")],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    files.write_text(os.path.join(output, "report.json"), json.dumps(report, indent=2))
    files.write_text(os.path.join(output, "report.md"), format_report(report))
    return report


def format_report(report):
    """The report as Markdown."""
    lines = [f"# keras_dla demo: {report['model']} on {report['dataset']}", ""]
    if report["task"] == "classification":
        lines.append(f"- test accuracy: **{100 * report['test_accuracy']:.2f}%** on {report['test_examples']} images")
    else:
        lines.append(
            f"- mean IoU: **{100 * report['mean_iou']:.2f}%**, pixel accuracy {100 * report['pixel_accuracy']:.2f}% "
            f"on {report['test_examples']} test scenes"
        )
    lines += [
        f"- {report['epochs']} epochs, global batch {report['batch_size']}, {report['replicas']} replica(s) with "
        f"{report['strategy']}, input {report['input_size']}x{report['input_size']}, "
        f"{report['parameters']:,} parameters",
        "- timings (s): " + ", ".join(f"{k[:-2]} {v}" for k, v in report["timings"].items()),
        "",
        "| export | size (MiB) | images | max abs diff | agreement | latency (ms) | Keras latency (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, p in report["export"].items():
        agreement = p["top1_agreement"] if p["top1_agreement"] is not None else p["pixel_agreement"]
        lines.append(
            f"| {name} | {p['size_mib']} | {p['images']} | {p['max_abs_diff']:.3g} | {100 * agreement:.2f}% | "
            f"{p['latency_ms']} | {p['keras_latency_ms']} |"
        )
    per_class = report.get("accuracy_per_class") or report.get("iou_per_class")
    lines += ["", "| class | " + ("accuracy" if "accuracy_per_class" in report else "IoU") + " |", "|---|---|"]
    for name, value in per_class.items():
        lines.append(f"| {name} | {'-' if value is None else f'{100 * value:.2f}%'} |")
    machine = report["machine"]
    lines += [
        "",
        f"Machine: {machine['platform']}, {machine['cpus']} CPUs, devices {machine['devices']}, "
        f"TensorFlow {machine['tensorflow']}, Keras {machine['keras']}.",
        "",
    ]
    return "\n".join(lines)
