"""Files that appear whole or not at all.

Every file keras_dla writes for a later reader (downloaded and converted weights, a run's weights and curves) is
written under a unique temporary name beside its final one and renamed into place only once complete, so a
kill or an error never leaves half a file where a reader would take it for a whole one.
"""

import contextlib
import os
import tempfile


def temporary_beside(path):
    """Creates an empty file with a unique name beside `path`, ending like `path` (Keras picks formats by ending)."""
    directory, name = os.path.split(path)
    fd, temporary = tempfile.mkstemp(prefix=".partial.", suffix="." + name, dir=directory or ".")
    os.close(fd)
    return temporary


@contextlib.contextmanager
def replaced_on_success(path):
    """Yields a temporary path beside `path`; renames it to `path` when the block succeeds, removes it otherwise."""
    temporary = temporary_beside(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


def write_atomically(path, write):
    """Calls `write(temporary)` and renames the temporary file to `path` (see `replaced_on_success`)."""
    with replaced_on_success(path) as temporary:
        write(temporary)


def write_text(path, text):
    """Writes `text` to `path` as UTF-8 through `write_atomically`."""

    def write(temporary):
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)

    write_atomically(path, write)
