"""Training runs survive real faults: SIGKILL, a full disk, an unwritable directory,
a second run in the same directory.

Every fault is produced for real in a real ``python -m vae_helpers train`` process on
the synthetic MNIST of ``conftest.fake_mnist``, without special privileges:

* SIGKILL: ``Popen.kill`` mid-epoch, and again before any checkpoint exists;
* a full disk: ``RLIMIT_FSIZE`` in the child (with SIGXFSZ ignored, which Python
  does anyway), so that writing the checkpoint fails with EFBIG, even for root;
* an unwritable run directory: ``chmod 0o555`` mid-run; when the tests run as root
  (as in CI), the child gives up the capabilities with which root ignores file
  modes, so the mode applies to it as to any user;
* two runs at once: two directories side by side, and an intruder in a running
  run's directory.

Every run has the settings ``RUN`` and the same seed, so each one that ends well,
however it was interrupted, must end with exactly the numbers of the uninterrupted
reference run (history.csv and metrics.json, wall-clock times aside).
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vae_helpers.__main__ import main
from vae_helpers.outdirs import LOCK_NAME, RunLocked, run_lock
from vae_helpers.runs import load_model
from vae_helpers.training import completed_epochs

pytestmark = pytest.mark.unit

EPOCHS = 4
# 256 steps an epoch, so that an epoch lasts long enough to be killed in its middle.
RUN = ["--epochs", str(EPOCHS), "--n-train", "8192", "--n-test", "256", "--iwae-k", "8",
       "--batch-size", "32", "--hidden-units", "32", "--seed", "7", "--no-progress"]
TIMEOUT_S = 300
TIMING_KEYS = {"wall_seconds", "train_seconds", "command"}


# --- helpers ---------------------------------------------------------------------------------


def child_env(data_path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("VAE_HELPERS_VERBOSE_TF", "TF_CPP_MIN_LOG_LEVEL", "VAE_PROGRESS")}
    env["VAE_MNIST"] = str(data_path)
    return env


def start(out: Path, data_path, *extra, **popen) -> subprocess.Popen:
    """``python -m vae_helpers train --out OUT`` with the settings ``RUN``, in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "vae_helpers", "train", "--out", str(out), *RUN, *extra],
        env=child_env(data_path), cwd=out.parent, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, **popen)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"training did not end within {TIMEOUT_S} s:\n{stderr}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run(out: Path, data_path, *extra, **kwargs) -> subprocess.CompletedProcess:
    return finish(start(out, data_path, *extra, **kwargs))


def wait_for(what, proc: subprocess.Popen) -> float:
    """Poll until ``what`` (a path that must exist, or a function that must return true)
    holds; the monotonic time it was seen. Fail if ``proc`` ends first."""
    holds, label = (what.exists, what) if isinstance(what, Path) else (what, what.__name__)
    deadline = time.monotonic() + TIMEOUT_S
    while not holds():
        if proc.poll() is not None:
            result = finish(proc)
            pytest.fail(f"the run ended (exit {result.returncode}) before {label} held:\n"
                        f"{result.stderr}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{label} did not hold within {TIMEOUT_S} s")
        time.sleep(0.01)
    return time.monotonic()


def checkpointed(out: Path, epoch: int):
    """A condition: the checkpoint of ``epoch`` is complete and recorded as the latest
    (its files alone exist a moment before the state file names it)."""
    def holds() -> bool:
        return completed_epochs(out / "checkpoint") >= epoch
    holds.__name__ = f"{out.name}: checkpoint of epoch {epoch}"
    return holds


def kill(proc: subprocess.Popen) -> None:
    proc.kill()  # SIGKILL: no handler, no cleanup, no flush
    result = finish(proc)
    assert result.returncode == -signal.SIGKILL, \
        f"the run was not killed (exit {result.returncode}); make it longer:\n{result.stderr}"


