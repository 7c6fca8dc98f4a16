"""Watching the process tree that runs a notebook: memory, disk and process caps, and a
clean kill.

``Watchdog(child, memory_mb, (folder, disk_mb), processes=N)`` samples, five
times a second, the number of processes in the tree of ``child`` (``child``
and all its descendants; the Jupyter kernel runs in a session of its own, so it
is found through its parent, not its process group) and their resident memory
together, and every 0.6 s the space allocated under ``folder``. Over a cap, it
kills the whole tree with ``kill_tree``, which SIGKILLs the child's process
group and every descendant and waits until they are gone.

The processes are counted here rather than capped with ``RLIMIT_NPROC``: that
limit counts every thread of the user (TensorFlow starts dozens), and the kernel
does not apply it to root at all, even inside a user namespace. Inside the
bubblewrap sandbox every process stays in the tree (the sandbox's own process
namespace adopts orphans), and killing the sandbox kills them all; without it, a
process that detaches itself from the tree is no longer counted. A fork bomb
runs for at most one sampling interval before it is stopped.

Resident memory is what is capped, not address space (``RLIMIT_AS``): the kernel
of ``03_train`` reserves about 3 GB of addresses while using 1.1 GB, so a limit
on addresses would either stop honest notebooks or mean little.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading

MAX_FILES = 100_000
"""The most files and folders a working directory under a disk cap may hold."""


class Watchdog:
    """Samples the processes of a tree, their resident memory and the size of a directory;
    kills the tree over ``processes`` processes, ``cap_mb`` of memory or ``disk = (folder,
    cap in MB)``."""

    def __init__(self, child: subprocess.Popen, cap_mb: float | None, disk=(None, None),
                 interval: float = 0.2, processes: int | None = None):
        self.child, self.cap_mb, self.interval = child, cap_mb, interval
        self.folder, self.disk_mb = disk
        self.processes = processes
        self.peak_mb = 0.0
        self.peak_processes = 0
        self.killed = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.child.pid)
        except psutil.Error:
            return
        rounds = 0
        while not self._done.wait(self.interval):
            rounds += 1
            if self.disk_mb is not None and rounds % 3 == 0:
                used = disk_usage(self.folder)
                if used is None or used > self.disk_mb * 2**20:
                    self.killed = "disk"
                    kill_tree(self.child)
                    return
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            self.peak_processes = max(self.peak_processes, len(procs))
            if self.processes is not None and len(procs) > self.processes:
                self.killed = "processes"
                kill_tree(self.child)
                return
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)
            if self.cap_mb is not None and total > self.cap_mb * 2**20:
                self.killed = "memory"
                kill_tree(self.child)
                return

    def stop(self) -> str | None:
        """Stop watching; ``"processes"``, ``"memory"`` or ``"disk"`` if the tree was killed
        over a cap."""
        self._done.set()
        self._thread.join()
        return self.killed


def disk_usage(folder, max_files: int | None = None) -> int | None:
    """Bytes allocated to the files under ``folder`` (symbolic links not followed), or
    ``None`` when it holds more than ``max_files`` entries (default ``MAX_FILES``)."""
    max_files = MAX_FILES if max_files is None else max_files
    total, seen, pending = 0, 0, [str(folder)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    seen += 1
                    if seen > max_files:
                        return None
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                        else:
                            total += entry.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        pass
        except OSError:
            pass
    return total


def kill_tree(child: subprocess.Popen) -> None:
    """SIGKILL the child, its process group and every descendant (the kernel has its own
    session, so the group alone would miss it).

    The tree is first stopped (SIGSTOP), listed again until no new process appears, and
    only then killed: a process still forking would otherwise leave children made after
    the listing, orphaned and running."""
    import psutil

    found: dict = {}
    try:
        root = psutil.Process(child.pid)
        for _ in range(100):
            new = [p for p in [root, *root.children(recursive=True)] if p.pid not in found]
            if not new:
                break
            for proc in new:
                found[proc.pid] = proc
                try:
                    proc.suspend()
                except psutil.Error:
                    pass
    except psutil.Error:
        pass
    descendants = [p for pid, p in found.items() if pid != child.pid]
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for proc in descendants:
        try:
            proc.kill()
        except psutil.Error:
            pass
    try:
        child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    psutil.wait_procs(descendants, timeout=30)  # a killed process may take a moment to go
