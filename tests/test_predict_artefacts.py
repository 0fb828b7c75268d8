"""`keras-dla predict` on a `.keras` file and on its SavedModel, TFLite, ONNX and OpenVINO exports: the same
top classes and probabilities for the same real photos, as each sidecar says to feed them."""

import os
import shutil
import subprocess
import sys

import keras
import matplotlib
import numpy as np
import pytest
import tensorflow as tf

from keras_dla import export
from keras_dla.cli import main
from keras_dla.cli import predict as predict_command
from keras_dla.export import onnx_openvino, sidecar
from keras_dla.models import dla
from keras_dla.models.imagenet import preprocess_input
from tests.test_export import trained_looking

SIZE = 64
CLASSES = 3
# Probabilities are printed with 4 decimals: two float32 runtimes may round a value either way.
PRINTED = 1.5e-4


def _photos(folder):
    """Real photos in three forms predict reads: matplotlib's sample JPEG and PNG, and a crop of one as a PNG."""
    data = os.path.join(matplotlib.get_data_path(), "sample_data")
    paths = [os.path.join(data, "grace_hopper.jpg"), os.path.join(data, "Minduka_Present_Blue_Pack.png")]
    hopper = tf.io.decode_image(tf.io.read_file(paths[0]), channels=3).numpy()
    crop = os.path.join(folder, "hopper_face.png")
    tf.io.write_file(crop, tf.io.encode_png(hopper[60:360, 150:400]))
    return [*paths, crop]


def _evaluation_input(paths):
    """The authors' evaluation at SIZE: the shorter side resized to SIZE / 0.875, a centred crop, ImageNet's norm."""
    pixels = [predict_command.load_image(p, shorter=int(SIZE / 0.875), crop=(SIZE, SIZE)) for p in paths]
    return preprocess_input(np.stack(pixels))


def _tell_apart(model, photos):
    """Sets the classifier so that photo i is class i with a clear margin, as a trained model would tell them apart.

    A random head over the photos' nearly equal pooled features gives about 1/3 to each class, where any
    preprocessing would agree. Least squares on the pooled features (no training): logits 1.2, 0.6 and 0, so that
    no two classes tie.
    """
    fc = model.get_layer("fc")
    features = np.asarray(keras.Model(model.input, fc.input)(_evaluation_input(photos)), dtype="float64")
    design = np.concatenate([features, np.ones((len(photos), 1))], axis=1)
    solution = np.linalg.lstsq(design, 1.2 * np.eye(CLASSES) + 0.6 * np.roll(np.eye(CLASSES), 1, axis=1), rcond=None)[0]
    fc.kernel.assign(solution[:-1].astype("float32"))
    fc.bias.assign(solution[-1].astype("float32"))


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """The `.keras` file of a small classifier and its exports, each with its sidecar, and the photos."""
    folder = tmp_path_factory.mktemp("artefacts")
    # Seeded: the least-squares head over nearly equal pooled features is large, and with some random weights it
    # magnifies two float32 engines' round-off past what 4 printed decimals allow.
    keras.utils.set_random_seed(0)
    model = trained_looking(dla.DLA46C(weights=None, classes=CLASSES, input_shape=(SIZE, SIZE, 3)), SIZE)
    photos = _photos(str(folder))
    _tell_apart(model, photos)
    keras_file = str(folder / "model.keras")
    model.save(keras_file)
    # The same weights behind a normalisation layer (include_preprocessing): predict feeds it raw pixels.
    inside = dla.DLA46C(weights=None, classes=CLASSES, input_shape=(SIZE, SIZE, 3), include_preprocessing=True)
    inside.set_weights(model.get_weights())
    inside.save(str(folder / "normalises.keras"))
    paths = {
        "keras": keras_file,
        "keras_normalising": str(folder / "normalises.keras"),
        # Raw uint8 pixels in (the model normalises them); the others take ImageNet-normalised float32.
        "saved_model": export.export_saved_model(model, str(folder / "saved_model"), uint8_input=True),
        "tflite": export.export_tflite(model, str(folder / "model.tflite"), verbose=False),
        "onnx": onnx_openvino.export_onnx(model, str(folder / "model.onnx")),
        "openvino": onnx_openvino.export_openvino(model, str(folder / "model.xml")),
    }
    return model, paths, photos


def _predict(capsys, model, images, *args):
    """`keras-dla predict`'s answers as `{image: [(name, probability), ...]}`, best first."""
    assert main(["predict", *images, "--model", model, "--top", str(CLASSES), *args]) == 0
    answers, current = {}, None
    for line in capsys.readouterr().out.splitlines():
        if not line.startswith("  "):
            current = answers.setdefault(line.rstrip(":"), [])
            continue
        rank, name, score = line.split()
        assert rank == f"{len(current) + 1}."
        current.append((name, float(score)))
    return answers


