"""One notebook executed with papermill in a child process, within limits.

``run_notebook`` starts ``python -m vae_helpers.course.execution JOB`` (optionally behind
a wrapper command such as a ``bwrap`` sandbox), which runs papermill on the
project's ``python3`` kernel and writes a small result file. The parent waits,
and enforces what the child cannot be trusted to enforce on itself:

* a wall-clock time limit: the child's whole process tree is killed when it is
  exceeded (papermill's per-cell timeout is set to the same value);
* a memory cap, a disk cap and a cap on processes: ``vae_helpers.course.watchdog``
  samples the number of processes of the tree, their resident memory and the size
  of the working directory, and kills the tree when one goes over its cap (a fork
  bomb included);
* bounded logs: with a ``log`` file, the child's stdout and stderr (and so the
  kernel's own, which it inherits) go through a pipe of which only the first
  ``Limits.log_bytes`` are kept.

In the child, ``Limits.output_bytes`` caps what the executed notebook keeps of
its outputs (streams, images, errors): beyond it, further outputs are dropped and
the cell shows ``[output truncated ...]``; ``Limits.file_bytes`` caps the size of
any one file the notebook writes (RLIMIT_FSIZE). ``allow_errors`` lets the cells
after a failing one run too (the failure is still reported). The pipeline runs
its stages through here, and so does the grader, with all limits set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vae_helpers import io
from vae_helpers.course.watchdog import MAX_FILES, Watchdog, kill_tree

KERNEL = "python3"
TRUNCATED_NOTE = "[output truncated: the notebook's outputs reached {limit}; the rest is dropped]"
_ENGINE = "vae_helpers_limited"
# Seconds to wait for a cell's last outputs once it has finished (nbclient's default, 4 s,
# is too short for a cell that printed hundreds of megabytes; the wall clock still rules).
IOPUB_TIMEOUT = 60
_OUTPUT_TYPES = {"stream", "display_data", "execute_result", "update_display_data", "error"}


@dataclass(frozen=True)
class Limits:
    """What one notebook may use. ``None`` means no limit.

    Attributes:
        timeout: seconds of wall-clock time (also papermill's time limit per cell).
        grace: extra seconds before the process tree is killed, so that a cell that
            times out is reported by papermill, naming the cell.
        memory_mb: cap on the resident memory of the whole process tree.
        disk_mb: cap on what the working directory may hold.
        output_bytes: what the executed notebook keeps of all its outputs.
        file_bytes: the largest file the notebook may write.
        log_bytes: what is kept of the processes' own stdout and stderr.
        processes: cap on the processes of the tree at once (the executing process,
            the kernel and a sandbox's own included).
    """

    timeout: float
    grace: float = 0.0
    memory_mb: float | None = None
    disk_mb: float | None = None
    output_bytes: int | None = None
    file_bytes: int | None = None
    log_bytes: int | None = None
    processes: int | None = None


@dataclass
class Outcome:
    """How the execution of one notebook ended.

    Attributes:
        status: ``ok``, ``error`` (a cell raised), ``timeout``, ``memory``, ``disk`` or
            ``processes`` (over the cap, killed) or ``crashed`` (the executing process died without
            a report).
        message: one line saying what happened (``None`` when ``ok``).
        cell_errors: one line per cell that raised: ``In [N]: Name: message``, N the
            cell's execution count.
        truncated: whether outputs were dropped over ``Limits.output_bytes``.
        seconds: wall-clock time.
        peak_memory_mb: the largest resident memory of the process tree seen.
        exit_code: the executing process's exit code (negative: killed by that signal).
    """

    status: str
    message: str | None = None
    cell_errors: list = field(default_factory=list)
    truncated: bool = False
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    exit_code: int | None = None


def run_notebook(source, target, parameters: dict, *, cwd, limits: Limits, env=None,
                 wrapper=(), progress: bool = False, allow_errors: bool = False,
                 kernel_log=None, log=None) -> Outcome:
    """Execute ``source`` into ``target`` in a child process; never raises for what the
    notebook does.

    Args:
        source, target: the notebook to run and where papermill writes it executed.
        parameters: papermill parameters (only those the notebook declares, please).
        cwd: the working directory of the kernel.
        limits: time, memory, output, file-size and log limits.
        env: the child's environment (default: this process's).
        wrapper: a command the child runs behind, e.g. a sandbox.
        progress: papermill's per-cell progress bar (on this terminal).
        allow_errors: run the cells after one that raised.
        kernel_log: a file the child sends its stderr to (the kernel's chatter),
            leaving stdout on this terminal.
        log: a file that receives the first ``limits.log_bytes`` of the child's
            stdout and stderr through a pipe (used instead of ``kernel_log``).
    """
    source, target, cwd = Path(source).absolute(), Path(target).absolute(), Path(cwd).absolute()
    result = target.with_name(target.name + ".result.json")
    result.unlink(missing_ok=True)
    job = {"source": str(source), "target": str(target), "parameters": parameters,
           "timeout": limits.timeout, "progress": progress, "result": str(result),
           "cwd": str(cwd), "allow_errors": allow_errors, "kernel_log": kernel_log and
           str(kernel_log), "output_bytes": limits.output_bytes, "file_bytes": limits.file_bytes}
    outcome = run_limited(
        [*wrapper, sys.executable, "-m", "vae_helpers.course.execution", json.dumps(job)],
        disk_dir=cwd, env=env, limits=limits, log=log, pipe=log is not None)
    report = _read_result(result)
    result.unlink(missing_ok=True)
    outcome.cell_errors = report.get("cell_errors", [])
    outcome.truncated = bool(report.get("truncated"))
    if outcome.status != "ok":  # stopped by a limit: run_limited said which
        return outcome
    if report.get("error") and "timed out while it was being executed" in report["error"]:
        outcome.status = "timeout"
        outcome.message = f"did not finish within its time limit of {limits.timeout:g} s"
    elif report.get("error"):
        outcome.status = "error"
        outcome.message = report["error"]
    elif not report.get("finished"):
        outcome.status = "crashed"
        outcome.message = ("stopped without reporting why (the executing process exited "
                           f"with code {outcome.exit_code})")
    return outcome


def run_limited(command, *, disk_dir, limits: Limits, cwd=None, env=None, log=None,
                pipe: bool = True) -> Outcome:
    """Run ``command`` (in ``cwd``, default this process's) in a new session under
    ``limits``: its process tree is killed at ``limits.timeout + limits.grace`` seconds,
    or by the watchdog over the memory, disk (of ``disk_dir``) or process caps. With
    ``pipe``, its stdout and stderr go through a pipe into ``log`` (the first
    ``limits.log_bytes``; nowhere without ``log``); else to this terminal.

    Returns:
        An ``Outcome`` with ``status`` ``ok`` (it exited by itself, whatever its code) or
        the limit that stopped it, and that limit's one-line ``message``.
    """
    started = time.perf_counter()
    child = subprocess.Popen(
        command, cwd=cwd, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if pipe else None, stderr=subprocess.STDOUT if pipe else None)
    drain = None
    if pipe:
        drain = threading.Thread(target=_drain, daemon=True, args=(
            child.stdout, Path(log) if log else Path(os.devnull), limits.log_bytes))
        drain.start()
    watch = Watchdog(child, limits.memory_mb, (disk_dir, limits.disk_mb),
                     processes=limits.processes)
    try:
        child.wait(timeout=limits.timeout + limits.grace)
        killed = watch.stop()
    except subprocess.TimeoutExpired:
        watch.stop()
        kill_tree(child)
        killed = "timeout"
    except BaseException:
        watch.stop()
        kill_tree(child)
        raise
    finally:
        if drain is not None:
            drain.join(timeout=30)
    messages = {  # how each limit stops a run (only a limit that is set can)
        "timeout": lambda: f"did not finish within its time limit of {limits.timeout:g} s",
        "memory": lambda: (f"used more than the memory cap of {limits.memory_mb:g} MB and "
                           "was stopped"),
        "processes": lambda: (f"started more than the cap of {limits.processes} processes "
                              "and was stopped"),
        "disk": lambda: (f"wrote more than the disk cap of {limits.disk_mb:g} MB (or "
                         f"{MAX_FILES:,} files) into its working directory and was stopped")}
    return Outcome(killed or "ok", message=messages[killed]() if killed else None,
                   seconds=round(time.perf_counter() - started, 1),
                   peak_memory_mb=round(watch.peak_mb, 1), exit_code=child.returncode)


def _read_result(path: Path) -> dict:
    """The child's report, checked: it is written where the notebook can write too."""
    try:
        if path.is_symlink() or path.stat().st_size > 1_000_000:
            return {}
        raw = io.read_json(path)
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    errors = raw.get("cell_errors")
    return {"finished": raw.get("finished") is True,
            "error": str(raw["error"])[:500] if raw.get("error") else None,
            "truncated": raw.get("truncated") is True,
            "cell_errors": [str(e)[:500] for e in errors[:50]] if isinstance(errors, list)
            else []}


def _drain(stream, path: Path, limit: int | None) -> None:
    """Copy ``stream`` to ``path``, keeping the first ``limit`` bytes and counting the rest."""
    kept = dropped = 0
    with open(path, "wb") as out:
        for chunk in iter(lambda: stream.read(65536), b""):
            room = len(chunk) if limit is None else max(0, min(len(chunk), limit - kept))
            out.write(chunk[:room])
            kept += room
            dropped += len(chunk) - room
        if dropped:
            out.write(f"\n[log truncated: {dropped} more bytes were dropped]\n".encode())
    stream.close()


# --------------------------------------------------------------------------- the child's side
def _limited_engine(output_bytes: int | None):
    """A papermill engine whose client stops keeping outputs beyond ``output_bytes``."""
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, logger
    from papermill.utils import merge_kwargs, remove_args

    limit_text = f"{output_bytes / 2**20:g} MB" if output_bytes else ""

    class LimitedClient(PapermillNotebookClient):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.used = 0  # bytes of output kept so far
            self.truncated_cells = set()

        def process_message(self, msg, cell, cell_index):
            kind = msg.get("msg_type")
            if output_bytes is None or kind not in _OUTPUT_TYPES:
                return super().process_message(msg, cell, cell_index)
            content = msg.get("content", {})
            if kind == "error":  # always kept, so that the failure is reported; bounded
                content["evalue"] = str(content.get("evalue", ""))[:2000]
                content["traceback"] = [str(t)[:2000] for t in content.get("traceback", [])[-20:]]
            size = len(json.dumps(content, default=str))
            if kind == "error" or self.used + size <= output_bytes:
                self.used += size
                return super().process_message(msg, cell, cell_index)
            room = output_bytes - self.used
            self.used = output_bytes
            result = None
            if kind == "stream" and room > 0:  # keep the beginning of the text
                content["text"] = str(content.get("text", ""))[:room]
                result = super().process_message(msg, cell, cell_index)
            if cell_index not in self.truncated_cells:
                self.truncated_cells.add(cell_index)
                cell.outputs.append(_stream(TRUNCATED_NOTE.format(limit=limit_text)))
            return result

    class LimitedEngine(NBClientEngine):
        client = None

        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False,
                                     stdout_file=None, stderr_file=None, start_timeout=60,
                                     execution_timeout=None, **kwargs):
            kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
            options = merge_kwargs(kwargs, timeout=execution_timeout,
                                   startup_timeout=start_timeout, kernel_name=kernel_name,
                                   log=logger, log_output=log_output, stdout_file=stdout_file,
                                   stderr_file=stderr_file)
            cls.client = LimitedClient(nb_man, **options)
            return cls.client.execute()

    return LimitedEngine


def _stream(text: str):
    import nbformat

    return nbformat.v4.new_output("stream", name="stderr", text=text + "\n")


def _execute_in_child(job: dict) -> None:
    """Run papermill as ``job`` says and write a one-line account of the result."""
    import logging
    import resource

    # jsonschema imports this optional IRI-format checker if it is installed, and building
    # its grammar takes seconds; nbformat never checks IRI formats, so it is left out here.
    sys.modules.setdefault("rfc3987_syntax", None)
    import nbformat
    import papermill
    from papermill.engines import papermill_engines
    from papermill.exceptions import PapermillExecutionError

    if job.get("file_bytes"):
        limit = int(job["file_bytes"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    logging.getLogger("papermill").setLevel(logging.WARNING)
    if job.get("kernel_log"):
        # The kernel inherits file descriptor 2: its own chatter (start-up warnings, TF's
        # C++ log) goes to the log file, while papermill's progress bar stays on the terminal.
        terminal = os.fdopen(os.dup(2), "w", buffering=1)
        with open(job["kernel_log"], "w") as kernel_log:
            os.dup2(kernel_log.fileno(), 2)
        sys.stderr = terminal
    engine = _limited_engine(job.get("output_bytes"))
    papermill_engines.register(_ENGINE, engine)
    error = None
    try:
        papermill.execute_notebook(job["source"], job["target"], parameters=job["parameters"],
                                   kernel_name=KERNEL, cwd=job["cwd"], engine_name=_ENGINE,
                                   execution_timeout=job["timeout"],
                                   progress_bar=job["progress"], log_output=False,
                                   allow_errors=bool(job.get("allow_errors")),
                                   iopub_timeout=IOPUB_TIMEOUT)
    except PapermillExecutionError as err:
        error = f"in cell {err.cell_index} (execution count {err.exec_count}): " \
                f"{err.ename}: {first_line(err.evalue)}"
    except Exception as err:  # kernel died, timeout, unreadable notebook, ...
        error = f"before finishing: {type(err).__name__}: {first_line(str(err))}"
    cell_errors = []
    try:
        nb = nbformat.read(job["target"], as_version=4)
        cells = [c for c in nb.cells  # without the notes papermill adds about the error
                 if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
        for index, cell in enumerate(cells):
            for out in cell.get("outputs", []):
                if out.get("output_type") != "error":
                    continue
                what = f"{out.get('ename')}: {first_line(out.get('evalue', ''))}"
                if not cell_errors and error and error.startswith("in cell"):
                    # papermill names the last failing cell; the first is the one to fix
                    error = f"in cell {index} (execution count {cell.execution_count}): {what}"
                cell_errors.append(f"In [{cell.get('execution_count')}]: {what}")
    except Exception:  # no executed notebook was written: the error above says why
        pass
    client = engine.client
    io.write_json(job["result"], {"finished": True, "error": error, "cell_errors": cell_errors,
                                  "truncated": bool(client and client.truncated_cells)})


def first_line(text: str) -> str:
    """The first non-blank line of ``text``, at most 300 characters."""
    lines = [line for line in str(text).splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


if __name__ == "__main__":
    _execute_in_child(json.loads(sys.argv[1]))
