import os

import pytest

from keras_dla import files


def test_write_atomically_replaces_only_with_a_complete_file(tmp_path):
    path = tmp_path / "curves.png"
    path.write_bytes(b"old")
    seen = []

    def write(temporary):
        seen.append(temporary)
        with open(temporary, "wb") as f:
            f.write(b"new")

    files.write_atomically(str(path), write)
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["curves.png"]
    name = os.path.basename(seen[0])
    assert name.startswith(".partial.") and name.endswith(".curves.png")  # Keras and matplotlib read the ending

    def fail_midway(temporary):
        with open(temporary, "wb") as f:
            f.write(b"ha")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.write_atomically(str(path), fail_midway)
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["curves.png"]


def test_temporary_names_are_unique(tmp_path):
    path = str(tmp_path / "a.weights.h5")
    first, second = files.temporary_beside(path), files.temporary_beside(path)
    assert first != second and os.path.dirname(first) == str(tmp_path)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_have_the_permissions_of_any_new_file(tmp_path, umask):
    path = tmp_path / "best.weights.h5"
    previous = os.umask(umask)
    try:
        files.write_atomically(str(path), lambda temporary: open(temporary, "wb").close())
    finally:
        os.umask(previous)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
