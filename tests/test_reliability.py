"""Faults keras_dla must survive: damaged weights files, slow or silent servers, what a killed process leaves.

- Every weights file keras_dla writes carries a sha256 of its datasets (`weights.checksum`); a byte flipped inside
  any weight is refused by every keras_dla load, in one sentence naming the file, and plain Keras still reads it.
- A download has a deadline for the whole file, and a process waiting for another's download says so.
- Temporary files and folders a killed download, conversion, run or export left are removed by the next one.
"""

import http.server
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import h5py
import keras
import numpy as np
import pytest

import keras_dla
from keras_dla import files
from keras_dla.cli import convert as cli_convert
from keras_dla.export import atomic
from keras_dla.training import run_folder
from keras_dla.weights import cache, checksum, convert, download, pretrained, sources

try:
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

SHAPE = (32, 32, 3)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A fresh KERAS_HOME and registry per test, no mirror or deadline from the environment."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    monkeypatch.delenv(download.TIMEOUT_ENV, raising=False)
    monkeypatch.setattr(sources, "_REGISTERED", {})
    return tmp_path / "keras_home" / "models"


@pytest.fixture(scope="module")
def model():
    return keras_dla.DLA46C(weights=None, classes=3, input_shape=SHAPE)


def _dead_pid():
    """The id of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ------------------------------------------------------------------------------------------------------------------
# Checksums


def _datasets(path):
    """`(name, byte offset in the file, size in bytes)` of every non-empty dataset stored contiguously."""
    found = []

    def visit(name, item):
        if isinstance(item, h5py.Dataset) and item.nbytes:
            offset = item.id.get_offset()
            if offset is None and item.chunks:  # a chunked dataset: its first chunk
                offset = item.id.get_chunk_info(0).byte_offset
            found.append((name, offset, item.nbytes))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return sorted(found, key=lambda entry: -entry[2])


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


def _flip_points(path):
    """Places inside the weights of `path` to damage: the first and last byte of the largest weight, the middle of
    another, and the first byte of the smallest (a batch norm statistic or a bias)."""
    entries = _datasets(path)
    largest, middle, smallest = entries[0], entries[len(entries) // 2], entries[-1]
    return [
        (largest[0], largest[1]),
        (largest[0], largest[1] + largest[2] - 1),
        (middle[0], middle[1] + middle[2] // 2),
        (smallest[0], smallest[1]),
    ]


def _write_convert(model, path):
    cli_convert.convert_to_file(model, path)


def _write_run_weights(model, path):  # best.weights.h5 and final.weights.h5
    run_folder.save_weights_atomically(model, path)


def _write_best(model, path):
    best = run_folder.BestWeights(path, "val_accuracy", "max")
    best.set_model(model)
    best.on_epoch_end(0, {"val_accuracy": 0.5})


def _write_backup(model, path):
    backup = run_folder.FiniteBackup(os.path.dirname(path), run_folder.FiniteWeights())
    backup.set_model(model)
    backup._current_epoch = 1
    backup._save_model()
    os.replace(os.path.join(os.path.dirname(path), "latest.weights.h5"), path)


WRITERS = {
    "keras-dla convert": _write_convert,
    "a run's final weights": _write_run_weights,
    "a run's best weights": _write_best,
    "a run's backup": _write_backup,
}


def _randomize(model, seed):
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.standard_normal(variable.shape).astype(variable.dtype))
    return [np.array(v.numpy()) for v in model.weights]


def _small():
    """A model with the layer kinds of DLA (conv, batch norm, dense), small enough to load in milliseconds."""
    layers = keras.layers
    return keras.Sequential(
        [keras.Input((8, 8, 3)), layers.Conv2D(4, 3), layers.BatchNormalization(), layers.Flatten(), layers.Dense(3)]
    )


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_flipped_byte_in_any_weight_of_a_file_keras_dla_wrote_is_refused(tmp_path, writer):
    model = _small()
    expected = _randomize(model, 1)
    path = str(tmp_path / "w.weights.h5")
    WRITERS[writer](model, path)
    assert checksum.verify(path) is True
    assert [name for name in os.listdir(tmp_path) if name.startswith(".partial.")] == []
    original = open(path, "rb").read()
    _randomize(model, 2)
    model.load_weights(path)  # plain Keras reads it: the digest is only an attribute
    assert all(np.array_equal(v.numpy(), e) for v, e in zip(model.weights, expected, strict=True))
    _randomize(model, 3)
    convert.load_weights(model, path)  # and keras_dla verifies, then loads it
    assert all(np.array_equal(v.numpy(), e) for v, e in zip(model.weights, expected, strict=True))
    points = _flip_points(path)
    assert len({name for name, _ in points}) >= 3
    for _, offset in points:
        _flip(path, offset)
        with pytest.raises(ValueError, match=r"^The weights file '.*w\.weights\.h5' is damaged.*Received: weights="):
            convert.load_weights(model, path)
        with pytest.raises(checksum.DamagedWeightsError):
            checksum.verify(path)
        with open(path, "wb") as f:
            f.write(original)


def test_a_builder_refuses_a_damaged_weights_file(tmp_path, model):
    path = str(tmp_path / "dla46_c.weights.h5")
    cli_convert.convert_to_file(model, path)
    _flip(path, _flip_points(path)[2][1])
    with pytest.raises(ValueError, match=r"^The weights file '.*dla46_c\.weights\.h5' is damaged.*Received: weights="):
        keras_dla.DLA46C(weights=path, classes=3, input_shape=SHAPE)


@pytest.mark.parametrize("kind", ["plain Keras", "keras_dla 0.1"])
def test_a_file_without_a_checksum_still_loads(tmp_path, model, kind):
    expected = _randomize(model, 4)
    path = str(tmp_path / "plain.weights.h5")
    model.save_weights(path)
    if kind == "keras_dla 0.1":  # 0.1 named its batch norms by its own class: the layout legacy_weights reads
        with h5py.File(path, "r+") as f:
            for name in [n for n in f["layers"] if n.startswith("batch_normalization")]:
                f.move(f"layers/{name}", f"layers/fused_{name}")
    assert checksum.verify(path) is False
    _randomize(model, 5)
    convert.load_weights(model, path)
    assert all(np.array_equal(v.numpy(), e) for v, e in zip(model.weights, expected, strict=True))


def test_the_converted_cache_carries_the_same_checksum(tmp_path, model):
    path = str(tmp_path / "dla46_c-x.keras_dla.h5")
    expected = _randomize(model, 6)
    cache.save_by_layer_name(model, path, {"variant": "dla46_c"})
    assert checksum.verify(path) is True
    _randomize(model, 7)
    cache.load_by_layer_name(model, path, "dla46_c")
    assert all(np.array_equal(v.numpy(), e) for v, e in zip(model.weights, expected, strict=True))
    _flip(path, _datasets(path)[0][1] + 100)
    with pytest.raises((OSError, ValueError)):  # the chunk's Fletcher-32 or the sha256: never loaded
        cache.load_by_layer_name(model, path, "dla46_c")


def _tiny_compiled():
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    net.compile(optimizer="adam", loss="mse")
    net.optimizer.build(net.trainable_variables)
    return net


def _backup(folder, net, epoch):
    backup = run_folder.FiniteBackup(str(folder), run_folder.FiniteWeights(), double_checkpoint=True)
    backup.set_model(net)
    backup._current_epoch = epoch
    backup._save_model()
    return backup


def test_a_damaged_backup_falls_back_to_the_one_before_and_both_damaged_is_one_sentence(tmp_path):
    net = _tiny_compiled()
    net.layers[0].kernel.assign(np.full((4, 3), 1.0, "float32"))
    _backup(tmp_path, net, 1)
    net.layers[0].kernel.assign(np.full((4, 3), 2.0, "float32"))
    _backup(tmp_path, net, 2)
    assert sorted(os.listdir(tmp_path)) == [
        "latest.weights.h5",
        "latest.weights.h5.bkp",
        "training_metadata.json",
        "training_metadata.json.bkp",
    ]
    latest = str(tmp_path / "latest.weights.h5")
    for name, offset in [_flip_points(latest)[i] for i in (0, 3)]:  # the largest, the smallest: the one before used
        saved = {n: open(tmp_path / n, "rb").read() for n in os.listdir(tmp_path)}
        _flip(latest, offset)
        restored = _tiny_compiled()
        backup = run_folder.FiniteBackup(str(tmp_path), run_folder.FiniteWeights(), double_checkpoint=True)
        backup.set_model(restored)
        backup.on_train_begin()
        assert restored._initial_epoch == 1, name
        assert np.all(restored.layers[0].kernel.numpy() == 1.0)
        for n, data in saved.items():
            open(tmp_path / n, "wb").write(data)
    for name in ("latest.weights.h5", "latest.weights.h5.bkp"):
        _flip(str(tmp_path / name), _datasets(str(tmp_path / name))[0][1])
    backup = run_folder.FiniteBackup(str(tmp_path), run_folder.FiniteWeights(), double_checkpoint=True)
    backup.set_model(_tiny_compiled())
    with pytest.raises(OSError, match=r"^The backup in .* cannot be resumed from \(The weights file .* is damaged"):
        backup.on_train_begin()


def test_the_resumed_epoch_is_the_one_the_weights_were_saved_after(tmp_path):
    net = _tiny_compiled()
    _backup(tmp_path, net, 3)
    # As a kill between the weights and the metadata leaves it: the metadata one backup behind.
    (tmp_path / "training_metadata.json").write_text(json.dumps({"epoch": 2, "batch": 0}))
    restored = _tiny_compiled()
    backup = run_folder.FiniteBackup(str(tmp_path), run_folder.FiniteWeights())
    backup.set_model(restored)
    backup.on_train_begin()
    assert restored._initial_epoch == 3


# ------------------------------------------------------------------------------------------------------------------
# Download deadline


class SlowServer:
    """An HTTP server on 127.0.0.1 whose paths answer too slowly, each in its own way, until `stop`."""

    BODY = 1000

    def __init__(self):
        self.stopping = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/silent.pth":  # accepts the connection, never answers
                    server.stopping.wait(60)
                    return
                self.send_response(200)
                if self.path != "/no-length.pth":
                    self.send_header("Content-Length", str(server.BODY))
                self.end_headers()
                if self.path == "/headers-only.pth":  # the headers, then nothing
                    server.stopping.wait(60)
                    return
                for _ in range(server.BODY):  # a byte a second
                    try:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    except OSError:
                        return
                    if server.stopping.wait(1):
                        return

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self):
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def slow_server():
    server = SlowServer()
    yield server
    server.stop()


def _cache_names(cache):
    return sorted(os.listdir(cache)) if cache.exists() else []


@pytest.mark.parametrize("path", ["/byte-a-second.pth", "/no-length.pth", "/headers-only.pth", "/silent.pth"])
def test_a_download_that_does_not_finish_in_time_ends_with_a_sentence_and_leaves_nothing(
    slow_server, isolated, monkeypatch, path
):
    monkeypatch.setenv(download.TIMEOUT_ENV, "2")
    keras_dla.register_weights("dla46_c", "slow", slow_server.url(path), "0" * 64)
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"did not finish within 2 s \(\d+ bytes received\); set KERAS_DLA_DOWNLOAD"):
        pretrained.fetch_checkpoint(sources.find("dla46_c", "slow"))
    assert time.monotonic() - start < 6
    assert _cache_names(isolated) == []


def test_a_builder_ends_a_slow_download_at_the_deadline_and_shows_progress(slow_server, isolated, monkeypatch, capfd):
    keras_dla.register_weights("dla46_c", "slow", slow_server.url("/byte-a-second.pth"), "0" * 64)
    monkeypatch.setenv(download.TIMEOUT_ENV, "6.5")
    with pytest.raises(ValueError, match=r"Could not obtain the 'slow' weights.*did not finish within 6.5 s"):
        keras_dla.DLA46C(weights="slow", classes=3, input_shape=SHAPE)
    err = capfd.readouterr().err
    assert "Downloading http://127.0.0.1" in err and re.search(r"MB after [56] s", err)  # a line every few seconds
    assert [name for name in _cache_names(isolated) if not name.endswith(".lock")] == []


@pytest.mark.parametrize("value", ["0", "-3", "soon", "nan", "inf", "1e400"])
def test_a_download_deadline_that_is_not_a_positive_number_is_one_sentence(monkeypatch, value):
    monkeypatch.setenv(download.TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=rf"^KERAS_DLA_DOWNLOAD_TIMEOUT should be a positive number.*'{value}'"):
        download.download_timeout()
    monkeypatch.delenv(download.TIMEOUT_ENV)
    for timeout in (0, -1.5, "10", True, float("nan")):
        with pytest.raises(ValueError, match=r"`timeout` should be a positive number.*Received: timeout="):
            download.download_timeout(timeout)
    assert download.download_timeout() == download.DOWNLOAD_TIMEOUT_S and download.download_timeout(2) == 2.0


@pytest.mark.skipif(fcntl is None, reason="file locks are POSIX")
def test_a_process_waiting_on_another_ones_download_says_so_and_gives_up_at_the_deadline(isolated, capfd):
    keras_dla.register_weights("dla46_c", "held", "/nowhere/dla46_c.pth", "1" * 64)
    source = sources.find("dla46_c", "held").sources[0]
    lock_path = os.path.join(sources.cache_dir(), source.filename + ".lock")
    with open(lock_path, "a") as holder:  # another process's download, as the lock shows it
        fcntl.flock(holder, fcntl.LOCK_EX)
        start = time.monotonic()
        with pytest.raises(ValueError, match=r"another process held the lock .*\.lock for more than 1 s"):
            pretrained.load_pretrained(None, "dla46_c", "held", timeout=1)
        assert time.monotonic() - start < 4
    err = capfd.readouterr().err
    assert f"Waiting for another process to fetch {source.filename} (it holds the lock {lock_path}" in err


# ------------------------------------------------------------------------------------------------------------------
# Leftovers


def _age(path, seconds):
    then = time.time() - seconds
    os.utime(path, (then, then))


def _leftovers(folder, dead, name):
    """Temporary files of every kind beside `name`: `{file name: whether it is stale}`."""
    live_other = os.getppid()  # a process that runs: its files are being written
    cases = {
        f".partial.{dead}.a1b2c3.{name}": True,  # its process is dead
        f".partial.{os.getpid()}.d4e5f6.{name}": False,  # this process's own
        f".partial.{live_other}.g7h8i9.{name}": False,
        f".partial.{live_other}.j1k2l3.old.{name}": True,  # a running process's id, unchanged for hours: reused
        f".partial.mnop4567.{name}": False,  # the name of an older keras_dla, recent
        f".partial.qrst8901.old.{name}": True,  # and old
    }
    for file_name in cases:
        path = os.path.join(folder, file_name)
        open(path, "wb").write(b"half a file")
        if ".old." in file_name:
            _age(path, files.STALE_AFTER_S + 60)
    return cases


def _partials(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith(".partial."))


def test_remove_stale_removes_only_what_no_running_writer_owns(tmp_path):
    cases = _leftovers(str(tmp_path), _dead_pid(), "dla34-ba72cf86.pth")
    folder = f".partial.{_dead_pid()}.x.folder"
    os.makedirs(tmp_path / folder / "inside")
    open(tmp_path / "dla34-ba72cf86.pth", "wb").write(b"a whole file")
    removed = files.remove_stale(str(tmp_path))
    assert sorted(removed) == sorted([folder] + [n for n, stale in cases.items() if stale])
    assert _partials(tmp_path) == sorted(n for n, stale in cases.items() if not stale)
    assert os.path.isfile(tmp_path / "dla34-ba72cf86.pth")
    assert files.remove_stale(str(tmp_path / "no such folder")) == []


def test_a_killed_download_leaves_nothing_after_the_next_fetch(isolated):
    isolated.mkdir(parents=True)
    cases = _leftovers(str(isolated), _dead_pid(), "dla46_c-mine-11111111.pth")
    keras_dla.register_weights("dla46_c", "mine", "/nowhere/dla46_c.pth", "1" * 64)
    with pytest.raises(ValueError, match="Could not obtain"):
        pretrained.load_pretrained(None, "dla46_c", "mine")
    assert _partials(isolated) == sorted(n for n, stale in cases.items() if not stale)
    for name in _partials(isolated):
        os.remove(isolated / name)
    cases = _leftovers(str(isolated), _dead_pid(), "dla46_c-mine-11111111.keras_dla.h5")
    with pytest.raises(ValueError, match="No verified checkpoint"):
        pretrained.fetch_checkpoint(sources.find("dla46_c", "mine"))
    assert _partials(isolated) == sorted(n for n, stale in cases.items() if not stale)


def test_a_killed_convert_leaves_nothing_after_the_next_one(tmp_path, model):
    cases = _leftovers(str(tmp_path), _dead_pid(), "out.weights.h5")
    other = tmp_path / f".partial.{_dead_pid()}.zz.other.weights.h5"  # beside another output: not this one's
    other.write_bytes(b"")
    cli_convert.convert_to_file(model, str(tmp_path / "out.weights.h5"))
    assert _partials(tmp_path) == sorted([other.name] + [n for n, stale in cases.items() if not stale])


def test_a_killed_run_leaves_nothing_in_its_folder_or_backup_after_the_next_start(tmp_path):
    os.makedirs(tmp_path / "backup")
    for folder in (tmp_path, tmp_path / "backup"):
        open(folder / f".partial.{_dead_pid()}.ab.latest.weights.h5", "wb").write(b"half")
    run_folder.RunDirectory(str(tmp_path))
    assert _partials(tmp_path) == [] and _partials(tmp_path / "backup") == []


def test_an_export_keeps_its_intermediate_files_in_its_work_folder(tmp_path):
    target = str(tmp_path / "model.tflite")
    with atomic.atomic_target(target, False, is_dir=False) as tmp:
        work = os.path.dirname(tmp)
        assert os.path.basename(work).startswith(f".model.tflite.{os.getpid()}.")
        assert tempfile.gettempdir() == work and os.path.dirname(tempfile.mkdtemp()) == work  # as Keras' LiteRT does
        open(tmp, "wb").write(b"tflite")
    assert tempfile.gettempdir() != work
    assert os.listdir(tmp_path) == ["model.tflite"]


_KILLED_EXPORT = """
import os, signal, sys, tempfile
from keras_dla.export import atomic
with atomic.atomic_target(sys.argv[1], False, is_dir=True) as tmp:
    os.makedirs(os.path.join(tempfile.mkdtemp(), "intermediate_saved_model"))
    os.makedirs(tmp)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_export_leaves_nothing_after_the_next_export(tmp_path):
    out = tmp_path / "out"
    target = str(out / "saved_model")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run([sys.executable, "-c", _KILLED_EXPORT, target], env=env, capture_output=True)
    assert result.returncode == -9, result.stderr[-2000:]
    (killed,) = os.listdir(out)  # its work folder, with the intermediate SavedModel and the unfinished one
    assert killed.startswith(".saved_model.") and killed.endswith(".tmp") and len(os.listdir(out / killed)) == 2
    running = out / f".saved_model.{os.getppid()}.abcd.tmp"  # a running export's: kept
    running.mkdir()
    old = out / ".saved_model.efgh1234.tmp"  # an older keras_dla's, left days ago
    old.mkdir()
    _age(old, 3 * 24 * 3600)
    recent = out / ".saved_model.ijkl5678.tmp"  # an older keras_dla's, recent: it may be running
    recent.mkdir()
    sidecar = out / f".partial.{_dead_pid()}.ab12.saved_model.json"  # a killed export's sidecar, half written
    sidecar.write_text("{")
    with atomic.atomic_target(target, False, is_dir=True) as tmp:
        os.makedirs(tmp)
    assert sorted(os.listdir(out)) == sorted(["saved_model", running.name, recent.name])
