"""ONNX (float32 and int8) and OpenVINO export, run in ONNX Runtime and OpenVINO against the Keras model, and the
JSON sidecar beside every export (SavedModel, TFLite, ONNX, OpenVINO)."""

import json
import os

import numpy as np
import onnxruntime
import openvino
import pytest
import tensorflow as tf

from keras_dla import export
from keras_dla.export import extras, onnx_openvino, sidecar
from keras_dla.models import dla, dla_up
from tests.test_export import TOLERANCE, trained_looking

SIZE = 32


@pytest.fixture(scope="module")
def classifier():
    model = dla.DLA46C(weights=None, classes=3, input_shape=(SIZE, SIZE, 3))  # softmax: probabilities
    return trained_looking(model, SIZE)


@pytest.fixture(scope="module")
def segmenter():  # grouped convolutions: OpenVINO reads DLA-Up through ONNX, which takes them as dense ones
    model = dla_up.DLAUp("dla46x_c", weights=None, classes=3, input_shape=(None, None, 3), activation=None)
    return trained_looking(model, 64)


def _images(count, size=SIZE, seed=1):
    return np.random.default_rng(seed).standard_normal((count, size, size, 3)).astype("float32")


def test_onnx_classifier_float32_dynamic_batch(classifier, tmp_path):
    path = onnx_openvino.export_onnx(classifier, tmp_path / "m.onnx")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (given,), (taken,) = session.get_inputs(), session.get_outputs()
    assert (given.name, taken.name) == ("images", "probabilities")
    assert given.shape == ["batch", SIZE, SIZE, 3]
    for count in (1, 3):  # one file, any batch size
        x = _images(count)
        (y,) = session.run(None, {"images": x})
        np.testing.assert_allclose(y, classifier.predict_on_batch(x), atol=TOLERANCE)
    report = export.verify_export(classifier, path, _images(4), latency_runs=1)
    assert report.format == "onnx" and report.max_abs_diff <= TOLERANCE and report.top1_agreement == 1.0
    assert report.size_bytes == os.path.getsize(path)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.json"]  # no work files left


def test_onnx_sidecar_says_what_to_feed(classifier, tmp_path):
    path = onnx_openvino.export_onnx(classifier, tmp_path / "m.onnx")
    contract = sidecar.read_sidecar(path)
    assert contract["format"] == "onnx" and contract["task"] == "classification"
    given = contract["input"]
    assert given["name"] == "images" and given["shape"] == [None, SIZE, SIZE, 3] and given["dtype"] == "float32"
    assert given["color_order"] == "RGB" and given["pixel_range"] == [0, 255]
    assert given["normalization"]["applied_by"] == "caller"
    np.testing.assert_allclose(given["normalization"]["mean"], [123.675, 116.28, 103.53], atol=1e-3)
    np.testing.assert_allclose(given["normalization"]["std"], [58.395, 57.12, 57.375], atol=1e-3)
    assert given["resize"]["shorter_side"] == int(SIZE / 0.875) and given["crop"] == {"center": [SIZE, SIZE]}
    assert contract["output"] == {"name": "probabilities", "shape": [None, 3], "kind": "probabilities"}
    assert contract["classes"] == ["0", "1", "2"] and contract["quantization"] is None
    # The sidecar's recipe, followed on raw pixels, gives the Keras model's answer on preprocessed ones.
    pixels = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3)).astype("float32")
    fed = (pixels - np.float32(given["normalization"]["mean"])) / np.float32(given["normalization"]["std"])
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    from keras_dla.models.imagenet import preprocess_input

    np.testing.assert_allclose(
        session.run(None, {"images": fed})[0], classifier.predict_on_batch(preprocess_input(pixels)), atol=TOLERANCE
    )


def test_onnx_uint8_input_with_labels(classifier, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    path = onnx_openvino.export_onnx(classifier, tmp_path / "m.onnx", uint8_input=True, labels=labels)
    contract = sidecar.read_sidecar(path)
    assert contract["input"]["dtype"] == "uint8" and contract["input"]["normalization"] == {"applied_by": "model"}
    assert contract["classes"] == ["cat", "dog", "bird"]
    pixels = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    report = export.verify_export(classifier, path, pixels, latency_runs=1)
    assert report.input_dtype == "uint8" and report.max_abs_diff <= TOLERANCE


def test_onnx_int8_follows_the_float_model(classifier, tmp_path):
    calibration = _images(16, seed=2)
    path = onnx_openvino.export_onnx(
        classifier, tmp_path / "q.onnx", quantization="int8", representative_data=calibration, calibration_steps=16
    )
    import onnx

    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ
    report = export.verify_export(classifier, path, _images(16, seed=3), latency_runs=1)
    assert report.max_abs_diff < 0.1, report.summary()  # probabilities
    assert report.top1_agreement >= 0.75, report.summary()
    quant = sidecar.read_sidecar(path)["quantization"]
    assert quant["scheme"].startswith("int8 static") and quant["calibration_images"] == 16


def test_openvino_int8_follows_the_float_model(classifier, tmp_path):
    calibration = _images(16, seed=2)
    path = export.export(
        classifier, tmp_path / "q.xml", format="openvino", quantization="int8", representative_data=calibration
    )
    assert sorted(os.listdir(tmp_path)) == ["q.bin", "q.xml", "q.xml.json"]
    model = openvino.Core().read_model(path)
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())  # NNCF's int8 points
    report = export.verify_export(classifier, path, _images(16, seed=3), latency_runs=1)
    assert report.max_abs_diff < 0.1, report.summary()  # probabilities
    assert report.top1_agreement >= 0.75, report.summary()
    quant = sidecar.read_sidecar(path)["quantization"]
    assert quant["scheme"].startswith("int8 static, NNCF") and quant["calibration_images"] == 16


