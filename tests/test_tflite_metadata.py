"""TFLite metadata (export.tflite_metadata): what `export_tflite` writes into a `.tflite` file, read back; the file
runs in the LiteRT interpreter as before; MediaPipe's ImageClassifier and ImageSegmenter configure themselves from
it and score a real photo as the Keras model does."""

import os
import shutil
import stat

import keras
import matplotlib
import mediapipe as mp
import numpy as np
import pytest
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core.base_options import BaseOptions
from PIL import Image

from keras_dla import export
from keras_dla.export import sidecar, tflite_metadata
from keras_dla.export.runtime import tflite_interpreter
from keras_dla.models import dla, dla_up
from keras_dla.models.imagenet import MEAN, STD, imagenet_classes, preprocess_input
from tests.test_export import trained_looking

SIZE = 64
LABELS = ["a", "b", "c"]
CLASSES = len(LABELS)
PHOTO = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")  # a real photo, 512x600
SCORE_TOLERANCE = 1e-3  # MediaPipe's scores against Keras' on a float32 file


def photo(size=SIZE):
    """The photo resized to `size` (uint8 RGB): MediaPipe's own resize of it to the input size is then the identity."""
    with Image.open(PHOTO) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))


def mp_image(pixels):
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels))


def labels_file(folder):
    path = folder / "classes.txt"
    path.write_text("".join(f"{label}\n" for label in LABELS), encoding="utf-8")
    return str(path)


def unit(x):
    return keras.ops.cast(x, "float32") / 255.0


@pytest.fixture(scope="module")
def classifier():
    model = dla.DLA("dla46_c", weights=None, input_shape=(SIZE, SIZE, 3), classes=CLASSES)
    return trained_looking(model, SIZE)


@pytest.fixture(scope="module")
def exported(classifier, tmp_path_factory):
    """`{kind: path}`: the classifier as float32 files (ImageNet and x / 255 normalisation) and with uint8 input."""
    folder = tmp_path_factory.mktemp("metadata")
    labels = labels_file(folder)
    paths = {
        "imagenet": export.export_tflite(classifier, folder / "imagenet.tflite", labels=labels),
        "uint8": export.export_tflite(classifier, folder / "uint8.tflite", labels=labels, uint8_input=True),
    }
    # A float file's graph does not depend on the normalisation its caller applies: only its metadata says it.
    paths["unit"] = str(folder / "unit.tflite")
    shutil.copy(paths["imagenet"], paths["unit"])
    tflite_metadata.write_metadata(paths["unit"], preprocess="unit", labels=labels)
    return paths


def keras_tflite(model, path):
    """`model` as Keras' own LiteRT exporter writes it: no metadata."""
    model.export(str(path), format="litert", verbose=False)
    return str(path)


def small_convnet(classes=CLASSES, activation="softmax", pooled=True):
    """A few layers with weights: a classifier, or (`pooled=False`) per-pixel class scores."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    if pooled:
        return keras.Model(
            inputs, keras.layers.Dense(classes, activation=activation)(keras.layers.GlobalAveragePooling2D()(x))
        )
    return keras.Model(inputs, keras.layers.Conv2D(classes, 1, activation=activation)(x))


def metadata_bytes(path):
    """The raw TFLITE_METADATA flatbuffer of a `.tflite` file, found with TensorFlow's TFLite schema."""
    from tensorflow.lite.python import schema_py_generated as schema

    with open(path, "rb") as f:
        model = schema.Model.GetRootAs(f.read())
    for i in range(model.MetadataLength()):
        if model.Metadata(i).Name() == tflite_metadata.METADATA_NAME.encode():
            return model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy().tobytes()
    raise AssertionError(f"no {tflite_metadata.METADATA_NAME} in {path}")


def _input(metadata):
    return metadata["subgraph_metadata"][0]["input_tensor_metadata"][0]


def _output(metadata):
    return metadata["subgraph_metadata"][0]["output_tensor_metadata"][0]