def test_every_artefact_gives_the_keras_models_top_classes(artefacts, capsys):
    model, paths, images = artefacts
    # What the Keras model gives for the authors' evaluation preprocessing at its input size: the shorter side
    # resized to 64 / 0.875, a centred 64x64 crop, ImageNet normalisation.
    expected = np.asarray(model.predict_on_batch(_evaluation_input(images)))
    assert list(np.argmax(expected, axis=-1)) == [0, 1, 2] and expected.max(axis=-1).min() > 0.5

    for kind, path in paths.items():
        answers = _predict(capsys, path, images)
        assert list(answers) == images, kind
        for image, row in zip(images, expected, strict=True):
            order = np.argsort(row)[::-1]
            assert [name for name, _ in answers[image]] == [str(i) for i in order], (kind, image)
            scores = np.array([score for _, score in answers[image]])
            np.testing.assert_allclose(scores, row[order], atol=PRINTED, err_msg=f"{kind} on {image}")


def test_labels_name_the_classes_of_an_artefact(artefacts, capsys, tmp_path):
    _, paths, images = artefacts
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n", encoding="utf-8")
    numbered = _predict(capsys, paths["onnx"], images[:1])
    named = _predict(capsys, paths["onnx"], images[:1], "--labels", str(labels))
    names = ["cat", "dog", "bird"]
    assert named[images[0]] == [(names[int(i)], score) for i, score in numbered[images[0]]]

    labels.write_text("cat\ndog\n", encoding="utf-8")  # one class short
    assert main(["predict", images[0], "--model", paths["keras"], "--labels", str(labels)]) == 2
    assert "should name each of the model's 3 classes on its own line; it names 2" in capsys.readouterr().err


def test_an_artefact_without_its_sidecar_is_one_sentence(artefacts, capsys, tmp_path):
    _, paths, images = artefacts
    for kind in ("tflite", "saved_model"):
        bare = str(tmp_path / os.path.basename(paths[kind]))
        copy = shutil.copytree if kind == "saved_model" else shutil.copy
        copy(paths[kind], bare)
        assert main(["predict", images[0], "--model", bare]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        (line,) = captured.err.splitlines()
        assert line == (
            f"keras-dla predict: error: The exported model has no sidecar {bare}.json beside it (keras-dla export "
            "writes it; it says how to preprocess the images and names the classes). Received: --model "
            f"{bare}"
        )


def test_predict_feeds_and_reads_the_tensors_its_sidecar_names(artefacts, capsys, tmp_path):
    _, paths, images = artefacts
    for kind, names in (("tflite", ("images", "probabilities")), ("onnx", ("images", "probabilities"))):
        contract = sidecar.read_sidecar(paths[kind])
        assert (contract["input"]["name"], contract["output"]["name"]) == names
        copy = str(tmp_path / os.path.basename(paths[kind]))
        shutil.copy(paths[kind], copy)
        contract["output"]["name"] = "scores"  # a sidecar that is not this file's
        sidecar.write_sidecar(copy, contract)
        assert main(["predict", images[0], "--model", copy]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line == (
            f"keras-dla predict: error: The sidecar {copy}.json names the input 'images' and the output 'scores', "
            "and the exported model has the input 'images' and the outputs ['probabilities']: is it this model's "
            f"sidecar? Received: --model {copy}"
        )


def test_a_saved_model_holds_its_weights(artefacts, capsys, tmp_path):
    _, paths, images = artefacts
    assert main(["predict", images[0], "--model", paths["keras"], "--weights", "imagenet"]) == 2
    assert "holds its weights; leave out --weights. Received: --weights imagenet" in capsys.readouterr().err
    # keras-dla export takes a .keras file without --weights; a variant still needs them.
    output = str(tmp_path / "again")
    argv = ["export", "--model", paths["keras"], "--format", "saved_model", "--output", output, "--samples", "2"]
    assert main(argv) == 0
    assert os.path.isfile(output + ".json") and "parity on 2 random images" in capsys.readouterr().out
    assert main(["export", "--model", "dla34", "--format", "saved_model", "--output", output + "2"]) == 2
    assert "--weights is needed for a model built here" in capsys.readouterr().err


def test_a_tflite_prediction_prints_no_runtime_log_lines_unless_verbose(artefacts):
    # LiteRT's C++ code writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." to stderr when the
    # interpreter starts: the command's own output is its answer and nothing else, unless --verbose.
    _, paths, photos = artefacts
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # conftest sets it for pytest
    outputs = {}
    for flags in ([], ["--verbose"]):
        command = [sys.executable, "-m", "keras_dla.cli", *flags, "predict", photos[0], "--model", paths["tflite"]]
        command += ["--top", str(CLASSES)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{photos[0]}:\n  1. "), done.stdout
        outputs[bool(flags)] = done.stdout + done.stderr
    native = [line for line in outputs[False].splitlines() if line.startswith(("INFO: ", "WARNING: ", "I0000 "))]
    assert "XNNPACK" not in outputs[False] and not native, outputs[False]
    assert "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." in outputs[True]  # the runtime does write it