def test_onnx_dla_up_any_size(segmenter, tmp_path):
    path = onnx_openvino.export_onnx(segmenter, tmp_path / "seg.onnx")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].name == "pixel_logits"
    for size in (64, 48):
        x = _images(2, size)
        (y,) = session.run(None, {"images": x})
        k = segmenter.predict_on_batch(x)
        assert y.shape == k.shape == (2, size, size, 3)
        np.testing.assert_allclose(y, k, atol=TOLERANCE)
    report = export.verify_export(segmenter, path, _images(2, 64), latency_runs=1)
    assert report.pixel_agreement > 0.999
    contract = sidecar.read_sidecar(path)
    assert contract["task"] == "segmentation" and contract["output"]["kind"] == "per-pixel logits"
    assert contract["input"]["resize"] is None


def test_openvino_classifier_and_dla_up(classifier, segmenter, tmp_path):
    path = onnx_openvino.export_openvino(classifier, tmp_path / "m.xml")
    assert sorted(os.listdir(tmp_path)) == ["m.bin", "m.xml", "m.xml.json"]
    compiled = openvino.Core().compile_model(path, "CPU")
    assert compiled.inputs[0].get_any_name() == "images"
    assert compiled.outputs[0].get_any_name() == "probabilities"
    assert compiled.inputs[0].get_partial_shape()[0].is_dynamic
    report = export.verify_export(classifier, path, _images(3), latency_runs=1)
    assert report.format == "openvino" and report.max_abs_diff <= TOLERANCE
    assert report.size_bytes == os.path.getsize(path) + os.path.getsize(tmp_path / "m.bin")
    assert sidecar.read_sidecar(path)["weights_file"] == "m.bin"

    seg = onnx_openvino.export_openvino(segmenter, tmp_path / "seg.xml", input_size=(64, 64))
    report = export.verify_export(segmenter, seg, _images(2, 64), latency_runs=1)
    assert report.max_abs_diff <= TOLERANCE and report.pixel_agreement > 0.999


def test_refusals_leave_nothing(classifier, tmp_path):
    with pytest.raises(ValueError, match=r"should end in \.onnx"):
        onnx_openvino.export_onnx(classifier, tmp_path / "m.tflite")
    with pytest.raises(ValueError, match="quantization"):
        onnx_openvino.export_onnx(classifier, tmp_path / "m.onnx", quantization="float16")
    with pytest.raises(ValueError, match="representative"):
        onnx_openvino.export_onnx(classifier, tmp_path / "m.onnx", quantization="int8")
    with pytest.raises(ValueError, match="quantization='float16'"):
        export.export(classifier, tmp_path / "m.xml", format="openvino", quantization="float16")
    with pytest.raises(ValueError, match="representative"):
        export.export(classifier, tmp_path / "m.xml", format="openvino", quantization="int8")
    assert os.listdir(tmp_path) == []
    (tmp_path / "m.xml").write_text("keep")
    with pytest.raises(ValueError, match="overwrite"):
        onnx_openvino.export_openvino(classifier, tmp_path / "m.xml")
    assert (tmp_path / "m.xml").read_text() == "keep"


def test_a_missing_runtime_is_one_sentence(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name.split(".")[0] == "openvino":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    monkeypatch.delitem(__import__("sys").modules, "openvino")
    with pytest.raises(ModuleNotFoundError, match=r"pip install keras_dla\[openvino\]"):
        extras.require("openvino", "openvino")


def test_sidecars_of_saved_model_and_tflite(classifier, tmp_path):
    saved = export.export_saved_model(classifier, tmp_path / "sm")
    contract = sidecar.read_sidecar(saved)
    assert os.path.isfile(tmp_path / "sm.json")
    assert contract["format"] == "saved_model" and contract["input"]["name"] == "images"
    assert contract["output"]["name"] == "probabilities" and contract["input"]["shape"] == [None, SIZE, SIZE, 3]
    served = tf.saved_model.load(saved).signatures["serving_default"]  # the names the sidecar states are the file's
    assert list(served.structured_input_signature[1]) == ["images"] and list(served.structured_outputs) == [
        "probabilities"
    ]
    lite = export.export_tflite(classifier, tmp_path / "m.tflite", uint8_input=True)
    contract = sidecar.read_sidecar(lite)
    assert (contract["input"]["name"], contract["output"]["name"]) == ("images", "probabilities")
    assert contract["input"]["dtype"] == "uint8" and contract["input"]["shape"] == [1, SIZE, SIZE, 3]
    assert contract["output"]["shape"] == [1, 3]  # the file's batch of one
    assert json.loads((tmp_path / "m.tflite.json").read_text()) == contract


def test_imagenet_classifier_names_its_1000_classes():
    names = sidecar.class_names(1000)
    assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish"
