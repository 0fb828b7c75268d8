"""Verified downloads: the sha256 check, the whole-file deadline, progress, the mirror and the per-file lock.

Every file is checked with sha256 before it is read; a file that fails is reported with a `WeightsWarning`, never
read, and deleted when it is in the cache. Every file is written under a unique temporary name and renamed into
place, so an interrupted download leaves nothing a later load accepts, and the next fetch removes what a killed
one left (`files.remove_stale`); a per-file lock keeps concurrent processes from doing the same work twice, and
either process succeeds if the other dies.

A download has a deadline for the whole file (`KERAS_DLA_DOWNLOAD_TIMEOUT` seconds, default 900, or the
`timeout` argument), besides the 30 s a single read may take, and shows its progress on stderr; a process waiting
for another one's download says so, and waits no longer than that deadline either.

`KERAS_DLA_WEIGHTS_MIRROR`, a base URL or a local folder holding files under their upstream names, is
tried before each upstream host.
"""

import contextlib
import hashlib
import http.client
import math
import os
import posixpath
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings

from keras_dla import files
from keras_dla.weights import sources

try:  # POSIX; elsewhere the unique temporary names alone keep concurrent loads correct
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

MIRROR_ENV = "KERAS_DLA_WEIGHTS_MIRROR"
TIMEOUT_S = 30  # for one read
TIMEOUT_ENV = "KERAS_DLA_DOWNLOAD_TIMEOUT"
DOWNLOAD_TIMEOUT_S = 900  # for a whole download: the largest checkpoint at 0.25 MB/s
MAX_DOWNLOAD_BYTES = 2 << 30  # the largest DLA checkpoint is 0.2 GB; a host streaming more is broken
_CHUNK = 1 << 20
_HEX = re.compile(r"[0-9a-f]+")


class SourceError(Exception):
    """A source could not give a verified file; the message says why."""


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest(digest, expected, what):
    if expected is None or not _HEX.fullmatch(expected) or not digest.startswith(expected):
        raise SourceError(f"sha256 mismatch for {what}: expected {expected or 'a published digest'}, got {digest}")


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
        return SourceError(
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
                            raise SourceError(f"{url} sent more than {MAX_DOWNLOAD_BYTES} bytes")
                        if time.monotonic() > deadline:
                            raise too_long()
                progress.close(done)
                headers = [*recorder.headers, response.headers]
        except urllib.error.HTTPError as e:
            raise SourceError(f"{url} answered HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            if time.monotonic() > deadline:
                raise too_long() from None
            raise SourceError(f"download of {url} failed: {getattr(e, 'reason', e)}") from None
        if total and done != total:
            raise SourceError(f"download of {url} ended after {done} of {total} bytes")
        digest = digest.hexdigest()
        if expected is None:
            expected = _published_sha256(headers)
            if expected is None:
                raise SourceError(f"{url} came without a published sha256, so it cannot be verified")
        _check_digest(digest, expected, url)
        return digest


@contextlib.contextmanager
def file_lock(path, timeout):
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
                        raise SourceError(
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


def fetch_source(source, directory, mirror=None, download=True, timeout=None):
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
        except SourceError as e:
            if location == cached:  # a damaged or partial cache file: drop it, fetch again
                with contextlib.suppress(FileNotFoundError):
                    os.remove(cached)
            warnings.warn(f"Skipping {location}: {e}", sources.WeightsWarning, stacklevel=4)
            problems.append(f"{location}: {e}")
    raise SourceError("; ".join(problems) or "no location")
