"""The names training accepts, and the label it ignores: one definition, importing nothing.

`keras-dla train`'s parser reads its choices here without importing TensorFlow; `keras_dla.training.config`
checks a `TrainConfig` against them; `keras_dla.training.augment` checks at import that it implements exactly
the augmentation recipes named here, and `keras_dla.training.datasets` accepts them.
"""

TASKS = ("classification", "segmentation")
STRATEGIES = ("auto", "mirrored", "multiworker", "one-device")
SCHEDULES = ("step", "poly", "cosine")
OPTIMIZERS = ("sgd", "adamw")  # sgd: the authors' (with momentum); adamw: short runs. Keras decouples weight decay

# Augmentation recipes (`keras_dla.training.augment`); None is each task's default: the authors' (ucbdrive/dla
# `classify.py`, `segment.py`), or "small" for Fashion-MNIST. "small", "small-erasing" and "flip" are for small
# images, which evaluation then fits to the input as they do. Segmentation's "flip" drops the authors' random scale
# and rotation (the crop and flip stay), for short runs as the demo's.
SMALL_IMAGE_AUGMENTS = ("small", "small-erasing", "flip")
CLASSIFICATION_AUGMENTS = ("imagenet", *SMALL_IMAGE_AUGMENTS)
SEGMENTATION_AUGMENTS = ("flip",)
AUGMENTS = {"classification": CLASSIFICATION_AUGMENTS, "segmentation": SEGMENTATION_AUGMENTS}

# The label of pixels that count for nothing in segmentation: no loss, no metric, padding of crops and rotations
# ("void" in Cityscapes; the authors train with `NLLLoss(ignore_index=255)`).
IGNORE_LABEL = 255
