"""PyTorch state dict -> Keras weights, by name, with every key accounted for.

Keras layer names are PyTorch module paths with underscores for dots (`keras_dla.weights.names`), so a checkpoint
key is `<module path of the layer>.<tensor name>`. The converter walks the model's layers, takes the keys each
one needs, and then checks that every key of the checkpoint was used or is on the list of keys that have no Keras
counterpart (`ignored_keys`). Anything else is an error naming the key: loading is never silently partial.
"""

import os
import re
import warnings

import h5py
import keras
import numpy as np
from keras import layers

from keras_dla import resampling
from keras_dla.weights import checksum, legacy, names, readers

DEAD_KEYS_NOTE = (
    "dead in the authors' code: a Tree of more than one level builds `project` but passes its output to "
    "a sub-tree that ignores it (timm removed these layers)"
)
BATCHES_TRACKED_NOTE = "BatchNorm step counter, not used by the forward pass"
FC_NOTE = "classifier, not built with include_top=False"
# The name `keras_dla.models.layers` registers its `DepthwiseConv2DTranspose` under: the layer is recognised by it
# (`keras.saving.get_registered_name`), so that the converter imports no model module.
DEPTHWISE_TRANSPOSE_NAME = "keras_dla>DepthwiseConv2DTranspose"


def _transpose_conv_kernel(w):
    # PyTorch (out, in / groups, kh, kw) -> Keras (kh, kw, in / groups, out).
    return np.transpose(w, (2, 3, 1, 0))


def _depthwise_transpose_kernel(w):
    # PyTorch grouped ConvTranspose2d (C, 1, kh, kw) -> DepthwiseConv2DTranspose (kh, kw, C, 1).
    return np.transpose(w, (2, 3, 0, 1))


def _dense_kernel(w):
    # The authors' classifier is a 1x1 conv (classes, C, 1, 1); timm's may be (classes, C). Keras: (C, classes).
    return w.reshape(w.shape[0], -1).T


def _tensor_map(layer):
    """`[(checkpoint tensor name, Keras variable, numpy transform)]` of one layer, in `layer.weights` order."""
    if isinstance(layer, layers.Conv2D):
        pairs = [("weight", _transpose_conv_kernel)]
        if layer.use_bias:
            pairs.append(("bias", None))
    elif isinstance(layer, layers.BatchNormalization):
        pairs = [("weight", None), ("bias", None), ("running_mean", None), ("running_var", None)]
    elif isinstance(layer, layers.Dense):
        pairs = [("weight", _dense_kernel), ("bias", None)]
    elif keras.saving.get_registered_name(type(layer)) == DEPTHWISE_TRANSPOSE_NAME:
        pairs = [("weight", _depthwise_transpose_kernel)]
    elif isinstance(layer, layers.DepthwiseConv2D) and not layer.use_bias:
        # DLA-Up's upsampling (`resampling.depthwise_conv_transpose`): a ConvTranspose2d weight as a phase kernel.
        pairs = [("weight", resampling.phase_kernel_from_torch)]
    else:
        raise TypeError(f"No PyTorch mapping for layer {layer.name!r} of type {type(layer).__name__}")
    if len(pairs) != len(layer.weights):
        raise TypeError(f"Layer {layer.name!r} has {len(layer.weights)} weights; the mapping expects {len(pairs)}")
    return pairs


def dead_project_keys(config):
    """Prefixes of the authors' unused `project` layers for a config of `dla.MODEL_CONFIGS` (see DEAD_KEYS_NOTE).

    A tree node of more than one level whose input and output widths differ owns one; its sub-trees are
    walked as the authors' `Tree.__init__` builds them.
    """
    prefixes = []

    def walk(name, levels, in_channels, out_channels):
        if levels == 1:
            return
        if in_channels != out_channels:
            prefixes.append(f"{name}.project.")
        walk(f"{name}.tree1", levels - 1, in_channels, out_channels)
        walk(f"{name}.tree2", levels - 1, out_channels, out_channels)

    channels = config["channels"]
    for i in range(2, 6):
        walk(f"level{i}", config["levels"][i], channels[i - 1], channels[i])
    return tuple(prefixes)


