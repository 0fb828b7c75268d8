"""Fashion-MNIST test accuracy of trained weights, single view and with horizontal-flip test-time augmentation.

    python benchmarks/flip_tta_accuracy.py runs/NAME/final.weights.h5 [dla46_c] [64] [--confusion PNG]

Evaluates the 10,000 test images through the evaluation pipeline, once as they are and once mirrored, and prints
the accuracy of the plain predictions and of the average of the two softmax outputs. The training recipes flip
garments left-right, so the mirrored view is one the model was trained on. Report the two figures separately:
the published baselines are single-view. `--confusion` also draws the single view's confusion matrix (the demo's
picture: rows the true class, counts, shaded by the share of the row).
"""

import argparse

import numpy as np

from keras_dla.training import datasets, evaluation, fit, plots
from keras_dla.training.fashion_mnist import CLASS_NAMES


def flip_tta_predictions(model, images, batch_size=250):
    """`(single_view, flip_averaged)` class predictions of a softmax classifier on NHWC `images`."""
    plain = model.predict(images, batch_size=batch_size, verbose=0)
    mirrored = model.predict(images[:, :, ::-1], batch_size=batch_size, verbose=0)
    return plain.argmax(-1), (plain + mirrored).argmax(-1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="a .weights.h5 file of a `keras-dla train` Fashion-MNIST run")
    parser.add_argument("variant", nargs="?", default="dla46_c", help="the run's --model (default dla46_c)")
    parser.add_argument("size", nargs="?", type=int, default=32, help="the run's --image-size (default 32)")
    parser.add_argument("--confusion", metavar="PNG", help="write the single view's confusion matrix here")
    args = parser.parse_args(argv)
    if args.size < 1:
        parser.error(f"the image size should be positive. Received: {args.size}")
    return args


def main(argv=None):
    args = parse_args(argv)
    model = fit.build_classifier(args.variant, 10, (args.size, args.size, 1), args.weights)
    test, _ = datasets.classification_data("fashion_mnist", split="validation", batch_size=250, image_size=args.size)
    images, labels = (np.concatenate(parts) for parts in zip(*[(a.numpy(), b.numpy()) for a, b in test], strict=True))
    plain, flipped = flip_tta_predictions(model, images)
    print(
        f"{len(labels)} test images; accuracy {np.mean(plain == labels):.4f} single view, "
        f"{np.mean(flipped == labels):.4f} with flip averaging"
    )
    if args.confusion:
        plots.plot_confusion(evaluation.confusion_matrix(labels, plain, len(CLASS_NAMES)), CLASS_NAMES, args.confusion)
        print(f"confusion matrix (single view): {args.confusion}")


if __name__ == "__main__":
    main()
