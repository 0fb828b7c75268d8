"""DLA-Up: iterative deep aggregation over the backbone's levels for dense prediction (segmentation).

Reference: Fisher Yu, Dequan Wang, Evan Shelhamer, Trevor Darrell,
[Deep Layer Aggregation](https://arxiv.org/abs/1707.06484), CVPR 2018, section 4, and the authors'
`dla_up.py` (`DLASeg`, `DLAUp`, `IDAUp`). Layer names are the PyTorch module paths of `DLASeg` with
underscores for dots (`keras_dla.weights.names`): the backbone is the sub-model `base` (`base.level3.tree1.conv1` is its
layer `level3_tree1_conv1`), the decoder's layers are `dla_up_ida_{i}_{proj,up,node}_{k}`, then `fc_0` and the
frozen bilinear `up`. A state dict of the authors' model therefore loads by name, every key accounted for. Every
layer is one of Keras' own (`keras_dla.resampling` builds the upsampling and the padding from them).
"""

import math
import os

import keras
from keras import layers

from keras_dla import checks, resampling
from keras_dla.models import blocks, configs, dla, fast_paths, imagenet, initialization, variants
from keras_dla.weights import convert, dlaseg

DOWN_RATIOS = (2, 4, 8, 16)
# The deepest level (level5) has stride 32: every level is twice the next only at multiples of 32.
SIZE_MULTIPLE = 32
BASE_FC_NOTE = (
    "the backbone's ImageNet classifier: the authors' DLASeg builds its base with `fc` (return_levels=True) "
    "but never runs it"
)


def _upstream_conv_init():
    # The authors re-initialise every decoder Conv2d with normal(0, sqrt(2 / (k * k * out_channels))).
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def _conv(x, filters, kernel_size, *, name, use_bias=False):
    """A stride-1 conv; "same" pads odd kernels symmetrically, as PyTorch's padding k // 2 does."""
    bias_initializer = "zeros"
    if use_bias:
        # The authors keep PyTorch's default bias: uniform(-1 / sqrt(fan_in), 1 / sqrt(fan_in)).
        bound = 1.0 / math.sqrt(x.shape[-1] * kernel_size * kernel_size)
        bias_initializer = keras.initializers.RandomUniform(-bound, bound)
    conv = layers.Conv2D(
        filters,
        kernel_size,
        padding="same",
        use_bias=use_bias,
        kernel_initializer=_upstream_conv_init(),
        bias_initializer=bias_initializer,
        name=name,
    )
    return initialization.call(conv, x)


def _conv_bn_relu(x, filters, kernel_size, *, name):
    """An `nn.Sequential(Conv2d, BatchNorm2d, ReLU)`: layers `name_0`, `name_1`, `name_2`."""
    x = _conv(x, filters, kernel_size, name=f"{name}_0")
    x = blocks.batch_norm(x, name=f"{name}_1")
    return blocks.relu(x, name=f"{name}_2")


def ida_up(features, filters, up_factors, *, name, node_kernel=3):
    """Iterative deep aggregation (the authors' `IDAUp`) of same-resolution-after-upsampling features.

    Each input k is projected to `filters` channels (`proj_k`, a 1x1 conv-BN-ReLU, skipped when it has
    them already) and upsampled by `up_factors[k]` (`up_k`, a trainable depthwise transposed conv starting
    as bilinear, skipped for a factor of 1). Then `node_k` (a 3x3 conv-BN-ReLU) aggregates the running
    result with input k, from k = 1 on.

    Returns:
        The list of the node outputs, `node_1 ... node_{n-1}`, all at the resolution of `features[0]`.
    """
    upsampled = []
    for k, (x, factor) in enumerate(zip(features, up_factors, strict=True)):
        if x.shape[-1] != filters:
            x = _conv_bn_relu(x, filters, 1, name=f"{name}_proj_{k}")
        if factor > 1:
            x = resampling.depthwise_conv_transpose(x, factor, name=f"{name}_up_{k}")
        upsampled.append(x)
    x = upsampled[0]
    nodes = []
    for k in range(1, len(upsampled)):
        x = layers.Concatenate(name=f"{name}_node_{k}_cat")([x, upsampled[k]])
        x = _conv_bn_relu(x, filters, node_kernel, name=f"{name}_node_{k}")
        nodes.append(x)
    return nodes