def dead_project_keys_of(model):
    """The `dead_project_keys` of a built model: `<node>.project.` for each of its tree nodes of more than one level.

    A node of more than one level is one whose first child is a tree too: the model has layers under
    `<node>.tree1.tree1.`. A node whose input and output widths are equal has no `project`, so its prefix matches
    no key. For a model of a config this holds the prefixes of `dead_project_keys(config)`.
    """
    nodes = set()
    marker = ".tree1.tree1."
    for path, _ in named_layers(model):
        position = path.find(marker)
        while position >= 0:
            nodes.add(path[:position])
            position = path.find(marker, position + 1)
    return tuple(sorted(f"{node}.project." for node in nodes))


def classifier_weights(state_dict):
    """The checkpoint's classifier as Keras' `fc` Dense layer holds it, `[kernel, bias]`; None without one."""
    if "fc.weight" not in state_dict or "fc.bias" not in state_dict:
        return None
    return [_dense_kernel(np.asarray(state_dict["fc.weight"])), np.asarray(state_dict["fc.bias"])]


def named_layers(model, prefix=""):
    """`(checkpoint key prefix, layer)` for every layer of `model`, entering nested models.

    The prefix is the layer's PyTorch module path (`names.module_path`). A nested model is a PyTorch sub-module:
    its name joins the path, so the layer `level3_tree1_conv1` of the sub-model `base` reads the key
    `base.level3.tree1.conv1.weight`.
    """
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from named_layers(layer, f"{prefix}{names.module_path(layer.name)}.")
        else:
            yield f"{prefix}{names.module_path(layer.name)}", layer


def ignored_keys(state_dict, model, dead_prefixes, ignored_prefixes=None):
    """`{key: reason}` for checkpoint keys that have no Keras weight by design.

    `ignored_prefixes` adds `{key prefix: reason}` rules of the caller's own.
    """
    has_fc = any(layer.name == "fc" for layer in model.layers)
    extra = tuple((ignored_prefixes or {}).items())
    reasons = {}
    for key in state_dict:
        extra_reason = next((reason for prefix, reason in extra if key.startswith(prefix)), None)
        if key.endswith(".num_batches_tracked"):
            reasons[key] = BATCHES_TRACKED_NOTE
        elif key.startswith(dead_prefixes):
            reasons[key] = DEAD_KEYS_NOTE
        elif extra_reason is not None:
            reasons[key] = extra_reason
        elif key.startswith("fc.") and not has_fc:
            reasons[key] = FC_NOTE
    return reasons


