"""DLA ImageNet classifiers: the config table, one generic builder and a thin function per variant.

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
from keras_dla.models import blocks, fast_paths, imagenet
from keras_dla.models.configs import MODEL_CONFIGS  # the table, re-exported here as keras_dla.models.dla.MODEL_CONFIGS
from keras_dla.weights import convert, pretrained

LEVEL_NAMES = tuple(f"level{i}" for i in range(6))
MIN_INPUT_SIZE = 32
DEFAULT_SIZE = 224
POOLINGS = (None, "avg", "max")


def _validate_arguments(variant, include_top, weights, pooling, classes, classifier_activation):
    """keras.applications' argument checks, raised before any layer is built."""
    if variant not in MODEL_CONFIGS:
        raise ValueError(f"Unknown DLA variant; expected one of {sorted(MODEL_CONFIGS)}. Received: variant={variant!r}")
    is_file = isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights)
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
    variant,
    *,
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
    """Builds any DLA variant of `MODEL_CONFIGS`; see `DLA34` for the arguments."""
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "keras_dla builds channels_last models only. "
            f"Received: keras.config.image_data_format()={keras.config.image_data_format()!r}"
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
    config = MODEL_CONFIGS[variant]

    levels, channels = config["levels"], config["channels"]
    block_args = dict(groups=config["groups"], base_width=config["base_width"])
    if "scale" in config:
        block_args["scale"] = config["scale"]

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
        x = layers.Dense(classes, name="fc")(x)
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
    model = fast_paths.attach(keras.Model(inputs, outputs, name=name or variant))

    if pretrained.find(variant, weights) is not None:
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


def _variant(fn_name, variant, title):
    def builder(
        include_top=True,
        weights="imagenet",
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=1000,
        classifier_activation="softmax",
        name=variant,
        return_levels=False,
        include_preprocessing=False,
    ):
        return DLA(
            variant,
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            return_levels=return_levels,
            include_preprocessing=include_preprocessing,
            name=name,
        )

    builder.__name__ = builder.__qualname__ = fn_name
    builder.__doc__ = BASE_DOCSTRING.format(title=title, variant=variant, fn=fn_name)
    builder.__module__ = __name__
    return builder


DLA34 = _variant("DLA34", "dla34", "DLA-34")
DLA46C = _variant("DLA46C", "dla46_c", "DLA-46-C")
DLA46XC = _variant("DLA46XC", "dla46x_c", "DLA-X-46-C")
DLA60XC = _variant("DLA60XC", "dla60x_c", "DLA-X-60-C")
DLA60 = _variant("DLA60", "dla60", "DLA-60")
DLA60X = _variant("DLA60X", "dla60x", "DLA-X-60")
DLA102 = _variant("DLA102", "dla102", "DLA-102")
DLA102X = _variant("DLA102X", "dla102x", "DLA-X-102")
DLA102X2 = _variant("DLA102X2", "dla102x2", "DLA-X-102 64")
DLA169 = _variant("DLA169", "dla169", "DLA-169")
DLA60Res2Net = _variant("DLA60Res2Net", "dla60_res2net", "DLA-60 Res2Net")
DLA60Res2NeXt = _variant("DLA60Res2NeXt", "dla60_res2next", "DLA-60 Res2NeXt")

# Builder function of each variant, in the order of the paper's table.
BUILDERS = {
    "dla34": DLA34,
    "dla46_c": DLA46C,
    "dla46x_c": DLA46XC,
    "dla60x_c": DLA60XC,
    "dla60": DLA60,
    "dla60x": DLA60X,
    "dla102": DLA102,
    "dla102x": DLA102X,
    "dla102x2": DLA102X2,
    "dla169": DLA169,
    "dla60_res2net": DLA60Res2Net,
    "dla60_res2next": DLA60Res2NeXt,
}