def test_tables_round_trip():
    value = {
        "name": "m",
        "subgraph_metadata": [
            {
                "input_tensor_metadata": [
                    {
                        "name": "image",
                        "dimension_names": ["batch", "height"],
                        "content": {
                            "content_properties": ("ImageProperties", {"color_space": "UNKNOWN"}),  # enum value 0
                            "range": {"min": 1, "max": 2},
                        },
                        "process_units": [{"options": ("NormalizationOptions", {"mean": [1.5], "std": [2.0]})}],
                        "stats": {"max": [255.0], "min": [0.0]},
                    }
                ],
                "output_tensor_metadata": [
                    {
                        "content": {"content_properties": ("FeatureProperties", {})},
                        "associated_files": [{"name": "l.txt", "type": "TENSOR_AXIS_LABELS"}],
                    }
                ],
                "custom_metadata": [{"name": "x", "data": b"\x00\x01\x02"}],
            }
        ],
        "min_parser_version": "1.5.0",
    }
    buf = tflite_metadata.pack("ModelMetadata", value, b"M001")
    assert buf[4:8] == b"M001"
    assert tflite_metadata.unpack("ModelMetadata", buf, b"M001") == value
    with pytest.raises(ValueError, match="M001"):
        tflite_metadata.unpack("ModelMetadata", buf, b"V001")
    with pytest.raises(ValueError, match="no field"):
        tflite_metadata.pack("ModelMetadata", {"nmae": "m"}, b"M001")


def test_float_file_describes_its_normalisation(exported):
    read = tflite_metadata.read_metadata(exported["imagenet"])
    metadata, image = read["metadata"], _input(read["metadata"])
    assert metadata["min_parser_version"] == "1.0.0"
    assert image["content"]["content_properties"] == (
        "ImageProperties",
        {"color_space": "RGB", "default_size": {"width": SIZE, "height": SIZE}},
    )
    kind, normalization = image["process_units"][0]["options"]
    assert kind == "NormalizationOptions"
    np.testing.assert_allclose(normalization["mean"], np.multiply(MEAN, 255), rtol=1e-6)
    np.testing.assert_allclose(normalization["std"], np.multiply(STD, 255), rtol=1e-6)
    np.testing.assert_allclose(image["stats"]["min"], -np.divide(MEAN, STD), rtol=1e-5)
    output = _output(metadata)
    # The tensors are named as the file's signature and its sidecar name them.
    assert (image["name"], output["name"]) == ("images", "probabilities")
    contract = sidecar.read_sidecar(exported["imagenet"])
    assert (contract["input"]["name"], contract["output"]["name"]) == ("images", "probabilities")
    assert output["content"]["content_properties"] == ("FeatureProperties", {})
    assert output["stats"] == {"max": [1.0], "min": [0.0]}  # the classifier ends with a softmax
    assert output["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
    assert read["files"] == {tflite_metadata.LABELS_FILE: b"a\nb\nc\n"}
    unit_norm = _input(tflite_metadata.read_metadata(exported["unit"])["metadata"])["process_units"][0]["options"][1]
    np.testing.assert_allclose(unit_norm["mean"] + unit_norm["std"], [0, 0, 0, 255, 255, 255], atol=1e-4)


def test_uint8_file_takes_raw_pixels(exported):
    image = _input(tflite_metadata.read_metadata(exported["uint8"])["metadata"])
    assert "process_units" not in image
    assert image["stats"] == {"max": [255.0], "min": [0.0]}
    assert "uint8" in image["description"]


def test_mediapipe_schema_reads_what_was_written(exported):
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    buf = metadata_bytes(exported["imagenet"])
    assert fb.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0)
    metadata = fb.ModelMetadataT.InitFromPackedBuf(buf, 0)
    assert metadata.name == b"dla46_c" and metadata.minParserVersion == b"1.0.0"
    (subgraph,) = metadata.subgraphMetadata
    (image,), (output,) = subgraph.inputTensorMetadata, subgraph.outputTensorMetadata
    assert image.content.contentPropertiesType == fb.ContentProperties.ImageProperties
    assert image.content.contentProperties.colorSpace == fb.ColorSpaceType.RGB
    assert (image.content.contentProperties.defaultSize.width, image.content.contentProperties.defaultSize.height) == (
        SIZE,
        SIZE,
    )
    (unit_,) = image.processUnits
    assert unit_.optionsType == fb.ProcessUnitOptions.NormalizationOptions
    np.testing.assert_allclose(unit_.options.mean, np.multiply(MEAN, 255), rtol=1e-6)
    np.testing.assert_allclose(unit_.options.std, np.multiply(STD, 255), rtol=1e-6)
    assert output.content.contentPropertiesType == fb.ContentProperties.FeatureProperties
    assert (list(output.stats.min), list(output.stats.max)) == ([0.0], [1.0])
    (labels,) = output.associatedFiles
    assert (labels.name, labels.type) == (
        tflite_metadata.LABELS_FILE.encode(),
        fb.AssociatedFileType.TENSOR_AXIS_LABELS,
    )