def dla_up(features, *, name="dla_up"):
    """The authors' `DLAUp`: IDA stages from the deepest pair of levels toward the shallowest.

    Stage i (`ida_i`) takes level j = n - 2 - i and everything already fused above it, brings all to the
    resolution and width of level j, and its nodes replace the inputs above j, so the shallow levels are
    refined by ever more aggregated deep features.

    Args:
        features: the backbone levels, shallowest first, each of half the resolution of the one before.
        name: the layer-name prefix.

    Returns:
        The aggregated features at the resolution and width of `features[0]`.
    """
    features = list(features)
    scales = [2**i for i in range(len(features))]
    for i in range(len(features) - 1):
        j = len(features) - 2 - i
        factors = [scale // scales[j] for scale in scales[j:]]
        features[j + 1 :] = ida_up(features[j:], features[j].shape[-1], factors, name=f"{name}_ida_{i}")
        scales[j + 1 :] = [scales[j]] * (len(scales) - j - 1)
    return features[-1]


def backbone_architecture(backbone):
    """The architecture of `backbone` (a variant name or a dict of `keras_dla.DLA`'s architecture arguments) and
    the variant it is, or None; see `dla.resolve_architecture`."""
    if isinstance(backbone, str):
        if backbone not in dla.MODEL_CONFIGS:
            raise ValueError(
                f"Unknown DLA backbone; expected one of {list(dla.MODEL_CONFIGS)} or a dict of architecture "
                f"arguments. Received: backbone={backbone!r}"
            )
        return dla.resolve_architecture(backbone)
    if isinstance(backbone, dict):
        return dla.resolve_architecture(**backbone)
    raise ValueError(
        "`backbone` should be a DLA variant name or a dict of `keras_dla.DLA`'s architecture arguments (levels, "
        f"channels, block, ...). Received: backbone={backbone!r}"
    )


def _validate_arguments(classes, down_ratio, weights, activation):
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"`classes` should be a positive integer. Received: classes={classes!r}")
    if not isinstance(down_ratio, int) or isinstance(down_ratio, bool) or down_ratio not in DOWN_RATIOS:
        raise ValueError(f"`down_ratio` should be one of {DOWN_RATIOS}. Received: down_ratio={down_ratio!r}")
    if not (weights in (None, "imagenet") or (isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights))):
        raise ValueError(
            "The `weights` argument should be either `None` (random initialization), `'imagenet'` (an "
            "ImageNet backbone, the authors' `pretrained_base`), or the path to an existing weights file "
            f"(a DLASeg state dict such as .safetensors, or a Keras .weights.h5). Received: weights={weights!r}"
        )
    if activation is not None:
        try:
            keras.activations.get(activation)
        except ValueError:
            raise ValueError(
                f"`activation` should be None (logits) or a Keras activation. Received: activation={activation!r}"
            ) from None


def DLAUp(
    backbone="dla34",
    *,
    classes=19,
    down_ratio=2,
    weights=None,
    input_tensor=None,
    input_shape=None,
    activation="softmax",
    include_preprocessing=False,
    name=None,
):
    """Builds DLA-Up segmentation on any DLA backbone; see `DLA34Up` for the other arguments.

    `backbone` is a variant name (a key of `MODEL_CONFIGS`) or a dict of `keras_dla.DLA`'s architecture
    arguments (`{"levels": ..., "channels": ..., "block": "bottleneck"}`; what it leaves out is DLA-34's).
    `weights="imagenet"` needs a backbone that is a named variant with ImageNet weights.
    """
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "keras_dla builds channels_last models only. "
            f"Received: keras.config.image_data_format()={keras.config.image_data_format()!r}"
        )
    classes, input_shape = dla.as_python_ints(classes), dla.as_python_ints(input_shape)
    dla.check_name(name)
    backbone_config, backbone = backbone_architecture(backbone)
    _validate_arguments(classes, down_ratio, weights, activation)
    if weights == "imagenet" and backbone is None:
        raise ValueError(
            "This backbone is none of the named DLA variants, so it has no ImageNet weights: `weights` should be "
            "`None` or the path to a weights file. Received: weights='imagenet'"
        )
    if input_shape is not None:
        dla._validate_input_shape(input_shape, weights)
    include_preprocessing = checks.flag("include_preprocessing", include_preprocessing)
    img_input, input_shape = dla._make_input(input_tensor, input_shape, False)
    dla._validate_input_shape(input_shape, weights)
    imagenet.check_preprocessing_channels(include_preprocessing, input_shape)

    state_dict = None
    if weights not in (None, "imagenet") and not os.fspath(weights).endswith(".weights.h5"):
        # Read and checked before building, so that a checkpoint of another model fails fast.
        state_dict = dlaseg.read_state_dict(
            os.fspath(weights),
            backbone,
            classes,
            down_ratio,
            configs=dla.MODEL_CONFIGS,
            bottleneck_width=blocks.bottleneck_width,
        )

    # A checkpoint or weights file fills every weight below (or the load raises): no random values to draw.
    with initialization.loaded_next(weights not in (None, "imagenet")):
        first_level = int(math.log2(down_ratio))
        x = imagenet.normalization_layer()(img_input) if include_preprocessing else img_input
        x = resampling.pad_to_multiple(x, SIZE_MULTIPLE, name="pad")  # the normalised image, zero-padded as upstream
        base = dla.DLA(
            **backbone_config,
            include_top=False,
            weights="imagenet" if weights == "imagenet" else None,
            input_shape=(None, None, input_shape[-1]),
            return_levels=True,
            name="base",
        )
        levels = base(x)
        x = dla_up([levels[f"level{i}"] for i in range(first_level, 6)], name="dla_up")
        x = _conv(x, classes, 1, use_bias=True, name="fc_0")
        # Fixed bilinear upsampling to the input resolution, frozen as upstream (`up.weight.requires_grad = False`).
        x = resampling.depthwise_conv_transpose(x, down_ratio, trainable=False, name="up")
        x = resampling.crop_like(x, img_input)
        if activation is not None:
            x = layers.Activation(activation, dtype="float32", name="predictions")(x)

        inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else img_input
        model = fast_paths.attach(keras.Model(inputs, x, name=name or f"{backbone or 'dla'}up"))

    if state_dict is not None:
        dead = tuple(f"base.{prefix}" for prefix in convert.dead_project_keys(backbone_config))
        convert.assign_state_dict(
            model,
            state_dict,
            dead_prefixes=dead,
            ignored_prefixes={"base.fc.": BASE_FC_NOTE},
            source=f"checkpoint {os.path.basename(os.fspath(weights))!r}",
        )
    elif weights not in (None, "imagenet"):
        convert.load_weights(model, weights)  # a Keras .weights.h5 file
    return model


