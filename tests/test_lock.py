"""One writer per output directory: the lock file, stale and foreign locks, a real race."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from mygpt2.errors import MyGPT2Error
from mygpt2.lock import LOCK_NAME, DirectoryLock


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(directory, **info) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / LOCK_NAME).write_text(json.dumps(info), encoding="utf-8")


def test_lock_holds_its_details_and_is_released(tmp_path):
    with DirectoryLock(tmp_path / "run", "mygpt2 train --x 1") as lock:
        info = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert info["command"] == "mygpt2 train --x 1" and abs(info["started"] - time.time()) < 60
        assert lock.notes == []
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_live_holder_stops_the_second_run_naming_it(tmp_path):
    with (
        DirectoryLock(tmp_path, "first run"),
        pytest.raises(
            MyGPT2Error, match=rf"in use by another run \(pid {os.getpid()} on .*first run"
        ),
    ):
        DirectoryLock(tmp_path, "second run").acquire()
    DirectoryLock(tmp_path, "third run").acquire()  # free again


def test_a_dead_holder_on_this_host_is_taken_over_with_a_note(tmp_path):
    write_lock(tmp_path, host=socket.gethostname(), pid=dead_pid(), started=1.0, command="old")
    with DirectoryLock(tmp_path, "new") as lock:
        assert "took over a stale lock" in lock.notes[0] and "old" in lock.notes[0]
        assert json.loads((tmp_path / LOCK_NAME).read_text())["command"] == "new"


def test_another_hosts_lock_needs_break_lock(tmp_path):
    write_lock(tmp_path, host="elsewhere.example", pid=1, started=1.0, command="far away")
    with pytest.raises(MyGPT2Error, match=r"another host .*elsewhere\.example.*--break_lock"):
        DirectoryLock(tmp_path, "new").acquire()
    with DirectoryLock(tmp_path, "new", break_lock=True) as lock:
        assert "broke the lock" in lock.notes[0]


def test_a_corrupt_lock_file_is_a_clear_message(tmp_path):
    (tmp_path / LOCK_NAME).write_bytes(b"\x00garbage")
    with pytest.raises(MyGPT2Error, match=r"unreadable.*--break_lock"):
        DirectoryLock(tmp_path, "new").acquire()
    DirectoryLock(tmp_path, "new", break_lock=True).acquire()


RACER = """
import sys, time
from mygpt2.errors import MyGPT2Error
from mygpt2.lock import DirectoryLock
while time.time() < float(sys.argv[2]):
    pass
try:
    with DirectoryLock(sys.argv[1], "racer"):
        time.sleep(1.0)
    print("got it")
except MyGPT2Error:
    print("refused")
"""


def test_of_two_processes_starting_at_once_exactly_one_holds_the_lock(tmp_path):
    start = str(time.time() + 1.0)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path), start], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outs == ["got it", "refused"]


def test_a_live_holder_owned_by_another_user_is_held(tmp_path, monkeypatch):
    """os.kill(pid, 0) on another user's process raises PermissionError: it is alive, and
    its lock is not taken over."""
    write_lock(tmp_path, host=socket.gethostname(), pid=4242, started=1.0, command="theirs")
    calls = []

    def kill(pid, sig):
        calls.append((pid, sig))
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", kill)
    with pytest.raises(MyGPT2Error, match=r"in use by another run \(pid 4242 on .*theirs"):
        DirectoryLock(tmp_path, "mine").acquire()
    assert calls == [(4242, 0)]  # asked whether it exists, sent nothing
    assert json.loads((tmp_path / LOCK_NAME).read_text())["command"] == "theirs"


# ------------------------------------------------------------- defaults and boundaries (#22)


def test_a_live_process_of_another_user_holds_its_lock(tmp_path, monkeypatch):
    """os.kill(pid, 0) on another user's process raises PermissionError: it is alive."""

    def not_yours(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", not_yours)
    write_lock(tmp_path, host=socket.gethostname(), pid=4321, started=1.0, command="theirs")
    with pytest.raises(MyGPT2Error, match=r"in use by another run \(pid 4321 .*theirs"):
        DirectoryLock(tmp_path, "mine").acquire()


def test_another_hosts_lock_is_kept_even_when_its_pid_is_free_here(tmp_path):
    write_lock(tmp_path, host="elsewhere.example", pid=dead_pid(), started=1.0, command="far")
    with pytest.raises(MyGPT2Error, match=r"another host .*--break_lock"):
        DirectoryLock(tmp_path, "new").acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["command"] == "far"


def test_release_leaves_a_lock_that_another_run_took_since(tmp_path):
    lock = DirectoryLock(tmp_path, "first")
    lock.acquire()
    # another run broke it (--break_lock) and holds it now
    write_lock(tmp_path, host=socket.gethostname(), pid=os.getpid() + 1, started=2.0, command="b")
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["command"] == "b"


def test_a_holder_that_vanishes_between_our_checks_is_looked_at_again(tmp_path, monkeypatch):
    write_lock(tmp_path, host=socket.gethostname(), pid=os.getpid(), started=1.0, command="old")
    real = DirectoryLock._holder

    def released_meanwhile(self):
        (tmp_path / LOCK_NAME).unlink()  # the holder finished between create and read
        return real(self)

    monkeypatch.setattr(DirectoryLock, "_holder", released_meanwhile)
    lock = DirectoryLock(tmp_path, "new")
    lock.acquire()
    assert lock.held and lock.notes == []
    assert json.loads((tmp_path / LOCK_NAME).read_text())["command"] == "new"


def test_a_lock_file_without_a_pid_is_unreadable(tmp_path):
    write_lock(tmp_path, host=socket.gethostname(), started=1.0, command="no pid")
    with pytest.raises(MyGPT2Error, match="unreadable"):
        DirectoryLock(tmp_path, "new").acquire()
