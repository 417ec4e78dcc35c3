"""Files written whole or not at all.

`atomic_write` is how every output of mygpt2 reaches the disk (checkpoints, tokenizer files,
metrics, plots, exported weights): the bytes go to a temporary file in the same directory,
are flushed and fsynced, and the file is renamed over the target. A crash, a kill or a full
disk at any moment leaves the previous file whole.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from mygpt2.errors import MyGPT2Error


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(file_object)` on a temp file beside `path`, fsync, then rename onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
            raise MyGPT2Error(
                f"could not write '{path}': {e.strerror or e}. The previous file, if any, is "
                "intact. Free some disk space or choose another --out_dir."
            ) from None
        raise
