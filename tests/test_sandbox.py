"""Tests of vae_helpers.grading.sandbox: the bubblewrap command, the probe, and real isolation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vae_helpers.grading import sandbox

pytestmark = pytest.mark.unit


def test_the_command_hides_then_binds_then_locks(tmp_path):
    work, hidden, data = tmp_path / "out" / "work", tmp_path / "ref", tmp_path / "d.npz"
    for folder in (work, hidden):
        folder.mkdir(parents=True)
    data.write_bytes(b"x")
    cmd = sandbox.Sandbox("bwrap", ("--unshare-user",)).wrapper(
        work, hide=[hidden, tmp_path / "absent"], read_only=[data])
    text = " ".join(cmd)
    assert cmd[:2] == ["bwrap", "--unshare-user"] and cmd[-1] == "--"
    assert "--ro-bind / /" in text and "--tmpfs /tmp" in text
    order = [text.index(part) for part in (
        "--tmpfs /tmp", f"--tmpfs {hidden}", f"--ro-bind {data} {data}",
        f"--bind {work} {work}", f"--remount-ro {hidden}", f"--chdir {work}")]
    assert order == sorted(order)
    assert "absent" not in text
    for flag in ("--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session"):
        assert flag in cmd
    assert cmd[cmd.index("--cap-drop") + 1] == "ALL"
    assert sandbox.Sandbox("none").wrapper(work) == []


def test_probe_modes(monkeypatch):
    off = sandbox.probe("off")
    assert not off.isolated and "--sandbox off" in off.warning()
    assert "with the grader's permissions" in off.warning()
    with pytest.raises(ValueError, match="unknown sandbox mode 'on'"):
        sandbox.probe("on")
    monkeypatch.setattr(sandbox, "_probed", {})
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    assert sandbox.probe("auto").note == "bubblewrap (bwrap) is not installed"
    with pytest.raises(sandbox.SandboxError, match="not installed; install it .*apt-get"):
        sandbox.probe("require")


ISOLATION_PROBE = r"""
import json, os, socket, sys
hidden, outside, work, data = sys.argv[1:5]
report = {"hidden_listing": os.listdir(hidden), "tmp_listing": os.listdir("/tmp"),
          "data": open(data).read()}
package = os.path.join(os.path.dirname(sys.argv[5]), "sandbox-probe.txt")
for name, path in (("outside", outside), ("package", package),
                   ("hidden", os.path.join(hidden, "x")),
                   ("home", os.path.join(os.path.expanduser("~"), "vae-sandbox-test")),
                   ("work", os.path.join(work, "ok.txt")), ("tmp", "/tmp/ok.txt")):
    try:
        with open(path, "w") as f:
            f.write("written")
        report[name] = "written"
    except OSError as err:
        report[name] = err.strerror
try:
    socket.create_connection(("192.0.2.1", 80), timeout=3)
    report["network"] = "connected"
except OSError as err:
    report["network"] = err.strerror or str(err)
print(json.dumps(report))
"""


def test_a_sandboxed_process_writes_only_its_work_directory(tmp_path):
    box = sandbox.probe("auto")
    if not box.isolated:
        pytest.skip(f"no sandbox on this machine: {box.note}")
    work, hidden = tmp_path / "work", tmp_path / "reference"
    work.mkdir()
    hidden.mkdir()
    (hidden / "records.json").write_text("secret")
    data = hidden / "mnist.npz"
    data.write_text("digits")
    outside = tmp_path / "outside.txt"
    result = subprocess.run(
        [*box.wrapper(work, hide=[hidden], read_only=[data]), sys.executable, "-c",
         ISOLATION_PROBE, str(hidden), str(outside), str(work), str(data), sandbox.__file__],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["hidden_listing"] == ["mnist.npz"]  # only what is bound read-only
    assert report["data"] == "digits"
    # a fresh /tmp: empty but for the way to the bound directories when they lie in /tmp
    skeleton = [work.relative_to("/tmp").parts[0]] if work.is_relative_to("/tmp") else []
    assert report["tmp_listing"] == skeleton and report["tmp"] == "written"
    assert report["work"] == "written" and (work / "ok.txt").read_text() == "written"
    assert report["package"] == report["hidden"] == report["home"] == "Read-only file system"
    assert report["network"] == "Network is unreachable"
    # tmp_path lies in /tmp, which the sandbox replaces: the write went to its own /tmp
    assert not outside.exists() and not (Path(sandbox.__file__).parent / "sandbox-probe.txt"
                                         ).exists()
    assert sorted(p.name for p in hidden.iterdir()) == ["mnist.npz", "records.json"]
