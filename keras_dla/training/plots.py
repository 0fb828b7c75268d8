"""The pictures of a training run and of the demo, as PNG files: loss and metric curves, a confusion matrix,
classified test images, and segmented scenes beside their true masks.

matplotlib is imported only when a picture is drawn, with its file-only Agg backend; every file is written
through a temporary file and renamed (`keras_dla.files.write_atomically`).
"""

import math

import numpy as np

from keras_dla import files
from keras_dla.training.choices import IGNORE_LABEL


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    files.write_atomically(path, lambda temporary: fig.savefig(temporary, dpi=100, format="png"))
    _pyplot().close(fig)


def plot_history(rows, png_path, title=None):
    """Loss and metric curves (train and validation) of history rows into a PNG; a no-op without rows.

    Args:
        rows: one dict per epoch, as `keras_dla.training.run_folder.read_history` reads them from history.csv.
        png_path: the PNG to write.
        title: a title above the curves.
    """
    if not rows:
        return
    plt = _pyplot()
    metrics = [k for k in rows[0] if k not in ("epoch", "learning_rate") and not k.startswith("val_")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.5), squeeze=False)
    epochs = [int(r["epoch"]) + 1 for r in rows]
    for ax, name in zip(axes[0], metrics, strict=True):
        ax.plot(epochs, [r.get(name, math.nan) for r in rows], "o-", label="train")
        if any(f"val_{name}" in r for r in rows):
            ax.plot(epochs, [r.get(f"val_{name}", math.nan) for r in rows], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, png_path)


def plot_confusion(matrix, names, path):
    """A PNG of `matrix` (rows the true class): counts, each cell shaded by its share of the row."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    normalised = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            if matrix[i, j]:
                colour = "white" if normalised[i, j] > 0.5 else "black"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)


def plot_samples(images, labels, predictions, names, path, count=24):
    """A PNG of the first `count` grey images, each titled with its predicted and (below) true class name."""
    plt = _pyplot()
    count = min(count, len(images))
    cols = 8
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:count]):
        ax.imshow(images[i], cmap="gray")
        ok = predictions[i] == labels[i]
        ax.set_title(f"{names[predictions[i]]}\n({names[labels[i]]})", fontsize=7, color="green" if ok else "red")
    fig.suptitle("predicted (true)")
    fig.tight_layout()
    _save(fig, path)


def plot_segmentation_samples(images, masks, predictions, classes, path, count=6):
    """A PNG of the first `count` grey scenes above their true and predicted masks (`IGNORE_LABEL` left blank)."""
    plt = _pyplot()
    count = min(count, len(images))
    colours = plt.get_cmap("tab20", classes)
    fig, axes = plt.subplots(3, count, figsize=(count * 1.8, 5.6), squeeze=False)
    for i in range(count):
        for row, (picture, title) in enumerate(((images[i], "scene"), (masks[i], "truth"), (predictions[i], "DLA-Up"))):
            ax = axes[row, i]
            ax.axis("off")
            if row == 0:
                ax.imshow(picture, cmap="gray")
            else:
                shown = np.ma.masked_equal(picture.astype(int), IGNORE_LABEL)
                ax.imshow(shown, cmap=colours, vmin=0, vmax=classes - 1, interpolation="nearest")
            if i == 0:
                ax.set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    _save(fig, path)