def numbers(run_dir: Path) -> dict:
    """What must not depend on interruptions: history.csv and metrics.json without times."""
    rows = list(csv.DictReader((run_dir / "history.csv").read_text().splitlines()))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"history": [{k: v for k, v in row.items() if k != "seconds"} for row in rows],
            "metrics": {k: v for k, v in metrics.items() if k not in TIMING_KEYS}}


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def leftovers(directory: Path) -> list[str]:
    """Temporary files and directories of writes that did not complete."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if ".tmp" in p.name or p.name.endswith("_temp") or "tempstate" in p.name)


def assert_checkpoint_restores(run_dir: Path, epoch: int) -> None:
    """The newest checkpoint is that of ``epoch`` and restores every model variable."""
    assert completed_epochs(run_dir / "checkpoint") == epoch
    model = load_model(run_dir)  # asserts that every variable of the model is restored
    assert model.num_parameters > 0


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def pair(base, fake_mnist) -> dict:
    """Two uninterrupted runs side by side; while the second one runs, a third run with
    --force is pointed at its directory (in this process, through the CLI's ``main``)."""
    first, second = base / "first", base / "second"
    procs = {"first": start(first, fake_mnist), "second": start(second, fake_mnist)}
    # The second run holds its lock from before it writes config.json to its end, and
    # compiles for seconds before its first checkpoint: the intruder comes meanwhile.
    wait_for(second / "config.json", procs["second"])
    wait_for(second / "checkpoint" / "fit.json", procs["second"])
    before = files(second)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["train", "--out", str(second), *RUN, "--force", "--data", str(fake_mnist)])
    after = files(second)
    still_running = procs["second"].poll() is None
    results = {name: finish(proc) for name, proc in procs.items()}
    return {"first": first, "second": second, "results": results, "pid": procs["second"].pid,
            "intruder": (code, stderr.getvalue()), "before": before, "after": after,
            "still_running": still_running}


@pytest.fixture(scope="module")
def reference(pair) -> dict:
    """The numbers of an uninterrupted run with the settings ``RUN``."""
    assert_ok(pair["results"]["first"])
    return numbers(pair["first"])


@pytest.fixture(scope="module")
def killed(base, fake_mnist) -> Path:
    """A run SIGKILLed in the middle of an epoch after at least two checkpoints."""
    out = base / "killed"
    proc = start(out, fake_mnist)
    seen_1 = wait_for(checkpointed(out, 1), proc)
    seen_2 = wait_for(checkpointed(out, 2), proc)
    time.sleep((seen_2 - seen_1) / 2)  # half an epoch later
    kill(proc)
    assert 2 <= completed_epochs(out / "checkpoint") < EPOCHS
    return out


# --- two runs at once ------------------------------------------------------------------------


def test_two_runs_in_two_directories_at_once_do_not_interfere(pair, reference):
    assert_ok(pair["results"]["second"])
    assert numbers(pair["second"]) == reference
    for out in (pair["first"], pair["second"]):
        assert {p.name for p in out.iterdir()} == {"config.json", "history.csv",
                                                  "metrics.json", "checkpoint"}
        assert leftovers(out) == []


def test_a_second_run_in_the_same_directory_is_refused_and_touches_nothing(pair, reference):
    code, stderr = pair["intruder"]
    assert pair["still_running"], "the first run ended before the intruder came: no test"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert f"{pair['second']} is in use" in lines[0]
    assert f"pid {pair['pid']}" in lines[0]
    # --force did not delete anything: every file present before is still there unchanged
    # (the running run may have added its first checkpoint meanwhile)
    for name in ("config.json", "checkpoint/fit.json"):
        assert pair["after"][name] == pair["before"][name]
    assert set(pair["before"]) <= set(pair["after"])
    # ... and the first run completed with the numbers of an undisturbed run.
    assert_ok(pair["results"]["second"])
    assert numbers(pair["second"]) == reference
    assert not (pair["second"] / LOCK_NAME).exists()


# --- SIGKILL ---------------------------------------------------------------------------------


def test_sigkill_mid_epoch_then_resume_ends_with_the_uninterrupted_numbers(
        killed, reference, base, fake_mnist):
    out = base / "killed-resumed"
    shutil.copytree(killed, out)
    assert (out / LOCK_NAME).exists(), "a SIGKILLed run leaves its lock file (not its lock)"
    result = run(out, fake_mnist, "--resume")
    assert_ok(result)
    assert numbers(out) == reference
    assert leftovers(out) == []
    assert not (out / LOCK_NAME).exists()


def test_sigkill_before_the_first_checkpoint_then_resume_starts_cleanly(
        reference, base, fake_mnist):
    out = base / "killed-early"
    proc = start(out, fake_mnist)
    wait_for(out / "checkpoint" / "fit.json", proc)  # started, compiling, no checkpoint yet
    kill(proc)
    assert completed_epochs(out / "checkpoint") == 0
    result = run(out, fake_mnist, "--resume")
    assert_ok(result)
    assert "holds no completed epoch to resume; starting a new run" in result.stderr
    assert numbers(out) == reference


# --- a full disk -----------------------------------------------------------------------------


