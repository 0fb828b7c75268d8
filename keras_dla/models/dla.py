"""DLA classifiers: one generic builder that takes the architecture, and a function per row of `configs.VARIANTS`.

Reference: Fisher Yu, Dequan Wang, Evan Shelhamer, Trevor Darrell,
[Deep Layer Aggregation](https://arxiv.org/abs/1707.06484), CVPR 2018; the authors' `ucbdrive/dla` code
and timm's port. Layer names are the PyTorch module paths with underscores for dots (`fc`,
`level3_tree1_root_conv`, ...; `keras_dla.weights.names` maps them both ways).
"""

import numbers
import os

import keras
from keras import layers

from keras_dla import checks
from keras_dla.models import blocks, configs, fast_paths, imagenet, initialization, variants
from keras_dla.models.configs import MODEL_CONFIGS
from keras_dla.weights import convert, pretrained

LEVEL_NAMES = tuple(f"level{i}" for i in range(6))
MIN_INPUT_SIZE = 32
DEFAULT_SIZE = 224
POOLINGS = (None, "avg", "max")


def _sequence_of_positive_ints(name, value):
    if not isinstance(value, (tuple, list)) or len(value) != len(LEVEL_NAMES):
        raise ValueError(
            f"`{name}` should be {len(LEVEL_NAMES)} positive integers, one per level. Received: {name}={value!r}"
        )
    return tuple(checks.positive_int(f"{name}[{i}]", v) for i, v in enumerate(value))


def resolve_architecture(variant=None, **given):
    """The full architecture (the arguments of `DEFAULT_ARCHITECTURE`) and the variant it is, checked.

    `variant` names a row of `configs.VARIANTS` whose architecture the `given` arguments that are not None
    override; without one, they override the default architecture (DLA-34's). The variant returned is the named
    one whose architecture this is (the one asked for, or any row the arguments happen to equal), or None.
    """
    if variant is not None and variant not in MODEL_CONFIGS:
        raise ValueError(f"Unknown DLA variant; expected one of {list(MODEL_CONFIGS)}. Received: variant={variant!r}")
    unknown = sorted(set(given) - set(configs.DEFAULT_ARCHITECTURE))
    if unknown:
        raise ValueError(
            f"Unknown DLA architecture argument(s) {unknown}; expected some of {list(configs.DEFAULT_ARCHITECTURE)}. "
            f"Received: {given!r}"
        )
    base = MODEL_CONFIGS[variant] if variant is not None else configs.DEFAULT_ARCHITECTURE
    arch = dict(base, **{k: v for k, v in given.items() if v is not None})
    arch["levels"] = _sequence_of_positive_ints("levels", arch["levels"])
    arch["channels"] = _sequence_of_positive_ints("channels", arch["channels"])
    if arch["block"] not in blocks.BLOCKS:
        raise ValueError(f"`block` should be one of {list(blocks.BLOCKS)}. Received: block={arch['block']!r}")
    for key in ("groups", "base_width", "scale"):
        arch[key] = checks.positive_int(key, arch[key])
    arch["residual_root"] = checks.flag("residual_root", arch["residual_root"])
    if arch["block"] != "basic":
        for level in range(2, len(LEVEL_NAMES)):
            width = blocks.bottleneck_width(arch["channels"][level], arch["groups"], arch["base_width"])
            if width < arch["groups"] or width % arch["groups"]:
                raise ValueError(
                    f"The grouped 3x3 conv of level{level} would have {width} channels, not a positive multiple of "
                    f"groups={arch['groups']} (width = channels * base_width / 64 * groups / 2). Received: "
                    f"channels={arch['channels']}, groups={arch['groups']}, base_width={arch['base_width']}"
                )
    if variant is None or arch != MODEL_CONFIGS[variant]:
        variant = next((name for name, row in MODEL_CONFIGS.items() if row == arch), None)
    return arch, variant


