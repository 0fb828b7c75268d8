"""`keras-dla predict`: the top classes of images, from a DLA variant, a `.keras` file or an exported artefact.

A variant name (`dla34`, with `--weights`) is an ImageNet classifier evaluated as the authors did. A `.keras` file
holds its weights; it takes ImageNet-normalised RGB images unless it normalises them itself (a builder's
`include_preprocessing`). An exported artefact (a SavedModel folder, `.tflite`, `.onnx` or OpenVINO `.xml`) is
fed as its JSON sidecar says (`keras_dla.export.sidecar`: resize and crop, normalisation or raw pixels, class names)
and run in its own runtime (`keras_dla.export.verify`). Each prints the same lines.
"""

import os
import struct

RESIZE = 256  # shorter side, bilinear: crop_pct 0.875 of the authors' evaluation
CROP = 224
BATCH = 32  # images decoded and classified at a time: memory stays flat and results print as they come
# Bounds on what one image may cost, from the size its header gives (before decoding): the decoded pixels
# (uint8, then float32 for the resize), and the long-to-short side ratio, which sets the resized size (a 1x20000
# image resized to a shorter side of 256 would be a 15.7 GB float32 tensor).
MAX_PIXELS = 64_000_000
MAX_ASPECT = 64
# What `--model` names when it is not a variant: a SavedModel folder, or a file with one of these endings.
KERAS_SUFFIX = ".keras"
ARTEFACT_SUFFIXES = (".tflite", ".onnx", ".xml")
# Images are decoded and resized by TensorFlow: run on the TensorFlow backend (see keras_dla.cli).
NEEDS_TENSORFLOW = True


def register(subparsers):
    parser = subparsers.add_parser(
        "predict",
        help="classify images with a DLA model, a .keras file or an exported artefact and print the top-5 classes",
        description=(
            "Classify images and print the top-5 classes with names and probabilities. A DLA variant (dla34) is "
            f"evaluated as the authors did: resize the shorter side to {RESIZE} (bilinear), center-crop "
            f"{CROP}x{CROP}, normalise with the ImageNet mean and std. A .keras file is fed the same way, at its "
            "own input size; an exported SavedModel folder, .tflite, .onnx or OpenVINO .xml file as the JSON "
            "sidecar beside it says (keras-dla export writes it), and run in its own runtime."
        ),
    )
    parser.add_argument("images", metavar="IMAGE", nargs="+", help="image files (JPEG, PNG, BMP, GIF)")
    parser.add_argument(
        "--model",
        default="dla34",
        help="a DLA variant (default: dla34), a .keras file, or a SavedModel folder, .tflite, .onnx or .xml file",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="for a variant: 'imagenet' (default), a registered tag, or a checkpoint / .weights.h5 path with 1000 "
        "classes; a .keras file or an exported model holds its own",
    )
    parser.add_argument(
        "--labels",
        default=None,
        metavar="FILE",
        help="class names, one a line, in output order (default: the sidecar's, or ImageNet's for 1000 classes)",
    )
    parser.add_argument("--top", type=int, default=5, help="how many classes to print (default: 5)")
    parser.set_defaults(func=run)


def check_path(path):
    """Refuses, with the path named, a folder or a missing file (before any model is built)."""
    import os

    if os.path.isdir(path):
        raise ValueError(
            f"Cannot read the image: this is a folder; give image files (e.g. folder/*.jpg). Received: {path}"
        )
    if not os.path.exists(path):
        raise ValueError(f"Cannot read the image: no such file. Received: {path}")


