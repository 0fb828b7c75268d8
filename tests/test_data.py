"""Input pipelines: sources (embedded, folders, list files, tfds), label checks, and augmentation alignment."""

import gzip
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_dla.training import augment, datasets, fashion_mnist

# ------------------------------------------------------------------------------------------------------------------
# Helpers: data sets made in temporary folders


def write_png(path, array):
    array = np.asarray(array, dtype=np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(array))


def make_class_folder(root, classes=("cat", "dog", "fox"), per_class=10, size=(40, 48)):
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        for i in range(per_class):
            image = np.full(size + (3,), 60 * label, dtype=np.uint8) + rng.integers(0, 20, size + (3,), dtype=np.uint8)
            write_png(os.path.join(root, name, f"{i:03d}.png"), image)
    return root


def make_list_folder(root, count=4, size=(48, 56), classes=5, bad_value=None):
    """The authors' segmentation list-file format: info.json, {train,val}_{images,labels}.txt."""
    rng = np.random.default_rng(1)
    for phase in ("train", "val"):
        images, labels = [], []
        for i in range(count):
            mask = rng.integers(0, classes, size).astype(np.uint8)
            mask[:4] = 255
            if bad_value is not None and phase == "train" and i == count - 1:
                mask[10, 10] = bad_value
            image = rng.integers(0, 256, size + (3,), dtype=np.uint8)
            write_png(os.path.join(root, "images", f"{phase}{i}.png"), image)
            write_png(os.path.join(root, "labels", f"{phase}{i}.png"), mask)
            images.append(f"images/{phase}{i}.png")
            labels.append(f"labels/{phase}{i}.png")
        for kind, lines in (("images", images), ("labels", labels)):
            with open(os.path.join(root, f"{phase}_{kind}.txt"), "w") as f:
                f.write("\n".join(lines) + "\n")
    with open(os.path.join(root, "info.json"), "w") as f:
        json.dump({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}, f)
    return root


def write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


# ------------------------------------------------------------------------------------------------------------------
# Fashion-MNIST


def test_read_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        write_idx(str(tmp_path / name), array)
        np.testing.assert_array_equal(fashion_mnist.read_idx(str(tmp_path / name)), array)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="bad magic number.*Received: path="):
        fashion_mnist.read_idx(str(tmp_path / "bad"))
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + np.asarray([5], ">u4").tobytes() + b"abc")
    with pytest.raises(ValueError, match="does not match its header"):
        fashion_mnist.read_idx(str(tmp_path / "short"))


def test_load_data_from_a_folder(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (6, 28, 28)),
        "train-labels-idx1-ubyte.gz": np.arange(6) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(3),
    }
    for name, array in arrays.items():
        write_idx(str(tmp_path / name), array)
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data(str(tmp_path))
    assert x_train.shape == (6, 28, 28) and x_test.shape == (3, 28, 28)
    np.testing.assert_array_equal(y_train, arrays["train-labels-idx1-ubyte.gz"])
    with pytest.raises(FileNotFoundError, match="Received: data_dir="):
        fashion_mnist.load_data(str(tmp_path / "missing"))


def test_fashion_mnist_failed_download_says_where_the_files_go(tmp_path, monkeypatch):
    import keras

    def offline():
        raise Exception("URL fetch failure on https://example.invalid/train-labels-idx1-ubyte.gz")

    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path))
    monkeypatch.delenv(fashion_mnist.ENV_VAR, raising=False)
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist.*KERAS_DLA_FASHION_MNIST") as caught:
        fashion_mnist.load_data()
    assert "URL fetch failure" in str(caught.value)


def test_real_fashion_mnist_is_available():
    """The demo's data: the Debian package's files (CI installs dataset-fashion-mnist)."""
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert np.bincount(y_train).tolist() == [6000] * 10 and np.bincount(y_test).tolist() == [1000] * 10
    assert x_train.dtype == np.uint8 and 70 < x_train.mean() < 75  # real photographs on black, not noise


