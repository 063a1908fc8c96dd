"""Atomic writes: the target appears whole or not at all, with ordinary permissions."""

import os

import pytest

from esccs.io.atomic import FILE_MODE, atomic_path, write_text


def test_finished_files_get_umask_permissions_not_mkstemps_0600(tmp_path):
    path = write_text(tmp_path / "a.txt", "hello")
    assert path.read_text() == "hello"
    assert os.stat(path).st_mode & 0o777 == FILE_MODE
    mask = os.umask(0)
    os.umask(mask)
    assert FILE_MODE == 0o666 & ~mask


def test_a_failed_write_leaves_neither_target_nor_temp_file(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "b.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
