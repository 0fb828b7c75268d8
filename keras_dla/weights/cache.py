"""The converted cache: the Keras weights of a checkpoint, by layer name, in `$KERAS_HOME/models`.

Beside the downloaded checkpoint (`dla34-ba72cf86.pth`) live its converted Keras weights
(`dla34-ba72cf86.keras_dla.h5`): the variables of every Keras layer, by layer name, in one Fletcher-32 checksummed
HDF5 dataset, so a later load reads it in one go into any model of the variant (`include_top=False` included)
without the checkpoint or a conversion, and a damaged file fails to read instead of loading wrong numbers. The
file carries the checksum of `keras_dla.weights.checksum`, as every weights file keras_dla writes.
"""

import contextlib
import json
import os
import warnings

import h5py
import numpy as np

from keras_dla.weights import checksum, sources

CACHE_SUFFIX = ".keras_dla.h5"
# 3: layer names with underscores for dots (`keras_dla.weights.names`); a cache of an earlier format is converted again.
CACHE_FORMAT = "keras_dla-weights-by-layer-name-3"


class DoesNotFitError(ValueError):
    """Intact weights that do not fit the model asked for (another class count): the user's error."""


def save_by_layer_name(model, path, attrs=None, extra_layers=None):
    """Writes the weights of `model`'s layers, by layer name, to one checksummed HDF5 file.

    The float32 values of every variable are concatenated into one Fletcher-32 checksummed dataset, with a
    JSON index of `[layer name, [variable shapes]]`: one read loads them all, and any damaged chunk fails
    that read. `extra_layers`, `{layer name: [arrays]}`, adds layers `model` does not have (the checkpoint's
    classifier, for a model built with `include_top=False`).
    """
    index, values = [], []
    layer_arrays = [(layer.name, [variable.numpy() for variable in layer.weights]) for layer in model.layers]
    for name, arrays in [*layer_arrays, *(extra_layers or {}).items()]:
        if arrays:
            arrays = [np.asarray(a, dtype="float32") for a in arrays]
            index.append([name, [list(a.shape) for a in arrays]])
            values.extend(a.ravel() for a in arrays)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = CACHE_FORMAT
        f.attrs["index"] = json.dumps(index)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        flat = np.concatenate(values)
        # 4 MB chunks: each one checksummed, few enough that reading them all costs little over raw I/O.
        f.create_dataset("values", data=flat, chunks=(min(flat.size, 1 << 20),), fletcher32=True)
        f.attrs[checksum.DIGEST_ATTR] = checksum.datasets_digest(f)


def load_by_layer_name(model, path, variant):
    """Loads a file of `save_by_layer_name` into `model`; every weighted layer must be there, shapes equal.

    Raises:
        OSError: the file is unreadable or fails its checksums.
        ValueError: the file is not a keras_dla weights file of `variant`, fails its sha256
            (`checksum.DamagedWeightsError`) or does not fit `model`.
    """
    checksum.verify(path)
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != CACHE_FORMAT:
            raise ValueError(f"it is in the format {f.attrs.get('format')!r}, not {CACHE_FORMAT!r}")
        if f.attrs.get("variant") != variant:
            raise ValueError(f"{path} is not a keras_dla weights file of {variant}")
        index = json.loads(f.attrs["index"])
        flat = f["values"][()]
    offsets, offset = {}, 0
    for name, shapes in index:
        offsets[name] = (offset, shapes)
        offset += sum(int(np.prod(shape, dtype=np.int64)) for shape in shapes)
    if offset != flat.size:
        raise ValueError(f"{path} holds {flat.size} values, its index {offset}")
    updates = []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in offsets:
            raise ValueError(f"{path} has no weights for layer {layer.name!r}")
        offset, shapes = offsets[layer.name]
        if [tuple(shape) for shape in shapes] != [tuple(v.shape) for v in layer.weights]:
            raise DoesNotFitError(
                f"The weights of {layer.name!r} in {os.path.basename(path)} have shapes {shapes}, the model's "
                f"{[tuple(v.shape) for v in layer.weights]} (built with another class count?)"
            )
        for shape, variable in zip(shapes, layer.weights, strict=True):
            size = int(np.prod(shape, dtype=np.int64))
            updates.append((variable, flat[offset : offset + size].reshape(shape)))
            offset += size
    for variable, value in updates:
        variable.assign(value)


def converted_path(source, directory):
    """Where the converted weights of `source` live in `directory`: its file name with `CACHE_SUFFIX`."""
    stem = source.filename[: -len(sources.file_suffix(source.filename))]
    return os.path.join(directory, stem + CACHE_SUFFIX)


def load_cached(model, path, variant):
    """True when `path` loaded; a damaged file is reported and removed."""
    if not os.path.isfile(path):
        return False
    try:
        load_by_layer_name(model, path, variant)
        return True
    except DoesNotFitError as e:
        raise ValueError(f"{e}. Received: weights file {path!r}") from None
    except (OSError, KeyError, ValueError) as e:
        warnings.warn(
            f"Cached weights {path} are damaged or out of date ({e}); converting them again",
            sources.WeightsWarning,
            stacklevel=4,
        )
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        return False


def cached_tags(variant):
    """Tags of `variant` whose converted weights are in the cache (for `keras-dla list`)."""
    directory = sources.cache_dir()
    return [
        tag
        for tag, entry in sources.tags_of(variant).items()
        if any(os.path.isfile(converted_path(s, directory)) for s in entry.sources)
    ]
