"""Atomic writes and file-system faults as one-line messages (exit code 1), never tracebacks."""

from __future__ import annotations

import errno
import os

import pytest

from mygpt2.errors import RunError
from mygpt2.fileio import append_text, atomic_write, ensure_dir, fault


def test_atomic_write_replaces_whole_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write(path, lambda fh: fh.write(b"one"))
    atomic_write(path, lambda fh: fh.write(b"two"))
    assert path.read_bytes() == b"two" and os.listdir(path.parent) == ["f.bin"]


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "read-only"),
        (errno.ENOTDIR, "regular file, not a directory"),
        (errno.ENOENT, "does not exist"),
    ],
)
def test_a_failed_write_keeps_the_previous_file_and_says_why(tmp_path, code, words):
    path = tmp_path / "f.bin"
    atomic_write(path, lambda fh: fh.write(b"good"))

    def fail(fh):
        fh.write(b"half")
        raise OSError(code, os.strerror(code))

    with pytest.raises(RunError, match=rf"could not write '{path}': .*{words}.*previous file") as e:
        atomic_write(path, fail)
    assert e.value.exit_code == 1
    assert path.read_bytes() == b"good" and os.listdir(tmp_path) == ["f.bin"]


def test_a_path_through_a_regular_file_is_a_message(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunError, match="regular file"):
        atomic_write(blocker / "out" / "f.bin", lambda fh: fh.write(b"x"))
    with pytest.raises(RunError, match="a regular file has that name"):
        ensure_dir(blocker)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_real_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(RunError, match="permission denied"):
            atomic_write(ro / "f.bin", lambda fh: fh.write(b"x"))
    finally:
        ro.chmod(0o700)


def test_append_and_unknown_errors(tmp_path):
    path = tmp_path / "log.jsonl"
    append_text(path, "a\n")
    append_text(path, "b\n")
    assert path.read_text() == "a\nb\n"
    with pytest.raises(RunError, match="could not append to"):
        append_text(tmp_path / "missing" / "log.jsonl", "x")
    odd = fault(OSError(errno.EIO, "Input/output error"), "x", "read")
    assert str(odd) == "could not read 'x': Input/output error."
