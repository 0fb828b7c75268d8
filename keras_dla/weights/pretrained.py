"""Pretrained weights into a model: what `keras_dla.DLA34(weights="imagenet")` and a registered tag call.

`load_pretrained` finds the tag's sources (`keras_dla.weights.sources`), loads the converted cache when it is there
(`keras_dla.weights.cache`), and otherwise fetches a verified checkpoint (`keras_dla.weights.download`), converts it
into the model (`keras_dla.weights.convert`) and writes the cache from it, under a per-file lock. The model, or the
builder that makes one, comes from the caller: nothing here imports a model module.
"""

import os

from keras_dla import files
from keras_dla.weights import cache, readers, sources
from keras_dla.weights.download import MIRROR_ENV, SourceError, download_timeout, fetch_source, file_lock, sha256_of
from keras_dla.weights.sources import find


def fetch_checkpoint(entry, *, mirror=None, download=True, timeout=None):
    """The checkpoint of the first source of `entry` (a `Pretrained`) that gives a verified file.

    Args:
        entry: e.g. `PRETRAINED["dla34"]["imagenet"]`.
        mirror: a folder or base URL tried before each upstream host (default `$KERAS_DLA_WEIGHTS_MIRROR`).
        download: False to use local files only (the cache and a folder mirror).
        timeout: seconds each whole download may take (default `$KERAS_DLA_DOWNLOAD_TIMEOUT`, else 900).

    Returns:
        `(path, source)`: the verified local file and the `Source` it came from.
    """
    timeout = download_timeout(timeout)
    directory = sources.cache_dir()
    files.remove_stale(directory)  # what a killed download or conversion left
    problems = []
    for source in entry.sources:
        try:
            return fetch_source(source, directory, mirror=mirror, download=download, timeout=timeout), source
        except SourceError as e:
            problems.append(f"{source.host}: {e}")
    raise ValueError(
        f"No verified checkpoint for the {entry.tag!r} weights of {entry.variant} ({' | '.join(problems)}). "
        f"Received: mirror={mirror!r}, download={download}"
    )


def _check_head(model, state_dict, what):
    """Raises `cache.DoesNotFitError` unless `model` has the checkpoint's classifier or none (then it is dropped)."""
    fc = next((layer for layer in model.layers if layer.name == "fc"), None)
    if fc is None:
        return
    if "fc.weight" not in state_dict:
        raise cache.DoesNotFitError(
            f"The {what} has no classifier (`fc`) and {model.name} has one; build the model with include_top=False"
        )
    classes = int(state_dict["fc.weight"].shape[0])
    if getattr(fc, "units", None) != classes:
        raise cache.DoesNotFitError(
            f"The {what} classifies {classes} classes and {model.name} {getattr(fc, 'units', None)}; build the model "
            f"with classes={classes}, or with include_top=False to add a classifier of another class count"
        )


def _fill(model, state_dict, what):
    """Copies `state_dict` into `model` (`convert.assign_state_dict`); returns the keys dropped by design."""
    from keras_dla.weights import convert

    _check_head(model, state_dict, what)
    return convert.assign_state_dict(model, state_dict, dead_prefixes=convert.dead_project_keys_of(model), source=what)


def convert_checkpoint(variant, checkpoint, model):
    """Loads a PyTorch checkpoint of `variant` into a model; returns `(model, dropped)`.

    Args:
        variant: the DLA variant the checkpoint holds (`"dla34"`), named in errors.
        checkpoint: path of a `.pth` / `.safetensors` file (authors' or timm layout).
        model: the model to fill, with the checkpoint's classifier or none; or the variant's builder
            (`keras_dla.DLA34`), called with the checkpoint's class count, or `include_top=False` when it has
            no `fc`.

    Returns:
        The loaded model and `{key: reason}` of the checkpoint keys dropped by design.

    Raises:
        ValueError: the checkpoint does not fit the model (another variant, class count or classifier).
    """
    import keras

    state_dict = readers.read_state_dict(checkpoint)
    what = f"checkpoint {os.path.basename(checkpoint)!r} of {variant}"
    if not isinstance(model, keras.Model):
        if not callable(model):
            raise ValueError(
                f"`model` should be a Keras model or a DLA builder such as keras_dla.DLA34. Received: model={model!r}"
            )
        fc = state_dict.get("fc.weight")
        model = model(
            weights=None,
            include_top=fc is not None,
            classes=int(fc.shape[0]) if fc is not None else 1000,
            classifier_activation=None,
            input_shape=(None, None, 3),
        )
    try:
        dropped = _fill(model, state_dict, what)
    except cache.DoesNotFitError as e:
        raise ValueError(f"{e}. Received: checkpoint={checkpoint!r}") from None
    return model, dropped