def header_size(data):
    """`(height, width)` from the header of a PNG, GIF or BMP image (bytes), or None for other data.

    Read from the fixed fields of each format (PNG's IHDR chunk, GIF's logical screen, BMP's info header), so that
    the size is known before anything is decoded. JPEG's size is read by `tf.io.extract_jpeg_shape`.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return height, width
    if data[:2] == b"BM" and len(data) >= 26:
        if struct.unpack("<I", data[14:18])[0] == 12:  # the OS/2 (BITMAPCOREHEADER) layout: 16-bit sizes
            width, height = struct.unpack("<HH", data[18:22])
        else:
            width, height = struct.unpack("<ii", data[18:26])
        return abs(height), abs(width)  # a negative height is a top-down bitmap
    return None


def check_size(size, path, shorter=RESIZE):
    """Refuses, naming `path`, an image whose (height, width) would take too much memory to decode or resize.

    `shorter` is the size its shorter side is resized to (None for a resize to a fixed size, which bounds itself).
    """
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"Cannot read the image: its header gives a size of {width}x{height} pixels. Received: {path}")
    if height * width > MAX_PIXELS:
        raise ValueError(
            f"Cannot read the image: {width}x{height} pixels is more than the {MAX_PIXELS // 1_000_000} megapixels "
            f"predict decodes; shrink it first. Received: {path}"
        )
    long, short = max(height, width), min(height, width)
    if shorter is not None and long > MAX_ASPECT * short:
        raise ValueError(
            f"Cannot read the image: at {width}x{height} pixels its long side is more than {MAX_ASPECT} times its "
            f"short side, and resizing the short side to {shorter} would make it {shorter}x{shorter * long // short}; "
            f"crop it first. Received: {path}"
        )


def load_image(path, shorter=RESIZE, size=None, crop=(CROP, CROP), channels=3):
    """Decodes an image file to a model input: by default the authors' evaluation, (224, 224, 3) float32 in [0, 255].

    The shorter side is resized to `shorter` (or the whole image to `size`, a (height, width)), then the centre
    `crop` (a (height, width), or None) is taken. `channels` is 3 (RGB) or 1 (grey). The size is checked from the
    header before decoding (`check_size`): memory is bounded by what the header says.
    """

    import numpy as np
    import tensorflow as tf

    from keras_dla import checks

    check_path(path)
    shorter = None if size is not None else shorter
    try:
        data = tf.io.read_file(path)
        head = data.numpy()[:32]
        found = header_size(head)
        if found is None and head[:3] == b"\xff\xd8\xff":
            found = tuple(int(v) for v in tf.io.extract_jpeg_shape(data).numpy()[:2])
        if found is not None:
            check_size(found, path, shorter)
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
    except tf.errors.OpError as e:
        raise ValueError(f"Cannot read the image: {checks.op_error_reason(e)}. Received: {path}") from None
    height, width = int(image.shape[0]), int(image.shape[1])
    check_size((height, width), path, shorter)  # a header that understated the size
    if size is None:
        # As torchvision's Resize(256): the shorter side becomes 256, the longer one int(256 * long / short).
        if height <= width:
            size = (shorter, int(shorter * width / height))
        else:
            size = (int(shorter * height / width), shorter)
    # antialias: PIL's bilinear filter widens its support when shrinking; TF does the same with antialias.
    resized = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)
    if crop is not None:
        top = int(round((size[0] - crop[0]) / 2.0))
        left = int(round((size[1] - crop[1]) / 2.0))
        resized = resized[top : top + crop[0], left : left + crop[1]]
    # PIL works on 8-bit images: round and clip as it does before ToTensor.
    return np.clip(np.round(resized.numpy()), 0, 255).astype("float32")


def is_saved_model(name):
    """Whether `--model name` names a saved model or an export (a path) rather than a DLA variant."""
    return os.path.isdir(name) or name.endswith((KERAS_SUFFIX, *ARTEFACT_SUFFIXES)) or os.sep in name


def _geometry(contract):
    """`load_image`'s keyword arguments from a sidecar's input: its resize, crop and channels."""
    given = contract["input"]
    resize, crop = given.get("resize"), given.get("crop")
    shape = given["shape"]
    geometry = {"channels": shape[-1] or 3}
    if resize and "shorter_side" in resize:
        geometry["shorter"] = int(resize["shorter_side"])
    elif resize and "size" in resize:
        geometry["size"] = tuple(int(v) for v in resize["size"])
    elif shape[1] and shape[2]:
        geometry["size"] = (int(shape[1]), int(shape[2]))
    else:
        geometry["size"] = (CROP, CROP)
    geometry["crop"] = tuple(int(v) for v in crop["center"]) if crop and crop.get("center") else None
    return geometry


class Classifier:
    """A model `predict` runs: `prepare(path)` gives the input of one image, `scores(batch)` its probabilities.

    `classes` are the names of its outputs, `wnids` ImageNet's WordNet ids when the classes are ImageNet's.
    `batch` is how many images it takes at a time (1 for a TFLite file).
    """

    def __init__(self, run, contract, name, labels=None):
        import numpy as np

        from keras_dla.export import sidecar
        from keras_dla.models.imagenet import imagenet_classes

        self.name = name
        self._run = run
        if contract.get("task", "classification") != "classification":
            raise ValueError(
                f"predict classifies images; this model is a {contract['task']} model (its output is "
                f"{contract['output']['kind']}). Received: --model {name}"
            )
        self.kind = contract["output"]["kind"]
        if self.kind not in ("probabilities", "logits", "log-probabilities"):
            raise ValueError(
                "predict reads probabilities, logits or log-probabilities; this model's output is "
                f"{self.kind!r}. Received: --model {name}"
            )
        normalization = contract["input"]["normalization"]
        if normalization["applied_by"] == "caller" and "mean" not in normalization:
            raise ValueError(
                f"The model takes images normalised by {normalization.get('custom', 'a custom function')}, which "
                f"predict cannot apply; export it with --preprocess imagenet, fashion_mnist, unit or none (or "
                f"--uint8-input). Received: --model {name}"
            )
        channels = contract["input"]["shape"][-1] or 3
        if "mean" in normalization:
            self._mean = np.asarray(normalization["mean"], "float32")
            self._std = np.asarray(normalization["std"], "float32")
        else:
            self._mean = self._std = None
        self._uint8 = contract["input"]["dtype"] == "uint8"
        self.geometry = _geometry(contract)
        self.geometry["channels"] = channels
        count = len(contract.get("classes") or []) or contract["output"]["shape"][-1]
        self.classes = sidecar.class_names(count, labels) if labels else list(contract["classes"])
        imagenet = imagenet_classes()
        self.wnids = [w for w, _ in imagenet] if self.classes == [n for _, n in imagenet] else None
        self.batch = contract["input"]["shape"][0] or BATCH

    def prepare(self, pixels):
        """The input of one image from its [0, 255] pixels (float32, as `load_image` gives them)."""
        if self._uint8:
            return pixels.astype("uint8")
        if self._mean is not None:
            return (pixels - self._mean) / self._std
        return pixels

    def scores(self, images):
        import numpy as np

        outputs = []
        for start in range(0, len(images), self.batch):
            outputs.append(np.asarray(self._run(np.stack(images[start : start + self.batch])), dtype="float32"))
        scores = np.concatenate(outputs)
        if self.kind == "logits":
            with np.errstate(invalid="ignore", over="ignore"):
                shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
                scores = shifted / shifted.sum(axis=-1, keepdims=True)
        elif self.kind == "log-probabilities":
            scores = np.exp(scores)
        return scores


def _artefact(name, labels):
    """A `Classifier` of an exported SavedModel folder, `.tflite`, `.onnx` or OpenVINO `.xml` file, by its sidecar."""
    import numpy as np

    from keras_dla.export import runtime, sidecar

    if not os.path.exists(name):
        raise FileNotFoundError(f"No exported model at this path. Received: --model {name}")
    sidecar_file = sidecar.sidecar_path(name)
    if not os.path.isfile(sidecar_file):
        raise FileNotFoundError(
            f"The exported model has no sidecar {sidecar_file} beside it (keras-dla export writes it; it says how to "
            f"preprocess the images and names the classes). Received: --model {name}"
        )
    contract = sidecar.read_sidecar(name)
    runner = runtime.Runner(name, None)
    # The tensors are fed and read by the names the sidecar states (`images`, `probabilities`, ...).
    given, wanted = contract["input"].get("name"), contract["output"].get("name")
    if given != runner.input_name or wanted not in runner.output_names:
        raise ValueError(
            f"The sidecar {sidecar_file} names the input {given!r} and the output {wanted!r}, and the exported model "
            f"has the input {runner.input_name!r} and the outputs {runner.output_names}: is it this model's "
            f"sidecar? Received: --model {name}"
        )

    def run(batch):
        return np.asarray(runner(batch.astype(runner.feed_dtype()))[wanted])

    classifier = Classifier(run, contract, name, labels)
    classifier.batch = runner.shape[0] or classifier.batch  # a static batch (TFLite's 1) is what the file takes
    return classifier


def _keras_file(name, labels):
    """A `Classifier` of a saved `.keras` model: ImageNet normalisation, unless its first layer normalises."""
    from keras_dla.cli.export import build_model
    from keras_dla.export import sidecar

    model = build_model(name, None)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"predict runs a model with one image input and one output. Received: --model {name}")
    shape = tuple(model.inputs[0].shape)
    normalises = any(layer.name == "preprocessing" for layer in model.layers)
    if len(shape) != 4 or (shape[-1] != 3 and not normalises):
        raise ValueError(
            "predict feeds a .keras model RGB images normalised as ImageNet's, and this one takes input of shape "
            f"{shape}; export it (keras-dla export --preprocess ...) and predict with the export. Received: --model "
            f"{name}"
        )
    contract = sidecar.describe(
        model,
        format="keras",
        input_name=model.inputs[0].name,
        input_shape=shape,
        input_dtype="float32",
        output_name=model.outputs[0].name,
        uint8_input=normalises,
        preprocess="imagenet",
    )
    return Classifier(model.predict_on_batch, contract, name, labels)


def _variant(name, weights, labels):
    """A `Classifier` of a DLA variant with ImageNet weights, evaluated as the authors did."""
    import keras_dla
    from keras_dla.export import sidecar
    from keras_dla.models.dla import BUILDERS

    model = BUILDERS[name](
        weights="imagenet" if weights is None else weights,
        input_shape=(CROP, CROP, 3),
        classifier_activation="softmax",
    )
    contract = {
        "input": {
            "shape": [None, CROP, CROP, 3],
            "dtype": "float32",
            "normalization": {"applied_by": "model"},  # preprocess_input is applied in `run` below
        },
        "output": {"kind": "probabilities", "shape": [None, 1000]},
        "classes": sidecar.class_names(1000),
    }

    def run(batch):
        return model.predict_on_batch(keras_dla.preprocess_input(batch))

    classifier = Classifier(run, contract, name, labels)
    classifier.geometry = None  # load_image's defaults: the authors' evaluation
    return classifier


def run(args):
    import functools
    import sys

    import numpy as np

    if not 1 <= args.top <= 1000:
        raise ValueError(f"--top should be in [1, 1000]. Received: --top {args.top}")
    if args.labels is not None and not os.path.isfile(args.labels):
        raise ValueError(f"--labels should be a text file of class names, one a line. Received: --labels {args.labels}")
    saved = is_saved_model(args.model)
    if saved and args.weights is not None:
        raise ValueError(
            f"A .keras file or an exported model holds its weights; leave out --weights. Received: --weights "
            f"{args.weights}"
        )
    from keras_dla.models.dla import BUILDERS

    if not saved and args.model not in BUILDERS:
        raise ValueError(
            f"Unknown DLA variant; expected one of {', '.join(BUILDERS)}, a .keras file or an exported model. "
            f"Received: --model {args.model}"
        )
    for path in args.images:
        check_path(path)
    if not saved:
        classifier = _variant(args.model, args.weights, args.labels)
    elif args.model.endswith(KERAS_SUFFIX):
        classifier = _keras_file(args.model, args.labels)
    elif os.path.isdir(args.model) or args.model.endswith(ARTEFACT_SUFFIXES):
        classifier = _artefact(args.model, args.labels)
    else:
        raise ValueError(
            "--model should be a DLA variant, a .keras file, a SavedModel folder or a .tflite, .onnx or OpenVINO "
            f".xml file. Received: --model {args.model}"
        )
    if args.top > len(classifier.classes):
        raise ValueError(
            f"--top should be at most the model's {len(classifier.classes)} classes. Received: --top {args.top}"
        )
    # Looked up here, not bound at import, so that the loader can be replaced (tests do).
    loader = load_image if classifier.geometry is None else functools.partial(load_image, **classifier.geometry)
    failed = 0

    def report(message):  # one bad image is reported; the others are still classified
        nonlocal failed
        print(f"keras-dla predict: error: {message}", file=sys.stderr, flush=True)
        failed += 1

    for start in range(0, len(args.images), BATCH):
        paths, images = [], []
        for path in args.images[start : start + BATCH]:
            try:
                image = loader(path)
            except ValueError as e:
                report(e)
                continue
            # TensorFlow's fused graph can give finite scores for a NaN pixel: such an image gets no answer.
            if not np.isfinite(image).all():
                report(f"Cannot classify the image: it holds pixels that are not finite (NaN, inf). Received: {path}")
                continue
            paths.append(path)
            images.append(classifier.prepare(image))
        if not paths:
            continue
        probabilities = classifier.scores(images)
        finite = np.isfinite(probabilities).all(axis=-1)
        for path in np.asarray(paths)[~finite]:
            report(
                "Cannot classify the image: the model's scores for it are not finite (NaN or infinity); are the "
                f"weights finite? Received: {path}"
            )
        paths, probabilities = [p for p, ok in zip(paths, finite, strict=True) if ok], probabilities[finite]
        for path, row in zip(paths, probabilities, strict=True):
            print(f"{path}:")
            for rank, index in enumerate(np.argsort(row)[::-1][: args.top], start=1):
                wnid = f"  ({classifier.wnids[index]})" if classifier.wnids else ""
                print(f"  {rank}. {classifier.classes[index]:30s} {row[index]:.4f}{wnid}")
        sys.stdout.flush()
    return 2 if failed else 0  # each unreadable image was named as it came
