"""Atomic file and directory writes: a reader (or a resumed run) never sees half an artifact."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from cca_tl.errors import CCAError, CorruptFileError, DiskWriteError, LockedError

#: errno values that mean the disk will not take a write: full, over quota, read-only, not permitted, too large.
WRITE_REFUSED = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.filename is None:  # a failed write() names no file: name the one being written
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def refused_writes_explained(directory: str | Path, kept: Callable[[], str]) -> Iterator[None]:
    """Turn a write the disk refuses inside the block (full, read-only, ...) into a :class:`DiskWriteError`
    naming the file, what is kept (``kept()``, asked only then) and how to go on, instead of a traceback
    from wherever the write happened. Other errors pass through unchanged."""
    try:
        yield
    except OSError as error:
        if isinstance(error, CCAError) or error.errno not in WRITE_REFUSED:
            raise
        where = error.filename or f"a file in {directory}"
        raise DiskWriteError(f"Cannot write {where}: {error.strerror}. {kept()} Free space on the disk (or make "
                             f"{directory} writable) and rerun the same command to resume.") from None


def read_json(path: str | Path, repair: str = "restore it from a copy, or delete it to compute it again") -> Any:
    """``path``'s JSON; a torn or hand-broken file is a :class:`CorruptFileError` naming the file, where the
    parse failed and ``repair`` (what the user can do), never a parser's bare traceback."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CorruptFileError(f"{path} is not valid JSON ({error.msg}, line {error.lineno} column "
                               f"{error.colno}): {repair}.") from None
    except UnicodeDecodeError:
        raise CorruptFileError(f"{path} is not a text file: {repair}.") from None


@contextmanager
def held_lock(path: str | Path, what: str) -> Iterator[None]:
    """One writer: an OS lock (``flock``) on ``path`` for the block, with its holder — pid, host, command,
    start — written into the file. A second writer gets a :class:`LockedError` naming the holder at once. A
    process that dies loses its lock with it (the kernel releases it), so a lock file a dead process left
    behind is taken over, with a notice naming it."""
    import fcntl
    import socket
    import sys
    import time

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "holder not written yet"
        handle.close()
        raise LockedError(f"{what} is being written by another process ({holder}). Wait for it to end, or stop "
                          f"it, then run again.") from None
    handle.seek(0)
    left = handle.read().strip()
    if left:
        print(f"[cca-tl] taking over the lock of {what} left by a process that ended ({left})", flush=True)
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), command=" ".join(sys.argv)[:300],
                                 started=time.strftime("%Y-%m-%d %H:%M:%S"))))
    handle.flush()
    try:
        yield
    finally:
        handle.seek(0)
        handle.truncate()  # released cleanly: an empty lock file
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


@contextmanager
def atomic_directory(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging directory; on success it replaces ``path`` in one rename, on error it is removed.

    An existing non-empty ``path`` is refused unless ``overwrite`` (it is then replaced only once the new
    content is complete, so a failure loses nothing).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.staging-", dir=path.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700 directories
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(staging, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def release_freed_memory() -> None:
    """Hand memory the process has freed back to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    glibc keeps freed heap pages for reuse, so resident memory stays at its high-water mark: after loading
    Gemma-3-270M the process held 3.07 GB, of which 0.48 GB was freed conversion buffers (2.59 GB after a
    trim). Costs milliseconds; called after loading a model and after every pipeline stage.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # musl or another libc: nothing to trim
        pass


def cache_dir() -> Path:
    """Where assembled GGUF files and converted tokenizers are cached (``$CCA_TL_CACHE`` overrides)."""
    root = os.environ.get("CCA_TL_CACHE") or Path.home() / ".cache" / "cca_tl"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
