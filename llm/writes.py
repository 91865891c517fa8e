"""Failed writes, explained: a full disk or a file-size limit named as such, with the file.

torch's zip writer reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc]
... unexpected pos`` and safetensors as a bare ``OSError``; neither says what happened or which
file it was. :func:`explain_write_error` turns any error of a write into an ``OSError`` that
names the file and the cause (``ENOSPC`` when the disk is full).
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
from pathlib import Path
from typing import Any


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def explain_write_error(path: Any, exc: BaseException, what: str = "file") -> OSError:
    """An ``OSError`` naming ``path`` and why writing it failed: disk full (``ENOSPC``), the
    process's file-size limit (``ulimit -f``), or the original error."""
    path = Path(path)
    code = getattr(exc, "errno", None)
    free = _free_bytes(path)
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if code == errno.ENOSPC or (code is None and free is not None and free < 64 * 2**20):
        where = f" ({_mib(free)} free)" if free is not None else ""
        return OSError(
            errno.ENOSPC,
            f"disk full: could not write the {what} {path}{where}; free some space and resume (the files written before it are intact)",
        )
    if code == errno.EFBIG or (soft != resource.RLIM_INFINITY and "unexpected pos" in str(exc)):
        return OSError(
            errno.EFBIG,
            f"file size limit: could not write the {what} {path}: the process may write files of "
            f"at most {_mib(soft)} (ulimit -f); the files written before it are intact",
        )
    return OSError(code or errno.EIO, f"could not write the {what} {path}: {exc}")


def write_guard(path: Any, what: str = "file") -> Any:
    """``with write_guard(path): ...``: a failed write inside raises :func:`explain_write_error`'s
    ``OSError`` (from the original error)."""
    return _Guard(path, what)


class _Guard:
    def __init__(self, path: Any, what: str) -> None:
        self.path, self.what = os.fspath(path), what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is not None and isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, (FileNotFoundError, PermissionError)):
            raise explain_write_error(self.path, exc, self.what) from exc
        return False