def _validate_arguments(variant, include_top, weights, pooling, classes, classifier_activation):
    """keras.applications' argument checks, raised before any layer is built."""
    is_file = isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights)
    if variant is None and not (weights is None or is_file):
        raise ValueError(
            "This architecture is none of the named DLA variants, so it has no pretrained weights: `weights` "
            "should be `None` (random initialization) or the path to an existing weights file. "
            f"Received: weights={weights!r}"
        )
    if not (weights is None or pretrained.find(variant, weights) is not None or is_file):
        raise ValueError(
            "The `weights` argument should be either `None` (random initialization), `'imagenet'` "
            "(pre-training on ImageNet), a tag given to `keras_dla.register_weights`, or the path to an "
            f"existing weights file (.safetensors, .pth or .weights.h5). Received: weights={weights!r}"
        )
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"`classes` should be a positive integer. Received: classes={classes!r}")
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError(
            "If using `weights='imagenet'` with `include_top=True`, `classes` should be 1000. "
            f"Received: classes={classes}"
        )
    if pooling not in POOLINGS:
        raise ValueError(f"`pooling` should be one of {POOLINGS}. Received: pooling={pooling!r}")
    if include_top and classifier_activation is not None:
        try:
            keras.activations.get(classifier_activation)
        except ValueError:
            raise ValueError(
                "`classifier_activation` should be None (logits) or a Keras activation. "
                f"Received: classifier_activation={classifier_activation!r}"
            ) from None
    if weights is not None and classifier_activation not in (None, "softmax"):
        raise ValueError(
            "Only `None` and `'softmax'` are allowed for `classifier_activation` when loading pretrained "
            f"weights. Received: classifier_activation={classifier_activation!r}"
        )


def _validate_input_shape(input_shape, weights):
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValueError(
            "`input_shape` should be a tuple of 3 values (height, width, channels). "
            f"Received: input_shape={input_shape!r}"
        )
    height, width, channels = input_shape
    for size in (height, width):
        if size is not None and (not isinstance(size, int) or size < MIN_INPUT_SIZE):
            raise ValueError(
                f"Input height and width should be None or integers >= {MIN_INPUT_SIZE}. "
                f"Received: input_shape={tuple(input_shape)}"
            )
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"The channel count should be a positive integer. Received: input_shape={tuple(input_shape)}")
    # The ImageNet weights and PyTorch checkpoints are RGB; a .weights.h5 file of the user's own may hold any
    # channel count, which its load checks against the model (`convert.check_input_channels`).
    if weights is not None and channels != 3 and not convert.is_keras_weights_file(weights):
        raise ValueError(
            "Pretrained weights expect 3 input channels (RGB); only a Keras .weights.h5 file may hold other "
            f"counts. Received: input_shape={tuple(input_shape)}, weights={weights!r}"
        )


def as_python_ints(value):
    """`value` with NumPy integers made Python ints (a scalar, or the items of a tuple or list); else unchanged."""

    def one(v):
        return int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v

    return tuple(one(v) for v in value) if isinstance(value, (tuple, list)) else one(value)


def _make_input(input_tensor, input_shape, fixed_size):
    """The model input and its (height, width, channels), as keras.applications derives them.

    With both an `input_tensor` and an `input_shape`, they must agree: the model is built on the tensor, so a
    shape that differs would be ignored (keras.applications ignores it silently), and is refused instead.
    """
    if input_tensor is None:
        if input_shape is None:
            input_shape = (DEFAULT_SIZE, DEFAULT_SIZE, 3) if fixed_size else (None, None, 3)
        return layers.Input(shape=input_shape, name="input"), input_shape
    if len(getattr(input_tensor, "shape", ())) != 4:
        raise ValueError(
            "`input_tensor` should be a 4D image tensor (batch, height, width, channels). "
            f"Received: input_tensor with shape {getattr(input_tensor, 'shape', None)}"
        )
    if not keras.backend.is_keras_tensor(input_tensor):
        raise ValueError(
            "`input_tensor` should be a Keras tensor (keras.Input(...) or a layer's output) to build the model on; "
            "to run a model on data, build it and call `model.predict(data)`. "
            f"Received: input_tensor of type {type(input_tensor).__name__} with shape {tuple(input_tensor.shape)}"
        )
    tensor_shape = tuple(input_tensor.shape[1:])
    if input_shape is not None and tuple(input_shape) != tensor_shape:
        raise ValueError(
            "`input_shape` differs from the shape of `input_tensor`, which the model is built on; give only one of "
            f"them. Received: input_shape={tuple(input_shape)}, input_tensor with shape {tuple(input_tensor.shape)}"
        )
    return input_tensor, tensor_shape


def check_name(name):
    """Refuses, before any layer is built, a model `name` Keras would refuse once the graph is built.

    Keras takes a string without "/" (`keras.Operation`; "/" separates the parts of variable paths). None and
    the empty string stand for the default name.
    """
    if name is not None and (not isinstance(name, str) or "/" in name):
        raise ValueError(f'`name` should be a string without "/". Received: name={name!r}')


