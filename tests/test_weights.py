"""Pretrained weights end to end: a local HTTP server (real sockets) serves checkpoints made from timm models.

Every test runs with its own `KERAS_HOME`, so the cache starts empty and is inspected afterwards.
"""

import collections
import hashlib
import http.server
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import h5py
import keras
import numpy as np
import pytest
import torch

import keras_dla
from keras_dla.weights import cache, convert, download, names, pretrained, sources
from tests.reference import authors_state_dict, make_timm_model, save_safetensors, timm_outputs, timm_state_dict

VARIANT = "dla46x_c"  # the smallest variant: dead `project` keys in the authors' layout, grouped convs
SIZE = 64
ATOL = 1e-4


class Server:
    """An HTTP server on 127.0.0.1 serving `files` ({path: bytes}); the tests change its behaviour per path."""

    def __init__(self):
        self.files = {}
        self.truncated = set()  # paths whose response stops halfway (the full Content-Length is announced)
        self.redirects = {}  # path: (target path, extra headers), answered with 302
        self.chunk_delay = 0.0
        self.requests = collections.Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests[self.path] += 1
                if self.path in server.redirects:
                    target, headers = server.redirects[self.path]
                    self.send_response(302)
                    self.send_header("Location", server.url(target))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.path in server.truncated:
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return
                for start in range(0, len(data), 1 << 16):
                    self.wfile.write(data[start : start + (1 << 16)])
                    time.sleep(server.chunk_delay)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A fresh KERAS_HOME and registry per test, no mirror from the environment."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    monkeypatch.setattr(sources, "_REGISTERED", {})
    return tmp_path / "keras_home" / "models"