def test_scenes_are_deterministic_and_labelled_per_pixel():
    rng = np.random.default_rng(0)
    images = np.zeros((20, 28, 28), np.uint8)
    images[:, 4:24, 6:22] = rng.integers(100, 256, (20, 20, 16))
    labels = np.arange(20) % 10
    a, ma = fashion_mnist.make_scenes(images, labels, 12, seed=3)
    b, mb = fashion_mnist.make_scenes(images, labels, 12, seed=3)
    c, _ = fashion_mnist.make_scenes(images, labels, 12, seed=4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    assert not np.array_equal(a, c)
    assert a.shape == ma.shape == (12, 64, 64)
    assert ma.max() <= 10 and (ma > 0).mean() > 0.05 and (ma == 0).mean() > 0.2
    # Every garment pixel shows the garment: above the threshold, where the background stays below 255.
    assert (a[ma > 0] > fashion_mnist.GARMENT_THRESHOLD).all()


# ------------------------------------------------------------------------------------------------------------------
# Classification sources


def test_class_folder_pipeline(tmp_path):
    root = make_class_folder(str(tmp_path / "pets"))
    ds, info = datasets.classification_data(root, split="train", image_size=32, batch_size=4, seed=1)
    assert info.num_classes == 3 and info.class_names == ("cat", "dog", "fox") and info.num_examples == 27
    images, labels = next(iter(ds))
    assert images.shape == (4, 32, 32, 3) and images.dtype == tf.float32 and labels.dtype == tf.int32
    val, val_info = datasets.classification_data(root, split="validation", image_size=32, batch_size=4)
    assert val_info.num_examples == 3  # every 10th image of each class
    labels = np.concatenate([y.numpy() for _, y in val])
    assert sorted(labels.tolist()) == [0, 1, 2]


def test_class_folder_with_train_and_val(tmp_path):
    make_class_folder(str(tmp_path / "train"), per_class=3)
    make_class_folder(str(tmp_path / "val"), per_class=2)
    _, info = datasets.classification_data(str(tmp_path), split="validation", image_size=32, batch_size=2)
    assert info.num_examples == 6


def test_classification_pipeline_is_seeded(tmp_path):
    root = make_class_folder(str(tmp_path / "pets"), per_class=4)

    def first(seed):
        ds, _ = datasets.classification_data(root, image_size=32, batch_size=6, seed=seed)
        return next(iter(ds))[0].numpy()

    np.testing.assert_array_equal(first(5), first(5))
    assert not np.array_equal(first(5), first(6))


@pytest.mark.parametrize(
    "dataset, message",
    [
        ("no_such_dataset_xyz", "Unknown dataset"),
        ("./no/such/folder", "not an existing folder"),
    ],
)
def test_unknown_datasets(dataset, message):
    with pytest.raises(ValueError, match=f"{message}.*Received: dataset="):
        datasets.classification_data(dataset)


def test_folder_without_images(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="No images.*Received: dataset="):
        datasets.classification_data(str(tmp_path / "empty"))


def test_tfds_classification_through_mock_data():
    with tfds.testing.mock_data(num_examples=12):
        ds, info = datasets.classification_data("tf_flowers", split="train", image_size=32, batch_size=4)
        images, labels = next(iter(ds))
    assert info.num_classes == 5
    assert images.shape == (4, 32, 32, 3)
    assert labels.numpy().min() >= 0 and labels.numpy().max() < 5


class KerasDlaTrainOnly(tfds.core.GeneratorBasedBuilder):
    """A real tfds builder (prepared from generated images, nothing downloaded) with only a train split."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = {"image": tfds.features.Image(shape=(40, 40, 3)), "label": tfds.features.ClassLabel(num_classes=2)}
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict(features), supervised_keys=("image", "label")
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(40):
            yield i, {"image": np.full((40, 40, 3), 6 * i, np.uint8), "label": i % 2}


def test_tfds_data_set_with_a_train_split_only_is_prepared_and_split(tmp_path):
    # Like tf_flowers: prepared on first use, its size known then, and a tenth of train held out for validation.
    common = dict(image_size=32, batch_size=1, data_dir=str(tmp_path), training=False)
    train, info = datasets.classification_data("keras_dla_train_only", split="train", **common)
    val, val_info = datasets.classification_data("keras_dla_train_only", split="validation", **common)
    assert (info.num_examples, val_info.num_examples, info.num_classes) == (36, 4, 2)
    # Each image is one grey level (6 * index): the two splits are disjoint and together the whole split.
    levels = [int(round(float(x[0, 0, 0, 0]) * 0.229 * 255 + 0.485 * 255)) for x, _ in (*train, *val)]
    assert sorted(levels) == [6 * i for i in range(40)]
    _, limited = datasets.classification_data("keras_dla_train_only", split="validation", limit=3, **common)
    assert limited.num_examples == 3


def test_tfds_failures_are_one_sentence(monkeypatch):
    class FailingTfds:
        def list_builders(self):
            return ["mnist"]

        def builder(self, name, data_dir=None):
            raise ModuleNotFoundError("No module named 'importlib_resources'")

    monkeypatch.setattr(datasets, "_tfds", FailingTfds)
    with pytest.raises(ValueError, match=r"could not load 'mnist' \(ModuleNotFoundError: No module named 'imp"):
        datasets.classification_data("mnist", split="train", batch_size=2)


def test_sizes_limits_and_recipes_are_checked_first():
    for kwargs, message in [
        (dict(image_size=0), "`image_size` should be None or a positive integer. Received: image_size=0"),
        (dict(image_size=-8), "Received: image_size=-8"),
        (dict(limit=0), "`limit` should be None or a positive integer. Received: limit=0"),
        (dict(recipe="smal", split="validation"), "Unknown augmentation recipe.*Received: recipe='smal'"),
    ]:
        with pytest.raises(ValueError, match=message):
            datasets.classification_data("fashion_mnist", batch_size=2, **kwargs)
    with pytest.raises(ValueError, match="Received: crop_size=-4"):
        datasets.segmentation_data("fashion_mnist_scenes", batch_size=2, crop_size=-4)
    _, info = datasets.classification_data("fashion_mnist", batch_size=np.int64(2), limit=np.int64(6))
    assert info.num_examples == 6


def test_files_that_are_not_images_are_named(tmp_path):
    root = make_class_folder(str(tmp_path / "cls"), per_class=3)
    (tmp_path / "cls" / "dog" / "001.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"Not a JPEG, PNG, GIF or BMP image .*dog/001.png\. Received"):
        datasets.classification_data(root, split="train", batch_size=2)
    seg = make_list_folder(str(tmp_path / "seg"))
    (tmp_path / "seg" / "labels" / "train1.png").write_text("text")
    with pytest.raises(ValueError, match=r"labels/train1.png\. Received"):
        datasets.segmentation_data(seg, split="train", crop_size=32, batch_size=2, classes=5)


def test_a_damaged_file_behind_a_valid_header_is_found_by_decoding(tmp_path):
    root = make_class_folder(str(tmp_path / "cls"), per_class=4)
    _, info = datasets.classification_data(root, split="train", batch_size=2)
    assert len(info.files) == info.num_examples == 12
    assert datasets.find_undecodable(info.files) == (None, 12)
    png = open(info.files[5], "rb").read()
    with open(info.files[5], "wb") as f:
        f.write(png[: len(png) // 2])  # cut short, as an interrupted copy leaves it
    with open(info.files[7], "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    assert datasets.find_undecodable(info.files) == (info.files[5], 6)
    assert datasets.find_undecodable(info.files, time_limit_s=0) == (None, 1)  # gave up after the first
    os.remove(info.files[2])  # gone since the listing: named too
    assert datasets.find_undecodable(info.files) == (info.files[2], 3)
    seg = make_list_folder(str(tmp_path / "seg"))
    _, seg_info = datasets.segmentation_data(seg, split="train", crop_size=32, batch_size=2, classes=5)
    assert [os.path.basename(p) for p in seg_info.files] == [f"train{i}.png" for i in range(4)] * 2


def test_imagenet_augmentation_and_eval_crop():
    image = tf.random.uniform((60, 80, 3), 0, 255, seed=1)
    out = augment.augment_classification(image, tf.constant([1, 2], tf.int64), 32, recipe="imagenet")
    assert out.shape == (32, 32, 3) and float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 255
    # Evaluation: shorter side to 32 / 0.875 = 37, centre crop 32: a left/right split image keeps its centre.
    halves = tf.concat([tf.zeros((40, 40, 3)), 255 * tf.ones((40, 40, 3))], axis=1)
    crop = augment.centre_crop(halves, 32).numpy()
    assert crop.shape == (32, 32, 3)
    assert crop[:, :10].max() < 1 and crop[:, -10:].min() > 254


def test_small_images_fill_seven_eighths_of_the_canvas():
    garment = np.random.default_rng(3).uniform(1, 255, (28, 28, 1)).astype("float32")
    # 28 in 32: padded by 2 on every side, the pixels untouched.
    padded = augment.fit_small(tf.constant(garment), 32).numpy()
    np.testing.assert_array_equal(padded[2:30, 2:30], garment)
    assert padded[:2].max() == 0 and padded[30:].max() == 0 and padded[:, :2].max() == 0 and padded[:, 30:].max() == 0
    # 28 in 64: scaled to 56 (a 2x bilinear upsampling, computed here with numpy), then padded by 4.
    scaled = augment.fit_small(tf.constant(garment), 64).numpy()
    assert scaled.shape == (64, 64, 1)
    assert scaled[:4].max() == 0 and scaled[60:].max() == 0 and scaled[:, :4].max() == 0 and scaled[:, 60:].max() == 0
    centres = (np.arange(56) + 0.5) / 2 - 0.5  # half-pixel centres of the 56 output pixels in input coordinates
    low = np.clip(np.floor(centres).astype(int), 0, 27)
    high = np.clip(low + 1, 0, 27)
    frac = np.clip(centres - low, 0, 1)
    rows = garment[low] * (1 - frac)[:, None, None] + garment[high] * frac[:, None, None]
    expected = rows[:, low] * (1 - frac)[None, :, None] + rows[:, high] * frac[None, :, None]
    np.testing.assert_allclose(scaled[4:60, 4:60], expected, rtol=1e-5, atol=1e-3)
    # A batch is fitted as its images are; a non-square canvas keeps the garment square; larger images shrink.
    batch = augment.fit_small(tf.constant(np.stack([garment, garment[::-1]])), 64).numpy()
    np.testing.assert_array_equal(batch[0], scaled)
    wide = augment.fit_small(tf.constant(garment), (48, 96)).numpy()
    rows_on, cols_on = np.nonzero(wide[..., 0])
    assert (rows_on.min(), rows_on.max(), cols_on.min(), cols_on.max()) == (3, 44, 27, 68)  # 42 x 42, centred
    assert augment.fit_small(tf.zeros((40, 50, 1)), 32).shape == (32, 32, 1)


def test_random_erasing_fills_one_rectangle_with_noise_half_the_time():
    image = tf.fill((64, 48, 1), 100.0)
    erased, areas = 0, []
    for i in range(200):
        out = augment.random_erasing(image, tf.constant([i, 7], tf.int64)).numpy()[..., 0]
        np.testing.assert_array_equal(out, augment.random_erasing(image, tf.constant([i, 7], tf.int64))[..., 0])
        changed = out != 100
        if not changed.any():
            continue
        erased += 1
        rows, cols = np.nonzero(changed)
        box = out[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        # One rectangle of noise in [0, 255] (a noise pixel equal to 100 is vanishingly rare), nothing else touched.
        assert changed.sum() == box.size and box.min() >= 0 and box.max() <= 255 and box.std() > 30
        areas.append(box.size / out.size)
    assert 70 <= erased <= 130  # probability 0.5 over 200 draws
    # Area drawn in [2%, 40%] (rounding of the sides moves it slightly; clipping to the image only shrinks it).
    assert min(areas) > 0.015 and max(areas) < 0.43 and 0.15 < np.mean(areas) < 0.27
    # In the recipe, erasing follows the small-image transform, and evaluation fits the image as "small" does.
    garment = tf.constant(np.random.default_rng(0).uniform(0, 255, (28, 28, 1)), tf.float32)
    seed = tf.constant([3, 4], tf.int64)
    out = augment.augment_classification(garment, seed, 32, recipe="small-erasing")
    assert out.shape == (32, 32, 1)
    ds, _ = datasets.classification_data(
        "fashion_mnist", split="validation", image_size=64, batch_size=2, recipe="small-erasing", limit=2
    )
    plain, _ = datasets.classification_data("fashion_mnist", split="validation", image_size=64, batch_size=2, limit=2)
    np.testing.assert_array_equal(next(iter(ds))[0], next(iter(plain))[0])


# ------------------------------------------------------------------------------------------------------------------
# Segmentation sources and labels


def test_cityscapes_train_ids():
    raw = tf.constant([0, 6, 7, 8, 11, 24, 26, 33, 34, 255], tf.uint8)
    np.testing.assert_array_equal(datasets.cityscapes_train_ids(raw), [255, 255, 0, 1, 2, 11, 13, 18, 255, 255])
    assert sorted(datasets.CITYSCAPES_TRAIN_IDS.values()) == list(range(19))


def test_tfds_cityscapes_through_mock_data():
    with tfds.testing.mock_data(num_examples=3):
        ds, info = datasets.segmentation_data("cityscapes", split="train", crop_size=64, batch_size=2)
        images, masks = next(iter(ds))
    assert info.num_classes == 19
    assert images.shape == (2, 64, 64, 3) and masks.shape == (2, 64, 64)
    values = set(np.unique(masks.numpy()).tolist())
    assert values <= set(range(19)) | {255}


def test_tfds_oxford_pet_through_mock_data():
    with tfds.testing.mock_data(num_examples=3):
        ds, info = datasets.segmentation_data("oxford_iiit_pet", split="validation", crop_size=64, batch_size=3)
        _, masks = next(iter(ds))
    assert info.num_classes == 2
    assert set(np.unique(masks.numpy()).tolist()) <= {0, 1, 255}
    np.testing.assert_array_equal(datasets.pet_labels(tf.constant([1, 2, 3])), [1, 0, 255])


def test_list_file_folder(tmp_path):
    root = make_list_folder(str(tmp_path / "seg"))
    ds, info = datasets.segmentation_data(root, split="train", crop_size=32, batch_size=2, classes=5)
    assert info.num_classes == 5 and info.mean == (0.5, 0.5, 0.5) and info.num_examples == 4
    images, masks = next(iter(ds))
    assert images.shape == (2, 32, 32, 3) and masks.shape == (2, 32, 32)
    assert set(np.unique(masks.numpy()).tolist()) <= set(range(5)) | {255}
    val, _ = datasets.segmentation_data(root, split="validation", crop_size=64, batch_size=4, classes=5)
    _, masks = next(iter(val))
    assert masks.shape == (4, 64, 64) and (masks.numpy()[:, :8] == 255).all()  # padded rows are ignored


def test_list_file_folder_label_out_of_range(tmp_path):
    root = make_list_folder(str(tmp_path / "seg"), bad_value=40)
    with pytest.raises(ValueError, match=r"\[0, 5\) or 255.*\[40\] in .*train3\.png\. Received: dataset="):
        datasets.segmentation_data(root, classes=5)


def test_list_file_folder_needs_classes(tmp_path):
    root = make_list_folder(str(tmp_path / "seg"))
    with pytest.raises(ValueError, match="number of classes.*Received: classes=None"):
        datasets.segmentation_data(root)


def test_list_file_folder_labels_that_cannot_train(tmp_path):
    # Labels past `classes` (12 of 10, 10 of 10, 254 next to the ignored 255), fewer than 2 classes, and training
    # masks of one class: refused before the pipeline is built, the folder named.
    for bad_value, classes in ((12, 10), (10, 10), (254, 10), (5, 5)):
        root = make_list_folder(str(tmp_path / f"seg{bad_value}"), classes=min(classes, 5), bad_value=bad_value)
        message = (
            rf"in \[0, {classes}\) or 255 \(ignored\); found \[{bad_value}\] in .*train3\.png\. Received: dataset="
        )
        with pytest.raises(ValueError, match=message):
            datasets.segmentation_data(root, classes=classes)
    one = make_list_folder(str(tmp_path / "one"), classes=1)
    with pytest.raises(ValueError, match="at least 2 classes; the data set has 1. Received: dataset="):
        datasets.segmentation_data(one, classes=1)
    with pytest.raises(ValueError, match=r"The training masks label only class 0: .*Received: dataset="):
        datasets.segmentation_data(one, classes=3)
    _, info = datasets.segmentation_data(one, split="validation", classes=3)  # a validation split may hold fewer
    assert info.num_classes == 3


def _classification_idx_folder(root, train_labels, dtype_code=0x08, dtype=">u1"):
    """Fashion-MNIST IDX files with the given training labels (the test split has labels 0..9)."""
    os.makedirs(root, exist_ok=True)
    train_labels = np.asarray(train_labels, dtype=dtype)
    header = bytes([0, 0, dtype_code, 1]) + np.asarray([len(train_labels)], ">u4").tobytes()
    with open(os.path.join(root, "train-labels-idx1-ubyte"), "wb") as f:
        f.write(header + train_labels.tobytes())
    write_idx(os.path.join(root, "train-images-idx3-ubyte"), np.zeros((len(train_labels), 28, 28)))
    write_idx(os.path.join(root, "t10k-images-idx3-ubyte"), np.zeros((10, 28, 28)))
    write_idx(os.path.join(root, "t10k-labels-idx1-ubyte"), np.arange(10))
    return root


@pytest.mark.parametrize(
    "labels, dtype_code, dtype, message",
    [
        ([0, 1, 12], 0x08, ">u1", r"in \[0, 10\); the train split has 12\."),
        ([0, 10, 255, 3], 0x08, ">u1", r"in \[0, 10\); the train split has 10, 255\."),
        ([0, -1, 2], 0x09, ">i1", r"in \[0, 10\); the train split has -1\."),
        ([5, 100000], 0x0C, ">i4", r"the train split has 100000\."),
        ([0.5, 1.0], 0x0D, ">f4", r"should be integers; the train split has labels of type float32\."),
        ([0.0, np.nan], 0x0E, ">f8", r"should be integers; the train split has labels of type float64\."),
        ([3, 3, 3, 3], 0x08, ">u1", r"one class only \('Dress', 4 examples\)"),
    ],
)
def test_array_labels_that_cannot_train_are_refused(tmp_path, labels, dtype_code, dtype, message):
    root = _classification_idx_folder(str(tmp_path / "idx"), labels, dtype_code, dtype)
    with pytest.raises(ValueError, match=f"{message}.*Received: dataset='fashion_mnist'"):
        datasets.classification_data("fashion_mnist", data_dir=root, image_size=32)


def test_whole_float_labels_are_accepted(tmp_path):
    root = _classification_idx_folder(str(tmp_path / "idx"), [0.0, 1.0, 9.0], 0x0D, ">f4")
    _, info = datasets.classification_data("fashion_mnist", data_dir=root, image_size=32)
    assert info.num_examples == 3


def test_class_folders_that_cannot_train_are_refused(tmp_path):
    one = make_class_folder(str(tmp_path / "one"), classes=("cat",))
    with pytest.raises(ValueError, match=r"at least 2 classes; the data set has 1 \(cat\)\. Received: dataset="):
        datasets.classification_data(one, image_size=32)
    empty_dog = make_class_folder(str(tmp_path / "empty_dog"), classes=("cat",))
    os.makedirs(os.path.join(empty_dog, "dog"))  # a second class folder without images
    with pytest.raises(ValueError, match=r"one class only \('cat', 9 examples\).*Received: dataset="):
        datasets.classification_data(empty_dog, image_size=32)
    three = make_class_folder(str(tmp_path / "three"))
    with pytest.raises(ValueError, match=r"one class only \('cat', 5 examples\).*`limit` keeps the first"):
        datasets.classification_data(three, image_size=32, limit=5)
    split = str(tmp_path / "split")
    make_class_folder(os.path.join(split, "train"), classes=("cat", "dog"), per_class=3)
    make_class_folder(os.path.join(split, "val"), classes=("cat", "dog"), per_class=2)
    for name in os.listdir(os.path.join(split, "train", "dog")):
        os.remove(os.path.join(split, "train", "dog", name))
    with pytest.raises(ValueError, match=r"one class only \('cat', 3 examples\)"):
        datasets.classification_data(split, image_size=32)
    _, info = datasets.classification_data(split, split="validation", image_size=32)  # validation may lack some
    assert info.num_examples == 4


@pytest.mark.parametrize(
    "labels, classes, split, message",
    [
        ([0, 1, 12], 10, "train", r"in \[0, 10\); the train split has 12\."),
        ([-3, 0, 1], 10, "validation", r"in \[0, 10\); the validation split has -3\."),
        (list(range(-20, 0)), 10, "train", r"the train split has -20, -19, .*-11, \.\.\.\."),
        ([0, 1], 1, "train", r"at least 2 classes; the data set has 1\."),
        ([0, 1], 0, "validation", r"at least 2 classes; the data set has 0\."),
        ([2, 2], 3, "train", r"one class only \(2, 2 examples\)"),
        ([np.inf, 1.0], 3, "train", r"should be integers"),
        (["a", "b"], 3, "train", r"should be integers; the train split has labels of type <U1"),
    ],
)
def test_class_labels_that_cannot_train(labels, classes, split, message):
    with pytest.raises(ValueError, match=f"{message}.*Received: dataset='d'"):
        datasets.check_class_labels(labels, classes, "d", split)


def test_class_labels_that_can_train():
    for labels, classes, split in (([0, 1], 2, "train"), ([4, 4], 5, "validation"), ([], 3, "train")):
        datasets.check_class_labels(np.asarray(labels, "int64"), classes, "d", split)
    datasets.check_class_labels(np.array([True, False]), 2, "d", "train")


def test_segmentation_rejects_classification_sets():
    with pytest.raises(ValueError, match="Segmentation reads.*Received: dataset='tf_flowers'"):
        datasets.segmentation_data("tf_flowers")


# ------------------------------------------------------------------------------------------------------------------
# Alignment of image and mask through the segmentation transform


def _coded_pair(size=(64, 96), block=16):
    """A mask of blocks of labels 0..9 and an image whose every channel is 20 * label + 10."""
    rows, cols = np.indices(size)
    mask = ((rows // block + cols // block * 3) % 10).astype(np.uint8)
    image = np.repeat((20.0 * mask + 10.0)[..., None], 3, axis=-1).astype(np.float32)
    return tf.constant(image), tf.constant(mask)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_augmentation_keeps_image_and_mask_aligned(seed):
    image, mask = _coded_pair()
    out_image, out_mask = augment.augment_segmentation(image, mask, tf.constant([seed, 7], tf.int64), 40)
    out_image, out_mask = out_image.numpy(), out_mask.numpy()
    assert out_image.shape == (40, 40, 3) and out_mask.shape == (40, 40) and out_mask.dtype == np.uint8
    labelled = out_mask != 255
    decoded = np.round((out_image[..., 0] - 10.0) / 20.0)
    # Bilinear image vs nearest mask differ only on block borders; everything else must carry the same label.
    assert np.mean(decoded[labelled] == out_mask[labelled]) > 0.8
    # The control: the mask of another random transform fails the same comparison.
    _, other = augment.augment_segmentation(image, mask, tf.constant([seed + 50, 7], tf.int64), 40)
    other = other.numpy()
    keep = labelled & (other != 255)
    assert np.mean(decoded[keep] == other[keep]) < 0.4
    # Where the mask is padding (255), the image is padding too (0), up to the bilinear rim.
    if (~labelled).any():
        assert np.mean(out_image[..., 0][~labelled] < 10.0) > 0.8


def test_augmentation_without_resampling_is_exact():
    image, mask = _coded_pair()
    for seed in range(4):
        out_image, out_mask = augment.augment_segmentation(
            image, mask, tf.constant([seed, 1], tf.int64), 40, scale=None, max_rotation=0
        )
        decoded = np.round((out_image.numpy()[..., 0] - 10.0) / 20.0)
        np.testing.assert_array_equal(decoded, out_mask.numpy())


def test_augmentation_pads_small_images_with_ignore_label():
    image, mask = _coded_pair((16, 16), block=4)
    out_image, out_mask = augment.augment_segmentation(
        image, mask, tf.constant([0, 1], tf.int64), 32, scale=None, max_rotation=0
    )
    assert (out_mask.numpy() == 255).sum() == 32 * 32 - 16 * 16
    assert (out_image.numpy()[out_mask.numpy() == 255] == 0).all()


def test_embedded_scenes_pipeline():
    ds, info = datasets.segmentation_data("fashion_mnist_scenes", split="validation", batch_size=8, limit=16)
    images, masks = next(iter(ds))
    assert info.num_classes == 11 and images.shape == (8, 64, 64, 1) and masks.shape == (8, 64, 64)
