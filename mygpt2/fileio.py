"""Files written whole or not at all, and file-system faults as messages.

`atomic_write` is how every output of mygpt2 reaches the disk (checkpoints, tokenizer files,
plots, exported weights): the bytes go to a temporary file in the same directory, are
flushed and fsynced, and the file is renamed over the target. A crash, a kill or a full disk
at any moment leaves the previous file whole.

`fault` turns an `OSError` into a `RunError` whose one line names the path, the operation and
what to do (disk full, read-only or unwritable directory, a path through a regular file, a
file that vanished), so no file-system problem ends in a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from mygpt2.errors import MyGPT2Error, RunError

_ADVICE = {
    errno.ENOSPC: "the disk is full; free some space or choose another --out_dir",
    errno.EDQUOT: "the disk quota is used up; free some space or choose another --out_dir",
    errno.EACCES: "permission denied; fix the permissions or choose another --out_dir",
    errno.EPERM: "operation not permitted; fix the permissions or choose another --out_dir",
    errno.EROFS: "the file system is read-only; choose another --out_dir",
    errno.ENOTDIR: "a part of the path is a regular file, not a directory; choose another path",
    errno.EEXIST: "a regular file stands where a directory should be; choose another path",
    errno.ENOENT: "it does not exist (deleted or moved while mygpt2 was working?)",
    errno.EISDIR: "it is a directory, not a file; choose another path",
}


def fault(e: OSError, path: str | os.PathLike, operation: str) -> RunError:
    """A one-line `RunError` for an OSError met while doing `operation` on `path`."""
    advice = _ADVICE.get(e.errno or 0)
    detail = e.strerror or str(e)
    return RunError(
        f"could not {operation} '{path}': " + (f"{advice} ({detail})." if advice else f"{detail}.")
    )


def user_cache_dir(configured: str = "") -> Path:
    """Where downloads and prepared token files go: `configured` if set, else `$MYGPT2_CACHE`,
    else the platform's per-user cache directory (never the current directory)."""
    if configured:
        return Path(configured)
    if os.environ.get("MYGPT2_CACHE"):
        return Path(os.environ["MYGPT2_CACHE"])
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "mygpt2"
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / "mygpt2" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mygpt2"


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create a directory (and its parents) unless it exists; faults as messages."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # exist_ok does not cover a regular file at `path`
        raise RunError(
            f"could not create the directory '{path}': a regular file has that name; "
            "choose another path."
        ) from None
    except OSError as e:
        raise fault(e, path, "create the directory") from None
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(file_object)` on a temp file beside `path`, fsync, then rename onto `path`.
    On any failure the previous file at `path`, if any, is left as it was."""
    path = Path(path)
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise fault(e, path, "write") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; use the usual permissions
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise RunError(
                f"{fault(e, path, 'write')} The previous file, if any, is intact."
            ) from None
        raise


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append UTF-8 text to a file (a log line), faults as messages."""
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as e:
        raise fault(e, path, "append to") from None


def load_torch_file(path: str | os.PathLike, what: str) -> Any:
    """`torch.load(weights_only=True)` of a file, with messages that protect the user.

    A file holding pickled code or objects mygpt2 never writes is refused outright; torch's
    own message would suggest `weights_only=False`, the one thing that must not be done with a
    file from an unknown source, so it is not echoed."""
    import pickle

    import torch  # imported here: most of fileio's users never load tensors

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names what it blocked: a GLOBAL (a class or function) or a REDUCE call
        if re.search(r"GLOBAL|REDUCE|Unsupported class|not an allowed global", str(e)):
            raise MyGPT2Error(
                f"refusing to load '{path}': it contains code or objects that mygpt2 never "
                "writes; do not load it with weights_only=False."
            ) from None
        raise MyGPT2Error(f"'{path}' is not a readable {what} (truncated or corrupt).") from None
    except OSError as e:
        raise fault(e, path, "read") from None
    except Exception:  # zip, EOF and format errors: the file is damaged
        raise MyGPT2Error(
            f"'{path}' is not a readable {what} (truncated or corrupt). Use an earlier copy, "
            "or make it again."
        ) from None