def assign_state_dict(model, state_dict, *, dead_prefixes=(), ignored_prefixes=None, source="checkpoint"):
    """Copies a PyTorch state dict into `model` by layer name.

    Args:
        model: a keras_dla model.
        state_dict: `{key: numpy array}`.
        dead_prefixes: key prefixes known to be unused (`dead_project_keys`).
        ignored_prefixes: more `{key prefix: reason}` of tensors the model deliberately has no layer for.
        source: how to name the checkpoint in error messages.

    Returns:
        `{key: reason}` of the checkpoint keys that were deliberately not used.

    Raises:
        ValueError: a key the model needs is missing, a shape differs, or a key is left unexplained.
    """
    updates = []
    used = set()
    for path, layer in named_layers(model):
        if not layer.weights:
            continue
        for (tensor_name, transform), variable in zip(_tensor_map(layer), layer.weights, strict=True):
            key = f"{path}.{tensor_name}"
            if key not in state_dict:
                raise ValueError(
                    f"The {source} has no tensor {key!r} for layer {layer.name!r} of {model.name} "
                    f"(Keras shape {tuple(variable.shape)}); is it a checkpoint of another DLA variant? "
                    f"Received: a state dict of {len(state_dict)} keys"
                )
            value = np.asarray(state_dict[key])
            if transform is not None:
                value = transform(value)
            if value.shape != tuple(variable.shape):
                raise ValueError(
                    f"Shape mismatch for {key!r} of {model.name}: the {source} holds "
                    f"{tuple(np.shape(state_dict[key]))} (PyTorch layout, {value.shape} as Keras) but the "
                    f"model expects {tuple(variable.shape)}; is it a checkpoint of another DLA variant or "
                    f"class count? Received: {key}{list(np.shape(state_dict[key]))}"
                )
            updates.append((variable, value))
            used.add(key)
    unused = {key: value for key, value in state_dict.items() if key not in used}
    ignored = ignored_keys(unused, model, tuple(dead_prefixes), ignored_prefixes)
    unexplained = sorted(set(unused) - set(ignored))
    if unexplained:
        shown = ", ".join(f"{k}{list(np.shape(state_dict[k]))}" for k in unexplained[:8])
        more = f" and {len(unexplained) - 8} more" if len(unexplained) > 8 else ""
        raise ValueError(
            f"The {source} has tensors that {model.name} has no layer for; is it a checkpoint of another "
            f"DLA variant? Received: {shown}{more}"
        )
    for variable, value in updates:
        variable.assign(value.astype(variable.dtype))
    return ignored


def keras_load_error_summary(message):
    """The gist of Keras' `load_weights` error, which prints whole variables: the layers and one shape clash."""
    not_loaded = []
    if "List of objects that could not be loaded:" in message:
        not_loaded = re.findall(r"<\w+ name=([^,>]+)", message.split("List of objects that could not be loaded:")[-1])
    clash = re.search(r"variable\.shape=(\([^)]*\)), Received: value\.shape=(\([^)]*\))", message)
    variable = re.search(r"Target variable: <Variable path=([^,>]+)", message)
    if not_loaded or clash:
        parts = []
        if not_loaded:
            more = f" and {len(not_loaded) - 6} more" if len(not_loaded) > 6 else ""
            parts.append(f"{len(not_loaded)} layer(s) did not fit: {', '.join(not_loaded[:6])}{more}.")
        if clash:
            name = variable.group(1) if variable else "a variable"
            parts.append(f"For example {name} has shape {clash.group(1)} in the model, {clash.group(2)} in the file.")
        return " ".join(parts)
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return " ".join(lines[:2])[:500]


def load_weights(model, path, *, dead_prefixes=(), ignored_prefixes=None):
    """Loads `path` into `model`: a Keras `.weights.h5` file, or a PyTorch checkpoint converted on the fly."""
    path = os.fspath(path)
    if path.endswith(".weights.h5"):
        if not h5py.is_hdf5(path):
            raise ValueError(
                f"Not a Keras weights file: {path!r} is not in the HDF5 format that `model.save_weights` writes. "
                f"Received: weights={path!r}"
            )
        check_input_channels(model, path)
        # Keras warns once per unmatched sublayer before it raises; those warnings are noise in front of
        # the one error that explains the failure, so they are only passed on when the load succeeds.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                checksum.verify(path)  # a file keras_dla wrote; one without a digest has nothing to check
                if legacy.is_legacy(path):
                    legacy.load(model, path)
                else:
                    model.load_weights(path)
            except OSError as e:  # h5py: an HDF5 file cut short (an interrupted copy or download)
                raise ValueError(
                    f"Cannot read the weights file {path!r}; is it incomplete? h5py said: {e}. "
                    f"Received: weights={path!r}"
                ) from None
            except checksum.DamagedWeightsError as e:
                raise ValueError(f"{e} Received: weights={path!r}") from None
            except legacy.LegacyWeightsError as e:
                raise ValueError(
                    f"Could not load {path!r}, a weights file of keras_dla 0.1, into {model.name}: {e}. Is it a "
                    f"weights file of another DLA variant or class count? Received: weights={path!r}"
                ) from None
            except ValueError as e:
                raise ValueError(
                    f"Could not load {path!r} into {model.name}; is it a weights file of another DLA variant "
                    f"or of a model built with other arguments (classes, input channels)? "
                    f"Keras said: {keras_load_error_summary(str(e))} Received: weights={path!r}"
                ) from None
        for caught_warning in caught:
            warnings.warn_explicit(
                caught_warning.message, caught_warning.category, caught_warning.filename, caught_warning.lineno
            )
        return {}
    if not path.endswith(tuple(readers.READERS)):
        raise ValueError(
            "A weights file is a Keras .weights.h5 file or a PyTorch checkpoint "
            f"({', '.join(sorted(readers.READERS))}). Received: weights={path!r}"
        )
    state_dict = readers.read_state_dict(path)
    return assign_state_dict(
        model,
        state_dict,
        dead_prefixes=dead_prefixes,
        ignored_prefixes=ignored_prefixes,
        source=f"checkpoint {os.path.basename(path)!r}",
    )


