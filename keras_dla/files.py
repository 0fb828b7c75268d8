"""Files that appear whole or not at all.

Every file keras_dla writes for a later reader (downloaded and converted weights, a run's weights and curves) is
written under a unique temporary name beside its final one and renamed into place only once complete, so a
kill or an error never leaves half a file where a reader would take it for a whole one.

A temporary name holds the id of the process writing it (`.partial.<pid>.<random>.<name>`), so that what a killed
process left is told apart from what a running one is writing: `remove_stale` deletes the first kind only.
"""

import contextlib
import os
import re
import secrets
import shutil
import time

PARTIAL_PREFIX = ".partial."
# A leftover whose process cannot be told dead (another machine's, or an id reused since) is removed once it has not
# changed for this long; every writer of keras_dla changes its temporary file far more often.
STALE_AFTER_S = 3600
_OWNER = re.compile(r"\.(\d+)\.")


def temporary_beside(path):
    """Creates an empty file with a unique name beside `path`, ending like `path` (Keras picks formats by ending).

    Its permissions are those of any new file (0o666 less the umask), so the renamed result reads like a file the
    user wrote (`tempfile.mkstemp` would make it owner-only).
    """
    directory, name = os.path.split(path)
    while True:
        temporary = os.path.join(directory or ".", f"{PARTIAL_PREFIX}{os.getpid()}.{secrets.token_hex(4)}.{name}")
        try:
            os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return temporary
        except FileExistsError:
            continue


def _process_is_dead(pid):
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it exists, under another user
        return False
    return False


def is_stale(path, name_prefix):
    """Whether the leftover `path` (named `<name_prefix><pid>.…`) belongs to no running writer.

    It does when the process it names is dead, or when it has not changed for `STALE_AFTER_S` (an older name
    without a process id, or a process id reused since).
    """
    name = os.path.basename(path)
    owner = _OWNER.match(name, len(name_prefix) - 1) if name.startswith(name_prefix) else None
    if owner and _process_is_dead(int(owner.group(1))):
        return True
    try:
        return time.time() - os.lstat(path).st_mtime > STALE_AFTER_S
    except FileNotFoundError:
        return False


def remove_stale(directory, name_prefix=PARTIAL_PREFIX, suffix=""):
    """Removes the files and folders in `directory` named `<name_prefix>…<suffix>` that `is_stale` calls stale.

    Returns the names removed. A folder that cannot be listed is left alone (nothing to clean there).
    """
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return []
    removed = []
    for name in names:
        if not (name.startswith(name_prefix) and name.endswith(suffix)):
            continue
        path = os.path.join(directory or ".", name)
        if not is_stale(path, name_prefix):
            continue
        with contextlib.suppress(FileNotFoundError):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
            removed.append(name)
    return removed


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