def _convert_into_cache(model, checkpoint, converted, attrs):
    """Fills `model` from `checkpoint` and writes the converted cache file `converted` from it.

    The file holds the checkpoint's classifier also when `model` has none, so that any later model of the variant
    loads from it.

    Raises:
        cache.DoesNotFitError: `model` has another classifier than the checkpoint.
        SourceError: the checkpoint is verified but not loadable.
    """
    from keras_dla.weights import convert

    try:
        state_dict = readers.read_state_dict(checkpoint)
        _fill(model, state_dict, f"checkpoint {os.path.basename(checkpoint)!r}")
    except cache.DoesNotFitError:
        raise
    except ValueError as e:
        raise SourceError(f"verified but not loadable: {e}") from None
    classifier = convert.classifier_weights(state_dict)
    has_fc = any(layer.name == "fc" for layer in model.layers)
    extra = {"fc": classifier} if classifier is not None and not has_fc else None
    files.write_atomically(converted, lambda tmp: cache.save_by_layer_name(model, tmp, attrs, extra))


def _is_checkpoint(source):
    """Whether `source` is a PyTorch checkpoint, converted and cached, rather than a Keras `.weights.h5` file."""
    return sources.file_suffix(source.filename) != ".weights.h5"


def load_pretrained(model, variant, tag, timeout=None):
    """Loads the weights `find(variant, tag)` describes into `model`, fetching and converting once.

    `timeout` is the deadline of each download and of a wait for another process's (`download.download_timeout`).

    Raises:
        ValueError: no source gave a verified, loadable file (each one's reason is in the message).
    """
    from keras_dla.weights import convert  # Keras: imported when weights are loaded, not for `keras-dla list`

    entry = find(variant, tag)
    if entry is None:
        raise ValueError(f"No weights tagged {tag!r} for {variant}. Received: weights={tag!r}")
    timeout = download_timeout(timeout)
    directory = sources.cache_dir()
    files.remove_stale(directory)  # what a killed download or conversion left
    for source in entry.sources:  # warm path: a converted file, no network, no checkpoint
        if _is_checkpoint(source) and cache.load_cached(model, cache.converted_path(source, directory), variant):
            return
    problems = []
    for source in entry.sources:
        converted = cache.converted_path(source, directory)
        try:
            with file_lock(os.path.join(directory, source.filename), timeout):
                if _is_checkpoint(source) and cache.load_cached(model, converted, variant):
                    return  # another process converted it while this one waited
                local = fetch_source(source, directory, timeout=timeout)
                if not _is_checkpoint(source):
                    convert.load_weights(model, local)
                else:
                    attrs = dict(variant=variant, tag=tag, source=source.url, source_sha256=sha256_of(local))
                    try:
                        _convert_into_cache(model, local, converted, attrs)
                    except cache.DoesNotFitError as e:
                        raise ValueError(f"{e}. Received: weights={tag!r}") from None
                return
        except SourceError as e:
            problems.append(f"{source.host}: {e}")
    raise ValueError(
        f"Could not obtain the {tag!r} weights of {variant} from any source ({' | '.join(problems)}). "
        f"Set {MIRROR_ENV} to a folder or URL holding {', '.join(s.filename for s in entry.sources[:1])}, "
        f"or pass a local checkpoint path. Received: weights={tag!r}"
    )
