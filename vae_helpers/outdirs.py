"""Output directories: one process at a time in each, and one rule for what they hold.

Every command that writes a directory (a training run, the pipeline, a grade, a batch of
grades) holds its lock from start to end, and asks ``claim`` whether what is there may
be replaced.

The lock. ``run_lock(path)`` is a context manager. It creates ``path`` if needed, then
takes an exclusive ``fcntl.flock`` on the file ``path/.vae_helpers.lock`` and writes the
holder's pid, host and start time into it; leaving the ``with`` block removes the file
and releases the lock. A second process that asks for the same directory gets
``RunLocked`` at once (it never waits and never touches another file there). The
operating system releases a lock when its process dies, even by SIGKILL, so a killed
run never leaves a stale lock: at most a stale lock *file*, which the next run simply
takes over.

    from vae_helpers.outdirs import RunLocked, run_lock

    with run_lock("runs/homework"):
        ...  # nothing else can run in runs/homework meanwhile

Within one process the lock is re-entrant: a function that takes the lock of a
directory it is already working in does not refuse itself. It needs a local
file system that supports ``flock`` (not every network file system does).

The rule. ``claim(out, force=..., keep=..., refuse=...)``, called with the lock held:
what ``out`` holds is kept when the command continues it (``keep``: ``--resume``, a
batch started again), refused (``refuse`` is raised) unless ``force`` is given, and
replaced (removed; links are removed, never followed) with ``force``. Nothing else in
the package removes what an output directory holds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".vae_helpers.lock"

_held: dict[str, int] = {}  # lock file (real path) -> nesting depth, in this process
_held_guard = threading.Lock()


class RunLocked(RuntimeError):
    """Another process holds the lock of the directory.

    Attributes:
        path: the locked directory.
        holder: what the holder wrote into the lock file (``pid``, ``host``,
            ``started``); empty if it could not be read.
        pid: the holder's process id, or ``None`` if unknown.
    """

    def __init__(self, path, holder: dict | None = None):
        self.path = Path(path)
        self.holder = dict(holder or {})
        self.pid = self.holder.get("pid")
        who = "another process"
        if self.pid is not None:
            who = f"another process (pid {self.pid}"
            host = self.holder.get("host")
            if host and host != socket.gethostname():
                who += f" on {host}"
            who += ")"
        super().__init__(f"{self.path} is in use: {who} is running in it; wait until it "
                         "ends, or use another directory")


def _read_holder(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        holder = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _same_file(fd: int, path: str) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _acquire(directory: Path, lock_file: str) -> int:
    """Open and lock ``lock_file``; the descriptor that holds the lock."""
    while True:
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # the directory was removed meanwhile: make it again
            directory.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLocked(directory, holder) from None
        # A holder removes the file before it unlocks it: if this descriptor's file is
        # no longer the one at the path, it was locked after that removal; try again.
        if _same_file(fd, lock_file):
            return fd
        os.close(fd)


@contextlib.contextmanager
def run_lock(path) -> Iterator[Path]:
    """Hold the exclusive lock of the directory ``path`` for the ``with`` block.

    ``path`` is created if it does not exist (and removed again at the end if it
    is still empty then). Yields ``path`` as a ``Path``.

    Raises:
        RunLocked: another process holds the lock (the message names the directory
            and the holder's pid).
        OSError: the directory or its lock file cannot be created (for example
            ``PermissionError`` in a directory that is not writable).
    """
    directory = Path(path)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    lock_file = os.path.realpath(directory / LOCK_NAME)
    with _held_guard:
        if lock_file in _held:
            _held[lock_file] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield directory
        finally:
            with _held_guard:
                _held[lock_file] -= 1
        return

    try:
        fd = _acquire(directory, lock_file)
        try:
            holder = {"pid": os.getpid(), "host": socket.gethostname(),
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            with contextlib.suppress(OSError):  # a courtesy note: a full disk must not stop us
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
            with _held_guard:
                _held[lock_file] = 1
            try:
                yield directory
            finally:
                with _held_guard:
                    del _held[lock_file]
                # Remove the file while still holding the lock (see _acquire); in a
                # directory that became unwritable it stays, and the next run reuses it.
                with contextlib.suppress(OSError):
                    os.unlink(lock_file)
        finally:
            os.close(fd)  # releases the lock
    finally:
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty: a start that wrote nothing leaves nothing


def claim(out, *, force: bool, refuse: Exception, keep: bool = False, blocking=None,
          replace=None) -> None:
    """May what ``out`` holds be replaced? Call it with ``run_lock(out)`` held.

    Args:
        out: the directory (it exists: the lock made it).
        force: replace what blocks.
        refuse: the error to raise when something blocks and ``force`` is not given (its
            message says what is there and which option to pass).
        keep: the command continues what is there: nothing is checked or removed.
        blocking: the paths that count as an earlier result (default: everything in
            ``out`` but the lock file); nothing blocking means nothing to refuse.
        replace: the paths removed when the claim is granted (default: ``blocking``).

    Raises:
        ``refuse``; OSError: a path could not be removed (``filename`` is that path).
    """
    out = Path(out)
    if keep:
        return
    contents = [p for p in sorted(out.iterdir()) if p.name != LOCK_NAME]
    blocking = contents if blocking is None else list(blocking)
    if blocking and not force:
        raise refuse
    for path in blocking if replace is None else replace:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        except OSError as err:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
