"""The variant lists the tests parametrise over, defined once (from `keras_dla.models.configs.VARIANTS`)."""

import pytest

from keras_dla.models.configs import VARIANTS

ALL = [row.name for row in VARIANTS]
SEGMENTATION = [row.name for row in VARIANTS if row.segmentation]
# DLA-34 and the compact variants build and convert in seconds; the wide and deep ones take most of the suite's
# time. Checks that are about numbers run on every variant; checks repeated per variant run on this tier in the
# default run, on the rest with `-m slow` (or with no marker filter: `bash tools/test.sh tests`).
LIGHT = ("dla34", "dla46_c", "dla46x_c", "dla60x_c")
# One variant of each block: basic, bottleneck, grouped (ResNeXt) bottleneck, Res2Net.
ONE_PER_BLOCK = ("dla34", "dla46_c", "dla46x_c", "dla60_res2net")


def tier(default_run, variants=ALL):
    """`variants` as pytest parameters, those outside `default_run` marked slow."""
    return [v if v in default_run else pytest.param(v, marks=pytest.mark.slow) for v in variants]
