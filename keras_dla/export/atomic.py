"""Atomic writes of an export: the artefact appears at its path complete, or not at all.

`atomic_target` yields a temporary path in a work folder beside the target and renames what was written there
into place once the block succeeds; a failure (or a kill, cleaned up by the next export there) leaves nothing
behind. An existing target is refused unless `overwrite=True`.
"""

import contextlib
import os
import shutil
import tempfile

from keras_dla import checks, files


def check_target(path, overwrite, kind):
    """The absolute output path, once `path` may be written as a `kind` ("file" or "folder")."""
    path = os.fspath(path)
    if not path:
        raise ValueError(f"An output path is needed. Received: path={path!r}")
    if os.path.lexists(path) and not overwrite:
        raise ValueError(
            f"The output path exists; pass `overwrite=True` (`--overwrite`) to replace it. Received: path={path!r}"
        )
    checks.check_output(path, kind, what="the output")  # also: a file for a folder, or the reverse
    return os.path.abspath(path)


@contextlib.contextmanager
def atomic_target(path, overwrite, is_dir):
    """Yields a temporary path next to `path`; renames it to `path` on success, removes it on any failure."""
    path = check_target(path, overwrite, "folder" if is_dir else "file")
    parent = os.path.dirname(path)
    created = []
    probe = parent
    while probe and not os.path.isdir(probe):
        created.append(probe)
        probe = os.path.dirname(probe)
    os.makedirs(parent, exist_ok=True)
    # The work folder is named after this process (`files.remove_stale`): what a killed export left is removed here.
    prefix = f".{os.path.basename(path)}."
    files.remove_stale(parent, prefix, suffix=".tmp")
    files.remove_stale(parent)  # and the temporary files of killed writers there (a sidecar's)
    workdir = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.", suffix=".tmp", dir=parent)
    # `.tflite` suffix: Keras' LiteRT exporter insists on it.
    tmp = os.path.join(workdir, "saved_model" if is_dir else "model.tflite")
    previous_tempdir = tempfile.tempdir
    try:
        # Keras' LiteRT exporter writes its intermediate SavedModel in the temporary folder: in the work folder,
        # it goes with it, also after a kill.
        tempfile.tempdir = workdir
        yield tmp
        if not os.path.exists(tmp):
            raise RuntimeError(f"The exporter wrote nothing at {tmp}")
        old = None
        if os.path.lexists(path):  # overwrite=True: move the old artefact aside first, drop it after.
            old = os.path.join(workdir, "previous")
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
            raise
    finally:
        tempfile.tempdir = previous_tempdir
        shutil.rmtree(workdir, ignore_errors=True)
        for leftover in created:  # empty parents this call created, when the export failed
            if os.path.isdir(leftover) and not os.listdir(leftover):
                os.rmdir(leftover)
