"""The sandbox untrusted notebooks run in: bubblewrap, or nothing only when asked for.

With bubblewrap (``bwrap``, Debian package ``bubblewrap``), a submission's
executing process starts from an empty, read-only root and sees only

* the system's programs and libraries, read-only: ``/usr`` and the merged-usr
  links ``/bin``, ``/sbin``, ``/lib``, ``/lib64`` (bound as directories where they
  are not links), and of ``/etc`` only what Python, the Jupyter kernel and
  papermill read (``ETC_FILES``: the dynamic linker's cache, time zone, name
  service and ``hosts`` for the loopback, CA certificates, fonts);
* the Python environment, read-only (``environment_paths``): ``sys.prefix``,
  ``sys.base_prefix``, the real interpreter and every directory on the
  interpreter's own ``sys.path``; of an editable install of this package only the
  ``vae_helpers`` directory, not the checkout around it (its notebooks, runs and
  ``.git`` stay out of sight);
* its own working directory, read-write, and the paths given as ``read_only``
  (the data file), read-only;
* a fresh, size-limited ``/tmp`` (a tmpfs), a minimal ``/dev`` and its own ``/proc``.

The environment, the data and the working directory are bound after the tmpfs
``/tmp``, so a checkout or a virtual environment under ``/tmp`` works. Nothing
else exists inside: not ``/root``, ``/home`` (but the way to a bound environment
that lives there), ``/etc/shadow``, other projects, the reference run, the other
submissions or the grades. Paths given as ``hide`` that would still show (inside
a bound directory, or around a bound path) become empty read-only directories
(files: ``/dev/null``).

The process also gets no network (``--unshare-net``: only its own loopback,
where the Jupyter kernel and papermill talk), its own process, IPC and host-name
namespaces, no capabilities (``--cap-drop ALL``), where possible no user
namespaces of its own (``--unshare-user --disable-userns``), a new terminal
session, and it dies with the grader (``--die-with-parent``).

``probe`` tries bubblewrap once per process (inside some containers it cannot
create namespaces). Grading refuses to start without it (``SandboxError``, one
line saying how to install it) unless the sandbox is turned off explicitly
(``--sandbox off``); then submissions run as plain child processes with the
grader's permissions, and the grade says so. ``detect`` reports what works
here without raising (for tests and diagnostics).
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

MODES = ("require", "off")
TMP_SIZE = 512 * 2**20
"""Bytes of the sandbox's own ``/tmp`` (kept in memory by the kernel)."""
SYSTEM_DIRS = ("/usr",)
MERGED_USR = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""Links into ``/usr`` on a merged-usr system (recreated as links), else directories."""
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone",
             "nsswitch.conf", "host.conf", "hosts", "gai.conf", "protocols", "services",
             "ssl/certs", "ssl/openssl.cnf", "fonts", "mime.types",
             f"python{sys.version_info.major}.{sys.version_info.minor}")
"""What of ``/etc`` the sandbox shows, where it exists (``python3.N``: a Debian Python's
``sitecustomize``). Not ``passwd``, ``shadow``, ``ssl/private`` or anything else."""
OFF_NOTE = "the sandbox is off (--sandbox off)"
"""The note of a grade made without the sandbox (``grade.json`` and the report)."""
INSTALL_HINT = ("install bubblewrap (Debian: apt-get install bubblewrap; in a container, "
                "allow unprivileged user namespaces) or pass --sandbox off to grade without "
                "isolation")

# Tried in this order; the first that works is used.
_USER_FLAGS = (("--unshare-user", "--disable-userns"), ())
_ISOLATION = ("--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
              "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--cap-drop", "ALL")
# Run inside the sandbox by the probe: Python starts, / is read-only, loopback works.
_PROBE = ("import os, socket\n"
          "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); s.close()\n"
          "assert os.statvfs('/usr').f_flag & os.ST_RDONLY\n"
          "assert os.statvfs('/').f_flag & os.ST_RDONLY\n")
_SYS_PATH = "import json, sys; print(json.dumps(sys.path))"

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
            hide: paths it must not see; those that would show (inside a bound directory,
                or around a bound path) become empty read-only directories (files:
                ``/dev/null``).
            read_only: paths bound read-only (e.g. the data file), wherever they lie.
        """
        if not self.isolated:
            return []
        work = Path(work_dir).resolve()
        cmd = ["bwrap", *self.flags]
        for name in SYSTEM_DIRS:
            cmd += ["--ro-bind", name, name]
        for name in MERGED_USR:
            path = Path(name)
            if path.is_symlink():
                cmd += ["--symlink", str(path.readlink()), name]
            elif path.is_dir():
                cmd += ["--ro-bind", name, name]
        for name in ETC_FILES:
            if (Path("/etc") / name).exists():
                cmd += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        cmd += ["--dev", "/dev", "--proc", "/proc", "--size", str(TMP_SIZE), "--tmpfs", "/tmp"]
        shown = [Path(p) for p in SYSTEM_DIRS]
        for path in environment_paths():
            cmd += ["--ro-bind", str(path), str(path)]
            shown.append(path)
        extra = [p for p in (Path(p).resolve() for p in read_only) if p.exists()]
        hidden_dirs = []
        kept: list[Path] = []  # a path inside one already hidden needs no mount of its own
        for path in sorted({Path(p).resolve() for p in hide}, key=lambda p: len(p.parts)):
            if any(path.is_relative_to(k) for k in kept) or not path.exists():
                continue
            if not (any(path.is_relative_to(s) for s in shown)
                    or any(b.is_relative_to(path) for b in [work, *extra])):
                continue  # not visible inside anyway
            kept.append(path)
            if path.is_dir():
                cmd += ["--tmpfs", str(path)]
                hidden_dirs.append(str(path))
            else:
                cmd += ["--ro-bind", "/dev/null", str(path)]
        for path in extra:
            cmd += ["--ro-bind", str(path), str(path)]
        cmd += ["--bind", str(work), str(work)]
        for path in hidden_dirs:
            cmd += ["--remount-ro", path]
        # the root holds only the mount points: read-only, so nothing can be stored there
        cmd += ["--remount-ro", "/"]
        return [*cmd, *_ISOLATION, "--chdir", str(work), "--"]

    def warning(self) -> str | None:
        """The one-line warning to show once when submissions run unsandboxed."""
        if self.isolated:
            return None
        return (f"warning: {self.note}: submissions run as plain child processes with the "
                "grader's permissions (they can read and change whatever the grader can)")

    def to_dict(self) -> dict:
        """The ``sandbox`` entry of ``grade.json``."""
        return {"kind": self.kind, "isolated": self.isolated, "note": self.note}


