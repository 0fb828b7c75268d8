"""The DLA variants as data: one row per variant, holding only what differs from the default architecture.

Everything that lists the variants reads `VARIANTS`: the builders (`keras_dla.DLA34`, ..., `keras_dla.DLA34Up`,
...), `keras_dla`'s public names, the command line and the tests; the weights table (`keras_dla.weights`) is keyed
by the same names. Adding a variant is one row here and, for pretrained weights, one entry in that table.

The module imports nothing (no Keras), so that what needs only the table, such as `keras-dla info`, reads it at once.
"""

import dataclasses

# The architecture arguments of `keras_dla.DLA` and their defaults (DLA-34's, the authors' `dla34`):
# levels: blocks per level (level0 and level1 count convs, level2 to level5 are trees of that depth);
# channels: the output channels of each level; block: "basic", "bottleneck" or "res2net"; groups and base_width
# give the grouped 3x3 width of a bottleneck (`blocks.bottleneck_width`); scale: the Res2Net splits (res2net only);
# residual_root: the root adds its first child back (DLA-102 and deeper).
DEFAULT_ARCHITECTURE = dict(
    levels=(1, 1, 1, 2, 2, 1),
    channels=(16, 32, 64, 128, 256, 512),
    block="basic",
    groups=1,
    base_width=64,
    scale=4,
    residual_root=False,
)

# Shared by several rows (ucbdrive/dla `dla.py`; timm `dla.py` for the Res2Net variants).
_COMPACT = (16, 32, 64, 64, 128, 256)  # the "-C" (compact) variants
_WIDE = (16, 32, 128, 256, 512, 1024)  # DLA-60 and deeper
_LEVELS_60 = (1, 1, 1, 2, 3, 1)
_LEVELS_102 = (1, 1, 1, 3, 4, 1)
_BOTTLENECK = dict(block="bottleneck")
_X = dict(block="bottleneck", groups=32, base_width=4)  # ResNeXt bottlenecks (the "X" variants)


@dataclasses.dataclass(frozen=True)
class Variant:
    """A named DLA: `name` is the authors' and timm's (and the weights table's key), `function` the builder's
    (`keras_dla.DLA34`), `title` the paper's; `architecture` holds what differs from `DEFAULT_ARCHITECTURE`;
    `segmentation` gives it a DLA-Up builder (`keras_dla.DLA34Up`), as the authors' `dla_up.py` does."""

    name: str
    function: str
    title: str
    architecture: dict = dataclasses.field(default_factory=dict)
    segmentation: bool = False

    @property
    def segmentation_function(self):
        """The DLA-Up builder's name (`DLA34Up`), the authors' `dla34up`."""
        return f"{self.function}Up"


VARIANTS = (
    Variant("dla34", "DLA34", "DLA-34", segmentation=True),
    Variant("dla46_c", "DLA46C", "DLA-46-C", dict(_BOTTLENECK, channels=_COMPACT)),
    Variant("dla46x_c", "DLA46XC", "DLA-X-46-C", dict(_X, channels=_COMPACT)),
    Variant("dla60x_c", "DLA60XC", "DLA-X-60-C", dict(_X, levels=_LEVELS_60, channels=_COMPACT)),
    Variant("dla60", "DLA60", "DLA-60", dict(_BOTTLENECK, levels=_LEVELS_60, channels=_WIDE), segmentation=True),
    Variant("dla60x", "DLA60X", "DLA-X-60", dict(_X, levels=_LEVELS_60, channels=_WIDE)),
    Variant(
        "dla102",
        "DLA102",
        "DLA-102",
        dict(_BOTTLENECK, levels=_LEVELS_102, channels=_WIDE, residual_root=True),
        segmentation=True,
    ),
    Variant("dla102x", "DLA102X", "DLA-X-102", dict(_X, levels=_LEVELS_102, channels=_WIDE, residual_root=True)),
    Variant(
        "dla102x2",
        "DLA102X2",
        "DLA-X-102 64",
        dict(_X, groups=64, levels=_LEVELS_102, channels=_WIDE, residual_root=True),
    ),
    Variant(
        "dla169",
        "DLA169",
        "DLA-169",
        dict(_BOTTLENECK, levels=(1, 1, 2, 3, 5, 1), channels=_WIDE, residual_root=True),
        segmentation=True,
    ),
    Variant(
        "dla60_res2net",
        "DLA60Res2Net",
        "DLA-60 Res2Net",
        dict(block="res2net", base_width=28, levels=_LEVELS_60, channels=_WIDE),
    ),
    Variant(
        "dla60_res2next",
        "DLA60Res2NeXt",
        "DLA-60 Res2NeXt",
        dict(block="res2net", groups=8, base_width=4, levels=_LEVELS_60, channels=_WIDE),
    ),
)

# The full architecture of each variant, by name.
MODEL_CONFIGS = {variant.name: {**DEFAULT_ARCHITECTURE, **variant.architecture} for variant in VARIANTS}
