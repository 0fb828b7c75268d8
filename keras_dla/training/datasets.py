"""Input pipelines for training DLA classifiers and DLA-Up segmenters: tf.data, parallel, prefetched, seeded.

Sources, by the `dataset` argument:

- classification: `"fashion_mnist"` (the real data set, embedded: see `keras_dla.training.fashion_mnist`), a
  tensorflow-datasets name (`"tf_flowers"`, `"imagenette/160px"`, ...), or a folder of class sub-folders
  (`root/<class>/*.jpg`; with `root/train/<class>/` and `root/val/<class>/` when it has them).
- segmentation: `"fashion_mnist_scenes"` (composed scenes of real garments, embedded), the tensorflow-datasets
  `"cityscapes"` (raw ids 0-33 mapped to the 19 train ids, 255 elsewhere) and `"oxford_iiit_pet"` (trimaps:
  background 0, pet 1, border 255), or a folder in the authors' list-file format (`info.json` with `mean` and
  `std`, `train_images.txt` / `train_labels.txt` and `val_*.txt` with one path per line, relative to the folder).

Training pipelines apply the authors' augmentations (`keras_dla.training.augment`), each example with its own seed drawn
from `seed`, so a pipeline is reproducible; evaluation resizes and centre-crops (classification) or pads and
centre-crops (segmentation). Label value 255 means "ignore" throughout.
"""

import contextlib
import dataclasses
import json
import os
import re
import time

import numpy as np
import tensorflow as tf

