"""`keras-dla export`: a DLA classifier, DLA-Up model or saved `.keras` model as a SavedModel, TFLite, ONNX or
OpenVINO file, with its JSON sidecar (`keras_dla.export.sidecar`: what to feed it, what it returns, the class names).

The exported artefact is then run next to the Keras model (`keras_dla.export.verify_export`; ONNX files in ONNX
Runtime, OpenVINO files in OpenVINO) and its contract, size, parity and single-image latency are printed. Parity
is measured on real images when `--representative` gives them (images the int8 calibration did not use), and
always on random ones.
"""

import json
import os
import zipfile
import zlib

# tf.data pipelines, SavedModel and TFLite: run on the TensorFlow backend (see keras_dla.cli).
NEEDS_TENSORFLOW = True

FORMATS = ("saved_model", "tflite", "onnx", "openvino")
# The quantisations of each format that has any.
QUANTIZATIONS = {"tflite": ("float16", "dynamic", "int8"), "onnx": ("int8",), "openvino": ("int8",)}
UP_SUFFIX = "up"


def register(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="export a model as a SavedModel, TFLite, ONNX or OpenVINO file and measure its parity and latency",
        description=(
            "Export a keras_dla model (a classifier such as dla34, a DLA-Up segmentation model such as dla34up, "
            "or the path of a saved .keras model) as a TensorFlow SavedModel, a TFLite file, an ONNX file or an "
            "OpenVINO IR model (.xml and .bin), with a JSON sidecar beside it (OUTPUT.json) saying what to feed it; "
            "then run it next to the Keras model and print its contract, size, parity and latency."
        ),
    )
    parser.add_argument("--model", required=True, help="dla34 ... dla60_res2next, dla34up ..., or a .keras file")
    parser.add_argument(
        "--weights",
        default=None,
        help="none, imagenet, or a weights file (.safetensors, .pth, .weights.h5); a .keras model holds its own",
    )
    parser.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    parser.add_argument(
        "--quantize",
        default=None,
        help="TFLite: float16, dynamic or int8; ONNX: int8 (ONNX Runtime static quantisation, QDQ); OpenVINO: int8 "
        "(NNCF)",
    )
    parser.add_argument(
        "--representative",
        default=None,
        metavar="DATASET_OR_FOLDER",
        help="real images for int8 calibration and for parity: fashion_mnist or a folder of images",
    )
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None, help="static input size")
    parser.add_argument(
        "--output", required=True, help="the SavedModel directory, .tflite, .onnx or OpenVINO .xml file to create"
    )
    parser.add_argument(
        "--labels",
        default=None,
        metavar="FILE",
        help="class names for the sidecar, one a line (default: ImageNet's for 1000 classes, else 0..N-1)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--classes", type=int, default=None, help="classes of a model built here (default 1000 / 19)")
    parser.add_argument("--down-ratio", type=int, default=2, help="DLA-Up output stride (2, 4, 8 or 16)")
    parser.add_argument("--logits", action="store_true", help="export scores before the softmax")
    parser.add_argument(
        "--uint8-input", action="store_true", help="the artefact takes uint8 pixels and applies --preprocess itself"
    )
    parser.add_argument(
        "--preprocess",
        default="imagenet",
        help="what turns pixels into model inputs: imagenet (default), fashion_mnist, unit (x/255) or none",
    )
    parser.add_argument("--integer-io", action="store_true", help="with --quantize int8: int8 input and output too")
    parser.add_argument("--calibration-steps", type=int, default=200, help="representative images used (int8)")
    parser.add_argument("--samples", type=int, default=16, help="images compared with the Keras model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random parity images")
    parser.set_defaults(func=run)


def _validate(args):
    if args.weights is None and not _is_saved_model(args.model):
        raise ValueError(
            f"--weights is needed for a model built here: none, imagenet or a weights file. Received: --model "
            f"{args.model} and no --weights"
        )
    if args.format not in FORMATS:
        raise ValueError(f"--format should be one of {', '.join(FORMATS)}. Received: --format {args.format}")
    if args.quantize is not None and args.quantize not in QUANTIZATIONS.get(args.format, ()):
        offered = "; ".join(f"{f}: {', '.join(q)}" for f, q in QUANTIZATIONS.items())
        raise ValueError(
            f"--quantize {args.quantize} does not apply to --format {args.format} ({offered}). "
            f"Received: --quantize {args.quantize} with --format {args.format}"
        )
    if args.labels is not None and not os.path.isfile(args.labels):
        raise ValueError(f"--labels should be a text file of class names. Received: --labels {args.labels}")
    if args.quantize == "int8" and not args.representative:
        raise ValueError(
            "--quantize int8 calibrates on real images; pass --representative fashion_mnist or a folder of images. "
            "Received: no --representative"
        )
    if args.integer_io and args.format != "tflite":
        raise ValueError(f"--integer-io applies to --format tflite only. Received: --format {args.format}")
    if args.integer_io and args.quantize != "int8":
        raise ValueError(f"--integer-io needs --quantize int8. Received: --quantize {args.quantize}")
    suffix = {"onnx": ".onnx", "openvino": ".xml"}.get(args.format)
    if suffix and not args.output.endswith(suffix):
        raise ValueError(f"--format {args.format} writes a {suffix} file. Received: --output {args.output}")
    if args.input_size is not None and min(args.input_size) < 1:
        raise ValueError(f"--input-size should be two positive integers. Received: --input-size {args.input_size}")
    for flag, value in (("--samples", args.samples), ("--calibration-steps", args.calibration_steps)):
        if value < 1:
            raise ValueError(f"{flag} should be a positive integer. Received: {flag} {value}")
    if os.path.lexists(args.output) and not args.overwrite:
        raise ValueError(f"--output exists; pass --overwrite to replace it. Received: --output {args.output}")
    from keras_dla import checks

    checks.check_output(args.output, "folder" if args.format == "saved_model" else "file", what="--output")