def _torch_state(state):
    return collections.OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in state.items())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The timm model, its outputs on fixed images, and its checkpoint bytes in every format and layout."""
    model = make_timm_model(VARIANT)
    images = np.random.default_rng(0).standard_normal((2, SIZE, SIZE, 3)).astype("float32")
    logits, levels = timm_outputs(model, images)
    folder = tmp_path_factory.mktemp("checkpoints")
    files = {}
    for layout, state in (("timm", timm_state_dict(model)), ("authors", authors_state_dict(model, VARIANT))):
        torch.save(_torch_state(state), folder / "zip.pth")
        torch.save(_torch_state(state), folder / "legacy.pth", _use_new_zipfile_serialization=False)
        save_safetensors(state, folder / "st.safetensors")
        files[("zip", layout)] = ((folder / "zip.pth").read_bytes(), ".pth")
        files[("legacy", layout)] = ((folder / "legacy.pth").read_bytes(), ".pth")
        files[("safetensors", layout)] = ((folder / "st.safetensors").read_bytes(), ".safetensors")
    return dict(images=images, logits=logits, levels=levels, files=files)


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _serve(server, reference, fmt="legacy", layout="authors", path=None):
    data, suffix = reference["files"][(fmt, layout)]
    path = path or f"/files/ckpt-{fmt}-{layout}{suffix}"
    server.files[path] = data
    return server.url(path), _sha(data)


def _logits(model, reference):
    return model.predict(reference["images"], verbose=0)


@pytest.fixture(scope="module")
def blank():
    """One model the cache and integrity tests load into (building is the slow part, not loading)."""
    return keras_dla.DLA46XC(weights=None, input_shape=(SIZE, SIZE, 3), classifier_activation=None)


def _load(model, tag):
    """`weights.load_pretrained` (what `weights=tag` calls) into `model`, its old values zeroed first."""
    for variable in model.weights:
        variable.assign(np.zeros(variable.shape, variable.dtype))
    pretrained.load_pretrained(model, VARIANT, tag)
    return model


def _cache_listing(cache):
    return sorted(name for name in os.listdir(cache) if not name.endswith(".lock")) if cache.exists() else []


@pytest.mark.parametrize("layout", ["timm", "authors"])
@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_register_weights_full_load_equals_timm(server, reference, isolated, fmt, layout):
    url, sha = _serve(server, reference, fmt, layout)
    keras_dla.register_weights(VARIANT, "mine", url, sha)
    model = keras_dla.DLA46XC(weights="mine", input_shape=(SIZE, SIZE, 3), classifier_activation=None)
    np.testing.assert_allclose(_logits(model, reference), reference["logits"], rtol=1e-3, atol=ATOL)
    # Downloaded and converted into $KERAS_HOME/models, nothing partial left behind.
    suffix = ".safetensors" if fmt == "safetensors" else ".pth"
    stem = f"{VARIANT}-mine-{sha[:8]}"
    assert _cache_listing(isolated) == sorted([stem + suffix, stem + cache.CACHE_SUFFIX])


def test_second_load_is_served_from_cache_with_the_server_stopped(server, reference, isolated, blank):
    url, sha = _serve(server, reference, "zip", "timm")
    keras_dla.register_weights(VARIANT, "mine", url, sha)
    # Cold, for transfer learning: the checkpoint's classifier has no layer here, the cache keeps it anyway.
    features = keras_dla.DLA46XC(weights="mine", include_top=False, input_shape=(None, None, 3))
    np.testing.assert_allclose(
        features.predict(reference["images"], verbose=0), reference["levels"]["level5"], rtol=1e-3, atol=ATOL
    )
    server.stop()
    os.remove(isolated / f"{VARIANT}-mine-{sha[:8]}.pth")  # neither the source file nor the network is needed

    for variable in blank.weights:
        variable.assign(np.zeros(variable.shape, variable.dtype))
    # Warm, with the classifier. CPU time of this process: the machine running the tests may be shared.
    start = time.process_time()
    pretrained.load_pretrained(blank, VARIANT, "mine")
    assert time.process_time() - start < 1.0
    np.testing.assert_allclose(_logits(blank, reference), reference["logits"], rtol=1e-3, atol=ATOL)


def test_sha256_mismatch_is_reported_and_nothing_is_kept(server, reference, isolated):
    url, sha = _serve(server, reference)
    wrong = ("0" if sha[0] != "0" else "1") + sha[1:]
    keras_dla.register_weights(VARIANT, "mine", url, wrong)
    with pytest.warns(sources.WeightsWarning, match="sha256 mismatch"):
        with pytest.raises(ValueError, match=r"sha256 mismatch.*Received: weights='mine'"):
            keras_dla.DLA46XC(weights="mine", input_shape=(SIZE, SIZE, 3))
    assert _cache_listing(isolated) == []


def test_truncated_download_leaves_nothing_a_later_load_accepts(server, reference, isolated, blank):
    url, sha = _serve(server, reference, "zip", "timm")
    server.truncated.add(url[url.index("/files") :])
    keras_dla.register_weights(VARIANT, "mine", url, sha)
    with pytest.warns(sources.WeightsWarning):
        with pytest.raises(ValueError, match="ended after.*Received: weights='mine'"):
            _load(blank, "mine")
    assert _cache_listing(isolated) == []

    server.truncated.clear()
    np.testing.assert_allclose(_logits(_load(blank, "mine"), reference), reference["logits"], rtol=1e-3, atol=ATOL)


def _imagenet_entry(monkeypatch, *imagenet_sources):
    # The built-in table, pointed at the local server: the same code path as weights="imagenet".
    entry = sources.Pretrained(VARIANT, "imagenet", tuple(imagenet_sources))
    monkeypatch.setitem(sources.PRETRAINED, VARIANT, {"imagenet": entry})


def test_imagenet_404_then_the_next_source(server, reference, monkeypatch):
    data, _ = reference["files"][("legacy", "authors")]
    name = f"{VARIANT}-{_sha(data)[:8]}.pth"  # verified by the prefix its name carries, as upstream
    server.files[f"/rehosted/{name}"] = data
    _imagenet_entry(
        monkeypatch,
        sources.Source(server.url(f"/authors/{name}"), name, _sha(data)[:8], "authors"),
        sources.Source(server.url(f"/rehosted/{name}"), name, _sha(data)[:8], "copy"),
    )
    with pytest.warns(sources.WeightsWarning, match="404"):
        model = keras_dla.DLA46XC(input_shape=(SIZE, SIZE, 3), classifier_activation=None)  # weights="imagenet"
    np.testing.assert_allclose(_logits(model, reference), reference["logits"], rtol=1e-3, atol=ATOL)


@pytest.mark.parametrize("mirror_kind", ["folder", "url"])
def test_mirror_is_tried_first(server, reference, monkeypatch, tmp_path, mirror_kind, blank):
    data, _ = reference["files"][("zip", "authors")]
    name = f"{VARIANT}-{_sha(data)[:8]}.pth"
    if mirror_kind == "folder":
        (tmp_path / "mirror").mkdir()
        (tmp_path / "mirror" / name).write_bytes(data)
        monkeypatch.setenv(download.MIRROR_ENV, str(tmp_path / "mirror"))
    else:
        server.files[f"/mirror/{name}"] = data
        monkeypatch.setenv(download.MIRROR_ENV, server.url("/mirror/"))
    _imagenet_entry(monkeypatch, sources.Source(server.url(f"/down/{name}"), name, _sha(data)[:8], "authors"))
    model = _load(blank, "imagenet")
    np.testing.assert_allclose(_logits(model, reference), reference["logits"], rtol=1e-3, atol=ATOL)
    assert server.requests[f"/down/{name}"] == 0


def test_registered_weights_through_a_mirror_folder(server, reference, monkeypatch, tmp_path, blank):
    data, _ = reference["files"][("safetensors", "timm")]
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "my-dla.safetensors").write_bytes(data)  # under the URL's file name
    monkeypatch.setenv(download.MIRROR_ENV, str(tmp_path / "mirror"))
    keras_dla.register_weights(VARIANT, "mine", server.url("/gone/my-dla.safetensors"), _sha(data))
    np.testing.assert_allclose(_logits(_load(blank, "mine"), reference), reference["logits"], rtol=1e-3, atol=ATOL)
    assert server.requests["/gone/my-dla.safetensors"] == 0


def test_hub_source_is_verified_with_the_digest_it_publishes(server, reference, monkeypatch, isolated, blank):
    data, _ = reference["files"][("safetensors", "timm")]
    server.files["/cdn/blob"] = data
    server.redirects["/hub/model.safetensors"] = ("/cdn/blob", {"X-Linked-Etag": f'"{_sha(data)}"'})
    server.redirects["/hub/unsigned.safetensors"] = ("/cdn/blob", {})
    _imagenet_entry(
        monkeypatch,
        sources.Source(server.url("/hub/unsigned.safetensors"), "unsigned.safetensors", None, "hub", False),
        sources.Source(server.url("/hub/model.safetensors"), "hub.safetensors", None, "hub", False),
    )
    with pytest.warns(sources.WeightsWarning, match="without a published sha256"):
        model = _load(blank, "imagenet")
    np.testing.assert_allclose(_logits(model, reference), reference["logits"], rtol=1e-3, atol=ATOL)
    assert "unsigned.safetensors" not in _cache_listing(isolated)
    assert (isolated / "hub.safetensors.sha256").read_text().strip() == _sha(data)


def test_corrupt_cache_files_are_detected_and_fetched_again(server, reference, isolated, blank):
    url, sha = _serve(server, reference, "legacy", "authors")
    path = url[url.index("/files") :]
    keras_dla.register_weights(VARIANT, "mine", url, sha)
    _load(blank, "mine")
    converted = isolated / f"{VARIANT}-mine-{sha[:8]}{cache.CACHE_SUFFIX}"
    source = isolated / f"{VARIANT}-mine-{sha[:8]}.pth"

    def damage(file):
        data = bytearray(file.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 4096] = os.urandom(4096)
        file.write_bytes(bytes(data))

    damage(converted)  # the converted weights: re-converted from the verified source file, no download
    with pytest.warns(sources.WeightsWarning, match="damaged"):
        model = _load(blank, "mine")
    np.testing.assert_allclose(_logits(model, reference), reference["logits"], rtol=1e-3, atol=ATOL)
    assert server.requests[path] == 1

    damage(converted)
    damage(source)  # and the download: fetched again
    with pytest.warns(sources.WeightsWarning) as caught:
        model = _load(blank, "mine")
    messages = " ".join(str(w.message) for w in caught)
    assert "damaged" in messages and "sha256 mismatch" in messages
    np.testing.assert_allclose(_logits(model, reference), reference["logits"], rtol=1e-3, atol=ATOL)
    assert server.requests[path] == 2


def test_cache_of_an_earlier_format_is_converted_again(server, reference, isolated, blank):
    # Format 2 named the layers by their dotted module paths; such a cache is refused, reported as out of date and
    # converted again from the verified source file (no download), as format 3 with the underscore names.
    url, sha = _serve(server, reference, "legacy", "authors")
    path = url[url.index("/files") :]
    keras_dla.register_weights(VARIANT, "mine", url, sha)
    _load(blank, "mine")
    converted = isolated / f"{VARIANT}-mine-{sha[:8]}{cache.CACHE_SUFFIX}"
    assert cache.CACHE_FORMAT == "keras_dla-weights-by-layer-name-3"
    with h5py.File(converted, "r+") as f:
        assert f.attrs["format"] == cache.CACHE_FORMAT
        index = json.loads(f.attrs["index"])
        assert "level2_tree1_conv1" in {name for name, _ in index}
        f.attrs["format"] = "keras_dla-weights-by-layer-name-2"
        f.attrs["index"] = json.dumps([[names.module_path(name), shapes] for name, shapes in index])
    with pytest.raises(ValueError, match="format 'keras_dla-weights-by-layer-name-2', not .*-name-3'"):
        cache.load_by_layer_name(blank, converted, VARIANT)
    with pytest.warns(sources.WeightsWarning, match="are damaged or out of date.*format"):
        model = _load(blank, "mine")
    np.testing.assert_allclose(_logits(model, reference), reference["logits"], rtol=1e-3, atol=ATOL)
    assert server.requests[path] == 1
    with h5py.File(converted, "r") as f:
        assert f.attrs["format"] == cache.CACHE_FORMAT
    with warnings.catch_warnings():
        warnings.simplefilter("error", sources.WeightsWarning)
        model = _load(blank, "mine")  # and the new cache loads without a warning
    np.testing.assert_allclose(_logits(model, reference), reference["logits"], rtol=1e-3, atol=ATOL)


def test_concurrent_loads_in_two_processes(server, reference, tmp_path):
    url, sha = _serve(server, reference, "legacy", "authors")
    server.chunk_delay = 0.02  # a slow download, so the second process arrives while the first is at it
    np.save(tmp_path / "images.npy", reference["images"])
    script = textwrap.dedent(
        f"""
        import os, sys, time
        import numpy as np
        import keras_dla
        keras_dla.register_weights({VARIANT!r}, "shared", {url!r}, {sha!r})
        open(sys.argv[1] + ".ready", "w").close()
        while not os.path.exists({str(tmp_path / "go")!r}):
            time.sleep(0.01)
        model = keras_dla.DLA46XC(weights="shared", input_shape=({SIZE}, {SIZE}, 3), classifier_activation=None)
        np.save(sys.argv[1], model.predict(np.load({str(tmp_path / "images.npy")!r}), verbose=0))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "CUDA_VISIBLE_DEVICES": ""}
    outputs = [str(tmp_path / f"out{i}.npy") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", script, out], env=env) for out in outputs]
    deadline = time.monotonic() + 120
    while not all(os.path.exists(out + ".ready") for out in outputs) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "a loader died before loading"
        time.sleep(0.05)
    (tmp_path / "go").touch()  # both start loading at the same moment
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    for out in outputs:
        np.testing.assert_allclose(np.load(out), reference["logits"], rtol=1e-3, atol=ATOL)
    assert server.requests[url[url.index("/files") :]] == 1  # one download; the other process waited for it


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_registered_checkpoint_that_runs_code_is_refused(server, tmp_path, blank):
    marker = tmp_path / "code-ran"
    header = b"".join(pickle.dumps(v, protocol=2) for v in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    data = header + pickle.dumps({"fc.weight": _RunsCode(marker)}, protocol=2) + pickle.dumps([], protocol=2)
    server.files["/evil.pth"] = data
    keras_dla.register_weights(VARIANT, "evil", server.url("/evil.pth"), _sha(data))
    with pytest.raises(ValueError, match=r"refusing to load (io|builtins)\.open"):
        _load(blank, "evil")
    assert not marker.exists()


def test_weights_path_to_a_legacy_pth(reference, tmp_path):
    data, _ = reference["files"][("legacy", "authors")]
    (tmp_path / "dla46x_c-authors.pth").write_bytes(data)
    model = keras_dla.DLA46XC(
        weights=str(tmp_path / "dla46x_c-authors.pth"), input_shape=(SIZE, SIZE, 3), classifier_activation=None
    )
    np.testing.assert_allclose(_logits(model, reference), reference["logits"], rtol=1e-3, atol=ATOL)


def test_registered_weights_of_another_class_count(server, reference):
    url, sha = _serve(server, reference, "safetensors", "timm")
    keras_dla.register_weights(keras_dla.DLA46XC, "mine", url, sha)
    with pytest.raises(ValueError, match=r"another class count.*Received:"):
        keras_dla.DLA46XC(weights="mine", classes=10, input_shape=(SIZE, SIZE, 3))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(model="dla35"), "Received: model='dla35'"),
        (dict(tag="imagenet"), "Received: tag='imagenet'"),
        (dict(tag=""), "Received: tag=''"),
        (dict(tag="../x"), "Received: tag='../x'"),
        (dict(sha256="abc"), "Received: sha256='abc'"),
        (dict(url="https://example.org/weights.onnx"), "Received: url="),
    ],
)
def test_register_weights_rejects_bad_arguments(kwargs, message):
    args = dict(model="dla34", tag="mine", url="https://example.org/w.pth", sha256="a" * 64)
    with pytest.raises(ValueError, match=message):
        keras_dla.register_weights(**{**args, **kwargs})


