"""The building blocks of DLA: conv-BN-ReLU, residual blocks, aggregation roots and HDA trees.

Every function here takes a symbolic Keras tensor and returns one, creating Keras' own layers named after the
PyTorch module paths of the authors' `dla.py` (and timm's `dla.py`) with underscores for dots
(`level3.tree1.root.conv` -> `level3_tree1_root_conv`, see `keras_dla.weights.names`). The PyTorch checkpoint key of a
weight is then `<module path>.<tensor name>`, which is what `convert.py` walks.

Numerics follow PyTorch: BatchNorm epsilon 1e-5, and strided convolutions padded symmetrically with an
explicit `ZeroPadding2D` (Keras `padding="same"` pads bottom/right only at stride 2). Stride-1 convolutions
with odd kernels pad symmetrically under "same" already.
"""

import math

from keras import layers, ops

from keras_dla.models import initialization

# PyTorch's BatchNorm2d defaults; Keras' own default epsilon is 1e-3.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # = 1 - PyTorch's momentum of 0.1


def conv2d(x, filters, kernel_size, *, stride=1, groups=1, use_bias=False, name):
    """A Conv2D with PyTorch's symmetric padding of (kernel_size - 1) // 2 on every side."""
    pad = (kernel_size - 1) // 2
    padding = "same"
    if stride > 1 and pad > 0:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    conv = layers.Conv2D(
        filters, kernel_size, strides=stride, padding=padding, groups=groups, use_bias=use_bias, name=name
    )
    return initialization.call(conv, x)


def batch_norm(x, *, name):
    """A Keras `BatchNormalization` with PyTorch's epsilon and momentum."""
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def relu(x, *, name):
    return layers.ReLU(name=name)(x)


def conv_level(x, filters, convs, *, stride, name):
    """`level0` / `level1`: `convs` x (3x3 conv, BN, ReLU), the first with `stride`.

    Mirrors an `nn.Sequential` of [conv, bn, relu] * convs, so the layers are `name_0`, `name_1`, ...
    """
    for i in range(convs):
        x = conv2d(x, filters, 3, stride=stride if i == 0 else 1, name=f"{name}_{3 * i}")
        x = batch_norm(x, name=f"{name}_{3 * i + 1}")
        x = relu(x, name=f"{name}_{3 * i + 2}")
    return x


def bottleneck_width(filters, groups, base_width):
    """Channels of a bottleneck's grouped 3x3 conv (timm's formula; equals the authors' for every variant)."""
    return int(math.floor(filters * (base_width / 64)) * groups) // 2


def _residual_out(x, shortcut, *, name):
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return relu(x, name=f"{name}_relu")


def basic_block(x, shortcut, filters, *, stride, name, **_):
    """Two 3x3 convs; the tree supplies the shortcut (a projection of the downsampled input)."""
    y = conv2d(x, filters, 3, stride=stride, name=f"{name}_conv1")
    y = batch_norm(y, name=f"{name}_bn1")
    y = relu(y, name=f"{name}_relu1")
    y = conv2d(y, filters, 3, name=f"{name}_conv2")
    y = batch_norm(y, name=f"{name}_bn2")
    return _residual_out(y, shortcut, name=name)


def bottleneck_block(x, shortcut, filters, *, stride, groups, base_width, name, **_):
    """1x1 reduce, 3x3 grouped conv carrying the stride, 1x1 expand (DLA and DLA-X)."""
    width = bottleneck_width(filters, groups, base_width)
    y = conv2d(x, width, 1, name=f"{name}_conv1")
    y = batch_norm(y, name=f"{name}_bn1")
    y = relu(y, name=f"{name}_relu1")
    y = conv2d(y, width, 3, stride=stride, groups=groups, name=f"{name}_conv2")
    y = batch_norm(y, name=f"{name}_bn2")
    y = relu(y, name=f"{name}_relu2")
    y = conv2d(y, filters, 1, name=f"{name}_conv3")
    y = batch_norm(y, name=f"{name}_bn3")
    return _residual_out(y, shortcut, name=name)


