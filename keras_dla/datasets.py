"""Input pipelines for training DLA classifiers and DLA-Up segmenters: tf.data, parallel, prefetched, seeded.

Sources, by the `dataset` argument:

- classification: `"fashion_mnist"` (the real data set, embedded: see `keras_dla.fashion_mnist`), a
  tensorflow-datasets name (`"tf_flowers"`, `"imagenette/160px"`, ...), or a folder of class sub-folders
  (`root/<class>/*.jpg`; with `root/train/<class>/` and `root/val/<class>/` when it has them).
- segmentation: `"fashion_mnist_scenes"` (composed scenes of real garments, embedded), the tensorflow-datasets
  `"cityscapes"` (raw ids 0-33 mapped to the 19 train ids, 255 elsewhere) and `"oxford_iiit_pet"` (trimaps:
  background 0, pet 1, border 255), or a folder in the authors' list-file format (`info.json` with `mean` and
  `std`, `train_images.txt` / `train_labels.txt` and `val_*.txt` with one path per line, relative to the folder).

Augmentations are the authors' (`ucbdrive/dla` `classify.py` and `segment.py`): random-resized crop and flip,
colour jitter and PCA lighting for classification, resize to size/0.875 and centre crop for evaluation; random
scale in [0.5, 2], rotation of +-10 degrees, crop and flip for segmentation, where the label is padded and filled
with 255 (ignored). Every random choice is a stateless op fed by a per-example seed drawn from `seed`, so a
pipeline is reproducible under parallel maps, and an image and its mask always get the same transform.
Label value 255 means "ignore" throughout.
"""

import contextlib
import dataclasses
import json
import math
import os
import time

import numpy as np
import tensorflow as tf

from keras_dla import checks, fashion_mnist
from keras_dla.imagenet import MEAN as IMAGENET_MEAN
from keras_dla.imagenet import STD as IMAGENET_STD

IGNORE_LABEL = 255
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
CLASSIFICATION_EMBEDDED = ("fashion_mnist",)
SEGMENTATION_EMBEDDED = ("fashion_mnist_scenes",)
SEGMENTATION_TFDS = ("cityscapes", "oxford_iiit_pet")
EVAL_CROP_FRACTION = 0.875  # resize to 256 and centre-crop 224
# Random erasing, as Zhong et al.'s defaults: applied to half the images, 2-40% of the area, aspect 0.3-3.3.
ERASING_PROBABILITY = 0.5
ERASING_AREA = (0.02, 0.4)
ERASING_ASPECT = (0.3, 1 / 0.3)
SMALL_RECIPES = ("small", "small-erasing", "flip")  # recipes for small images: evaluation fits them, too
CLASSIFICATION_RECIPES = ("imagenet", *SMALL_RECIPES)
SMALL_IMAGE_FILL = 0.875  # `fit_small`: a small image's longer side fills this fraction of the canvas (28 of 32)
# PCA lighting noise (Krizhevsky et al. 2012) with ImageNet's RGB eigenvalues and eigenvectors, as the authors use.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))

# Cityscapes raw label id -> train id (the 19 evaluated classes); every other id is ignored (255).
CITYSCAPES_TRAIN_IDS = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}
CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)


@dataclasses.dataclass
class DataInfo:
    """What a training run needs to know about a data set."""

    name: str
    num_classes: int
    class_names: tuple
    num_examples: int  # examples in the split (before batching); 0 when unknown
    channels: int
    mean: tuple  # per-channel mean and std on [0, 1] pixels, applied by the pipeline
    std: tuple
    files: tuple = ()  # the image (and label) files the pipeline decodes; empty for tfds and Fashion-MNIST


# ----------------------------------------------------------------------------------------------------------------
# Resolving a dataset argument


def _is_path_like(dataset):
    return os.path.isabs(dataset) or dataset.startswith(".") or os.sep in dataset.rstrip(os.sep).split(":")[0]


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - an install without tensorflow-datasets
        raise ValueError("tensorflow-datasets is not installed: `pip install tensorflow-datasets`.") from e
    return tfds