from keras_dla import checks
from keras_dla.models.imagenet import MEAN as IMAGENET_MEAN
from keras_dla.models.imagenet import STD as IMAGENET_STD
from keras_dla.training import augment, fashion_mnist
from keras_dla.training.choices import (
    CLASSIFICATION_AUGMENTS,
    IGNORE_LABEL,
    SEGMENTATION_AUGMENTS,
    SMALL_IMAGE_AUGMENTS,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
CLASSIFICATION_EMBEDDED = ("fashion_mnist",)
SEGMENTATION_EMBEDDED = ("fashion_mnist_scenes",)
SEGMENTATION_TFDS = ("cityscapes", "oxford_iiit_pet")

SPLITS = ("train", "validation")  # "validation" is the test split of a data set without a validation split
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


def check_class_labels(labels, classes, dataset, split, class_names=(), limited=False):
    """Raises ValueError when classification labels cannot train (or be scored by) a `classes`-way classifier.

    Refused: fewer than 2 classes, a label that is not an integer in [0, `classes`), and a training split whose
    labels are all one class (the loss is 0 from the first step: nothing is learnt). A validation split may hold
    fewer classes than the model. `limited`: the labels are the first of a split (`limit`), which the message
    names as a possible cause.
    """
    names = f" ({', '.join(map(str, class_names))})" if class_names else ""
    if classes < 2:
        raise ValueError(
            f"A classifier needs at least 2 classes; the data set has {classes}{names}. Received: dataset={dataset!r}"
        )
    labels = np.asarray(labels)
    if not labels.size:
        return
    if labels.dtype.kind not in "iub":
        whole = labels.dtype.kind == "f" and np.isfinite(labels).all() and (labels == np.round(labels)).all()
        if not whole:
            raise ValueError(
                f"Class labels should be integers; the {split} split has labels of type {labels.dtype}. "
                f"Received: dataset={dataset!r}"
            )
    values = np.unique(labels)
    bad = values[(values < 0) | (values >= classes)]
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:10].tolist()) + (", ..." if bad.size > 10 else "")
        raise ValueError(
            f"Class labels should be in [0, {classes}); the {split} split has {shown}. Received: dataset={dataset!r}"
        )
    if split == "train" and values.size < 2:
        only = class_names[int(values[0])] if class_names else int(values[0])
        cause = " (`limit` keeps the first examples, and a class folder lists them class by class)" if limited else ""
        raise ValueError(
            f"The training split holds one class only ({only!r}, {labels.size} examples): a classifier cannot "
            f"learn from it{cause}. Received: dataset={dataset!r}"
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
    split = checks.one_of("split", split, SPLITS)
    training = split == "train" if training is None else training
    image_size = checks.positive_int("image_size", image_size, optional=True)
    limit = checks.positive_int("limit", limit, optional=True)
    if recipe is not None:
        recipe = checks.one_of("recipe", recipe, CLASSIFICATION_AUGMENTS, what="augmentation recipe")
    kind, dataset = resolve(dataset, "classification")
    image_size = image_size or (32 if kind == "embedded" else 224)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if kind == "embedded":
        (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data(data_dir)
        images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
        if limit:
            images, labels = images[:limit], labels[:limit]
        check_class_labels(labels, 10, dataset, split, fashion_mnist.CLASS_NAMES, limited=bool(limit))
        ds = tf.data.Dataset.from_tensor_slices((images[..., None], labels.astype("int32")))
        info = DataInfo(
            dataset, 10, fashion_mnist.CLASS_NAMES, len(images), 1, (fashion_mnist.MEAN,), (fashion_mnist.STD,)
        )
        recipe = recipe or "small"
    elif kind == "folder":
        paths, labels, class_names = folder_split(dataset, split)
        if limit:
            paths, labels = paths[:limit], labels[:limit]
        check_class_labels(labels, len(class_names), dataset, split, class_names, limited=bool(limit))
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
        check_class_labels([], info.num_classes, dataset, split, info.class_names)  # the labels are read in fit
    recipe = recipe or "imagenet"

    def train_map(example, seed):
        image, label = example
        return _normalise(
            augment.augment_classification(image, seed, image_size, recipe=recipe), info.mean, info.std
        ), label

    def eval_map(image, label):
        image = tf.cast(image, tf.float32)
        image = (
            augment.fit_small(image, image_size)
            if recipe in SMALL_IMAGE_AUGMENTS
            else augment.centre_crop(image, image_size)
        )
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


def _out_of_range(values, classes):
    return [int(v) for v in values if not (0 <= v < classes or v == IGNORE_LABEL)]


def check_labels(masks, classes, dataset, split=None, paths=None):
    """Raises a ValueError when a mask value is neither in [0, classes) nor 255, when there are fewer than 2
    classes, or when the masks of the training split (`split="train"`) label one class only.

    `paths`, the files the masks were read from, lets the message name the first file with a bad value.
    """
    if classes < 2:
        raise ValueError(
            f"Segmentation needs at least 2 classes; the data set has {classes}. Received: dataset={dataset!r}"
        )
    per_mask = [np.unique(np.asarray(m)) for m in masks]
    values = np.unique(np.concatenate(per_mask)) if per_mask else []
    bad = _out_of_range(values, classes)
    if bad:
        where = ""
        if paths is not None:
            first = next(i for i, v in enumerate(per_mask) if _out_of_range(v, classes))
            more = sum(1 for v in per_mask[first + 1 :] if _out_of_range(v, classes))
            where = f" in {paths[first]}" + (f" (and {more} more masks)" if more else "")
        raise ValueError(
            f"Segmentation labels should be in [0, {classes}) or {IGNORE_LABEL} (ignored); found {bad[:10]}{where}. "
            f"Received: dataset={dataset!r}"
        )
    labelled = [int(v) for v in values if v != IGNORE_LABEL]
    if split == "train" and len(masks) and len(labelled) < 2:
        found = f"only class {labelled[0]}" if labelled else f"only {IGNORE_LABEL} (ignored)"
        raise ValueError(
            f"The training masks label {found}: a segmenter cannot learn from them. Received: dataset={dataset!r}"
        )


LABEL_CHECK_LIMIT = 512  # masks read before training to validate label values (all of an embedded set)
# What a mask file with a label out of range stops the pipeline with (`_checked_mask`), as `mask_label_error` reads it.
_MASK_ERROR_PATTERN = re.compile(r"The segmentation mask (.+?) holds label (\d+), outside \[0, (\d+)\) and not")


def _checked_mask(mask, path, classes):
    """`mask`, read from `path`, passed on once its labels are in [0, classes) or 255.

    Every mask is checked as the pipeline reads it (those past `LABEL_CHECK_LIMIT` are checked nowhere else): a
    bad label fails the pipeline with an InvalidArgumentError naming the file, which `mask_label_error` turns into
    a sentence, where the loss or the metric would fail on a batch that names no file.
    """
    labels = tf.cast(mask, tf.int32)
    bad = tf.logical_and(labels >= classes, labels != IGNORE_LABEL)
    found = tf.strings.as_string(tf.reduce_max(tf.where(bad, labels, -1)))
    outside = f", outside [0, {classes}) and not {IGNORE_LABEL} (ignored)"
    message = tf.strings.join(["The segmentation mask ", path, " holds label ", found, outside])
    check = tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [message])
    with tf.control_dependencies([check]):
        return tf.identity(mask)


def mask_label_error(error, dataset):
    """The sentence for an error that `_checked_mask` raised (naming the file), or None for any other error."""
    if not isinstance(error, tf.errors.InvalidArgumentError):
        return None
    found = _MASK_ERROR_PATTERN.search(error.message)
    if found is None:
        return None
    path, value, classes = found.groups()
    return (
        f"Segmentation labels should be in [0, {classes}) or {IGNORE_LABEL} (ignored); the mask {path} holds "
        f"{value} (found as training read it). Received: dataset={dataset!r}"
    )


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
    recipe=None,
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
        recipe: None (the authors' transform, with `scale` and `max_rotation`) or `"flip"` (no random scale or
            rotation: `augment.SEGMENTATION_RECIPES`).

    Returns:
        `(dataset, info)`: images float32 normalised with `info.mean` / `info.std`, masks uint8 with 255 ignored.
        Before returning, the masks of an embedded data set (all) or a folder (the first 512) are checked to
        lie in [0, classes) or be 255; a folder's other masks are checked as the pipeline reads them, and a bad
        one stops it with an error naming the file (`mask_label_error` makes it a sentence).
    """
    split = checks.one_of("split", split, SPLITS)
    training = split == "train" if training is None else training
    crop_size = checks.positive_int("crop_size", crop_size, optional=True)
    limit = checks.positive_int("limit", limit, optional=True)
    if recipe is not None:
        recipe = checks.one_of("recipe", recipe, SEGMENTATION_AUGMENTS, what="augmentation recipe")
        scale, max_rotation = (augment.SEGMENTATION_RECIPES[recipe][k] for k in ("scale", "max_rotation"))
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
        check_labels([masks], info.num_classes, dataset, split)
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
        checked = label_paths[:LABEL_CHECK_LIMIT]
        check_labels([_read_label_file(p) for p in checked], num_classes, dataset, split, paths=checked)
        ds = tf.data.Dataset.from_tensor_slices((image_paths, label_paths))
        ds = ds.map(
            lambda p, q: (_decode(p, info.channels), _checked_mask(_decode(q, 1)[..., 0], q, num_classes)),
            num_parallel_calls=tf.data.AUTOTUNE,
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
        image, mask = augment.augment_segmentation(image, mask, seed, crop_size, scale=scale, max_rotation=max_rotation)
        return _normalise(image, info.mean, info.std), mask

    def eval_map(image, mask):
        image, mask = augment.pad_crop_centre(image, mask, crop_size)
        return _normalise(image, info.mean, info.std), mask

    ds = _batch(ds, train_map, eval_map, batch_size, training, seed, info.num_examples, drop_remainder)
    return ds, info


def _read_label_file(path):
    return _decode(tf.constant(path), 1).numpy()