def _is_saved_model(name):
    return name.endswith(".keras") or os.path.sep in name


def _weights(value):
    if value is None or value == "none":
        return None
    if value == "imagenet":
        return value
    if not os.path.isfile(value):
        raise FileNotFoundError(f"--weights should be none, imagenet or an existing file. Received: --weights {value}")
    return value


# What `model.save("x.keras")` writes into the zip archive (Keras' saving_lib): the model's configuration, the
# Keras version that wrote it, and the weights (an HDF5 file, or NumPy's .npz).
KERAS_ARCHIVE_CONFIG = "config.json"
KERAS_ARCHIVE_WEIGHTS = ("model.weights.h5", "model.weights.npz")
KERAS_CONFIG_LIMIT = 64 << 20  # bounds what a zip bomb named config.json could unpack into memory


def check_keras_archive(path):
    """Raises ValueError, naming `path`, unless it is a zip archive laid out as Keras saves a `.keras` file."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # a zip's directory is at its end: a cut-short archive has none
                raise ValueError(
                    "An incomplete .keras file: it starts as a zip archive but its end is missing, as in a "
                    f"cut-short copy or download. Received: --model {path}"
                )
        raise ValueError(f"Not a Keras .keras file (those are zip archives). Received: --model {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [] if KERAS_ARCHIVE_CONFIG in names else [KERAS_ARCHIVE_CONFIG]
            if not names.intersection(KERAS_ARCHIVE_WEIGHTS):
                missing.append(" or ".join(KERAS_ARCHIVE_WEIGHTS))
            if missing:
                raise ValueError(
                    f"A zip archive but not a Keras .keras file: it has no {' and no '.join(missing)} (Keras saves "
                    f"a model's configuration and weights there). Received: --model {path}"
                )
            if archive.getinfo(KERAS_ARCHIVE_CONFIG).file_size > KERAS_CONFIG_LIMIT:
                raise ValueError(
                    f"Not a Keras .keras file: its {KERAS_ARCHIVE_CONFIG} would unpack to more than "
                    f"{KERAS_CONFIG_LIMIT >> 20} MiB. Received: --model {path}"
                )
            text = archive.read(KERAS_ARCHIVE_CONFIG)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        raise ValueError(
            f"A damaged .keras file: its zip archive cannot be read ({e}). Received: --model {path}"
        ) from None
    try:
        config = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        config = None
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
        raise ValueError(
            f"Not a Keras .keras file: its {KERAS_ARCHIVE_CONFIG} is not a Keras model configuration (a JSON "
            f"object with a class_name). Received: --model {path}"
        )


def build_model(name, weights, input_size=None, classes=None, down_ratio=2, logits=False):
    """The Keras model `keras-dla export --model name` exports, with a static input when `input_size` is given."""
    import keras

    from keras_dla.models import dla, dla_up

    if _is_saved_model(name):
        if not os.path.isfile(name):
            raise FileNotFoundError(f"No saved model at this path. Received: --model {name}")
        if not name.endswith((".keras", ".h5")):
            raise ValueError(f"A saved model should be a .keras file (or a legacy .h5 model). Received: --model {name}")
        if name.endswith(".keras"):
            check_keras_archive(name)
        if weights is not None:
            raise ValueError(f"A .keras file holds its weights; use --weights none. Received: --weights {weights}")
        from keras_dla.models import fast_paths

        try:
            # A file Keras loads holds plain layers: give them TensorFlow's fast computations back.
            return fast_paths.attach(keras.saving.load_model(name))
        except Exception as e:  # a file made elsewhere: Keras, h5py and zipfile raise many kinds, over many lines
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise ValueError(
                f"Cannot load the saved model ({type(e).__name__}: {first}). Received: --model {name}"
            ) from None
    channels = 3
    if weights is not None and weights.endswith(".weights.h5"):
        from keras_dla.weights import convert

        # A keras_dla weights file of the user's own may be of a grey (or other) model: build the model it fits.
        channels = convert.weights_file_input_channels(weights) or 3
    if name in dla.MODEL_CONFIGS:
        return dla.DLA(
            name,
            weights=weights,
            input_shape=(*(input_size or (dla.DEFAULT_SIZE, dla.DEFAULT_SIZE)), channels),
            classes=1000 if classes is None else classes,
            classifier_activation=None if logits else "softmax",
        )
    backbone = name[: -len(UP_SUFFIX)]
    if name.endswith(UP_SUFFIX) and backbone in dla.MODEL_CONFIGS:
        return dla_up.DLAUp(
            backbone,
            weights=weights,
            input_shape=(*(input_size or (None, None)), channels),
            classes=19 if classes is None else classes,
            down_ratio=down_ratio,
            activation=None if logits else "softmax",
        )
    names = list(dla.MODEL_CONFIGS) + [f"{v}{UP_SUFFIX}" for v in dla.MODEL_CONFIGS]
    raise ValueError(f"Unknown model; expected one of {names} or a .keras file. Received: --model {name}")


def run(args):
    _validate(args)
    weights = _weights(args.weights)

    import numpy as np

    from keras_dla import export
    from keras_dla.export import preprocessing

    preprocess = preprocessing.resolve_preprocess(args.preprocess)
    model = build_model(
        args.model,
        weights,
        input_size=tuple(args.input_size) if args.input_size else None,
        classes=args.classes,
        down_ratio=args.down_ratio,
        logits=args.logits,
    )
    shape = tuple(model.inputs[0].shape)
    height, width = args.input_size or shape[1:3]
    if height is None or width is None:
        if args.format == "tflite":
            raise ValueError(f"TFLite needs a static input; pass --input-size H W. Received: --model {args.model}")
        height, width = 224, 224  # a dynamic SavedModel is compared at this size
    channels = shape[-1]
    if channels != 3 and args.preprocess == "imagenet":
        raise ValueError(
            f"--preprocess imagenet normalises RGB images and the model takes {channels} channel(s); pass "
            "--preprocess fashion_mnist, unit or none. Received: --preprocess imagenet"
        )

    real = None
    if args.representative:
        from keras_dla.training.images import load_images

        count = args.calibration_steps + args.samples
        real = load_images(args.representative, (height, width), channels, count=count)
    # The preprocessing by name, so that the sidecar can state it.
    kwargs = dict(
        uint8_input=args.uint8_input, preprocess=args.preprocess, labels=args.labels, overwrite=args.overwrite
    )

    def as_input(pixels):  # the form the artefact takes: uint8 pixels, or what the Keras model takes
        return pixels if args.uint8_input else np.asarray(preprocess(pixels.astype("float32")))

    calibration = None
    if args.quantize == "int8":
        calibration = as_input(real[: max(1, len(real) - args.samples)])
    if args.format == "saved_model":
        path = export.export_saved_model(model, args.output, input_size=args.input_size, **kwargs)
    elif args.format in ("onnx", "openvino"):
        from keras_dla.export import onnx_openvino

        writer = onnx_openvino.export_onnx if args.format == "onnx" else onnx_openvino.export_openvino
        path = writer(
            model,
            args.output,
            input_size=(height, width) if args.quantize == "int8" else args.input_size,
            quantization=args.quantize,
            representative_data=calibration,
            calibration_steps=args.calibration_steps,
            verbose=True,  # the calibration's progress
            **kwargs,
        )
    else:
        path = export.export_tflite(
            model,
            args.output,
            input_size=(height, width),
            quantization=args.quantize,
            representative_data=calibration,
            calibration_steps=args.calibration_steps,
            integer_io=args.integer_io,
            **kwargs,
        )
    print(f"exported {args.model} ({model.count_params():,} parameters) to {path}")
    from keras_dla.export import sidecar

    print(f"contract ({sidecar.sidecar_path(path)}):")
    for line in sidecar.summary(sidecar.read_sidecar(path)):
        print(f"  {line}")

    checks = []
    if real is not None:
        held_out = real[-args.samples :] if len(real) > args.samples else real
        checks.append((f"{len(held_out)} real images from {args.representative}", as_input(held_out)))
    rng = np.random.default_rng(args.seed)
    pixels = rng.integers(0, 256, size=(args.samples, height, width, channels), dtype=np.uint8)
    checks.append((f"{args.samples} random images", as_input(pixels)))
    for label, inputs in checks:
        report = export.verify_export(model, path, inputs, preprocess=preprocess)
        agreement = f"  {report.agreement()}" if report.agreement() else ""
        print(
            f"parity on {label}: max abs diff {report.max_abs_diff:.3g} (relative {report.max_rel_diff:.3g}){agreement}"
        )
    print(f"size: {report.size_bytes / 2**20:.2f} MiB ({report.size_bytes:,} bytes)")
    print(
        f"latency (one {height}x{width} image, median of 10 runs): {report.latency_ms:.2f} ms exported, "
        f"{report.keras_latency_ms:.2f} ms Keras"
    )
    return 0