def test_metadata_leaves_the_model_as_it_was(tmp_path):
    from tensorflow.lite.python import schema_py_generated as schema

    plain = keras_tflite(small_convnet(), tmp_path / "plain.tflite")
    path = str(tmp_path / "described.tflite")
    shutil.copy(plain, path)
    os.chmod(path, 0o644)
    tflite_metadata.write_metadata(path, preprocess="imagenet", labels=LABELS, name="convnet")
    tflite_metadata.write_metadata(path, preprocess="imagenet", labels=["x", "y", "z"])  # again: replaced, not added
    read = tflite_metadata.read_metadata(path)
    assert read["files"] == {tflite_metadata.LABELS_FILE: b"x\ny\nz\n"}
    assert read["metadata"]["name"] == "described"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # rewritten with the permissions it had

    x = preprocess_input(photo()[None])
    outputs = []
    for file in (plain, path):
        runner = tflite_interpreter(file, 1).get_signature_runner("serving_default")
        (out,) = runner(**{next(iter(runner.get_input_details())): x}).values()
        outputs.append(out)
    np.testing.assert_array_equal(outputs[0], outputs[1])

    with open(plain, "rb") as f:
        before = schema.Model.GetRootAs(f.read())
    with open(path, "rb") as f:
        after = schema.Model.GetRootAs(f.read())
    names = [after.Metadata(i).Name() for i in range(after.MetadataLength())]
    assert names.count(tflite_metadata.METADATA_NAME.encode()) == 1
    assert names[:-1] == [before.Metadata(i).Name() for i in range(before.MetadataLength())]  # the converter's kept
    assert after.BuffersLength() == before.BuffersLength() + 1
    assert after.Subgraphs(0).OperatorsLength() == before.Subgraphs(0).OperatorsLength()
    aligned = 0
    for i in range(before.BuffersLength()):
        old, new = before.Buffers(i), after.Buffers(i)
        np.testing.assert_array_equal(old.DataAsNumpy(), new.DataAsNumpy())
        if new.DataLength():  # weights start 16-aligned, as the converter wrote them
            assert new._tab.Vector(new._tab.Offset(4)) % 16 == 0
            aligned += 1
    assert aligned >= 4  # the kernels and biases of the convolutions and the dense layer, at least


def test_labels_are_checked_before_writing(tmp_path):
    path = keras_tflite(small_convnet(), tmp_path / "m.tflite")
    with open(path, "rb") as f:
        original = f.read()
    with pytest.raises(ValueError, match="3 classes"):
        tflite_metadata.write_metadata(path, labels=["a", "b"])
    with pytest.raises(ValueError, match="one line"):
        tflite_metadata.write_metadata(path, labels=["a", "b\nc", "d"])
    with pytest.raises(ValueError, match="list of class names"):
        tflite_metadata.write_metadata(path, labels=3)
    with pytest.raises(ValueError, match="Cannot read the labels file"):
        tflite_metadata.write_metadata(path, labels=str(tmp_path / "missing.txt"))
    with open(path, "rb") as f:
        assert f.read() == original
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_an_export_with_wrong_labels_leaves_nothing(tmp_path):
    labels = tmp_path / "two.txt"
    labels.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(ValueError, match="3 classes"):
        export.export_tflite(small_convnet(), tmp_path / "out" / "m.tflite", labels=str(labels))
    assert sorted(os.listdir(tmp_path)) == ["two.txt"]


def test_a_model_of_several_outputs_is_described_by_their_shapes(tmp_path):
    inputs = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.Conv2D(4, 3, strides=2)(inputs)
    model = keras.Model(inputs, [features, keras.layers.GlobalAveragePooling2D()(features)])
    path = keras_tflite(model, tmp_path / "features.tflite")
    with pytest.raises(ValueError, match="one output"):
        tflite_metadata.write_metadata(path, labels=LABELS)
    tflite_metadata.write_metadata(path, preprocess="imagenet")
    read = tflite_metadata.read_metadata(path)
    outputs = read["metadata"]["subgraph_metadata"][0]["output_tensor_metadata"]
    shapes = sorted(output["description"].split(", ", 1)[1] for output in outputs)  # in the file's output order
    assert shapes == ["(1, 31, 31, 4).", "(1, 4)."]
    assert sorted(output["name"] for output in outputs) == ["output_0", "output_1"]  # the signature's names
    assert read["files"] == {}
    assert "custom_metadata" not in read["metadata"]["subgraph_metadata"][0]  # feature maps, not a segmenter