def res2net_block(x, shortcut, filters, *, stride, groups, base_width, scale, name, **_):
    """Res2Net bottleneck: the 3x3 stage works on `scale` channel splits, each fed the previous one.

    In the first (strided) block the splits are independent and the last split is average-pooled;
    PyTorch's `AvgPool2d(3, stride, padding=1)` counts the zero padding in the mean, which
    `ZeroPadding2D` followed by a "valid" pool reproduces.
    """
    width = bottleneck_width(filters, groups, base_width)
    is_first = stride > 1
    y = conv2d(x, width * scale, 1, name=f"{name}_conv1")
    y = batch_norm(y, name=f"{name}_bn1")
    y = relu(y, name=f"{name}_relu1")
    splits = ops.split(y, scale, axis=-1)
    outputs = []
    sp = None
    for i in range(max(1, scale - 1)):
        sp = splits[i] if i == 0 or is_first else layers.Add(name=f"{name}_sum{i}")([sp, splits[i]])
        sp = conv2d(sp, width, 3, stride=stride, groups=groups, name=f"{name}_convs_{i}")
        sp = batch_norm(sp, name=f"{name}_bns_{i}")
        sp = relu(sp, name=f"{name}_relu_s{i}")
        outputs.append(sp)
    if scale > 1:
        last = splits[-1]
        if is_first:
            last = layers.ZeroPadding2D(1, name=f"{name}_pool_pad")(last)
            last = layers.AveragePooling2D(3, strides=stride, name=f"{name}_pool")(last)
        outputs.append(last)
    y = layers.Concatenate(name=f"{name}_cat")(outputs)
    y = conv2d(y, filters, 1, name=f"{name}_conv3")
    y = batch_norm(y, name=f"{name}_bn3")
    return _residual_out(y, shortcut, name=name)


BLOCKS = {
    "basic": basic_block,
    "bottleneck": bottleneck_block,
    "res2net": res2net_block,
}


def root(children, filters, *, residual, name):
    """Aggregation node: 1x1 conv over the concatenated children, BN, (+ first child), ReLU."""
    x = layers.Concatenate(name=f"{name}_cat")(children)
    x = conv2d(x, filters, 1, name=f"{name}_conv")
    x = batch_norm(x, name=f"{name}_bn")
    if residual:
        x = layers.Add(name=f"{name}_add")([x, children[0]])
    return relu(x, name=f"{name}_relu")


def tree(
    x,
    levels,
    block,
    in_channels,
    out_channels,
    *,
    stride,
    level_root,
    residual_root,
    name,
    block_args,
    children=None,
):
    """Hierarchical deep aggregation (the authors' `Tree`), built recursively.

    The shortcut of the first block is the max-pooled input, projected by a 1x1 conv-BN when the width
    changes. PyTorch's `MaxPool2d(2)` floors odd sizes while the strided 3x3 conv beside it rounds up, so
    the authors' graph only runs at sizes 32k and 32k-1; "same" pooling rounds up like the conv and equals
    the floor version whenever the size is even, which is every size the reference can run.

    The authors' code also builds `project` for trees of more than one level, where it is never used (see
    `convert.DEAD_KEYS_NOTE`): it is not built here.
    """
    children = [] if children is None else children
    bottom = x
    if stride > 1:
        bottom = layers.MaxPooling2D(stride, strides=stride, padding="same", name=f"{name}_downsample")(x)
    if level_root:
        children.append(bottom)
    if levels == 1:
        shortcut = bottom
        if in_channels != out_channels:
            shortcut = conv2d(bottom, out_channels, 1, name=f"{name}_project_0")
            shortcut = batch_norm(shortcut, name=f"{name}_project_1")
        block_fn = BLOCKS[block]
        x1 = block_fn(x, shortcut, out_channels, stride=stride, name=f"{name}_tree1", **block_args)
        x2 = block_fn(x1, x1, out_channels, stride=1, name=f"{name}_tree2", **block_args)
        return root([x2, x1, *children], out_channels, residual=residual_root, name=f"{name}_root")
    x1 = tree(
        x,
        levels - 1,
        block,
        in_channels,
        out_channels,
        stride=stride,
        level_root=False,
        residual_root=residual_root,
        name=f"{name}_tree1",
        block_args=block_args,
    )
    children.append(x1)
    return tree(
        x1,
        levels - 1,
        block,
        out_channels,
        out_channels,
        stride=1,
        level_root=False,
        residual_root=residual_root,
        name=f"{name}_tree2",
        block_args=block_args,
        children=children,
    )
