"""Tests of vae_helpers.grading.sandbox: the bubblewrap command, the probe, and real isolation.

The isolation tests run real processes in bubblewrap and are skipped, with the
reason, where it does not work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import vae_helpers
from vae_helpers.grading import sandbox

pytestmark = pytest.mark.unit

PACKAGE = Path(vae_helpers.__file__).resolve().parent


def isolated_box() -> sandbox.Sandbox:
    box = sandbox.detect()
    if not box.isolated:
        pytest.skip(f"no sandbox on this machine: {box.note}")
    return box


def test_the_command_binds_the_system_then_tmp_then_the_environment_then_work(tmp_path):
    work, hidden, data = tmp_path / "out" / "work", tmp_path / "ref", tmp_path / "ref" / "d.npz"
    for folder in (work, hidden):
        folder.mkdir(parents=True)
    data.write_bytes(b"x")
    unseen = tmp_path / "elsewhere"
    unseen.mkdir()
    cmd = sandbox.Sandbox("bwrap", ("--unshare-user",)).wrapper(
        work, hide=[hidden, tmp_path / "absent", unseen, tmp_path / "out"], read_only=[data])
    text = " ".join(cmd)
    assert cmd[:2] == ["bwrap", "--unshare-user"] and cmd[-1] == "--"
    assert "--ro-bind / /" not in text and "/root " not in text and "/home" not in text
    assert "--ro-bind /usr /usr" in text and "--tmpfs /tmp" in text
    environment = sandbox.environment_paths()
    assert Path(sys.prefix).resolve() in environment
    order = [text.index(part) for part in (
        "--ro-bind /usr /usr", "--tmpfs /tmp", f"--ro-bind {environment[0]} {environment[0]}",
        f"--tmpfs {hidden}", f"--ro-bind {data} {data}", f"--bind {work} {work}",
        f"--remount-ro {hidden}", "--remount-ro / ", f"--chdir {work}")]
    assert order == sorted(order)
    # hidden paths are covered only where something would show: around a bound path
    assert f"--tmpfs {tmp_path / 'out'}" in text
    assert "absent" not in text and "elsewhere" not in text
    assert not any(a.startswith("/etc/shadow") or a.startswith("/etc/ssl/private")
                   or a == "/etc/passwd" for a in cmd)
    for flag in ("--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session"):
        assert flag in cmd
    assert cmd[cmd.index("--cap-drop") + 1] == "ALL"
    assert sandbox.Sandbox("none").wrapper(work) == []


def test_an_editable_install_binds_the_package_not_the_checkout():
    checkout = PACKAGE.parent
    environment = sandbox.environment_paths()
    assert PACKAGE in environment or any(PACKAGE.is_relative_to(p) for p in environment)
    if (checkout / "pyproject.toml").exists():  # an editable install of a checkout
        assert not any(checkout.is_relative_to(p) for p in environment), environment
    assert Path(sysconfig.get_paths()["purelib"]).resolve().is_relative_to(
        Path(sys.prefix).resolve())


def test_probe_modes(monkeypatch):
    off = sandbox.probe("off")
    assert not off.isolated and "--sandbox off" in off.warning()
    assert "with the grader's permissions" in off.warning()
    assert off.to_dict() == {"kind": "none", "isolated": False, "note": sandbox.OFF_NOTE}
    for mode in ("on", "auto"):
        with pytest.raises(ValueError, match=f"unknown sandbox mode '{mode}'; choose one of "
                                             "require, off"):
            sandbox.probe(mode)
    monkeypatch.setattr(sandbox, "_probed", {})
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    assert sandbox.detect().note == "bubblewrap (bwrap) is not installed"
    with pytest.raises(sandbox.SandboxError) as info:
        sandbox.probe("require")
    message = str(info.value)
    assert message == ("cannot grade in a sandbox: bubblewrap (bwrap) is not installed; "
                       "install bubblewrap (Debian: apt-get install bubblewrap; in a container, "
                       "allow unprivileged user namespaces) or pass --sandbox off to grade "
                       "without isolation")
    assert "\n" not in message


ISOLATION_PROBE = r"""
import json, os, socket, sys
hidden, outside, work, data, package = sys.argv[1:6]
report = {"hidden_listing": os.listdir(hidden), "tmp_listing": os.listdir("/tmp"),
          "data": open(data).read(), "uid": os.getuid()}
def listing(path):
    try:
        return sorted(os.listdir(path))
    except OSError as err:
        return err.strerror
for name in ("/", "/root", "/home", "/etc", os.path.dirname(package)):
    report["list " + name] = listing(name)
for name in ("/etc/shadow", "/etc/passwd", "/root/.gitconfig", "/etc/ssl/private"):
    try:
        open(name).read()
        report["read " + name] = "read"
    except OSError as err:
        report["read " + name] = err.strerror
