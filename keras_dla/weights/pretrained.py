"""Pretrained weights: where they come from, how they are verified, and the local cache.

`PRETRAINED[variant]["imagenet"]` lists the places a variant's ImageNet weights can be fetched from, in
the order they are tried: the authors' file, its re-hosted copies (Open Model Zoo, timm's GitHub release,
the Hugging Face hub). Every file is checked with sha256 before it is read: against the full digest where
the source publishes one (the Hugging Face hub sends it with the file), else against the sha256 prefix
the file name carries (PyTorch hub convention, `dla34-ba72cf86.pth`). A file that fails is reported with
a `WeightsWarning`, never read, and deleted when it is in the cache.

Cache, in `$KERAS_HOME/models` (default `~/.keras/models`):
- the downloaded checkpoint under its upstream name (`dla34-ba72cf86.pth`);
- beside it the converted Keras weights (`dla34-ba72cf86.keras_dla.h5`): the variables of every Keras
  layer, by layer name, in one Fletcher-32 checksummed HDF5 dataset, so a later load reads it in one go
  into any model of the variant (`include_top=False` included) without the checkpoint or a conversion,
  and a damaged file fails to read instead of loading wrong numbers.
Every file is written under a unique temporary name and renamed into place, so an interrupted download or
conversion leaves nothing a later load accepts, and the next fetch removes what a killed one left
(`files.remove_stale`); a per-file lock keeps concurrent processes from doing the same work twice, and either
process succeeds if the other dies. The converted file carries the checksum of `keras_dla.weights.checksum`, as every
weights file keras_dla writes.

A download has a deadline for the whole file (`KERAS_DLA_DOWNLOAD_TIMEOUT` seconds, default 900, or the
`timeout` argument), besides the 30 s a single read may take, and shows its progress on stderr; a process waiting
for another one's download says so, and waits no longer than that deadline either.

`KERAS_DLA_WEIGHTS_MIRROR`, a base URL or a local folder holding files under their upstream names, is
tried before each upstream host. `register_weights` adds a user's own tag to the same machinery.
"""

import contextlib
import dataclasses
import hashlib
import http.client
import json
import math
import os
import posixpath
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings

import h5py
import numpy as np

from keras_dla import files
from keras_dla.weights import checksum, readers

try:  # POSIX; elsewhere the unique temporary names alone keep concurrent loads correct
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

MIRROR_ENV = "KERAS_DLA_WEIGHTS_MIRROR"
CACHE_SUFFIX = ".keras_dla.h5"
# 3: layer names with underscores for dots (`keras_dla.weights.names`); a cache of an earlier format is converted again.
CACHE_FORMAT = "keras_dla-weights-by-layer-name-3"
TIMEOUT_S = 30  # for one read
TIMEOUT_ENV = "KERAS_DLA_DOWNLOAD_TIMEOUT"
DOWNLOAD_TIMEOUT_S = 900  # for a whole download: the largest checkpoint at 0.25 MB/s
MAX_DOWNLOAD_BYTES = 2 << 30  # the largest DLA checkpoint is 0.2 GB; a host streaming more is broken
_CHUNK = 1 << 20
_HEX = re.compile(r"[0-9a-f]+")


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
# Sources: REFERENCE.md §1 and §3 (ucbdrive/dla `dla.py`, timm `dla.py` and results CSV).
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


def _suffix(name):
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


# The variant of each builder of `keras_dla.models.dla`, by its function name: how a builder that carries no
# `variant` attribute is recognised without importing the builders.
_BUILDER_VARIANTS = {
    "DLA34": "dla34",
    "DLA46C": "dla46_c",
    "DLA46XC": "dla46x_c",
    "DLA60XC": "dla60x_c",
    "DLA60": "dla60",
    "DLA60X": "dla60x",
    "DLA102": "dla102",
    "DLA102X": "dla102x",
    "DLA102X2": "dla102x2",
    "DLA169": "dla169",
    "DLA60Res2Net": "dla60_res2net",
    "DLA60Res2NeXt": "dla60_res2next",
}
_BUILDERS_MODULE = "keras_dla.models.dla"