@contextlib.contextmanager
def _tfds_errors(dataset, data_dir):
    """Turns a failure of tensorflow-datasets to find, download or prepare `dataset` into one sentence."""
    try:
        yield
    except ValueError:
        raise
    except Exception as e:  # download errors, missing dependencies, unreadable files: tfds raises many kinds
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ValueError(
            f"tensorflow-datasets could not load {dataset!r} ({type(e).__name__}: {first}). Without internet, "
            "prepare it once where it can be downloaded and pass that folder as data_dir (--data-dir). "
            f"Received: data_dir={data_dir!r}"
        ) from e


def _check_tfds_name(dataset):
    tfds = _tfds()
    base = dataset.split("/")[0].split(":")[0]
    if base not in tfds.list_builders():
        raise ValueError(
            "Unknown dataset: not an embedded data set, an existing folder, or a tensorflow-datasets name. "
            f"Received: dataset={dataset!r}"
        )
    return tfds


def resolve(dataset, task):
    """`("embedded" | "folder" | "tfds", dataset)` for a dataset argument, or a ValueError."""
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"`dataset` should be a name or a folder. Received: dataset={dataset!r}")
    embedded = CLASSIFICATION_EMBEDDED if task == "classification" else SEGMENTATION_EMBEDDED
    if dataset in embedded:
        return "embedded", dataset
    if os.path.isdir(dataset):
        return "folder", dataset
    if os.path.exists(dataset) or _is_path_like(dataset):
        raise ValueError(f"The dataset path is not an existing folder. Received: dataset={dataset!r}")
    _check_tfds_name(dataset)
    if task == "segmentation" and dataset.split("/")[0].split(":")[0] not in SEGMENTATION_TFDS:
        raise ValueError(
            f"Segmentation reads the tensorflow-datasets {list(SEGMENTATION_TFDS)}, "
            f"{list(SEGMENTATION_EMBEDDED)} or a list-file folder. Received: dataset={dataset!r}"
        )
    return "tfds", dataset


TFDS_HELD_OUT = 10  # a data set with a train split only (tf_flowers) validates on the last 1/10 of it


def _tfds_slice(info, split, limit):
    """`(tfds split spec, examples)` for "train" / "validation" of a prepared builder, at most `limit` examples.

    Validation is the data set's "validation" split, else its "test" split, else the last tenth of "train"
    (and training then uses the rest). A builder that lists no splits (mocked) gets the name as it is.
    """
    splits = info.splits
    if not splits:
        return (f"{split}[:{limit}]" if limit else split), 0
    held_out = "validation" not in splits and "test" not in splits
    if split == "validation" and not held_out:
        name = "validation" if "validation" in splits else "test"
    elif "train" in splits:
        name = "train"
    else:
        raise ValueError(f"The data set has no {split!r} split (it has {sorted(splits)}). Received: split={split!r}")
    total = splits[name].num_examples
    start, stop = 0, total
    if held_out:
        cut = total - max(1, total // TFDS_HELD_OUT)
        start, stop = (cut, total) if split == "validation" else (0, cut)
    if limit:
        stop = min(stop, start + limit)
    spec = name if (start, stop) == (0, total) else f"{name}[{start}:{stop}]"
    return spec, stop - start


def _tfds_source(dataset, split, data_dir, limit, **kwargs):
    """`(tf.data.Dataset, builder info, examples)` of a tfds data set, prepared first if it is not yet."""
    tfds = _tfds()
    with _tfds_errors(dataset, data_dir):  # our own ValueErrors (a missing split) pass through as they are
        builder = tfds.builder(dataset, data_dir=data_dir)
        builder.download_and_prepare()  # nothing to do when prepared; the split sizes are known after it
        spec, count = _tfds_slice(builder.info, split, limit)
        ds = builder.as_dataset(split=spec, shuffle_files=False, **kwargs)
    return ds, builder.info, count


def _options(ds):
    """Shard by element under multi-worker training (the sources here are not file lists)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return ds.with_options(options)


def _with_seeds(ds, seed):
    """Pairs every element with its own stateless seed, a (2,) int64 tensor."""
    seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
    return tf.data.Dataset.zip((ds, seeds))


# ----------------------------------------------------------------------------------------------------------------
# Classification


def _normalise(image, mean, std):
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def random_resized_crop(image, seed, size, *, area=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Inception-style crop of a random area fraction and aspect ratio, resized to `size` x `size`."""
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=area,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, crop_size)
    return tf.image.resize(image, (size, size), method="bilinear", antialias=True)


