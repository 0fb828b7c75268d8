"""`keras-dla predict`: ImageNet top-5 for images, with the authors' evaluation preprocessing."""

import struct

RESIZE = 256  # shorter side, bilinear: crop_pct 0.875 of the authors' evaluation
CROP = 224
BATCH = 32  # images decoded and classified at a time: memory stays flat and results print as they come
# Bounds on what one image may cost, from the size its header gives (before decoding): the decoded pixels
# (uint8, then float32 for the resize), and the long-to-short side ratio, which sets the resized size (a 1x20000
# image resized to a shorter side of 256 would be a 15.7 GB float32 tensor).
MAX_PIXELS = 64_000_000
MAX_ASPECT = 64
# Images are decoded and resized by TensorFlow: run on the TensorFlow backend (see keras_dla.cli).
NEEDS_TENSORFLOW = True


def register(subparsers):
    parser = subparsers.add_parser(
        "predict",
        help="classify images with a DLA ImageNet model and print the top-5 classes",
        description=(
            f"Classify images as the authors evaluated DLA: resize the shorter side to {RESIZE} (bilinear), "
            f"center-crop {CROP}x{CROP}, normalise with the ImageNet mean and std; print the top-5 ImageNet "
            "classes with names and probabilities."
        ),
    )
    parser.add_argument("images", metavar="IMAGE", nargs="+", help="image files (JPEG, PNG, BMP, GIF)")
    parser.add_argument("--model", default="dla34", help="the DLA variant (default: dla34)")
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (default), a registered tag, or a checkpoint / .weights.h5 path with 1000 classes",
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


def check_size(size, path):
    """Refuses, naming `path`, an image whose (height, width) would take too much memory to decode or resize."""
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"Cannot read the image: its header gives a size of {width}x{height} pixels. Received: {path}")
    if height * width > MAX_PIXELS:
        raise ValueError(
            f"Cannot read the image: {width}x{height} pixels is more than the {MAX_PIXELS // 1_000_000} megapixels "
            f"predict decodes; shrink it first. Received: {path}"
        )
    long, short = max(height, width), min(height, width)
    if long > MAX_ASPECT * short:
        raise ValueError(
            f"Cannot read the image: at {width}x{height} pixels its long side is more than {MAX_ASPECT} times its "
            f"short side, and resizing the short side to {RESIZE} would make it {RESIZE}x{RESIZE * long // short}; "
            f"crop it first. Received: {path}"
        )


def load_image(path):
    """Decodes an image file to the authors' evaluation input: a (224, 224, 3) float32 array of [0, 255] RGB.

    The size is checked from the header before decoding (`check_size`): memory is bounded by what the header says.
    """

    import numpy as np
    import tensorflow as tf

    from keras_dla import checks

    check_path(path)
    try:
        data = tf.io.read_file(path)
        head = data.numpy()[:32]
        size = header_size(head)
        if size is None and head[:3] == b"\xff\xd8\xff":
            size = tuple(int(v) for v in tf.io.extract_jpeg_shape(data).numpy()[:2])
        if size is not None:
            check_size(size, path)
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.OpError as e:
        raise ValueError(f"Cannot read the image: {checks.op_error_reason(e)}. Received: {path}") from None
    height, width = int(image.shape[0]), int(image.shape[1])
    check_size((height, width), path)  # a header that understated the size
    # As torchvision's Resize(256): the shorter side becomes 256, the longer one int(256 * long / short).
    if height <= width:
        size = (RESIZE, int(RESIZE * width / height))
    else:
        size = (int(RESIZE * height / width), RESIZE)
    # antialias: PIL's bilinear filter widens its support when shrinking; TF does the same with antialias.
    resized = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)
    top = int(round((size[0] - CROP) / 2.0))
    left = int(round((size[1] - CROP) / 2.0))
    crop = resized[top : top + CROP, left : left + CROP]
    # PIL works on 8-bit images: round and clip as it does before ToTensor.
    return np.clip(np.round(crop.numpy()), 0, 255).astype("float32")


def run(args):
    import sys

    import numpy as np

    import keras_dla
    from keras_dla.dla import BUILDERS

    if args.model not in BUILDERS:
        raise ValueError(f"Unknown DLA variant; expected one of {', '.join(BUILDERS)}. Received: --model {args.model}")
    if not 1 <= args.top <= 1000:
        raise ValueError(f"--top should be in [1, 1000]. Received: --top {args.top}")
    for path in args.images:
        check_path(path)
    model = BUILDERS[args.model](weights=args.weights, input_shape=(CROP, CROP, 3), classifier_activation="softmax")
    failed = 0

    def report(message):  # one bad image is reported; the others are still classified
        nonlocal failed
        print(f"keras-dla predict: error: {message}", file=sys.stderr, flush=True)
        failed += 1

    for start in range(0, len(args.images), BATCH):
        paths, images = [], []
        for path in args.images[start : start + BATCH]:
            try:
                image = load_image(path)
            except ValueError as e:
                report(e)
                continue
            # TensorFlow's fused graph can give finite scores for a NaN pixel: such an image gets no answer.
            if not np.isfinite(image).all():
                report(f"Cannot classify the image: it holds pixels that are not finite (NaN, inf). Received: {path}")
                continue
            paths.append(path)
            images.append(image)
        if not paths:
            continue
        probabilities = np.asarray(model.predict_on_batch(keras_dla.preprocess_input(np.stack(images))))
        finite = np.isfinite(probabilities).all(axis=-1)
        for path in np.asarray(paths)[~finite]:
            report(
                "Cannot classify the image: the model's scores for it are not finite (NaN or infinity); are the "
                f"weights finite? Received: {path}"
            )
        paths, probabilities = [p for p, ok in zip(paths, finite, strict=True) if ok], probabilities[finite]
        if not paths:
            continue
        for path, best in zip(paths, keras_dla.decode_predictions(probabilities, top=args.top), strict=True):
            print(f"{path}:")
            for rank, (wnid, name, score) in enumerate(best, start=1):
                print(f"  {rank}. {name:30s} {score:.4f}  ({wnid})")
        sys.stdout.flush()
    return 2 if failed else 0  # each unreadable image was named as it came
