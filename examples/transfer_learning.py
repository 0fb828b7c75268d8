"""
Title: Transfer learning with an ImageNet DLA-34
Description: Freeze the ImageNet backbone, train a new classifier, then unfreeze and fine-tune the whole network.

This script is small by default (a few steps on a few hundred images); `--full` runs whole epochs.

```
python examples/transfer_learning.py --dataset tf_flowers          # a tensorflow-datasets name
python examples/transfer_learning.py --dataset path/to/folder      # class sub-folders of images
python examples/transfer_learning.py --dataset tf_flowers --full   # the real run
```
"""

import argparse

import keras

import keras_dla
from keras_dla.training import datasets

"""
## Set-up

The data pipeline is `keras_dla.training.datasets.classification_data`: the authors' random-resized crop, flip, colour
jitter and PCA lighting for training, resize and centre crop for validation, normalised with the ImageNet mean
and standard deviation that the DLA weights expect.
"""

parser = argparse.ArgumentParser(description=__doc__.split("\n")[2])
parser.add_argument("--dataset", default="tf_flowers")
parser.add_argument("--weights", default="imagenet", help="imagenet, none, or a checkpoint file")
parser.add_argument("--image-size", type=int, default=224)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--full", action="store_true", help="whole epochs instead of a few steps")
args = parser.parse_args()

limit = None if args.full else 256
train, info = datasets.classification_data(
    args.dataset, split="train", image_size=args.image_size, batch_size=args.batch_size, limit=limit
)
val, _ = datasets.classification_data(
    args.dataset, split="validation", image_size=args.image_size, batch_size=args.batch_size, limit=limit
)
steps = max(info.num_examples // args.batch_size, 1) if args.full else 4
print(f"{info.name}: {info.num_classes} classes, {info.num_examples} training images")

"""
## The model: an ImageNet backbone and a new head

`include_top=False, pooling="avg"` gives the pooled level-5 features; a new `Dense` layer classifies them.
"""

weights = None if args.weights == "none" else args.weights
backbone = keras_dla.DLA34(
    weights=weights, include_top=False, pooling="avg", input_shape=(args.image_size, args.image_size, 3)
)
inputs = keras.Input((args.image_size, args.image_size, 3))
features = backbone(inputs, training=False)  # keep BatchNorm in inference mode while frozen
outputs = keras.layers.Dense(info.num_classes, activation="softmax", name="fc")(features)
model = keras.Model(inputs, outputs)

"""
## Stage 1: train the head on a frozen backbone
"""

backbone.trainable = False
model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(train, validation_data=val, epochs=3 if args.full else 1, steps_per_epoch=steps)

"""
## Stage 2: unfreeze and fine-tune everything with a small learning rate

Re-compiling after changing `trainable` is what makes the change take effect.
"""

backbone.trainable = True
model.compile(
    keras.optimizers.SGD(0.001, momentum=0.9, weight_decay=1e-4),
    "sparse_categorical_crossentropy",
    metrics=["accuracy"],
)
history = model.fit(train, validation_data=val, epochs=5 if args.full else 1, steps_per_epoch=steps)
print(f"validation accuracy after fine-tuning: {history.history['val_accuracy'][-1]:.4f}")