def colour_jitter(image, seed, strength=0.4):
    """Brightness, contrast and (RGB only) saturation jitter of +-strength, on [0, 255] pixels."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    image = image * tf.random.stateless_uniform((), seeds[0], 1 - strength, 1 + strength)
    mean = tf.reduce_mean(image)
    image = (image - mean) * tf.random.stateless_uniform((), seeds[1], 1 - strength, 1 + strength) + mean
    if image.shape[-1] == 3:
        grey = tf.reduce_mean(image, axis=-1, keepdims=True)
        image = (image - grey) * tf.random.stateless_uniform((), seeds[2], 1 - strength, 1 + strength) + grey
    return tf.clip_by_value(image, 0.0, 255.0)


def pca_lighting(image, seed, alpha_std=0.1):
    """AlexNet's PCA lighting noise on an RGB image in [0, 255]."""
    alpha = tf.random.stateless_normal((3,), seed, stddev=alpha_std)
    rgb = tf.linalg.matvec(tf.constant(PCA_EIGVEC), alpha * tf.constant(PCA_EIGVAL))
    return tf.clip_by_value(image + rgb * 255.0, 0.0, 255.0)


def centre_crop(image, size, crop_fraction=EVAL_CROP_FRACTION):
    """Resizes the shorter side to size / crop_fraction, then crops the centre size x size (evaluation)."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size / crop_fraction) / tf.reduce_min(shape)
    new = tf.cast(tf.math.round(shape * scale), tf.int32)
    new = tf.maximum(new, size)
    image = tf.image.resize(image, new, method="bilinear", antialias=True)
    top = (new[0] - size) // 2
    left = (new[1] - size) // 2
    return image[top : top + size, left : left + size]


def augment_classification(image, seed, size, *, recipe="imagenet"):
    """The training transform of one image in [0, 255] (float); see the module docstring.

    Recipes: `"imagenet"` (random-resized crop, flip, colour jitter, PCA lighting for RGB) and `"small"` for
    low-resolution images such as Fashion-MNIST (`fit_small` to `size`, shift by up to size/8 pixels with zero
    padding, flip): a random-resized crop of 8% of a 28-pixel garment keeps nothing recognisable;
    `"small-erasing"` is `"small"` followed by `random_erasing` (longer runs); `"flip"` only pads or resizes and
    flips (short runs).
    """
    seeds = tf.random.experimental.stateless_split(seed, 4)
    image = tf.cast(image, tf.float32)
    if recipe == "imagenet":
        image = random_resized_crop(image, seeds[0], size)
        image = tf.image.stateless_random_flip_left_right(image, seeds[1])
        image = colour_jitter(image, seeds[2])
        if image.shape[-1] == 3:
            image = pca_lighting(image, seeds[3])
        return image
    if recipe == "small":
        image = fit_small(image, size)
        pad = max(size // 8, 1)
        image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        image = tf.image.stateless_random_crop(image, (size, size, image.shape[-1]), seeds[0])
        return tf.image.stateless_random_flip_left_right(image, seeds[1])
    if recipe == "flip":
        return tf.image.stateless_random_flip_left_right(fit_small(image, size), seeds[1])
    if recipe == "small-erasing":
        image = augment_classification(image, seeds[0], size, recipe="small")
        return random_erasing(image, seeds[2])
    raise ValueError(f"Unknown augmentation recipe. Received: recipe={recipe!r}")


def random_erasing(image, seed, probability=ERASING_PROBABILITY, area=ERASING_AREA, aspect=ERASING_ASPECT):
    """Random erasing (Zhong et al., AAAI 2020) of one image in [0, 255]: with `probability`, a rectangle of
    `area` (a fraction of the image, drawn uniformly) and `aspect` (height / width, drawn log-uniformly) at a
    uniform position is filled with uniform random values in [0, 255] (their "RE-R").

    Where the drawn rectangle would not fit, its sides are clipped to the image instead of drawing again.
    """
    seeds = tf.random.experimental.stateless_split(seed, 5)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    target = tf.random.stateless_uniform([], seeds[0], area[0], area[1]) * h * w
    log_aspect = tf.random.stateless_uniform([], seeds[1], math.log(aspect[0]), math.log(aspect[1]))
    ratio = tf.exp(log_aspect)
    erase_h = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32), 1, height)
    erase_w = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32), 1, width)
    offsets = tf.random.stateless_uniform([2], seeds[2], maxval=tf.int32.max, dtype=tf.int32)
    top = offsets[0] % (height - erase_h + 1)
    left = offsets[1] % (width - erase_w + 1)
    rows = tf.range(height)[:, None, None]
    cols = tf.range(width)[None, :, None]
    inside = (rows >= top) & (rows < top + erase_h) & (cols >= left) & (cols < left + erase_w)
    inside &= tf.random.stateless_uniform([], seeds[3]) < probability
    noise = tf.random.stateless_uniform(tf.shape(image), seeds[4], 0, 255, dtype=image.dtype)
    return tf.where(inside, noise, image)


def fit_small(image, size):
    """Fits a small image (or a batch of them) into a `size` canvas as a garment on a background, keeping its shape.

    An image that fills at least 7/8 of the canvas (Fashion-MNIST's 28 pixels in 32) is zero-padded to the centre
    with its own pixels untouched; a smaller one is first scaled up (bilinear) until it fills 7/8 of the canvas
    along one side (28 -> 56, padded to 64), so a larger input size gives the model more pixels of the garment
    rather than more empty border. An image larger than the canvas is resized to it. `size`: an int (square) or
    `(height, width)`.
    """
    canvas = (size, size) if isinstance(size, int) else tuple(size)
    height, width = image.shape[-3], image.shape[-2]
    if height is None or width is None or height > canvas[0] or width > canvas[1]:
        return tf.image.resize(image, canvas, method="bilinear", antialias=True)
    scale = min(math.floor(c * SMALL_IMAGE_FILL) / s for c, s in zip(canvas, (height, width), strict=True))
    if scale > 1:
        image = tf.image.resize(image, (round(height * scale), round(width * scale)), method="bilinear")
    return tf.image.resize_with_crop_or_pad(image, *canvas)


def _list_images(folder):
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS))


def _class_folder(root):
    """`(paths, labels, class_names)` of `root/<class>/<image>`, classes in sorted order."""
    class_names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    paths, labels = [], []
    for label, name in enumerate(class_names):
        files = _list_images(os.path.join(root, name))
        paths += files
        labels += [label] * len(files)
    return paths, labels, tuple(class_names)


def folder_split(root, split):
    """Files, labels and class names of a split of a class-folder data set.

    With `root/train` and `root/val` (or `validation`, `test`) class folders, those are the splits. Otherwise
    every 10th image of each class (in sorted order) is the validation split and the rest the training split.
    """
    split_dirs = {"train": ("train",), "validation": ("val", "validation", "test")}
    if os.path.isdir(os.path.join(root, "train")):
        for name in split_dirs[split]:
            if os.path.isdir(os.path.join(root, name)):
                paths, labels, class_names = _class_folder(os.path.join(root, name))
                _, _, train_names = _class_folder(os.path.join(root, "train"))
                if class_names != train_names:
                    raise ValueError(
                        f"The class folders of {name!r} differ from those of 'train'. Received: dataset={root!r}"
                    )
                break
        else:
            raise ValueError(f"The folder has 'train' but no 'val' class folders. Received: dataset={root!r}")
    else:
        paths, labels, class_names = _class_folder(root)
        keep = [(i % 10 == 9) == (split == "validation") for i in _index_within_class(labels)]
        paths = [p for p, k in zip(paths, keep, strict=True) if k]
        labels = [label for label, k in zip(labels, keep, strict=True) if k]
    if not class_names or not paths:
        raise ValueError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) in class sub-folders of the folder for split {split!r}. "
            f"Received: dataset={root!r}"
        )
    return paths, labels, class_names


def _index_within_class(labels):
    counts = {}
    out = []
    for label in labels:
        out.append(counts.get(label, 0))
        counts[label] = out[-1] + 1
    return out


# The first bytes of the image formats `tf.io.decode_image` reads (IMAGE_EXTENSIONS).
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


def check_image_files(paths, dataset):
    """Raises ValueError naming the files that are not JPEG, PNG, GIF or BMP images (by their first bytes).

    Run on the listed files before training: an undecodable image would otherwise stop `fit` midway with a
    TensorFlow error that does not name the file. Reads 8 bytes per file.
    """
    bad = []
    for path in paths:
        with open(path, "rb") as f:
            head = f.read(8)
        if not head.startswith(IMAGE_SIGNATURES):
            bad.append(path)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise ValueError(
            f"Not a JPEG, PNG, GIF or BMP image (by its first bytes; empty, or another format renamed?): "
            f"{bad[0]}{more}. Received: dataset={dataset!r}"
        )


def find_undecodable(paths, time_limit_s=60.0):
    """`(path, checked)`: the first of `paths` that TensorFlow cannot read or decode as an image (None if none
    was found) and how many were checked.

    For naming the file after a decode failure mid-fit, which TensorFlow reports without it. Decodes in parallel,
    in order, up to the first failure or for at most `time_limit_s` (a large data set takes far longer to decode
    in full than anyone should wait for an error message).
    """
    decoded = tf.data.Dataset.from_tensor_slices(list(paths)).map(
        lambda p: tf.shape(tf.io.decode_image(tf.io.read_file(p), expand_animations=False)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    deadline = time.monotonic() + time_limit_s
    checked = 0
    try:
        for _ in decoded:
            checked += 1
            if time.monotonic() > deadline:
                break
    except tf.errors.OpError:
        return paths[checked], checked + 1
    return None, checked


def _decode(path, channels):
    image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
    image.set_shape((None, None, channels))
    return image


def classification_data(
    dataset,
    *,
    split="train",
    image_size=None,
    batch_size=32,
    training=None,
    seed=0,
    recipe=None,
    data_dir=None,
    limit=None,
    drop_remainder=None,
):
    """A batched `tf.data.Dataset` of `(image, label)` and its `DataInfo`.

    Args:
        dataset: `"fashion_mnist"`, a tensorflow-datasets name, or a folder of class sub-folders.
        split: `"train"` or `"validation"` (the test split where a data set has no validation split).
        image_size: height and width of the model input (default 32 for Fashion-MNIST, else 224).
        batch_size: the global batch size.
        training: augment, shuffle and repeat (defaults to `split == "train"`).
        seed: seed of the shuffle and of every augmentation.
        recipe: augmentation, `"imagenet"`, `"small"`, `"small-erasing"` or `"flip"` (see
            `augment_classification`); defaults to `"small"` for Fashion-MNIST, else `"imagenet"`.
        data_dir: tfds data folder, or the folder of the Fashion-MNIST IDX files.
        limit: use only the first `limit` examples (for quick runs and tests).
        drop_remainder: drop a last partial batch (defaults to `training`).

    Returns:
        `(dataset, info)`: images are float32, normalised with `info.mean` / `info.std`; labels int32.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"`split` should be 'train' or 'validation'. Received: split={split!r}")
    training = split == "train" if training is None else training
    image_size = checks.positive_int("image_size", image_size, optional=True)
    limit = checks.positive_int("limit", limit, optional=True)
    if recipe is not None and recipe not in CLASSIFICATION_RECIPES:
        raise ValueError(
            f"Unknown augmentation recipe; expected one of {CLASSIFICATION_RECIPES}. Received: recipe={recipe!r}"
        )
    kind, dataset = resolve(dataset, "classification")
    image_size = image_size or (32 if kind == "embedded" else 224)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if kind == "embedded":
        (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data(data_dir)
        images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
        if limit:
            images, labels = images[:limit], labels[:limit]
        ds = tf.data.Dataset.from_tensor_slices((images[..., None], labels.astype("int32")))
        info = DataInfo(
            dataset, 10, fashion_mnist.CLASS_NAMES, len(images), 1, (fashion_mnist.MEAN,), (fashion_mnist.STD,)
        )
        recipe = recipe or "small"
    elif kind == "folder":
        paths, labels, class_names = folder_split(dataset, split)
        if limit:
            paths, labels = paths[:limit], labels[:limit]
        check_image_files(paths, dataset)
        ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, "int32")))
        ds = ds.map(lambda p, y: (_decode(p, 3), y), num_parallel_calls=tf.data.AUTOTUNE)
        info = DataInfo(dataset, len(class_names), class_names, len(paths), 3, mean, std, tuple(paths))
    else:
        ds, tfds_info, count = _tfds_source(dataset, split, data_dir, limit, as_supervised=True)
        if "label" not in tfds_info.features or "image" not in tfds_info.features:
            raise ValueError(f"The data set has no 'image' and 'label' features. Received: dataset={dataset!r}")
        label_feature = tfds_info.features["label"]
        # Grey data sets become RGB, so ImageNet weights and the ImageNet normalisation apply.
        ds = ds.map(
            lambda x, y: (tf.image.grayscale_to_rgb(x) if x.shape[-1] == 1 else x, tf.cast(y, tf.int32)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        info = DataInfo(dataset, label_feature.num_classes, tuple(label_feature.names), count, 3, mean, std)
    recipe = recipe or "imagenet"

    def train_map(example, seed):
        image, label = example
        return _normalise(augment_classification(image, seed, image_size, recipe=recipe), info.mean, info.std), label

    def eval_map(image, label):
        image = tf.cast(image, tf.float32)
        image = fit_small(image, image_size) if recipe in SMALL_RECIPES else centre_crop(image, image_size)
        return _normalise(image, info.mean, info.std), label

    ds = _batch(ds, train_map, eval_map, batch_size, training, seed, info.num_examples, drop_remainder)
    return ds, info


def _batch(ds, train_map, eval_map, batch_size, training, seed, num_examples, drop_remainder):
    batch_size = checks.positive_int("batch_size", batch_size)
    drop_remainder = training if drop_remainder is None else drop_remainder
    if training:
        buffer = min(num_examples, 10_000) or 10_000
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        ds = _with_seeds(ds, seed).map(train_map, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(eval_map, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE)
    return _options(ds.prefetch(tf.data.AUTOTUNE))


# ----------------------------------------------------------------------------------------------------------------
# Segmentation


def _rotate(image, angle, interpolation, fill_value):
    """Rotates `image` (H, W, C) by `angle` radians about its centre; uncovered pixels get `fill_value`."""
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Output pixel (x, y) samples the input at R(x - c) + c.
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None],
        transforms=transform[None],
        output_shape=shape[:2],
        fill_value=tf.cast(fill_value, tf.float32),
        interpolation=interpolation,
        fill_mode="CONSTANT",
    )[0]
    return tf.cast(out, image.dtype)


def augment_segmentation(image, mask, seed, crop_size, *, scale=(0.5, 2.0), max_rotation=10.0, flip=True):
    """The authors' segmentation transform, applied alike to an image and its mask.

    Random scale in `scale` (image bilinear, mask nearest), rotation of up to `max_rotation` degrees (mask filled
    with 255), a random `crop_size` x `crop_size` crop (image padded with 0, mask with 255 where the scaled image
    is smaller), and a horizontal flip.

    Args:
        image: (H, W, C) image, float or integer, in [0, 255].
        mask: (H, W) or (H, W, 1) integer labels.
        seed: a (2,) stateless seed.
        crop_size: side of the output.

    Returns:
        `(image float32 (crop, crop, C), mask uint8 (crop, crop))`.
    """
    seeds = tf.random.experimental.stateless_split(seed, 5)
    image = tf.cast(image, tf.float32)
    mask = tf.cast(tf.reshape(mask, tf.shape(mask)[:2])[..., None], tf.float32)
    channels = image.shape[-1]
    if scale is not None and tuple(scale) != (1.0, 1.0):
        factor = tf.random.stateless_uniform((), seeds[0], scale[0], scale[1])
        size = tf.maximum(tf.cast(tf.math.round(tf.cast(tf.shape(image)[:2], tf.float32) * factor), tf.int32), 1)
        image = tf.image.resize(image, size, method="bilinear")
        mask = tf.image.resize(mask, size, method="nearest")
    if max_rotation:
        angle = tf.random.stateless_uniform((), seeds[1], -max_rotation, max_rotation) * (math.pi / 180.0)
        image = _rotate(image, angle, "BILINEAR", 0.0)
        mask = _rotate(mask, angle, "NEAREST", float(IGNORE_LABEL))
    # Pad to at least the crop size (image 0, label 255), then crop image and mask at the same offset.
    shape = tf.shape(image)
    pad_h, pad_w = tf.maximum(crop_size - shape[0], 0), tf.maximum(crop_size - shape[1], 0)
    paddings = [[pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2], [0, 0]]
    image = tf.pad(image, paddings, constant_values=0.0)
    mask = tf.pad(mask, paddings, constant_values=float(IGNORE_LABEL))
    both = tf.concat([image, mask], axis=-1)
    both = tf.image.stateless_random_crop(both, (crop_size, crop_size, channels + 1), seeds[2])
    if flip:
        both = tf.image.stateless_random_flip_left_right(both, seeds[3])
    image, mask = both[..., :channels], both[..., channels]
    return image, tf.cast(tf.math.round(mask), tf.uint8)


def _pad_crop_centre(image, mask, size):
    """Evaluation: pads (image 0, mask 255) and centre-crops to size x size, no resampling."""
    image = tf.cast(image, tf.float32)
    mask = tf.cast(tf.reshape(mask, tf.shape(mask)[:2])[..., None], tf.float32)
    shape = tf.shape(image)
    pad_h, pad_w = tf.maximum(size - shape[0], 0), tf.maximum(size - shape[1], 0)
    paddings = [[pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2], [0, 0]]
    image = tf.pad(image, paddings)
    mask = tf.pad(mask, paddings, constant_values=float(IGNORE_LABEL))
    image = tf.image.resize_with_crop_or_pad(image, size, size)
    mask = tf.image.resize_with_crop_or_pad(mask, size, size)  # crops only: both sides are >= size now
    return image, tf.cast(tf.math.round(mask[..., 0]), tf.uint8)


def cityscapes_train_ids(raw):
    """Maps Cityscapes raw label ids (0-33) to the 19 train ids; everything else becomes 255."""
    table = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    for raw_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        table[raw_id] = train_id
    return tf.gather(tf.constant(table), tf.cast(raw, tf.int32))


def pet_labels(trimap):
    """Oxford-IIIT Pet trimaps (1 pet, 2 background, 3 border) -> 1 pet, 0 background, 255 border."""
    table = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    table[1], table[2] = 1, 0
    return tf.gather(tf.constant(table), tf.cast(trimap, tf.int32))


def read_list_files(root, split):
    """The authors' list-file format: `(image paths, label paths, info dict)` of a split."""
    phase = {"train": "train", "validation": "val"}[split]
    info_path = os.path.join(root, "info.json")
    if not os.path.isfile(info_path):
        raise ValueError(f"A segmentation folder needs an info.json (mean, std). Received: dataset={root!r}")
    try:
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"info.json does not parse: {e}. Received: dataset={root!r}") from e
    lists = []
    for kind in ("images", "labels"):
        path = os.path.join(root, f"{phase}_{kind}.txt")
        if not os.path.isfile(path):
            raise ValueError(f"The folder has no {phase}_{kind}.txt. Received: dataset={root!r}")
        with open(path, encoding="utf-8") as f:
            lists.append([os.path.join(root, line.strip()) for line in f if line.strip()])
    images, labels = lists
    if not images:
        raise ValueError(f"{phase}_images.txt lists no images. Received: dataset={root!r}")
    if len(images) != len(labels):
        raise ValueError(
            f"{phase}_images.txt lists {len(images)} images but {phase}_labels.txt {len(labels)} labels. "
            f"Received: dataset={root!r}"
        )
    missing = [p for p in images + labels if not os.path.isfile(p)]
    if missing:
        raise ValueError(f"{len(missing)} listed files do not exist, e.g. {missing[0]!r}. Received: dataset={root!r}")
    return images, labels, info


