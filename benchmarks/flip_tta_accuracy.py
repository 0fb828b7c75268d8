"""Fashion-MNIST test accuracy of trained weights, single view and with horizontal-flip test-time augmentation.

    python benchmarks/flip_tta_accuracy.py runs/NAME/final.weights.h5 [dla46_c] [64]

Evaluates the 10,000 test images through the evaluation pipeline, once as they are and once mirrored, and prints
the accuracy of the plain predictions and of the average of the two softmax outputs. The training recipes flip
garments left-right, so the mirrored view is one the model was trained on. Report the two figures separately:
the published baselines are single-view.
"""

import sys

import numpy as np

from keras_dla import datasets, training


def flip_tta_accuracy(model, images, labels, batch_size=250):
    """`(plain_accuracy, flip_averaged_accuracy)` of a softmax classifier on NHWC `images`."""
    plain = model.predict(images, batch_size=batch_size, verbose=0)
    mirrored = model.predict(images[:, :, ::-1], batch_size=batch_size, verbose=0)
    return float(np.mean(plain.argmax(-1) == labels)), float(np.mean((plain + mirrored).argmax(-1) == labels))


def main(weights, variant="dla46_c", size=32):
    size = int(size)
    model = training.build_classifier(variant, 10, (size, size, 1), weights)
    test, _ = datasets.classification_data("fashion_mnist", split="validation", batch_size=250, image_size=size)
    images, labels = (np.concatenate(parts) for parts in zip(*[(a.numpy(), b.numpy()) for a, b in test], strict=True))
    plain, flipped = flip_tta_accuracy(model, images, labels)
    print(f"{len(labels)} test images; accuracy {plain:.4f} single view, {flipped:.4f} with flip averaging")


if __name__ == "__main__":
    main(*sys.argv[1:])
