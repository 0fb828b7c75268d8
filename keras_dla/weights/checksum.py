"""The sha256 every weights file keras_dla writes carries, and its check on every keras_dla load.

A weights file is HDF5 (Keras' `.weights.h5`, the converted cache of `keras_dla.weights`). Its digest is taken over
its datasets (each one's path, dtype, shape and bytes, in path order) and stored as the root attribute `DIGEST_ATTR`:
the attribute does not change the digest, and plain `keras.Model.load_weights` reads the file as it reads any other.
A flipped byte inside a weight changes the digest, so the file is refused with a sentence instead of loading wrong
numbers. A file without the attribute (written by plain Keras, or by keras_dla 0.1) has nothing to check and loads.
"""

import hashlib
import os

import h5py
import numpy as np

from keras_dla import files

DIGEST_ATTR = "keras_dla_sha256"


class DamagedWeightsError(ValueError):
    """A weights file whose datasets no longer match the digest stored in it."""


def datasets_digest(h5file):
    """The sha256 hex digest of every dataset of the open HDF5 file `h5file` (path, dtype, shape, bytes)."""
    names = []
    h5file.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
    digest = hashlib.sha256()
    for name in sorted(names):
        dataset = h5file[name]
        value = np.asarray(dataset[()])
        digest.update(f"{name}\0{dataset.dtype.str}\0{value.shape}\0".encode())
        if value.dtype.kind == "O":  # variable-length strings: their text, not the pointers numpy holds
            digest.update(repr(value.tolist()).encode())
        else:
            digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def add_digest(path, attrs=None):
    """Stores the digest of the weights file at `path` in it, with `attrs` as further root attributes."""
    with h5py.File(path, "r+") as f:
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        f.attrs[DIGEST_ATTR] = datasets_digest(f)


def verify(path):
    """Checks the weights file at `path` against its stored digest; returns whether it had one.

    Raises:
        DamagedWeightsError: the datasets do not match the digest.
        OSError: h5py cannot read the file (cut short, not HDF5).
    """
    with h5py.File(path, "r") as f:
        stored = f.attrs.get(DIGEST_ATTR)
        if stored is None:
            return False
        stored = stored.decode() if isinstance(stored, bytes) else str(stored)
        if datasets_digest(f) != stored:
            raise DamagedWeightsError(
                f"The weights file {os.fspath(path)!r} is damaged: its contents no longer match the sha256 keras_dla "
                "stored in it when writing it (a disk or copy error?), so it is not loaded."
            )
    return True


def save_weights(model, path, attrs=None):
    """`model.save_weights(path)` with the digest stored in the file, written whole or not at all."""

    def write(temporary):
        model.save_weights(temporary)
        add_digest(temporary, attrs)

    files.write_atomically(path, write)
