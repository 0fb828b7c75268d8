"""Keras layer names <-> PyTorch module paths, the one mapping between keras_dla models and the authors' code.

A keras_dla layer is named after the PyTorch module it mirrors in the authors' `dla.py` / `dla_up.py` (and timm's
`dla.py`), with the dots made underscores, because Keras' PyTorch backend registers every variable as a torch
parameter and torch refuses names that contain a dot:

    level3.tree1.root.conv     <->  level3_tree1_root_conv
    base_layer.0               <->  base_layer_0
    dla_up.ida_0.proj_1.0      <->  dla_up_ida_0_proj_1_0

The reverse direction knows the module names of the authors' code that contain an underscore themselves
(`base_layer`, `dla_up`, `ida_<i>`, `proj_<k>`, `up_<k>`, `node_<k>`), so the mapping is exact both ways for every
module path of `DLA` and `DLASeg`. A checkpoint key is `<module path>.<tensor name>` (`level3.tree1.root.conv.weight`);
`keras_dla.weights.convert` walks the layers of a model with `module_path`.

    model.get_layer(keras_name("level3.tree1.root.conv"))
    module_path("dla_up_ida_0_proj_1_0")  # "dla_up.ida_0.proj_1.0"
"""

import re

SEPARATOR = "_"
# Module names of the authors' code that contain the separator: the stem, the decoder, and IDA's numbered parts.
_JOINED = re.compile(r"(base_layer|dla_up|(?:ida|proj|up|node)_\d+)(?=_|$)")


def keras_name(path):
    """The keras_dla layer name of the PyTorch module `path` (`level3.tree1.root.conv` -> `level3_tree1_root_conv`)."""
    if not isinstance(path, str) or not path or ".." in path or path.startswith(".") or path.endswith("."):
        raise ValueError(f"A module path is a dotted name such as 'level3.tree1.root.conv'. Received: path={path!r}")
    return path.replace(".", SEPARATOR)


def module_path(name):
    """The PyTorch module path of the keras_dla layer `name` (`"level3_tree1_root_conv"` -> `"level3.tree1.root.conv"`).

    The inverse of `keras_name`. Layers that mirror no PyTorch module (adds, concatenations, paddings) map by the
    same rule to a path that the authors' model does not have.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"A layer name is a non-empty string. Received: name={name!r}")
    parts = []
    position = 0
    while position < len(name):
        joined = _JOINED.match(name, position)
        end = joined.end() if joined else _next_separator(name, position)
        parts.append(name[position:end])
        position = end + 1
    return ".".join(parts)


def _next_separator(name, start):
    end = name.find(SEPARATOR, start)
    return len(name) if end < 0 else end