def check_labels(masks, classes, dataset):
    """Raises a ValueError when a mask value is neither in [0, classes) nor 255."""
    values = np.unique(np.concatenate([np.unique(np.asarray(m)) for m in masks])) if len(masks) else []
    bad = [int(v) for v in values if not (0 <= v < classes or v == IGNORE_LABEL)]
    if bad:
        raise ValueError(
            f"Segmentation labels should be in [0, {classes}) or {IGNORE_LABEL} (ignored); found {bad[:10]}. "
            f"Received: dataset={dataset!r}"
        )


LABEL_CHECK_LIMIT = 512  # masks read before training to validate label values (all of an embedded set)


def segmentation_data(
    dataset,
    *,
    split="train",
    crop_size=None,
    batch_size=8,
    training=None,
    seed=0,
    classes=None,
    data_dir=None,
    limit=None,
    scale=(0.5, 2.0),
    max_rotation=10.0,
    drop_remainder=None,
):
    """A batched `tf.data.Dataset` of `(image, mask)` and its `DataInfo`.

    Args:
        dataset: `"fashion_mnist_scenes"`, `"cityscapes"`, `"oxford_iiit_pet"` or a list-file folder.
        split: `"train"` or `"validation"`.
        crop_size: side of the training crops, and of the padded / centre-cropped evaluation images (default 64
            for the scenes, else 512).
        batch_size: the global batch size.
        training: augment, shuffle and repeat (defaults to `split == "train"`).
        seed: seed of the shuffle and of every augmentation.
        classes: number of classes of a list-file folder whose info.json has no `classes`.
        data_dir: tfds data folder, or the folder of the Fashion-MNIST IDX files.
        limit: use only the first `limit` examples.
        scale, max_rotation: the random scale range and rotation of the training transform.

    Returns:
        `(dataset, info)`: images float32 normalised with `info.mean` / `info.std`, masks uint8 with 255 ignored.
        Before returning, the masks of an embedded data set (all) or a folder (the first 512) are checked to
        lie in [0, classes) or be 255.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"`split` should be 'train' or 'validation'. Received: split={split!r}")
    training = split == "train" if training is None else training
    crop_size = checks.positive_int("crop_size", crop_size, optional=True)
    limit = checks.positive_int("limit", limit, optional=True)
    kind, dataset = resolve(dataset, "segmentation")
    crop_size = crop_size or (fashion_mnist.SCENE_SIZE if kind == "embedded" else 512)
    if kind == "embedded":
        train, test = fashion_mnist.load_scenes(data_dir=data_dir)
        images, masks = train if split == "train" else test
        if limit:
            images, masks = images[:limit], masks[:limit]
        info = DataInfo(
            dataset,
            fashion_mnist.SCENE_CLASSES,
            fashion_mnist.SCENE_CLASS_NAMES,
            len(images),
            1,
            (fashion_mnist.MEAN,),
            (fashion_mnist.STD,),
        )
        check_labels([masks], info.num_classes, dataset)
        ds = tf.data.Dataset.from_tensor_slices((images[..., None], masks))
    elif kind == "folder":
        image_paths, label_paths, meta = read_list_files(dataset, split)
        if limit:
            image_paths, label_paths = image_paths[:limit], label_paths[:limit]
        named = meta.get("classes")
        num_classes = len(named) if isinstance(named, list) else named or classes
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                "Give the number of classes of a list-file folder (info.json 'classes' or `classes`). "
                f"Received: classes={classes!r}"
            )
        names = tuple(named) if isinstance(named, list) else tuple(str(i) for i in range(num_classes))
        mean = tuple(meta.get("mean", IMAGENET_MEAN))
        std = tuple(meta.get("std", IMAGENET_STD))
        info = DataInfo(
            dataset, num_classes, names, len(image_paths), len(mean), mean, std, tuple(image_paths + label_paths)
        )
        check_image_files(image_paths + label_paths, dataset)
        check_labels([_read_label_file(p) for p in label_paths[:LABEL_CHECK_LIMIT]], num_classes, dataset)
        ds = tf.data.Dataset.from_tensor_slices((image_paths, label_paths))
        ds = ds.map(
            lambda p, q: (_decode(p, info.channels), _decode(q, 1)[..., 0]), num_parallel_calls=tf.data.AUTOTUNE
        )
    else:
        base = dataset.split("/")[0].split(":")[0]
        ds, _, count = _tfds_source(dataset, split, data_dir, limit)
        if base == "cityscapes":
            info = DataInfo(dataset, 19, CITYSCAPES_CLASSES, count, 3, IMAGENET_MEAN, IMAGENET_STD)
            ds = ds.map(
                lambda e: (e["image_left"], cityscapes_train_ids(e["segmentation_label"][..., 0])),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        else:
            info = DataInfo(dataset, 2, ("background", "pet"), count, 3, IMAGENET_MEAN, IMAGENET_STD)
            ds = ds.map(
                lambda e: (e["image"], pet_labels(e["segmentation_mask"][..., 0])),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
    if classes is not None and classes != info.num_classes:
        raise ValueError(f"The data set has {info.num_classes} classes. Received: classes={classes!r}")

    def train_map(example, seed):
        image, mask = example
        image, mask = augment_segmentation(image, mask, seed, crop_size, scale=scale, max_rotation=max_rotation)
        return _normalise(image, info.mean, info.std), mask

    def eval_map(image, mask):
        image, mask = _pad_crop_centre(image, mask, crop_size)
        return _normalise(image, info.mean, info.std), mask

    ds = _batch(ds, train_map, eval_map, batch_size, training, seed, info.num_examples, drop_remainder)
    return ds, info


def _read_label_file(path):
    return _decode(tf.constant(path), 1).numpy()