def DLA(
    levels=None,
    channels=None,
    block=None,
    *,
    groups=None,
    base_width=None,
    scale=None,
    residual_root=None,
    variant=None,
    include_top=True,
    weights="imagenet",
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    return_levels=False,
    include_preprocessing=False,
    name=None,
):
    """Builds a DLA classifier (or backbone) of any architecture.

    The named variants (`DLA34`, ...) call this with their row of `configs.VARIANTS`; `DLA("dla34", ...)` is
    `DLA(variant="dla34", ...)`. Any architecture argument left None takes the variant's value (DLA-34's without
    a variant), so `DLA(levels=(1, 1, 1, 1, 1, 1), channels=(8, 8, 16, 16, 32, 32), weights=None)` is a small DLA
    of basic blocks.

    Args:
        levels: blocks per level, six positive integers: level0 and level1 count 3x3 convs, level2 to level5 are
            aggregation trees of that depth.
        channels: the output channels of the six levels.
        block: the trees' block, `"basic"` (two 3x3 convs), `"bottleneck"` or `"res2net"`.
        groups: groups of a bottleneck's 3x3 conv (32 in the X variants).
        base_width: with `groups`, the width of a bottleneck's 3x3 conv (`blocks.bottleneck_width`).
        scale: the number of Res2Net splits (res2net blocks only).
        residual_root: whether each tree's root adds its first child back (DLA-102 and deeper).
        variant: a key of `MODEL_CONFIGS` whose architecture the arguments above override.
        weights: as for `DLA34`; pretrained weights (`"imagenet"`, a registered tag) exist only for an
            architecture that is a named variant's.
        include_top, input_tensor, input_shape, pooling, classes, classifier_activation, return_levels,
            include_preprocessing, name: as for `DLA34`.

    Returns:
        A `keras.Model` instance, named `name`, else its variant's name, else "dla".
    """
    if isinstance(levels, str):  # DLA("dla34", ...)
        variant, levels = levels, None
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "keras_dla builds channels_last models only. "
            f"Received: keras.config.image_data_format()={keras.config.image_data_format()!r}"
        )
    config, variant = resolve_architecture(
        variant,
        levels=as_python_ints(levels),
        channels=as_python_ints(channels),
        block=block,
        groups=as_python_ints(groups),
        base_width=as_python_ints(base_width),
        scale=as_python_ints(scale),
        residual_root=residual_root,
    )
    classes, input_shape = as_python_ints(classes), as_python_ints(input_shape)
    include_top, return_levels = checks.flag("include_top", include_top), checks.flag("return_levels", return_levels)
    include_preprocessing = checks.flag("include_preprocessing", include_preprocessing)
    check_name(name)
    _validate_arguments(variant, include_top, weights, pooling, classes, classifier_activation)
    if input_shape is not None:
        _validate_input_shape(input_shape, weights)
    img_input, input_shape = _make_input(input_tensor, input_shape, include_top and not return_levels)
    _validate_input_shape(input_shape, weights)  # the shape may have come from input_tensor
    imagenet.check_preprocessing_channels(include_preprocessing, input_shape)

    levels, channels = config["levels"], config["channels"]
    block_args = dict(groups=config["groups"], base_width=config["base_width"])
    if config["block"] == "res2net":
        block_args["scale"] = config["scale"]

    # Every weight is loaded below when `weights` is given (or the load raises): no random values to draw.
    with initialization.loaded_next(weights is not None):
        x = imagenet.normalization_layer()(img_input) if include_preprocessing else img_input
        x = blocks.conv2d(x, channels[0], 7, name="base_layer_0")
        x = blocks.batch_norm(x, name="base_layer_1")
        x = blocks.relu(x, name="base_layer_2")
        features = {}
        x = features["level0"] = blocks.conv_level(x, channels[0], levels[0], stride=1, name="level0")
        x = features["level1"] = blocks.conv_level(x, channels[1], levels[1], stride=2, name="level1")
        for i in range(2, 6):
            x = features[f"level{i}"] = blocks.tree(
                x,
                levels[i],
                config["block"],
                channels[i - 1],
                channels[i],
                stride=2,
                level_root=i > 2,
                residual_root=config["residual_root"],
                name=f"level{i}",
                block_args=block_args,
            )

        if return_levels:
            outputs = features
        elif include_top:
            x = layers.GlobalAveragePooling2D(name="global_pool")(x)
            x = initialization.call(layers.Dense(classes, name="fc"), x)
            if classifier_activation is not None:
                x = layers.Activation(classifier_activation, dtype="float32", name="predictions")(x)
            outputs = x
        elif pooling == "avg":
            outputs = layers.GlobalAveragePooling2D(name="global_pool")(x)
        elif pooling == "max":
            outputs = layers.GlobalMaxPooling2D(name="global_pool")(x)
        else:
            outputs = x

        inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else img_input
        model = fast_paths.attach(keras.Model(inputs, outputs, name=name or variant or "dla"))

    if variant is not None and pretrained.find(variant, weights) is not None:
        # Fetched, verified and converted once; later loads read the converted cache.
        pretrained.load_pretrained(model, variant, weights)
    elif weights is not None:
        convert.load_weights(model, weights, dead_prefixes=convert.dead_project_keys(config))
    return model


