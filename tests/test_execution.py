"""Tests of vae_helpers.course.execution: one notebook in a child process, within its limits.

Each test runs a real kernel on a tiny notebook (a few seconds each).
"""

from __future__ import annotations

import time

import nbformat
import psutil
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from vae_helpers.course import execution, watchdog

pytestmark = pytest.mark.unit


def notebook(path, *cells):
    nbformat.write(new_notebook(cells=[new_code_cell(c) for c in cells], metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}),
        path)
    return path


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_errors_outputs_and_logs_are_reported_and_bounded(tmp_path):
    source = notebook(tmp_path / "n.ipynb",
                      "raise ValueError('first')",
                      "print('a' * 3_000_000)",
                      "import os\nos.write(2, b'e' * 200_000)",
                      "raise KeyError('second')",
                      "print('after the limit')")
    outcome = execution.run_notebook(
        source, tmp_path / "out.ipynb", {}, cwd=tmp_path, allow_errors=True,
        log=tmp_path / "n.log",
        limits=execution.Limits(timeout=120, output_bytes=2**20, log_bytes=10_000))
    assert outcome.status == "error"
    assert outcome.message == "in cell 0 (execution count 1): ValueError: first"
    assert outcome.cell_errors == ["In [1]: ValueError: first", "In [4]: KeyError: 'second'"]
    assert outcome.truncated and outcome.seconds > 0 and outcome.peak_memory_mb > 0
    cells = [c for c in nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
             if c.cell_type == "code"]  # papermill adds markdown notes about the error
    printed = [o for o in cells[1].outputs if o.get("name") == "stdout"]
    assert len(printed[0].text) < 2**20 and set(printed[0].text) == {"a"}  # the beginning
    note = execution.TRUNCATED_NOTE.format(limit="1 MB") + "\n"
    assert cells[1].outputs[-1].text == note and cells[4].outputs[-1].text == note
    assert cells[3].outputs[0].output_type == "error"  # errors are always kept
    log = (tmp_path / "n.log").read_text()
    assert len(log) < 10_200 and log.rstrip().endswith("more bytes were dropped]")


def test_a_notebook_over_its_time_limit_is_killed_with_its_kernel(tmp_path):
    source = notebook(tmp_path / "n.ipynb",
                      "import os\nopen('pid', 'w').write(str(os.getpid()))",
                      "while True:\n    try:\n        pass\n    except KeyboardInterrupt:\n"
                      "        pass")
    started = time.perf_counter()
    outcome = execution.run_notebook(source, tmp_path / "out.ipynb", {}, cwd=tmp_path,
                                     limits=execution.Limits(timeout=6))
    assert outcome.status == "timeout"
    assert outcome.message == "did not finish within its time limit of 6 s"
    assert time.perf_counter() - started < 6 + 40  # stopped, not left running
    assert gone(int((tmp_path / "pid").read_text()))


def test_a_notebook_over_its_memory_cap_is_killed_with_its_kernel(tmp_path):
    source = notebook(tmp_path / "n.ipynb",
                      "import os\nopen('pid', 'w').write(str(os.getpid()))",
                      "hoard = []\nfor _ in range(80):\n    hoard.append(b'x' * 100 * 2**20)")
    outcome = execution.run_notebook(source, tmp_path / "out.ipynb", {}, cwd=tmp_path,
                                     limits=execution.Limits(timeout=120, memory_mb=600))
    assert outcome.status == "memory"
    assert outcome.message == "used more than the memory cap of 600 MB and was stopped"
    assert 600 < outcome.peak_memory_mb < 4000
    assert gone(int((tmp_path / "pid").read_text()))


def test_a_notebook_starting_more_processes_than_its_cap_is_killed_with_them(tmp_path):
    """A real fork loop (each child sleeps, so it stays small) is stopped at the cap."""
    source = notebook(tmp_path / "n.ipynb",
                      "import os\nopen('pid', 'w').write(str(os.getpid()))",
                      "import os, time\nfor i in range(300):\n    if os.fork() == 0:\n"
                      "        open(f'child{i}', 'w').write(str(os.getpid()))\n"
                      "        time.sleep(120)\n        os._exit(0)\n    time.sleep(0.02)\n"
                      "time.sleep(120)")
    started = time.perf_counter()
    outcome = execution.run_notebook(source, tmp_path / "out.ipynb", {}, cwd=tmp_path,
                                     limits=execution.Limits(timeout=100, processes=12))
    assert outcome.status == "processes"
    assert outcome.message == "started more than the cap of 12 processes and was stopped"
    assert time.perf_counter() - started < 60  # stopped at the cap, not at the time limit
    children = [int(p.read_text()) for p in tmp_path.glob("child*") if p.read_text()]
    assert 10 <= len(children) < 300  # the loop ran, and was cut short
    assert gone(int((tmp_path / "pid").read_text()))
    assert all(gone(pid) for pid in children)


def test_files_larger_than_the_limit_cannot_be_written(tmp_path):
    source = notebook(tmp_path / "n.ipynb",
                      "open('big', 'wb').write(b'x' * 3 * 2**20)")
    outcome = execution.run_notebook(source, tmp_path / "out.ipynb", {}, cwd=tmp_path,
                                     limits=execution.Limits(timeout=120, file_bytes=2**20))
    assert outcome.status == "error" and "File too large" in outcome.message
    assert (tmp_path / "big").stat().st_size == 2**20


def test_a_notebook_filling_its_directory_is_killed_at_the_disk_cap(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    source = notebook(tmp_path / "n.ipynb",
                      "import time\nfor i in range(2000):\n"
                      "    open(f'f{i}', 'wb').write(b'x' * 2**20)\n    time.sleep(0.01)")
    outcome = execution.run_notebook(source, tmp_path / "out.ipynb", {}, cwd=work,
                                     limits=execution.Limits(timeout=120, disk_mb=20))
    assert outcome.status == "disk"
    assert outcome.message.startswith("wrote more than the disk cap of 20 MB (or 100,000 files)")
    assert 20 < len(list(work.iterdir())) < 2000


def test_disk_usage_counts_allocated_bytes_and_stops_at_too_many_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "data").write_bytes(b"x" * 100_000)
    (tmp_path / "sparse").open("wb").truncate(10**9)  # a gigabyte of nothing on disk
    (tmp_path / "link").symlink_to("/usr")
    used = watchdog.disk_usage(tmp_path)
    assert 100_000 <= used < 200_000
    assert watchdog.disk_usage(tmp_path, max_files=3) is None