def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_stops_the_run_and_keeps_the_last_good_checkpoint(killed, base, fake_mnist):
    out = base / "full"
    shutil.copytree(killed, out)
    done = completed_epochs(out / "checkpoint")
    # every checkpoint file, the state file that names the latest, fit.json
    kept = {name: data for name, data in files(out / "checkpoint").items()
            if name not in ("history.json", LOCK_NAME)}
    # 64 KiB: room for every JSON file, not for a checkpoint (about 600 KB); one more epoch
    # is trained, then its checkpoint cannot be written.
    result = run(out, fake_mnist, "--resume", preexec_fn=_file_size_limit(64 * 1024))
    line = one_line_error(result, f"checkpoint of epoch {done + 1}",
                          str(out / "checkpoint" / f"ckpt-{done + 1}"), "File too large",
                          f"last good checkpoint ({out / 'checkpoint' / f'ckpt-{done}'}",
                          "--resume")
    assert "intact" in line
    assert_checkpoint_restores(out, done)
    now = files(out / "checkpoint")
    assert {name: data for name, data in now.items() if name != "history.json"} == kept, \
        "a checkpoint file changed, or half a new checkpoint was left"
    rows = json.loads(now["history.json"])  # written before the checkpoint, a row ahead
    assert [row["epoch"] for row in rows] == list(range(1, done + 2))
    assert leftovers(out) == []
    assert not (out / LOCK_NAME).exists()
    # What is left is the killed run's state, from which a resume ends with the reference
    # numbers (test_sigkill_mid_epoch_...), plus one history row that a resume drops.


# --- an unwritable run directory -------------------------------------------------------------


PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _drop_root_file_access():
    """In the child before exec: remove the capabilities with which root ignores file modes
    from the bounding set, which exec keeps (the process stays root, owning its files)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


@pytest.fixture
def obeys_modes(tmp_path) -> dict:
    """Popen arguments for a child whose writes obey file modes (as the user's would):
    nothing for a normal user; for root (as in CI), the capability drop above."""
    if os.geteuid() != 0:
        return {}
    locked = tmp_path / "read-only"
    locked.mkdir(mode=0o555)
    try:
        probe = subprocess.run([sys.executable, "-c", "import sys; open(sys.argv[1], 'w')",
                                str(locked / "x")], preexec_fn=_drop_root_file_access,
                               capture_output=True, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"cannot drop root's file access capabilities here: {err}")
    finally:
        locked.chmod(0o755)
    if probe.returncode == 0:
        pytest.skip("root writes into a read-only directory even without CAP_DAC_OVERRIDE")
    return {"preexec_fn": _drop_root_file_access}


def test_a_run_directory_that_becomes_unwritable_stops_the_run_with_its_checkpoint_intact(
        obeys_modes, reference, base, fake_mnist):
    out = base / "unwritable"
    proc = start(out, fake_mnist, **obeys_modes)
    wait_for(checkpointed(out, 1), proc)
    for directory in (out / "checkpoint", out):
        directory.chmod(0o555)
    try:
        result = finish(proc)
        line = one_line_error(result, "could not write", str(out / "checkpoint"),
                              "Permission denied", "--resume")
        done = completed_epochs(out / "checkpoint")
        assert 1 <= done < EPOCHS
        assert f"last good checkpoint ({out / 'checkpoint' / f'ckpt-{done}'}" in line
        assert_checkpoint_restores(out, done)
    finally:
        for directory in (out, out / "checkpoint"):
            directory.chmod(0o755)
    result = run(out, fake_mnist, "--resume", **obeys_modes)  # writable again: it goes on
    assert_ok(result)
    assert numbers(out) == reference


# --- the lock itself -------------------------------------------------------------------------

HOLD = """
import sys, time
from vae_helpers.outdirs import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def _hold(directory: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_the_lock_refuses_a_second_process_and_a_sigkill_frees_it(tmp_path):
    directory = tmp_path / "run"
    holder = _hold(directory)
    try:
        with pytest.raises(RunLocked) as info, run_lock(directory):
            pass
        assert info.value.pid == holder.pid and info.value.path == directory
        assert str(info.value) == (f"{directory} is in use: another process (pid {holder.pid}) "
                                   "is running in it; wait until it ends, or use another "
                                   "directory")
        assert sorted(p.name for p in directory.iterdir()) == [LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()
    assert (directory / LOCK_NAME).exists()  # the file stays after SIGKILL, the lock does not
    with run_lock(directory) as locked:
        assert locked == directory
        assert json.loads((directory / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert list(directory.iterdir()) == []


def test_the_lock_is_reentrant_in_a_process_and_cleans_up(tmp_path):
    directory = tmp_path / "new"
    with run_lock(directory):
        with run_lock(directory):  # e.g. a pipeline stage inside the pipeline's own lock
            assert (directory / LOCK_NAME).exists()
        assert (directory / LOCK_NAME).exists()
        (directory / "result.txt").write_text("kept")
    assert sorted(p.name for p in directory.iterdir()) == ["result.txt"]
    with run_lock(tmp_path / "empty"):
        pass
    assert not (tmp_path / "empty").exists(), "a directory the lock created, left empty"