def test_unknown_tag_is_refused_before_building():
    with pytest.raises(ValueError, match="Received: weights='nope'"):
        keras_dla.DLA34(weights="nope")


def test_table_covers_every_variant_with_verifiable_sources():
    assert set(sources.PRETRAINED) == set(keras_dla.MODEL_CONFIGS)
    for tags in sources.PRETRAINED.values():
        entry = tags["imagenet"]
        assert entry.top1 and entry.gmacs and entry.params
        for source in entry.sources:
            if source.sha256 is None:  # the hub publishes the digest with the file
                assert source.host == "huggingface" and not source.mirrored
            else:
                assert source.filename.endswith(f"-{source.sha256}.pth")
                assert len(source.sha256) == 8 and source.url.endswith(source.filename)


def test_register_weights_knows_a_builder_by_its_variant_attribute_or_its_name():
    def builder(**kwargs):
        raise AssertionError("register_weights only reads the builder")

    builder.variant = "dla60"
    keras_dla.register_weights(builder, "mine", "https://example.org/w.pth", "a" * 64)
    assert sources.find("dla60", "mine").variant == "dla60"

    def DLA34(**kwargs):  # a function of the user's, named as a builder of keras_dla.models.dla
        raise AssertionError("register_weights only reads the builder")

    with pytest.raises(ValueError, match=r"`model` should be a DLA variant name.*Received: model=<function"):
        keras_dla.register_weights(DLA34, "mine", "https://example.org/w.pth", "a" * 64)


