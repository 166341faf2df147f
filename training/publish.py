"""Atomic writes into a model repository.

A server polling ``models/`` must never see a half-written version, and two exports of
the same model must never overwrite each other. So a version is staged in a hidden
directory beside its final place (same file system, so the rename is atomic), every file
and the directory are fsynced, and the directory is renamed to the next free version
number with a rename that refuses to replace an existing entry. Failures surface as
``OSError``; the caller decides how to report them.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from model_repository.layout import STAGING_PREFIX, next_version

LOGGER = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
# How many times to move on to the next number when another writer took ours.
_PUBLISH_ATTEMPTS = 100


def _renameat2() -> Callable[..., int] | None:
    """The C library's renameat2, or None where the C library has none (musl, macOS)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; FileExistsError when ``target`` already exists.

    Uses renameat2(RENAME_NOREPLACE), which is atomic. Where that is unavailable the
    fallback checks then renames: plain rename(2) would silently replace an empty
    directory or a file, and the check leaves only a tiny window for that.
    """
    function = _renameat2()
    if function is not None:
        result = function(
            _AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE
        )
        if result == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), str(target))
        if code not in (errno.EINVAL, errno.ENOSYS):  # EINVAL: file system lacks the flag
            raise OSError(code, os.strerror(code), str(source))
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    try:
        os.rename(source, target)
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(error.errno, error.strerror, str(target)) from error
        raise


def fsync_directory(path: Path) -> None:
    """Make a directory's entries (new files, renames) durable."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_synced(path: Path, data: bytes) -> None:
    """Write a new file and fsync it, so a later rename publishes its full contents."""
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def create_file_atomically(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data`` in one step; FileExistsError when it exists already.

    Readers see either no file or the whole file, never a prefix of it.
    """
    temporary = path.parent / f"{STAGING_PREFIX}{path.name}.{secrets.token_hex(6)}"
    try:
        write_synced(temporary, data)
        rename_noreplace(temporary, path)
        fsync_directory(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def publish_version(model_dir: Path, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` as the next version of the model in ``model_dir``; return its path.

    The version directory appears complete or not at all; an existing version is never
    touched. If another writer takes the number first, the next number is tried. The
    staging directory is removed whatever happens, including KeyboardInterrupt.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=model_dir))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; servers may run as another user
        for name, data in files.items():
            write_synced(staging / name, data)
        fsync_directory(staging)
        for _ in range(_PUBLISH_ATTEMPTS):
            target = model_dir / str(next_version(model_dir))
            try:
                rename_noreplace(staging, target)
            except FileExistsError:
                LOGGER.info("version %s was taken by another writer; trying the next", target)
                continue
            fsync_directory(model_dir)
            return target
        raise FileExistsError(
            errno.EEXIST,
            f"no free version number after {_PUBLISH_ATTEMPTS} attempts",
            str(model_dir),
        )
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
