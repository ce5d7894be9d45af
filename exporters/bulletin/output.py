"""Writing a bulletin file atomically: a temp file beside the target, then ``os.replace``;
a reader never sees half a file, and a failure leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from atmfleet.errors import UsageError


def check_folder(folder: Path) -> Path:
    """The output folder, created if missing; refuses one that cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {folder}: cannot create the folder ({exc.strerror})") from None
    if not folder.is_dir():
        raise UsageError(f"--out {folder}: not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--out {folder}: the folder is not writable")
    return folder


def write_atomic(target: Path, data: bytes) -> Path:
    """Write ``data`` to ``target`` through a temp file in the same folder."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None
        raise
    return target