def test_convert_checkpoint_fills_the_given_model_or_builds_one_with_the_builder(reference, tmp_path, blank):
    data, _ = reference["files"][("safetensors", "authors")]
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(data)
    built, dropped = pretrained.convert_checkpoint(VARIANT, str(path), keras_dla.DLA46XC)
    assert built.get_layer("fc").units == 1000 and "level4.project.0.weight" in dropped
    np.testing.assert_allclose(_logits(built, reference), reference["logits"], rtol=1e-3, atol=ATOL)
    filled, _ = pretrained.convert_checkpoint(VARIANT, str(path), blank)
    assert filled is blank
    np.testing.assert_allclose(_logits(blank, reference), reference["logits"], rtol=1e-3, atol=ATOL)
    ten = keras_dla.DLA46XC(weights=None, classes=10, input_shape=(SIZE, SIZE, 3))
    with pytest.raises(ValueError, match=r"classifies 1000 classes and dla46x_c 10; build .*Received: checkpoint="):
        pretrained.convert_checkpoint(VARIANT, str(path), ten)
    with pytest.raises(ValueError, match=r"`model` should be a Keras model or a DLA builder.*Received: model='x'"):
        pretrained.convert_checkpoint(VARIANT, str(path), "x")


@pytest.mark.parametrize("variant", ["dla34", VARIANT, "dla102"])
def test_dead_project_keys_read_from_a_model_hold_those_of_its_config(variant):
    model = keras_dla.DLA(variant, weights=None, include_top=False, input_shape=(None, None, 3))
    from_model = convert.dead_project_keys_of(model)
    assert set(convert.dead_project_keys(keras_dla.MODEL_CONFIGS[variant])) <= set(from_model)
    paths = [path for path, _ in convert.named_layers(model)]
    assert not any(path.startswith(prefix) for prefix in from_model for path in paths)  # none is a layer's


def test_the_transposed_conv_layer_converts_by_its_registered_name():
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras_dla.DepthwiseConv2DTranspose(2, name="up")(inputs))
    weight = np.random.default_rng(0).standard_normal((3, 1, 4, 4)).astype("float32")  # PyTorch (C, 1, kh, kw)
    assert convert.assign_state_dict(model, {"up.weight": weight}) == {}
    np.testing.assert_array_equal(model.get_layer("up").kernel.numpy(), weight.transpose(2, 3, 0, 1))

    class DepthwiseConv2DTranspose(keras.layers.Layer):  # the same class name, not keras_dla's layer
        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(4, 4, 3, 1))

        def call(self, x):
            return x

    other = keras.Model(inputs, DepthwiseConv2DTranspose(name="up")(inputs))
    with pytest.raises(TypeError, match="No PyTorch mapping for layer 'up'"):
        convert.assign_state_dict(other, {"up.weight": weight})