BASE_DOCSTRING = """Instantiates the {title} architecture (Deep Layer Aggregation).

    Reference:
    - [Deep Layer Aggregation](https://arxiv.org/abs/1707.06484) (CVPR 2018)

    The model computes what the authors' PyTorch `{variant}` computes, on every Keras backend: layer
    names are the PyTorch module paths with underscores for dots (`level3_tree1_root_conv`, see
    `keras_dla.weights.names`) and a PyTorch checkpoint in the authors' or timm's layout loads through
    `weights=<path>`. The layers are Keras' own: a saved `.keras` file loads with plain Keras.
    Inputs are RGB images normalised with `keras_dla.preprocess_input` (scale to [0, 1], ImageNet
    mean and std). Any height and width >= 32 works, odd sizes included.

    Args:
        include_top: whether to include the global average pool and the `fc` classifier.
        weights: `None` (random initialization), `"imagenet"`, a tag given to `keras_dla.register_weights`,
            or the path to a weights file:
            a PyTorch checkpoint (`.safetensors`, `.pth`; authors' or timm layout, converted on the fly)
            or a Keras `.weights.h5` file.
        input_tensor: optional Keras tensor (output of `layers.Input()`) to use as image input.
        input_shape: optional shape tuple `(height, width, channels)`; height and width may be `None`.
            Defaults to `(224, 224, 3)` for a classifier (`include_top=True`), else to `(None, None, 3)`.
        pooling: feature pooling when `include_top=False`: `None` (the 4D output of `level5`),
            `"avg"` or `"max"` (a 2D output).
        classes: number of classes, only with `include_top=True` and no pretrained weights.
        classifier_activation: activation of the top layer, `None` to return the logits; only
            `None` or `"softmax"` with pretrained weights.
        include_preprocessing: if True, the model takes RGB values in [0, 255] and normalises them inside as
            `keras_dla.preprocess_input` does (a Keras `Normalization` layer named `preprocessing`, no
            weights: the same weights files load either way); needs 3 input channels.
        return_levels: if True, the model returns a dict `{{"level0": ..., "level5": ...}}` of the
            six level features (strides 1, 2, 4, 8, 16, 32), as DLA-Up consumes them; `include_top`
            and `pooling` are then not used.
        name: the model name.

    Returns:
        A `keras.Model` instance.

    Example:
    ```python
    model = keras_dla.{fn}(weights=None, input_shape=(None, None, 3), include_top=False)
    ```
"""


# The arguments of every classifier function (keras.applications' and ours), in order, with their defaults.
PARAMETERS = (
    ("include_top", True),
    ("weights", "imagenet"),
    ("input_tensor", None),
    ("input_shape", None),
    ("pooling", None),
    ("classes", 1000),
    ("classifier_activation", "softmax"),
    ("name", None),
    ("return_levels", False),
    ("include_preprocessing", False),
)


def _builder(row):
    docstring = BASE_DOCSTRING.format(title=row.title, variant=row.name, fn=row.function)
    parameters = tuple((key, row.name if key == "name" else value) for key, value in PARAMETERS)
    return variants.builder(DLA, row.name, row.function, docstring, parameters)


# The builder function of each variant, in the order of the paper's table: `BUILDERS["dla34"]` is `DLA34`.
BUILDERS = {row.name: _builder(row) for row in configs.VARIANTS}
globals().update({builder.__name__: builder for builder in BUILDERS.values()})
__all__ = ["DLA", "MODEL_CONFIGS", "BUILDERS", *(builder.__name__ for builder in BUILDERS.values())]