def is_keras_weights_file(weights):
    """Whether `weights` names a Keras `.weights.h5` file (which may be a model of any input channel count)."""
    return isinstance(weights, (str, os.PathLike)) and os.fspath(weights).endswith(".weights.h5")


def _saved_layer_paths(model, prefix="layers"):
    """`(path, layer)` of the layers of `model` as `model.save_weights` names their groups in the file.

    Keras names a layer by its class in snake case, numbered per class in the order of `model.layers`
    (`layers/conv2d`, `layers/conv2d_1`, ...); a nested model's layers are under its own path.
    """
    counts = {}
    for layer in model.layers:
        name = keras.src.utils.naming.to_snake_case(type(layer).__name__)
        counts[name] = counts.get(name, -1) + 1
        path = f"{prefix}/{name}" + (f"_{counts[name]}" if counts[name] else "")
        if isinstance(layer, keras.Model):
            yield from _saved_layer_paths(layer, f"{path}/layers")
        else:
            yield path, layer


def _kernel_in_channels(f, path):
    kernel = f.get(f"{path}/vars/0")
    return int(kernel.shape[2]) if isinstance(kernel, h5py.Dataset) and len(kernel.shape) == 4 else None


# Where `model.save_weights` keeps the stem kernel (`base_layer_0`, the first Conv2D) of a DLA-Up model, whose
# backbone is the nested model `base` (its decoder's convolutions are `layers/conv2d...`), and of a classifier.
STEM_KERNEL_PATHS = ("layers/functional/layers/conv2d", "layers/conv2d")


def weights_file_input_channels(path):
    """The input channels a keras_dla `.weights.h5` file was saved for (its stem kernel's), or None if unknown."""
    try:
        with h5py.File(path, "r") as f:
            for stem in STEM_KERNEL_PATHS:
                channels = _kernel_in_channels(f, stem)
                if channels is not None:
                    return channels
    except OSError:  # unreadable: the load says why
        return None
    return None


def check_input_channels(model, path):
    """Refuses, in one sentence, a `.weights.h5` file saved from a model of another input channel count.

    Compares the first convolution of `model` with the kernel at the same place in the file; a file without
    one there is left to Keras' own checks.
    """
    first = next(((p, layer) for p, layer in _saved_layer_paths(model) if isinstance(layer, layers.Conv2D)), None)
    if first is None:
        return
    saved_path, conv = first
    try:
        with h5py.File(path, "r") as f:
            saved = _kernel_in_channels(f, saved_path)
    except OSError:  # unreadable: the load says why
        return
    wanted = int(conv.kernel.shape[2])
    if saved is not None and saved != wanted:
        raise ValueError(
            f"The weights file {path!r} was saved from a model of {saved} input channel(s) and {model.name} takes "
            f"{wanted}; build the model with input_shape=(height, width, {saved}). Received: weights={path!r}"
        )
