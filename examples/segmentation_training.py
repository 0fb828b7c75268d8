"""
Title: Semantic segmentation with DLA-Up
Description: Train DLA-Up on Fashion-MNIST scenes (or Cityscapes, Oxford-IIIT Pet, a list-file folder) and score mIoU.

Small by default (a few hundred scenes, one epoch); `--full` trains on all 6,000 scenes for 20 epochs. The scenes
are composed 64x64 canvases of real Fashion-MNIST garments with per-pixel labels, not natural images.

```
python examples/segmentation_training.py
python examples/segmentation_training.py --full
python examples/segmentation_training.py --dataset cityscapes --crop-size 832 --batch-size 16 --full
```
"""

import argparse

import numpy as np

from keras_dla.training import datasets, evaluation, fit
from keras_dla.training.choices import IGNORE_LABEL
from keras_dla.training.config import TrainConfig

"""
## Training with `keras_dla.training`

`keras_dla.training.fit.train` builds `DLAUp` on the named backbone inside the distribution strategy's scope,
compiles it with the 255-ignoring cross-entropy and mean IoU, trains with SGD (momentum 0.9, weight decay 1e-4) on
the poly schedule of the authors, and leaves a resumable run folder (backup, best weights, logs, curves).
"""

parser = argparse.ArgumentParser(description=__doc__.split("\n")[2])
parser.add_argument("--dataset", default="fashion_mnist_scenes")
parser.add_argument("--model", default="dla34up")
parser.add_argument("--crop-size", type=int, default=64)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--output", default="runs/segmentation_example")
parser.add_argument("--full", action="store_true")
args = parser.parse_args()

config = TrainConfig(
    task="segmentation",
    model=args.model,
    dataset=args.dataset,
    epochs=20 if args.full else 1,
    steps_per_epoch=None if args.full else 8,
    batch_size=args.batch_size,
    image_size=args.crop_size,
    limit=None if args.full else 256,
    output=args.output,
)
result = fit.train(config)
model = result["model_object"]

"""
## Evaluation: mean IoU over the validation split
"""

val, info = datasets.segmentation_data(
    args.dataset, split="validation", crop_size=args.crop_size, batch_size=32, limit=None if args.full else 128
)
matrix = np.zeros((info.num_classes, info.num_classes), np.int64)
for images, masks in val:
    predictions = np.argmax(model(images, training=False).numpy(), axis=-1)
    matrix += evaluation.confusion_matrix(masks.numpy(), predictions, info.num_classes, ignore=IGNORE_LABEL)
ious = evaluation.iou_per_class(matrix)
print(f"mean IoU {np.nanmean(ious):.4f}")
for name, iou in zip(info.class_names, ious, strict=True):
    print(f"  {name:12s} {iou:.4f}")