for name, path in (("outside", outside), ("package", os.path.join(package, "probe.txt")),
                   ("hidden", os.path.join(hidden, "x")), ("data", data), ("root", "/x"),
                   ("usr", "/usr/probe.txt"), ("etc", "/etc/hosts"),
                   ("work", os.path.join(work, "ok.txt")), ("tmp", "/tmp/ok.txt")):
    try:
        with open(path, "a") as f:
            f.write("written")
        report["write " + name] = "written"
    except OSError as err:
        report["write " + name] = err.strerror
try:
    socket.create_connection(("192.0.2.1", 80), timeout=3)
    report["network"] = "connected"
except OSError as err:
    report["network"] = err.strerror or str(err)
import numpy, tensorflow, vae_helpers.grading
report["imported"] = [numpy.__name__, tensorflow.__name__, vae_helpers.__file__]
print(json.dumps(report))
"""


def test_a_sandboxed_process_sees_only_what_it_needs_and_writes_only_its_work(tmp_path):
    box = isolated_box()
    work, hidden = tmp_path / "work", tmp_path / "reference"
    work.mkdir()
    hidden.mkdir()
    (hidden / "records.json").write_text("secret")
    data = hidden / "mnist.npz"
    data.write_text("digits")
    outside = tmp_path / "outside.txt"
    result = subprocess.run(
        [*box.wrapper(work, hide=[hidden], read_only=[data]), sys.executable, "-c",
         ISOLATION_PROBE, str(hidden), str(outside), str(work), str(data), str(PACKAGE)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HOME": "/tmp"})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["hidden_listing"] == ["mnist.npz"]  # only what is bound read-only
    assert report["data"] == "digits" and report["write data"] == "Read-only file system"
    # a fresh /tmp: empty but for the way to the bound directories when they lie in /tmp
    skeleton = [work.relative_to("/tmp").parts[0]] if work.is_relative_to("/tmp") else []
    assert report["tmp_listing"] == skeleton and report["write tmp"] == "written"
    assert report["write work"] == "written" and (work / "ok.txt").read_text() == "written"
    for name in ("package", "hidden", "root", "usr", "etc"):
        assert report["write " + name] == "Read-only file system", name
    # nothing secret: no shadow, no passwd, no private keys, nothing of /root or /home
    # but the way to a bound environment living there
    for name in ("/etc/shadow", "/etc/passwd", "/root/.gitconfig", "/etc/ssl/private"):
        assert report["read " + name] == "No such file or directory", name
    for folder in ("/root", "/home"):
        ways = sorted({p.relative_to(folder).parts[0] for p in sandbox.environment_paths()
                       if p.is_relative_to(folder)})
        assert report["list " + folder] == (ways or "No such file or directory"), folder
    assert "shadow" not in report["list /etc"] and "passwd" not in report["list /etc"]
    assert set(report["list /"]) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32",
                                     "proc", "sbin", "tmp", "usr", "root", "home", "work",
                                     *(p.parts[1] for p in sandbox.environment_paths())}
    beside = report["list " + str(PACKAGE.parent)]
    assert "notebooks" not in beside and "runs" not in beside and ".git" not in beside
    if (PACKAGE.parent / "notebooks").is_dir():  # an editable install: the checkout is hidden
        assert beside == sorted({p.relative_to(PACKAGE.parent).parts[0]  # (and its .venv)
                                 for p in sandbox.environment_paths()
                                 if p.is_relative_to(PACKAGE.parent)})
        assert "vae_helpers" in beside
    assert report["network"] == "Network is unreachable"
    assert report["imported"][:2] == ["numpy", "tensorflow"]
    assert Path(report["imported"][2]).resolve() == PACKAGE / "__init__.py"
    # tmp_path lies in /tmp, which the sandbox replaces: the write went to its own /tmp
    assert not outside.exists() and not (PACKAGE / "probe.txt").exists()
    assert sorted(p.name for p in hidden.iterdir()) == ["mnist.npz", "records.json"]
    assert data.read_text() == "digits"


VENV_PROBE = r"""
import subprocess, sys
from vae_helpers.grading import sandbox
box = sandbox.probe("require")
inner = "import sys, vae_helpers; print(sys.prefix); print(vae_helpers.__file__)"
result = subprocess.run([*box.wrapper(sys.argv[1]), sys.executable, "-c", inner],
                        capture_output=True, text=True, timeout=120)
print(result.returncode, result.stdout.strip().replace("\n", " "), result.stderr.strip())
"""


def test_an_environment_under_tmp_works_inside_the_sandbox(tmp_path):
    """The sandbox's own /tmp must not hide an interpreter that lives in /tmp."""
    isolated_box()
    assert tmp_path.is_relative_to("/tmp"), "the test needs a folder under /tmp"
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    # the new environment reads this one's packages (and its editable install of the package)
    purelib = sysconfig.get_paths()["purelib"]
    site = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "outer.pth").write_text(f"import site; site.addsitedir({purelib!r})\n")
    result = subprocess.run([str(venv / "bin" / "python"), "-c", VENV_PROBE, str(work)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    code, prefix, package = result.stdout.split()[:3]
    assert code == "0", result.stdout
    assert prefix == str(venv) and Path(package).resolve() == PACKAGE / "__init__.py"
