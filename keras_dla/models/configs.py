"""The DLA variants as data: blocks and channels per level, block type and width, one row per ImageNet variant.

Apart from `keras_dla.models.dla` (the builder) so that what needs only the table, such as `keras-dla info`, reads it
without importing Keras.
"""

# levels: blocks per level (level0/1 count convs, level2..5 are trees of that depth); channels per level.
# block: "basic" | "bottleneck" | "res2net"; groups / base_width give the bottleneck's grouped 3x3 width
# (see blocks.bottleneck_width); residual_root adds the first child to the root (DLA-102 and deeper).
MODEL_CONFIGS = {
    "dla34": dict(
        levels=(1, 1, 1, 2, 2, 1),
        channels=(16, 32, 64, 128, 256, 512),
        block="basic",
        groups=1,
        base_width=64,
        residual_root=False,
    ),
    "dla46_c": dict(
        levels=(1, 1, 1, 2, 2, 1),
        channels=(16, 32, 64, 64, 128, 256),
        block="bottleneck",
        groups=1,
        base_width=64,
        residual_root=False,
    ),
    "dla46x_c": dict(
        levels=(1, 1, 1, 2, 2, 1),
        channels=(16, 32, 64, 64, 128, 256),
        block="bottleneck",
        groups=32,
        base_width=4,
        residual_root=False,
    ),
    "dla60x_c": dict(
        levels=(1, 1, 1, 2, 3, 1),
        channels=(16, 32, 64, 64, 128, 256),
        block="bottleneck",
        groups=32,
        base_width=4,
        residual_root=False,
    ),
    "dla60": dict(
        levels=(1, 1, 1, 2, 3, 1),
        channels=(16, 32, 128, 256, 512, 1024),
        block="bottleneck",
        groups=1,
        base_width=64,
        residual_root=False,
    ),
    "dla60x": dict(
        levels=(1, 1, 1, 2, 3, 1),
        channels=(16, 32, 128, 256, 512, 1024),
        block="bottleneck",
        groups=32,
        base_width=4,
        residual_root=False,
    ),
    "dla102": dict(
        levels=(1, 1, 1, 3, 4, 1),
        channels=(16, 32, 128, 256, 512, 1024),
        block="bottleneck",
        groups=1,
        base_width=64,
        residual_root=True,
    ),
    "dla102x": dict(
        levels=(1, 1, 1, 3, 4, 1),
        channels=(16, 32, 128, 256, 512, 1024),
        block="bottleneck",
        groups=32,
        base_width=4,
        residual_root=True,
    ),
    "dla102x2": dict(
        levels=(1, 1, 1, 3, 4, 1),
        channels=(16, 32, 128, 256, 512, 1024),
        block="bottleneck",
        groups=64,
        base_width=4,
        residual_root=True,
    ),
    "dla169": dict(
        levels=(1, 1, 2, 3, 5, 1),
        channels=(16, 32, 128, 256, 512, 1024),
        block="bottleneck",
        groups=1,
        base_width=64,
        residual_root=True,
    ),
    "dla60_res2net": dict(
        levels=(1, 1, 1, 2, 3, 1),
        channels=(16, 32, 128, 256, 512, 1024),
        block="res2net",
        groups=1,
        base_width=28,
        scale=4,
        residual_root=False,
    ),
    "dla60_res2next": dict(
        levels=(1, 1, 1, 2, 3, 1),
        channels=(16, 32, 128, 256, 512, 1024),
        block="res2net",
        groups=8,
        base_width=4,
        scale=4,
        residual_root=False,
    ),
}
