"""`keras-dla predict`: ImageNet top-5 for images, with the authors' evaluation preprocessing."""

RESIZE = 256  # shorter side, bilinear: crop_pct 0.875 of the authors' evaluation
CROP = 224
BATCH = 32  # images decoded and classified at a time: memory stays flat and results print as they come
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


def load_image(path):
    """Decodes an image file to the authors' evaluation input: a (224, 224, 3) float32 array of [0, 255] RGB."""

    import numpy as np
    import tensorflow as tf

    from keras_dla import checks

    check_path(path)
    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except tf.errors.OpError as e:
        raise ValueError(f"Cannot read the image: {checks.op_error_reason(e)}. Received: {path}") from None
    height, width = int(image.shape[0]), int(image.shape[1])
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
    for start in range(0, len(args.images), BATCH):
        paths = args.images[start : start + BATCH]
        images = np.stack([load_image(path) for path in paths])
        probabilities = model.predict_on_batch(keras_dla.preprocess_input(images))
        for path, best in zip(
            paths, keras_dla.decode_predictions(np.asarray(probabilities), top=args.top), strict=True
        ):
            print(f"{path}:")
            for rank, (wnid, name, score) in enumerate(best, start=1):
                print(f"  {rank}. {name:30s} {score:.4f}  ({wnid})")
        sys.stdout.flush()
    return 0
