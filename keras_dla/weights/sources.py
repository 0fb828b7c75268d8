"""Where pretrained weights come from: the table of published checkpoints, the tags users add, the cache folder.

`PRETRAINED[variant]["imagenet"]` lists the places a variant's ImageNet weights can be fetched from, in
the order they are tried: the authors' file, its re-hosted copies (Open Model Zoo, timm's GitHub release,
the Hugging Face hub), each with the sha256 it is verified against (`keras_dla.weights.download`): the full
digest where the source publishes one (the Hugging Face hub sends it with the file), else the sha256 prefix
the file name carries (PyTorch hub convention, `dla34-ba72cf86.pth`). `register_weights` adds a user's own
tag to the same machinery. Downloads and converted weights live in `cache_dir()`.
"""

import dataclasses
import os
import re
import tempfile
import urllib.parse


class WeightsWarning(UserWarning):
    """A weights source or cached file was unusable (unreachable, wrong hash, corrupt) and was skipped."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One place a weights file can be fetched from.

    Attributes:
        url: where to download it (`https://`, `http://` or `file://`) or a local path.
        filename: its name in the cache (a mirror holds it under the last part of `url`).
        sha256: the full hex digest, or the prefix the file name carries; `None` when the host publishes
            the digest with the download (the Hugging Face hub's `X-Linked-Etag` header).
        host: who serves it, for messages and the README.
        mirrored: whether `KERAS_DLA_WEIGHTS_MIRROR` is asked for the file before `url`.
    """

    url: str
    filename: str
    sha256: str | None
    host: str
    mirrored: bool = True


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A variant's weights for one tag, with the upstream figures `keras-dla list` prints."""

    variant: str
    tag: str
    sources: tuple
    top1: float | None = None
    params: int | None = None
    gmacs: float | None = None


_AUTHORS = "http://dl.yf.io/dla/models/imagenet/{name}-{hash}.pth"
_OPENVINO = "https://storage.openvinotoolkit.org/repositories/open_model_zoo/public/2022.1/dla-34/{name}-{hash}.pth"
_TIMM_RELEASE = "https://github.com/rwightman/pytorch-image-models/releases/download/{release}/{file}"
_HF_HUB = "https://huggingface.co/timm/{name}.in1k/resolve/main/model.safetensors"

# variant: (authors' hash, timm release file, params of the Keras / timm graph, GMACs @224, top-1 of the
# authors' weights in timm's results CSV). The 8 hex digits of a file name are its sha256 prefix.
# Sources: ucbdrive/dla `dla.py` (the authors' files), timm `dla.py` (its release files) and timm's results CSV.
_IMAGENET = {
    "dla34": ("ba72cf86", ("v0.1-weights", "dla34-2b83ff04.pth"), 15_742_104, 3.07, 74.632),
    "dla46_c": ("2bfd52c3", ("v0.1-weights", "dla46_c-9b68d685.pth"), 1_301_400, 0.58, 64.880),
    "dla46x_c": ("d761bae7", ("v0.1-weights", "dla46x_c-6bc5b5c8.pth"), 1_068_440, 0.54, 66.008),
    "dla60x_c": ("b870c45c", ("v0.1-weights", "dla60x_c-a38e054a.pth"), 1_319_832, 0.59, 67.928),
    "dla60": ("24839fc4", ("v0.1-weights", "dla60-9e91bd4d.pth"), 22_036_632, 4.26, 77.036),
    "dla60x": ("d15cacda", ("v0.1-weights", "dla60x-6818f6bb.pth"), 17_352_344, 3.54, 78.234),
    "dla102": ("d94d9790", ("v0.1-weights", "dla102-21f57b54.pth"), 33_268_888, 7.19, 78.016),
    "dla102x": ("ad62be81", ("v0.1-weights", "dla102x-7ec0aa2a.pth"), 26_309_272, 5.89, 78.516),
    "dla102x2": ("262837b6", ("v0.1-weights", "dla102x2-ac4239c4.pth"), 41_282_200, 9.34, 79.448),
    "dla169": ("0914e092", ("v0.1-weights", "dla169-7c767967.pth"), 53_389_720, 11.60, 78.702),
    # DLA-60 with Res2Net blocks: weights by the Res2Net authors, published through timm's release only.
    "dla60_res2net": (None, ("v0.1-res2net", "res2net_dla60_4s-d88db7f9.pth"), 20_848_072, 4.15, 78.480),
    "dla60_res2next": (None, ("v0.1-res2net", "res2next_dla60_4s-d327927b.pth"), 17_032_984, 3.49, 78.488),
}


def _hash_in_name(filename):
    return filename.rsplit("-", 1)[1].split(".", 1)[0]


