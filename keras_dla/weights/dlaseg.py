"""State dicts of the authors' `DLASeg` (ucbdrive/dla `dla_up.py`): read and checked before a DLA-Up model is built.

A DLASeg checkpoint names its backbone nowhere, so `checkpoint_backbone` reads it from the `base.*` keys: the tree
depths and block kind from the key names, the level widths and the grouped 3x3 width from the shapes.
`read_state_dict` refuses, one sentence each, a checkpoint of another layout, class count, backbone or down ratio,
so that such a file fails before any layer is built. The caller passes the variants' architectures: this module
imports no model module.
"""

import os
import re

from keras_dla.weights import readers

DATAPARALLEL_PREFIX = "module."  # what torch.nn.DataParallel, which the authors train with, prepends to keys


def checkpoint_backbone(state_dict, configs, bottleneck_width):
    """The variant of `configs` whose backbone the `base.*` keys of a DLASeg state dict hold, or None.

    Args:
        state_dict: `{key: array}` in the DLASeg layout (keys `base.level0.0.weight`, ...).
        configs: `{variant: config}` with the keys of `keras_dla.MODEL_CONFIGS` (`levels`, `channels`, `block`,
            `groups`, `base_width`).
        bottleneck_width: `(filters, groups, base_width) -> channels` of a bottleneck's grouped 3x3 conv
            (`keras_dla.models.blocks.bottleneck_width`).
    """
    levels, channels = [], []
    for i in range(6):
        prefix = f"base.level{i}."
        keys = [k for k in state_dict if k.startswith(prefix) and k.endswith(".weight")]
        if i < 2:
            convs = [k for k in keys if re.fullmatch(rf"base\.level{i}\.\d+\.weight", k) and state_dict[k].ndim == 4]
            if not convs:
                return None
            levels.append(len(convs))
            channels.append(state_dict[convs[0]].shape[0])
        else:
            roots = [k for k in keys if k.endswith("root.conv.weight")]
            if not roots:
                return None
            levels.append(max(k.count(".tree") for k in keys if ".project." not in k))
            channels.append(state_dict[roots[0]].shape[0])
    names = " ".join(state_dict)
    block = "res2net" if ".convs." in names else "bottleneck" if ".conv3." in names else "basic"
    mid_keys = [k for k in state_dict if re.fullmatch(r"base\.level2\.(tree\d\.)+(conv2|convs\.0)\.weight", k)]
    mid = state_dict[mid_keys[0]].shape[:2] if mid_keys else None
    for variant, config in configs.items():
        if (tuple(levels), tuple(channels), block) != (config["levels"], config["channels"], config["block"]):
            continue
        if block == "basic":
            expected_mid = (config["channels"][2], config["channels"][2])
        else:
            width = bottleneck_width(config["channels"][2], config["groups"], config["base_width"])
            expected_mid = (width, width // config["groups"])
        if mid is not None and tuple(mid) == expected_mid:
            return variant
    return None


def read_state_dict(path, backbone, classes, down_ratio, *, configs, bottleneck_width):
    """Reads a DLASeg state dict and checks that it fits the model before any tensor is copied.

    A `DataParallel` "module." prefix on every key is removed.

    Args:
        path: the checkpoint (`.pth`, `.safetensors`, ...; `keras_dla.weights.readers`).
        backbone: the variant the model is built on.
        classes: the model's class count.
        down_ratio: the model's output stride before the final upsampling.
        configs, bottleneck_width: the variants' architectures, as `checkpoint_backbone` takes them.

    Returns:
        `{key: array}`, the keys in the DLASeg layout.

    Raises:
        ValueError: the checkpoint is not of the DLASeg layout, or of another class count, backbone or down ratio.
    """
    state_dict = readers.read_state_dict(path)
    if state_dict and all(key.startswith(DATAPARALLEL_PREFIX) for key in state_dict):
        state_dict = {key[len(DATAPARALLEL_PREFIX) :]: value for key, value in state_dict.items()}
    if "fc.0.weight" not in state_dict or not any(key.startswith("base.") for key in state_dict):
        raise ValueError(
            "Not a checkpoint of the authors' DLASeg layout (keys `base.*`, `dla_up.*`, `fc.0.*`, `up.weight`); "
            f"for a backbone checkpoint use `weights=None` and load it into the backbone. Received: weights={path!r}"
        )
    checkpoint_classes = state_dict["fc.0.weight"].shape[0]
    if checkpoint_classes != classes:
        raise ValueError(
            f"The checkpoint {os.path.basename(path)!r} predicts {checkpoint_classes} classes; build the model "
            f"with classes={checkpoint_classes}. Received: classes={classes}"
        )
    held_backbone = checkpoint_backbone(state_dict, configs, bottleneck_width)
    if held_backbone != backbone:
        held = f"a {held_backbone} backbone" if held_backbone else "a backbone that is no DLA variant"
        raise ValueError(
            f"The checkpoint {os.path.basename(path)!r} holds {held}, not {backbone}. Received: backbone={backbone!r}"
        )
    if "up.weight" in state_dict:
        checkpoint_ratio = state_dict["up.weight"].shape[-1] // 2
        if checkpoint_ratio != down_ratio:
            raise ValueError(
                f"The checkpoint {os.path.basename(path)!r} was built with down_ratio={checkpoint_ratio}. "
                f"Received: down_ratio={down_ratio}"
            )
    return state_dict