def _variant_of(model):
    """The variant named by `model`: a variant name, or a builder (its `variant` attribute, else its name)."""
    variant = model if isinstance(model, str) else getattr(model, "variant", None)
    if variant is None and callable(model) and getattr(model, "__module__", None) == _BUILDERS_MODULE:
        variant = _BUILDER_VARIANTS.get(getattr(model, "__name__", None))
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
    suffix = _suffix(urllib.parse.urlparse(url).path or url)
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


# --- verification ---------------------------------------------------------------------------------------------


class _SourceError(Exception):
    """A source could not give a verified file; the message says why."""


class _DoesNotFitError(ValueError):
    """Intact weights that do not fit the model asked for (another class count): the user's error."""


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest(digest, expected, what):
    if expected is None or not _HEX.fullmatch(expected) or not digest.startswith(expected):
        raise _SourceError(f"sha256 mismatch for {what}: expected {expected or 'a published digest'}, got {digest}")


def _verified_digest_path(path):
    # The digest a host published with a file (no digest in its name) is kept beside it once verified.
    return path + ".sha256"


def _expected_digest(source, path):
    if source.sha256 is not None:
        return source.sha256
    try:
        with open(_verified_digest_path(path), encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


# --- download -------------------------------------------------------------------------------------------------


def download_timeout(timeout=None):
    """The seconds a whole download, or a wait for another process's, may take.

    `timeout` when given, else `$KERAS_DLA_DOWNLOAD_TIMEOUT`, else `DOWNLOAD_TIMEOUT_S`.
    """
    if timeout is None:
        text = os.environ.get(TIMEOUT_ENV, "").strip()
        if not text:
            return DOWNLOAD_TIMEOUT_S
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{TIMEOUT_ENV} should be a positive number of seconds. Received: {TIMEOUT_ENV}={text!r}")
        return value
    number = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
    if not (number and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"`timeout` should be a positive number of seconds. Received: timeout={timeout!r}")
    return float(timeout)


class _Progress:
    """Download progress on stderr: a one-line bar on a terminal, else a line every few seconds."""

    def __init__(self, label, total):
        self.label, self.total = label, total
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.monotonic()
        print(f"Downloading {label}" + (f" ({total / 1e6:.1f} MB)" if total else ""), file=sys.stderr, flush=True)

    def update(self, done):
        now = time.monotonic()
        if now - self.last < (0.1 if self.tty else 5.0):
            return
        self.last = now
        of_total = f"/{self.total / 1e6:.1f}" if self.total else ""
        if not self.tty:
            print(f"  {done / 1e6:.1f}{of_total} MB after {now - self.start:.0f} s", file=sys.stderr, flush=True)
        elif self.total:
            filled = int(30 * done / self.total)
            bar = "=" * filled + "." * (30 - filled)
            print(f"\r  [{bar}] {done / 1e6:.1f}{of_total} MB", end="", file=sys.stderr, flush=True)
        else:
            print(f"\r  {done / 1e6:.1f} MB", end="", file=sys.stderr, flush=True)

    def close(self, done):
        print(("\r" if self.tty else "") + f"  {done / 1e6:.1f} MB done", file=sys.stderr, flush=True)


class _RecordRedirects(urllib.request.HTTPRedirectHandler):
    """Keeps the headers of redirect responses: the hub sends the file's sha256 on its 302."""

    def __init__(self):
        self.headers = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _published_sha256(header_sets):
    for headers in header_sets:
        value = (headers.get("X-Linked-Etag") or "").strip().strip('"').lower()
        if value.startswith("w/"):
            value = value[2:].strip('"')
        if re.fullmatch(r"[0-9a-f]{64}", value):
            return value
    return None


def _download(url, path, expected, timeout):
    """Downloads `url` to `path` (atomically) within `timeout` seconds and verifies it; returns the verified digest."""
    recorder = _RecordRedirects()
    opener = urllib.request.build_opener(recorder)
    request = urllib.request.Request(url, headers={"User-Agent": "keras_dla"})
    deadline = time.monotonic() + timeout
    done = 0

    def too_long():
        return _SourceError(
            f"the download of {url} did not finish within {timeout:g} s ({done} bytes received); set "
            f"{TIMEOUT_ENV} to allow longer"
        )

    with files.replaced_on_success(path) as tmp:
        try:
            with opener.open(request, timeout=min(TIMEOUT_S, timeout)) as response:
                length = response.headers.get("Content-Length") or "0"
                total = int(length) if length.isdigit() else 0
                progress = _Progress(url, total)
                digest = hashlib.sha256()
                # read1 returns what has arrived; read(n) would wait for all n bytes, past the deadline.
                read = getattr(response, "read1", response.read)
                with open(tmp, "wb") as out:
                    while chunk := read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        progress.update(done)
                        if done > MAX_DOWNLOAD_BYTES:
                            raise _SourceError(f"{url} sent more than {MAX_DOWNLOAD_BYTES} bytes")
                        if time.monotonic() > deadline:
                            raise too_long()
                progress.close(done)
                headers = [*recorder.headers, response.headers]
        except urllib.error.HTTPError as e:
            raise _SourceError(f"{url} answered HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            if time.monotonic() > deadline:
                raise too_long() from None
            raise _SourceError(f"download of {url} failed: {getattr(e, 'reason', e)}") from None
        if total and done != total:
            raise _SourceError(f"download of {url} ended after {done} of {total} bytes")
        digest = digest.hexdigest()
        if expected is None:
            expected = _published_sha256(headers)
            if expected is None:
                raise _SourceError(f"{url} came without a published sha256, so it cannot be verified")
        _check_digest(digest, expected, url)
        return digest


@contextlib.contextmanager
def _lock(path, timeout):
    """An exclusive lock on `path + ".lock"` while one process fetches and converts that file.

    A process that finds it held says what it waits for, and gives up after `timeout` seconds.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    lock_path = path + ".lock"
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"Waiting for another process to fetch {os.path.basename(path)} (it holds the lock {lock_path}; "
                f"at most {timeout:g} s)",
                file=sys.stderr,
                flush=True,
            )
            deadline = time.monotonic() + timeout
            while True:
                time.sleep(0.2)
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise _SourceError(
                            f"another process held the lock {lock_path} for more than {timeout:g} s; set "
                            f"{TIMEOUT_ENV} to wait longer"
                        ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_url(location):
    return urllib.parse.urlparse(location).scheme in ("http", "https", "file")


def _mirror_location(source, mirror):
    """Where `mirror` (a base URL or a folder) holds `source`: under its upstream file name."""
    if not mirror or not source.mirrored:
        return None
    if _is_url(source.url):
        name = urllib.parse.unquote(posixpath.basename(urllib.parse.urlparse(source.url).path))
    else:
        name = os.path.basename(source.url)
    if _is_url(mirror):
        return mirror.rstrip("/") + "/" + urllib.parse.quote(name)
    return os.path.join(mirror, name)


def _fetch(source, directory, mirror=None, download=True, timeout=None):
    """A verified local copy of `source`: from the cache, the mirror or the upstream host, in that order.

    `mirror` defaults to `$KERAS_DLA_WEIGHTS_MIRROR`; `download=False` reads local files only; `timeout` is the
    deadline of each download (`download_timeout`).
    """
    timeout = download_timeout(timeout)
    problems = []
    cached = os.path.join(directory, source.filename)
    mirror = os.environ.get(MIRROR_ENV) if mirror is None else os.fspath(mirror)
    locations = [cached, _mirror_location(source, mirror), source.url]
    for location in filter(None, locations):
        try:
            if location == cached or not _is_url(location):
                if not os.path.isfile(location):
                    if location != cached:
                        problems.append(f"{location}: no such file")
                    continue
                expected = _expected_digest(source, location) if location == cached else source.sha256
                _check_digest(sha256_of(location), expected, location)
                return location
            if not download:
                continue
            digest = _download(location, cached, source.sha256, timeout)
            if source.sha256 is None:
                files.write_text(_verified_digest_path(cached), digest + "\n")
            return cached
        except _SourceError as e:
            if location == cached:  # a damaged or partial cache file: drop it, fetch again
                with contextlib.suppress(FileNotFoundError):
                    os.remove(cached)
            warnings.warn(f"Skipping {location}: {e}", WeightsWarning, stacklevel=4)
            problems.append(f"{location}: {e}")
    raise _SourceError("; ".join(problems) or "no location")


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
    directory = cache_dir()
    files.remove_stale(directory)  # what a killed download or conversion left
    problems = []
    for source in entry.sources:
        try:
            return _fetch(source, directory, mirror=mirror, download=download, timeout=timeout), source
        except _SourceError as e:
            problems.append(f"{source.host}: {e}")
    raise ValueError(
        f"No verified checkpoint for the {entry.tag!r} weights of {entry.variant} ({' | '.join(problems)}). "
        f"Received: mirror={mirror!r}, download={download}"
    )


# --- the converted cache --------------------------------------------------------------------------------------


def save_by_layer_name(model, path, attrs=None, extra_layers=None):
    """Writes the weights of `model`'s layers, by layer name, to one checksummed HDF5 file.

    The float32 values of every variable are concatenated into one Fletcher-32 checksummed dataset, with a
    JSON index of `[layer name, [variable shapes]]`: one read loads them all, and any damaged chunk fails
    that read. `extra_layers`, `{layer name: [arrays]}`, adds layers `model` does not have (the checkpoint's
    classifier, for a model built with `include_top=False`).
    """
    index, values = [], []
    layer_arrays = [(layer.name, [variable.numpy() for variable in layer.weights]) for layer in model.layers]
    for name, arrays in [*layer_arrays, *(extra_layers or {}).items()]:
        if arrays:
            arrays = [np.asarray(a, dtype="float32") for a in arrays]
            index.append([name, [list(a.shape) for a in arrays]])
            values.extend(a.ravel() for a in arrays)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = CACHE_FORMAT
        f.attrs["index"] = json.dumps(index)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        flat = np.concatenate(values)
        # 4 MB chunks: each one checksummed, few enough that reading them all costs little over raw I/O.
        f.create_dataset("values", data=flat, chunks=(min(flat.size, 1 << 20),), fletcher32=True)
        f.attrs[checksum.DIGEST_ATTR] = checksum.datasets_digest(f)


def load_by_layer_name(model, path, variant):
    """Loads a file of `save_by_layer_name` into `model`; every weighted layer must be there, shapes equal.

    Raises:
        OSError: the file is unreadable or fails its checksums.
        ValueError: the file is not a keras_dla weights file of `variant`, fails its sha256
            (`checksum.DamagedWeightsError`) or does not fit `model`.
    """
    checksum.verify(path)
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != CACHE_FORMAT:
            raise ValueError(f"it is in the format {f.attrs.get('format')!r}, not {CACHE_FORMAT!r}")
        if f.attrs.get("variant") != variant:
            raise ValueError(f"{path} is not a keras_dla weights file of {variant}")
        index = json.loads(f.attrs["index"])
        flat = f["values"][()]
    offsets, offset = {}, 0
    for name, shapes in index:
        offsets[name] = (offset, shapes)
        offset += sum(int(np.prod(shape, dtype=np.int64)) for shape in shapes)
    if offset != flat.size:
        raise ValueError(f"{path} holds {flat.size} values, its index {offset}")
    updates = []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in offsets:
            raise ValueError(f"{path} has no weights for layer {layer.name!r}")
        offset, shapes = offsets[layer.name]
        if [tuple(shape) for shape in shapes] != [tuple(v.shape) for v in layer.weights]:
            raise _DoesNotFitError(
                f"The weights of {layer.name!r} in {os.path.basename(path)} have shapes {shapes}, the model's "
                f"{[tuple(v.shape) for v in layer.weights]} (built with another class count?)"
            )
        for shape, variable in zip(shapes, layer.weights, strict=True):
            size = int(np.prod(shape, dtype=np.int64))
            updates.append((variable, flat[offset : offset + size].reshape(shape)))
            offset += size
    for variable, value in updates:
        variable.assign(value)


def _check_head(model, state_dict, what):
    """Raises `_DoesNotFitError` unless `model` has the checkpoint's classifier or none (then it is dropped)."""
    fc = next((layer for layer in model.layers if layer.name == "fc"), None)
    if fc is None:
        return
    if "fc.weight" not in state_dict:
        raise _DoesNotFitError(
            f"The {what} has no classifier (`fc`) and {model.name} has one; build the model with include_top=False"
        )
    classes = int(state_dict["fc.weight"].shape[0])
    if getattr(fc, "units", None) != classes:
        raise _DoesNotFitError(
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
    except _DoesNotFitError as e:
        raise ValueError(f"{e}. Received: checkpoint={checkpoint!r}") from None
    return model, dropped


def _converted_path(source, directory):
    stem = source.filename[: -len(_suffix(source.filename))]
    return os.path.join(directory, stem + CACHE_SUFFIX)


def _load_cached(model, path, variant):
    """True when `path` loaded; a damaged file is reported and removed."""
    if not os.path.isfile(path):
        return False
    try:
        load_by_layer_name(model, path, variant)
        return True
    except _DoesNotFitError as e:
        raise ValueError(f"{e}. Received: weights file {path!r}") from None
    except (OSError, KeyError, ValueError) as e:
        warnings.warn(
            f"Cached weights {path} are damaged or out of date ({e}); converting them again",
            WeightsWarning,
            stacklevel=4,
        )
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        return False


def _convert_into_cache(model, checkpoint, converted, attrs):
    """Fills `model` from `checkpoint` and writes the converted cache file `converted` from it.

    The file holds the checkpoint's classifier also when `model` has none, so that any later model of the variant
    loads from it.

    Raises:
        _DoesNotFitError: `model` has another classifier than the checkpoint.
        _SourceError: the checkpoint is verified but not loadable.
    """
    from keras_dla.weights import convert

    try:
        state_dict = readers.read_state_dict(checkpoint)
        _fill(model, state_dict, f"checkpoint {os.path.basename(checkpoint)!r}")
    except _DoesNotFitError:
        raise
    except ValueError as e:
        raise _SourceError(f"verified but not loadable: {e}") from None
    classifier = convert.classifier_weights(state_dict)
    has_fc = any(layer.name == "fc" for layer in model.layers)
    extra = {"fc": classifier} if classifier is not None and not has_fc else None
    files.write_atomically(converted, lambda tmp: save_by_layer_name(model, tmp, attrs, extra))


def load_pretrained(model, variant, tag, timeout=None):
    """Loads the weights `find(variant, tag)` describes into `model`, fetching and converting once.

    `timeout` is the deadline of each download and of a wait for another process's (`download_timeout`).

    Raises:
        ValueError: no source gave a verified, loadable file (each one's reason is in the message).
    """
    from keras_dla.weights import convert  # Keras: imported when weights are loaded, not for `keras-dla list`

    entry = find(variant, tag)
    if entry is None:
        raise ValueError(f"No weights tagged {tag!r} for {variant}. Received: weights={tag!r}")
    timeout = download_timeout(timeout)
    directory = cache_dir()
    files.remove_stale(directory)  # what a killed download or conversion left
    for source in entry.sources:  # warm path: a converted file, no network, no checkpoint
        if _suffix(source.filename) != ".weights.h5" and _load_cached(
            model, _converted_path(source, directory), variant
        ):
            return
    problems = []
    for source in entry.sources:
        converted = _converted_path(source, directory)
        try:
            with _lock(os.path.join(directory, source.filename), timeout):
                if _suffix(source.filename) != ".weights.h5" and _load_cached(model, converted, variant):
                    return  # another process converted it while this one waited
                local = _fetch(source, directory, timeout=timeout)
                if _suffix(source.filename) == ".weights.h5":
                    convert.load_weights(model, local)
                else:
                    attrs = {"variant": variant, "tag": tag, "source": source.url, "source_sha256": sha256_of(local)}
                    try:
                        _convert_into_cache(model, local, converted, attrs)
                    except _DoesNotFitError as e:
                        raise ValueError(f"{e}. Received: weights={tag!r}") from None
                return
        except _SourceError as e:
            problems.append(f"{source.host}: {e}")
    raise ValueError(
        f"Could not obtain the {tag!r} weights of {variant} from any source ({' | '.join(problems)}). "
        f"Set {MIRROR_ENV} to a folder or URL holding {', '.join(s.filename for s in entry.sources[:1])}, "
        f"or pass a local checkpoint path. Received: weights={tag!r}"
    )


def cached_tags(variant):
    """Tags of `variant` whose converted weights are in the cache (for `keras-dla list`)."""
    directory = cache_dir()
    tags = []
    entries = {**PRETRAINED.get(variant, {}), **{t: e for (v, t), e in _REGISTERED.items() if v == variant}}
    for tag, entry in entries.items():
        if any(os.path.isfile(_converted_path(s, directory)) for s in entry.sources):
            tags.append(tag)
    return tags