def _imagenet_sources(variant, authors_hash, timm_file):
    release, file = timm_file
    sources = []
    if authors_hash:
        filename = f"{variant}-{authors_hash}.pth"
        sources.append(Source(_AUTHORS.format(name=variant, hash=authors_hash), filename, authors_hash, "authors"))
        if variant == "dla34":  # the same file, re-hosted by Open Model Zoo
            sources.append(
                Source(_OPENVINO.format(name=variant, hash=authors_hash), filename, authors_hash, "OpenVINO")
            )
    sources.append(Source(_TIMM_RELEASE.format(release=release, file=file), file, _hash_in_name(file), "timm release"))
    # The hub publishes each file's full sha256 with it; no copy of it can be verified without the hub.
    sources.append(Source(_HF_HUB.format(name=variant), f"{variant}.in1k.safetensors", None, "huggingface", False))
    return tuple(sources)


PRETRAINED = {
    variant: {
        "imagenet": Pretrained(
            variant, "imagenet", _imagenet_sources(variant, authors, timm), top1=top1, params=params, gmacs=gmacs
        )
    }
    for variant, (authors, timm, params, gmacs, top1) in _IMAGENET.items()
}

# Tags added by `register_weights`, {(variant, tag): Pretrained}; kept apart from the built-in table.
_REGISTERED = {}


def cache_dir():
    """`$KERAS_HOME/models`, or `~/.keras/models`, where downloads and converted weights live.

    As in Keras, an unwritable home falls back to `<tmp>/.keras/models`.
    """
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    directory = os.path.join(home, "models")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        directory = os.path.join(tempfile.gettempdir(), ".keras", "models")
        os.makedirs(directory, exist_ok=True)
    return directory


_SUFFIXES = (".weights.h5", ".safetensors", ".pth", ".pt", ".bin")


def file_suffix(name):
    """The weights-file suffix of `name` (`.pth`, `.weights.h5`, ...), or None."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def _variant_of(model):
    """The variant named by `model`: a variant name, or a classifier builder (its `variant` attribute)."""
    variant = model if isinstance(model, str) else getattr(model, "variant", None)
    # Every variant has an entry in the weights table (tests/test_weights.py checks it against MODEL_CONFIGS).
    if isinstance(variant, str) and variant in PRETRAINED:
        return variant
    raise ValueError(
        f"`model` should be a DLA variant name ({', '.join(PRETRAINED)}) or its builder (keras_dla.DLA34). "
        f"Received: model={model!r}"
    )


def register_weights(model, tag, url, sha256):
    """Makes `keras_dla.<Model>(weights=tag)` load your own weights, fetched, verified and cached like ImageNet's.

    Args:
        model: the variant, as a name (`"dla34"`) or its builder (`keras_dla.DLA34`).
        tag: the name to pass as `weights=`; any string but `"imagenet"`.
        url: where the file is: `https://`, `http://`, `file://` or a local path. A PyTorch checkpoint
            (`.pth`, `.pt`, `.bin`, `.safetensors`; authors' or timm layout, any class count) or a Keras
            `.weights.h5` file saved from the same model.
        sha256: the file's full sha256 hex digest (64 characters).

    Example:
    ```python
    keras_dla.register_weights("dla34", "birds", "https://example.org/dla34-birds.pth", "3f5c...")
    model = keras_dla.DLA34(weights="birds", classes=200)
    ```
    """
    variant = _variant_of(model)
    if not isinstance(tag, str) or not re.fullmatch(r"[\w.-]+", tag) or tag == "imagenet":
        # The tag becomes part of the cache file name.
        raise ValueError(
            f"`tag` should be a name of letters, digits, '_', '.' or '-', other than 'imagenet'. Received: tag={tag!r}"
        )
    if not isinstance(url, (str, os.PathLike)) or not os.fspath(url):
        raise ValueError(f"`url` should be a URL or a file path. Received: url={url!r}")
    url = os.fspath(url)
    if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ValueError(f"`sha256` should be the file's full sha256 as 64 hex digits. Received: sha256={sha256!r}")
    suffix = file_suffix(urllib.parse.urlparse(url).path or url)
    if suffix is None:
        raise ValueError(f"`url` should name a {', '.join(_SUFFIXES)} file. Received: url={url!r}")
    sha256 = sha256.lower()
    filename = f"{variant}-{tag}-{sha256[:8]}{suffix}"
    source = Source(url, filename, sha256, "registered")
    _REGISTERED[(variant, tag)] = Pretrained(variant, tag, (source,))


def find(variant, tag):
    """The `Pretrained` entry of `variant` for `tag`, or None."""
    if not isinstance(tag, str):
        return None
    return _REGISTERED.get((variant, tag)) or PRETRAINED.get(variant, {}).get(tag)


def tags_of(variant):
    """`{tag: Pretrained}` of `variant`: the built-in table's and those `register_weights` added."""
    return {**PRETRAINED.get(variant, {}), **{t: e for (v, t), e in _REGISTERED.items() if v == variant}}
