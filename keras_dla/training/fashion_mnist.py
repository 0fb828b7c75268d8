"""Fashion-MNIST, the real data set of the demo: an IDX reader, the loader, and "Fashion-MNIST scenes".

Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, arXiv:1708.07747) is 70,000 real 28x28 grey photographs of Zalando
articles in 10 classes (60,000 train, 10,000 test). `load_data` reads the original IDX files from, in order,
`data_dir`, `$KERAS_DLA_FASHION_MNIST`, and the Debian package `dataset-fashion-mnist`
(`/usr/share/datasets/fashion-mnist`), and only then asks `keras.datasets.fashion_mnist` (a download).

"Fashion-MNIST scenes" are *composed*, not natural, scenes: 64x64 canvases on which 1 to 4 real Fashion-MNIST
garments are pasted at random positions and scales over a textured background, with a per-pixel label map
(0 = background, 1 + the garment's class where the garment covers the pixel). They are made deterministically
from a seed, from the train images for the train split and from the test images for the test split, so the
segmentation demo trains and evaluates on real garment pixels without a download.
"""

import functools
import gzip
import os

import numpy as np

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "KERAS_DLA_FASHION_MNIST"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FILE_LIST = ", ".join(stem for pair in FILES.values() for stem in pair)  # for error messages
# Pixel statistics of the 60,000 train images on [0, 1] (the usual normalisation of Fashion-MNIST).
MEAN = 0.2860
STD = 0.3530

SCENE_SIZE = 64
SCENE_CLASSES = 1 + len(CLASS_NAMES)  # background + 10 garments
SCENE_CLASS_NAMES = ("background",) + CLASS_NAMES
# A garment pixel belongs to the garment where its grey value exceeds this (the photographs' backgrounds are 0).
GARMENT_THRESHOLD = 24

# IDX type codes (the format's spec, http://yann.lecun.com/exdb/mnist/): code -> numpy big-endian dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """Reads an IDX file (optionally gzip-compressed) into a numpy array.

    Args:
        path: the file, e.g. `train-images-idx3-ubyte.gz`.

    Returns:
        The array, with the shape the file's header gives.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"Not an IDX file (bad magic number). Received: path={str(path)!r}")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">u4"))
    count = int(np.prod(shape)) if shape else 1
    if len(data) - header != count * dtype.itemsize:
        raise ValueError(
            f"IDX file size does not match its header shape {shape}. Received: path={str(path)!r} "
            f"with {len(data)} bytes"
        )
    return np.frombuffer(data[header:], dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _find_file(directory, stem):
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def find_files(data_dir=None):
    """The directory holding the four IDX files, or None: `data_dir`, `$KERAS_DLA_FASHION_MNIST`, Debian's."""
    candidates = [data_dir] if data_dir else [os.environ.get(ENV_VAR), DEBIAN_DIR]
    for directory in candidates:
        if directory and all(_find_file(directory, stem) for pair in FILES.values() for stem in pair):
            return directory
    if data_dir:
        raise FileNotFoundError(
            f"No Fashion-MNIST IDX files ({_FILE_LIST}, optionally .gz) in the folder. Received: data_dir={data_dir!r}"
        )
    return None


def load_data(data_dir=None):
    """Loads Fashion-MNIST as `(x_train, y_train), (x_test, y_test)`: uint8 images (N, 28, 28), uint8 labels.

    Args:
        data_dir: a folder with the four IDX files; by default `$KERAS_DLA_FASHION_MNIST`, then the Debian
            package's folder, then `keras.datasets.fashion_mnist` (which downloads the same files).
    """
    directory = find_files(data_dir)
    if directory is None:
        import keras

        try:
            return keras.datasets.fashion_mnist.load_data()
        except Exception as e:  # keras' get_file raises a bare Exception when the download fails
            raise FileNotFoundError(
                f"Fashion-MNIST is not on this machine and could not be downloaded ({e}). Install the Debian "
                f"package dataset-fashion-mnist (files in {DEBIAN_DIR}), or set ${ENV_VAR} to a folder with "
                f"the four IDX files ({_FILE_LIST}, optionally .gz)."
            ) from e
    splits = []
    for split in ("train", "test"):
        images_stem, labels_stem = FILES[split]
        images = read_idx(_find_file(directory, images_stem))
        labels = read_idx(_find_file(directory, labels_stem))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"Fashion-MNIST {split} files disagree: images {images.shape}, labels {labels.shape}. "
                f"Received: data_dir={directory!r}"
            )
        splits.append((images, labels))
    return tuple(splits)


def _resize_nearest(image, size):
    rows = (np.arange(size) * image.shape[0] / size).astype(int)
    cols = (np.arange(size) * image.shape[1] / size).astype(int)
    return image[rows][:, cols]


def make_scenes(images, labels, count, *, seed=0, size=SCENE_SIZE):
    """Composes `count` scenes from real garments: `(scenes uint8 (count, size, size), masks uint8)`.

    Each scene has a smooth random background (a gradient of random level and direction plus faint noise,
    at times brighter than dark garment pixels, so brightness alone does not segment it) and 1 to 4 garments
    drawn from `images`, each scaled to 20-44 pixels and pasted at a random place; a later garment covers an earlier
    one. The mask is 0 for background and `1 + label` where a garment's pixel is above `GARMENT_THRESHOLD`.

    Args:
        images: uint8 array (N, 28, 28) of Fashion-MNIST images.
        labels: their labels (N,), in [0, 10).
        count: number of scenes.
        seed: the scenes are a function of `(images, labels, count, seed, size)` only.
        size: canvas height and width.
    """
    if size < 32:
        raise ValueError(f"Scenes should be at least 32 pixels wide. Received: size={size}")
    rng = np.random.default_rng(seed)
    scenes = np.empty((count, size, size), dtype=np.uint8)
    masks = np.zeros((count, size, size), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for n in range(count):
        # Background: a linear gradient of random direction and level, plus faint noise.
        level, slope_y, slope_x = rng.uniform(0, 90), rng.uniform(-40, 40), rng.uniform(-40, 40)
        canvas = level + slope_y * yy + slope_x * xx + rng.normal(0, 6, (size, size))
        mask = masks[n]
        for _ in range(rng.integers(1, 5)):
            index = rng.integers(len(images))
            side = int(rng.integers(20, min(45, size + 1)))
            garment = _resize_nearest(images[index], side)
            top, left = rng.integers(0, size - side + 1, size=2)
            where = garment > GARMENT_THRESHOLD
            window = (slice(top, top + side), slice(left, left + side))
            canvas[window][where] = garment[where]
            mask[window][where] = 1 + int(labels[index])
        scenes[n] = np.clip(canvas, 0, 255).astype(np.uint8)
    return scenes, masks


@functools.lru_cache(maxsize=2)
def load_scenes(train_count=6000, test_count=1000, *, seed=0, size=SCENE_SIZE, data_dir=None):
    """Fashion-MNIST scenes: `(x_train, y_train), (x_test, y_test)` with uint8 masks; see `make_scenes`.

    Train scenes are composed from the train images, test scenes from the test images (seeded apart).
    """
    (x_train, y_train), (x_test, y_test) = load_data(data_dir)
    train = make_scenes(x_train, y_train, train_count, seed=seed, size=size)
    test = make_scenes(x_test, y_test, test_count, seed=seed + 1, size=size)
    return train, test