@functools.cache
def environment_paths() -> tuple[Path, ...]:
    """The directories and files of the Python environment the sandbox binds read-only.

    ``sys.prefix``, ``sys.base_prefix``, the real interpreter, and each existing entry
    of the interpreter's own ``sys.path`` (asked of ``python -I``, as the sandboxed
    interpreter starts with neither the grader's working directory nor
    ``PYTHONPATH``). An entry outside both prefixes that holds this package (an
    editable install's checkout) is replaced by the package's directory. Paths inside
    another one, or inside ``/usr``, are left out.
    """
    import vae_helpers

    package = Path(vae_helpers.__file__).resolve().parent
    prefixes = [Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
    try:
        found = subprocess.run([sys.executable, "-I", "-c", _SYS_PATH], capture_output=True,
                               text=True, timeout=120, stdin=subprocess.DEVNULL)
        entries = json.loads(found.stdout) if found.returncode == 0 else []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        entries = []
    if not entries:  # the grader's own, without its working directory
        entries = sys.path[1:]
    paths = [*prefixes, Path(sys.executable).resolve(), package]
    for entry in entries:
        if not entry:
            continue
        path = Path(entry).resolve()
        if not path.exists():
            continue
        if package.is_relative_to(path) and not any(path.is_relative_to(p) for p in prefixes):
            path = package
        paths.append(path)
    kept: list[Path] = []
    for path in sorted(set(paths), key=lambda p: (len(p.parts), str(p))):
        if path == Path("/") or any(path.is_relative_to(k) for k in
                                    [*kept, *map(Path, SYSTEM_DIRS)]):
            continue
        kept.append(path)
    return tuple(kept)


def probe(mode: str = "require") -> Sandbox:
    """The sandbox to grade with, trying bubblewrap once per process.

    Args:
        mode: ``require`` (bubblewrap, or ``SandboxError``) or ``off`` (none, said
            so in every grade).

    Raises:
        SandboxError: ``mode == "require"`` and bubblewrap does not work here.
        ValueError: an unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"unknown sandbox mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "off":
        return Sandbox("none", note=OFF_NOTE)
    found = detect()
    if not found.isolated:
        raise SandboxError(f"cannot grade in a sandbox: {found.note}; {INSTALL_HINT}")
    return found


def detect() -> Sandbox:
    """The bubblewrap sandbox if it works here, else ``Sandbox("none")`` saying why
    (tried once per process; never raises)."""
    if "result" not in _probed:
        _probed["result"] = _try_bwrap()
    return _probed["result"]


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