def test_a_1000_class_classifier_gets_the_imagenet_names(tmp_path):
    path = keras_tflite(small_convnet(classes=1000), tmp_path / "m.tflite")
    tflite_metadata.write_metadata(path, preprocess="imagenet")
    names = tflite_metadata.read_metadata(path)["files"][tflite_metadata.LABELS_FILE].decode().splitlines()
    assert names == [name for _, name in imagenet_classes()]


def _classify(path, pixels):
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)))
    with vision.ImageClassifier.create_from_options(options) as task:
        (classification,) = task.classify(mp_image(pixels)).classifications
    return {c.category_name: c.score for c in classification.categories}


@pytest.mark.parametrize("kind", ["uint8", "unit"])
def test_mediapipe_classifies_a_photo_as_keras_does(classifier, exported, kind):
    pixels = photo()
    scores = _classify(exported[kind], pixels)
    model_input = preprocess_input(pixels[None]) if kind == "uint8" else unit(pixels[None])
    expected = keras.ops.convert_to_numpy(classifier(model_input))[0]
    assert sorted(scores) == sorted(LABELS)
    np.testing.assert_allclose([scores[label] for label in LABELS], expected, atol=SCORE_TOLERANCE)


def test_mediapipe_refuses_per_channel_normalisation(exported):
    # MediaPipe's image preprocessing takes one mean and std for all channels; ImageNet's differ per channel, so
    # the float file with ImageNet normalisation is for the Task Library, the uint8 file for MediaPipe.
    with pytest.raises(Exception, match="Per-channel"):
        _classify(exported["imagenet"], photo())


def _segment_and_compare(path, pixels, expected):
    """Runs MediaPipe's ImageSegmenter on `pixels`; its masks should be `expected`, per-pixel probabilities."""
    options = vision.ImageSegmenterOptions(
        base_options=BaseOptions(model_asset_path=str(path)), output_confidence_masks=True, output_category_mask=True
    )
    with vision.ImageSegmenter.create_from_options(options) as task:
        assert task.labels == LABELS
        result = task.segment(mp_image(pixels))
    masks = np.stack([np.squeeze(mask.numpy_view()) for mask in result.confidence_masks], axis=-1)
    np.testing.assert_allclose(masks, expected, atol=SCORE_TOLERANCE)
    category = np.squeeze(result.category_mask.numpy_view())
    top2 = np.sort(expected, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 2 * SCORE_TOLERANCE  # pixels whose best class is not a near tie
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(category[clear], np.argmax(expected, axis=-1)[clear])


def _segmenter_activation(path):
    (custom,) = tflite_metadata.read_metadata(path)["metadata"]["subgraph_metadata"][0]["custom_metadata"]
    assert custom["name"] == tflite_metadata.SEGMENTER_METADATA_NAME
    return custom["data"]["activation"]


def test_mediapipe_segments_a_photo_as_dla_up_does(tmp_path):
    model = trained_looking(dla_up.DLAUp("dla46_c", classes=CLASSES, input_shape=(SIZE, SIZE, 3)), SIZE)
    path = export.export_tflite(model, tmp_path / "up.tflite", uint8_input=True, labels=labels_file(tmp_path))
    output = _output(tflite_metadata.read_metadata(path)["metadata"])
    assert output["content"] == {
        "content_properties": ("ImageProperties", {"color_space": "GRAYSCALE"}),
        "range": {"min": 1, "max": 2},
    }
    assert _segmenter_activation(path) == "NONE"  # the model ends with its softmax
    pixels = photo()
    _segment_and_compare(path, pixels, keras.ops.convert_to_numpy(model(preprocess_input(pixels[None])))[0])


def test_mediapipe_applies_the_softmax_a_segmenter_of_logits_lacks(tmp_path):
    model = small_convnet(activation=None, pooled=False)
    path = keras_tflite(model, tmp_path / "logits.tflite")
    tflite_metadata.write_metadata(path, preprocess="unit", labels=LABELS)
    assert _segmenter_activation(path) == "SOFTMAX"
    pixels = photo()
    logits = model(unit(pixels[None]))[0]
    _segment_and_compare(path, pixels, keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1)))