BASE_DOCSTRING = """Instantiates DLA-Up segmentation on the {title} backbone (the authors' `{variant}up`).

    Reference:
    - [Deep Layer Aggregation](https://arxiv.org/abs/1707.06484) (CVPR 2018), section 4

    The model computes what the authors' PyTorch `DLASeg('{variant}', classes, down_ratio)` computes:
    the backbone levels `log2(down_ratio)` to 5 are fused by iterative deep aggregation (`dla_up`), a
    1x1 conv (`fc_0`) scores the classes at stride `down_ratio`, and a frozen bilinear depthwise
    transposed conv (`up`) brings the scores to the input resolution. Layer names are the PyTorch module
    paths with underscores for dots (`keras_dla.weights.names`), so a state dict of the authors' model loads through
    `weights=<path>`; the layers are Keras' own, so a saved `.keras` file loads with plain Keras. Inputs are RGB images
    normalised with `keras_dla.preprocess_input`. Any height and width >= 32 works: the model pads to a
    multiple of 32 inside and crops the output back (the authors' model needs multiples of 32).

    Args:
        classes: number of classes (19 for Cityscapes).
        down_ratio: stride of the aggregated features, one of 2, 4, 8, 16 (2 as upstream).
        weights: `None` (random initialization as upstream), `"imagenet"` (ImageNet backbone, the
            authors' `pretrained_base`), or the path to a weights file: a state dict of the authors'
            `DLASeg` layout (`.safetensors`, ...; a `DataParallel` "module." prefix is removed) or a
            Keras `.weights.h5` file.
        input_tensor: optional Keras tensor (output of `layers.Input()`) to use as image input.
        input_shape: optional shape tuple `(height, width, channels)`, `(None, None, 3)` by default.
        activation: activation of the output, `"softmax"` (per-pixel probabilities) or `None` (logits).
        include_preprocessing: if True, the model takes RGB values in [0, 255] and normalises them inside as
            `keras_dla.preprocess_input` does (no weights: the same weights files load either way).
        name: the model name.

    Returns:
        A `keras.Model` from images `(batch, height, width, channels)` to per-pixel class scores
        `(batch, height, width, classes)`.

    Example:
    ```python
    model = keras_dla.{fn}(classes=19, weights=None)
    scores = model.predict(keras_dla.preprocess_input(images))
    ```
"""


# The arguments of every DLA-Up function, in order, with their defaults.
PARAMETERS = (
    ("classes", 19),
    ("down_ratio", 2),
    ("weights", None),
    ("input_tensor", None),
    ("input_shape", None),
    ("activation", "softmax"),
    ("include_preprocessing", False),
    ("name", None),
)


def _builder(row):
    docstring = BASE_DOCSTRING.format(title=row.title, variant=row.name, fn=row.segmentation_function)
    parameters = tuple((key, f"{row.name}up" if key == "name" else value) for key, value in PARAMETERS)
    return variants.builder(DLAUp, row.name, row.segmentation_function, docstring, parameters, attribute="backbone")


# The variants of the authors' dla_up.py (`DLA34Up`, ...), by backbone; `DLAUp(backbone=...)` builds the others.
UP_BUILDERS = {row.name: _builder(row) for row in configs.VARIANTS if row.segmentation}
globals().update({builder.__name__: builder for builder in UP_BUILDERS.values()})
__all__ = ["DLAUp", "UP_BUILDERS", *(builder.__name__ for builder in UP_BUILDERS.values())]
