"""The authors' data augmentations (`ucbdrive/dla` `classify.py`, `segment.py`), and those for small images.

Every function transforms one example with stateless random ops fed by a `(2,)` seed, so that a pipeline is
reproducible under parallel maps and an image and its mask always get the same transform. Pixels are in
[0, 255]; label value 255 means "ignore". `keras_dla.training.datasets` assembles them into tf.data pipelines.

- classification: `augment_classification` (the recipes `"imagenet"`, `"small"`, `"small-erasing"`, `"flip"`),
  built from `random_resized_crop`, `colour_jitter`, `pca_lighting`, `random_erasing` and `fit_small`;
  `centre_crop` (evaluation).
- segmentation: `augment_segmentation` (random scale, rotation, crop with 255 padding, flip) and
  `pad_crop_centre` (evaluation).
"""

import math

import tensorflow as tf

from keras_dla import checks
from keras_dla.training.choices import CLASSIFICATION_AUGMENTS, IGNORE_LABEL, SEGMENTATION_AUGMENTS

EVAL_CROP_FRACTION = 0.875  # resize to 256 and centre-crop 224
# Random erasing, as Zhong et al.'s defaults: applied to half the images, 2-40% of the area, aspect 0.3-3.3.
ERASING_PROBABILITY = 0.5
ERASING_AREA = (0.02, 0.4)
ERASING_ASPECT = (0.3, 1 / 0.3)
SMALL_IMAGE_FILL = 0.875  # `fit_small`: a small image's longer side fills this fraction of the canvas (28 of 32)
# PCA lighting noise (Krizhevsky et al. 2012) with ImageNet's RGB eigenvalues and eigenvectors, as the authors use.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


# ----------------------------------------------------------------------------------------------------------------
# Classification


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
    recipe = checks.one_of("recipe", recipe, CLASSIFICATION_AUGMENTS, what="augmentation recipe")
    seeds = tf.random.experimental.stateless_split(seed, 4)
    return CLASSIFICATION_RECIPES[recipe](tf.cast(image, tf.float32), seeds, size)


def _imagenet(image, seeds, size):
    image = random_resized_crop(image, seeds[0], size)
    image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    image = colour_jitter(image, seeds[2])
    if image.shape[-1] == 3:
        image = pca_lighting(image, seeds[3])
    return image


def _small(image, seeds, size):
    image = fit_small(image, size)
    pad = max(size // 8, 1)
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(image, (size, size, image.shape[-1]), seeds[0])
    return tf.image.stateless_random_flip_left_right(image, seeds[1])


def _small_erasing(image, seeds, size):
    return random_erasing(augment_classification(image, seeds[0], size, recipe="small"), seeds[2])


def _flip(image, seeds, size):
    return tf.image.stateless_random_flip_left_right(fit_small(image, size), seeds[1])


# Each recipe of `keras_dla.training.choices`: its transform of one float image, given 4 seeds and the size.
CLASSIFICATION_RECIPES = {"imagenet": _imagenet, "small": _small, "small-erasing": _small_erasing, "flip": _flip}


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


# Each segmentation recipe of `keras_dla.training.choices`: its arguments of `augment_segmentation`.
SEGMENTATION_RECIPES = {"flip": dict(scale=None, max_rotation=0.0)}


def pad_crop_centre(image, mask, size):
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


def _check_recipes(implemented, named, task):
    # A recipe added to `keras_dla.training.choices` without its implementation here (or the other way round)
    # stops the import, rather than the CLI offering a name that fails mid-pipeline.
    if tuple(implemented) != tuple(named):
        raise ImportError(
            f"keras_dla.training.augment implements the {task} recipes {tuple(implemented)}, but "
            f"keras_dla.training.choices names {tuple(named)}; make them the same."
        )


_check_recipes(CLASSIFICATION_RECIPES, CLASSIFICATION_AUGMENTS, "classification")
_check_recipes(SEGMENTATION_RECIPES, SEGMENTATION_AUGMENTS, "segmentation")
