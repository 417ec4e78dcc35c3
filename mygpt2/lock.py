"""One writer per output directory: an exclusive lock file.

A run takes `out_dir/.lock` before it writes anything there; the file holds the holder's
host, pid, start time and command as JSON (the command line as the caller gives it: the
library never reads `sys.argv`). It is created with `O_CREAT | O_EXCL`, so of two
runs starting at once exactly one gets it. The second stops before any work, naming the
holder. A lock left behind by a process that no longer exists on this host (a `kill -9`, an
OOM kill) is taken over with a note; one from another host cannot be checked from here, so
the message says how to break it (`--break_lock`) once the user knows that run is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from mygpt2.errors import MyGPT2Error
from mygpt2.fileio import ensure_dir, fault

LOCK_NAME = ".lock"


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(info: dict[str, Any]) -> str:
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return (
        f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {when}: "
        f"{info.get('command', '?')}"
    )


class DirectoryLock:
    """`with DirectoryLock(out_dir, command):` holds `out_dir/.lock` for the block.

    `notes` collects what the caller should tell the user (a stale lock taken over)."""

    def __init__(self, directory: str | os.PathLike, command: str, break_lock: bool = False):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.command = command
        self.break_lock = break_lock
        self.notes: list[str] = []
        self.held = False

    def _create(self) -> bool:
        """Create the lock file with our details; False when it exists already."""
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "command": self.command,
        }
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise fault(e, self.path, "create the lock file") from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(info, fh)
        return True

    def _holder(self) -> dict[str, Any] | None:
        """The lock file's contents; None when it is not a lock we can read."""
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None
        ok = isinstance(info, dict) and isinstance(info.get("pid"), int)
        return info if ok else None

    def acquire(self) -> None:
        ensure_dir(self.directory)
        for _ in range(3):  # a holder may vanish between our checks: look again
            if self._create():
                self.held = True
                return
            info = self._holder()
            if info == {}:
                continue  # released in the meantime
            if self.break_lock:
                self.notes.append(
                    f"broke the lock on '{self.directory}' held by {_describe(info or {})}"
                )
            elif info is None:
                raise MyGPT2Error(
                    f"the lock file '{self.path}' is unreadable (corrupt or not a mygpt2 lock). "
                    "If no run is using this directory, delete it or pass --break_lock."
                )
            elif info.get("host") == socket.gethostname() and not _alive(info["pid"]):
                self.notes.append(
                    f"took over a stale lock on '{self.directory}' (its holder, "
                    f"{_describe(info)}, no longer runs)"
                )
            elif info.get("host") == socket.gethostname():
                raise MyGPT2Error(
                    f"'{self.directory}' is in use by another run ({_describe(info)}). Wait for "
                    "it to finish, stop it, or choose another --out_dir."
                )
            else:
                raise MyGPT2Error(
                    f"'{self.directory}' is locked by a run on another host ({_describe(info)}). "
                    "If that run is gone, pass --break_lock; otherwise choose another --out_dir."
                )
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        raise MyGPT2Error(f"could not take the lock '{self.path}': other runs keep taking it.")

    def release(self) -> None:
        """Remove the lock file if it is still ours."""
        if not self.held:
            return
        self.held = False
        info = self._holder()
        if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            with contextlib.suppress(OSError):
                self.path.unlink()

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
