"""The sandbox untrusted notebooks run in: bubblewrap where it works, and a warning where not.

With bubblewrap (``bwrap``, Debian package ``bubblewrap``), a submission's
executing process sees

* the whole file system read-only (``--ro-bind / /``), except its own working
  directory, bound read-write;
* a fresh, size-limited ``/tmp`` (a tmpfs), a minimal ``/dev`` and its own ``/proc``;
* empty, read-only directories in place of the paths the grader hides from it
  (the reference run, the other submissions and their grades), so it can
  neither read nor change them;
* no network (``--unshare-net``: only its own loopback, where the Jupyter kernel
  and papermill talk), its own process, IPC and host-name namespaces, no
  capabilities (``--cap-drop ALL``), where possible no user namespaces of its own
  (``--unshare-user --disable-userns``), and a new terminal session;
* death with the grader (``--die-with-parent``).

``probe`` tries this once per process (inside some containers bubblewrap cannot
create namespaces) and returns the ``Sandbox`` to use. Where it fails, the
grader runs submissions as plain child processes, with the grader's
permissions, and says so once.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

MODES = ("auto", "require", "off")
TMP_SIZE = 512 * 2**20
"""Bytes of the sandbox's own ``/tmp`` (kept in memory by the kernel)."""

# Tried in this order; the first that works is used.
_USER_FLAGS = (("--unshare-user", "--disable-userns"), ())
_ISOLATION = ("--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
              "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--cap-drop", "ALL")
# Run inside the sandbox by the probe: Python starts, / is read-only, loopback works.
_PROBE = ("import os, socket\n"
          "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); s.close()\n"
          "assert os.statvfs('/usr').f_flag & os.ST_RDONLY\n")

_probed: dict = {}


class SandboxError(RuntimeError):
    """A sandbox was required but cannot be used here."""


@dataclass(frozen=True)
class Sandbox:
    """How submissions are run.

    Attributes:
        kind: ``"bwrap"`` or ``"none"``.
        flags: the user-namespace flags that worked in the probe (bwrap only).
        note: why there is no sandbox (``kind == "none"``).
    """

    kind: str
    flags: tuple = ()
    note: str = ""

    @property
    def isolated(self) -> bool:
        """Whether submissions run inside bubblewrap."""
        return self.kind == "bwrap"

    def wrapper(self, work_dir, hide=(), read_only=()) -> list[str]:
        """The command prefix that runs a program in the sandbox (``[]`` without one).

        Args:
            work_dir: the only directory the program may write (besides its ``/tmp``).
            hide: directories replaced by empty read-only ones (files by ``/dev/null``).
            read_only: paths bound read-only after hiding (e.g. the data file, when it
                lies under ``/tmp`` or a hidden directory).
        """
        if not self.isolated:
            return []
        work = str(Path(work_dir).resolve())
        cmd = ["bwrap", *self.flags, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
               "--size", str(TMP_SIZE), "--tmpfs", "/tmp"]
        hidden_dirs = []
        kept: list[Path] = []  # a path inside one already hidden needs no mount of its own
        for path in sorted({Path(p).resolve() for p in hide}, key=lambda p: len(p.parts)):
            if any(path.is_relative_to(k) for k in kept):
                continue
            kept.append(path)
            if path.is_dir():
                cmd += ["--tmpfs", str(path)]
                hidden_dirs.append(str(path))
            elif path.exists():
                cmd += ["--ro-bind", "/dev/null", str(path)]
        for path in (Path(p).resolve() for p in read_only):
            if path.exists():
                cmd += ["--ro-bind", str(path), str(path)]
        cmd += ["--bind", work, work]
        for path in hidden_dirs:
            cmd += ["--remount-ro", path]
        return [*cmd, *_ISOLATION, "--chdir", work, "--"]

    def warning(self) -> str | None:
        """The one-line warning to show once when submissions run unsandboxed."""
        if self.isolated:
            return None
        return (f"warning: {self.note}: submissions run as plain child processes with the "
                "grader's permissions (they can read and change whatever the grader can)")


def probe(mode: str = "auto") -> Sandbox:
    """The sandbox to use, trying bubblewrap once per process.

    Args:
        mode: ``auto`` (bubblewrap if it works, else none), ``require`` (bubblewrap or
            ``SandboxError``) or ``off`` (none).

    Raises:
        SandboxError: ``mode == "require"`` and bubblewrap does not work here.
        ValueError: an unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"unknown sandbox mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "off":
        return Sandbox("none", note="the sandbox is off (--sandbox off)")
    if "result" not in _probed:
        _probed["result"] = _try_bwrap()
    found = _probed["result"]
    if mode == "require" and not found.isolated:
        raise SandboxError(f"{found.note}; install it (Debian: apt-get install bubblewrap) "
                           "or choose --sandbox auto")
    return found


def _try_bwrap() -> Sandbox:
    if shutil.which("bwrap") is None:
        return Sandbox("none", note="bubblewrap (bwrap) is not installed")
    problem = ""
    for flags in _USER_FLAGS:
        trial = Sandbox("bwrap", flags)
        with tempfile.TemporaryDirectory(prefix="vae-sandbox-probe-") as work:
            cmd = [*trial.wrapper(work), sys.executable, "-c", _PROBE]
            try:
                result = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                                        stdin=subprocess.DEVNULL)
            except (OSError, subprocess.TimeoutExpired) as err:
                problem = str(err)
                continue
        if result.returncode == 0:
            return trial
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        problem = lines[-1][:200] if lines else f"exit code {result.returncode}"
    return Sandbox("none", note=f"bubblewrap (bwrap) does not work here ({problem})")
