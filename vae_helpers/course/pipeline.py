"""The notebook pipeline: the course notebooks executed in order with papermill.

``python -m vae_helpers pipeline --profile {smoke,full} --out runs/NAME`` runs
``notebooks/01_math`` ... in order. Every notebook gets the run directory as its
``run_dir`` parameter, plus the profile's values and the ``-p key=value``
overrides for the parameters it declares. Each stage runs in a child process
(papermill, the project's ``python3`` kernel, the ``notebooks/`` folder as the
working directory, a time limit per notebook), and leaves in the run directory

``NN_name.ipynb`` / ``NN_name.html`` / ``NN_name.log``
    the executed notebook, its HTML export (both kept, partly executed, when a
    stage fails) and what the kernel wrote to its own stderr;
``figures/*.png``, ``metrics.json``, training runs
    what the notebooks write;
``pipeline.json``
    the profile, every stage's parameters, status, time and peak resident memory
    (papermill and the kernel together, ``peak_memory_mb``), the largest of them,
    the versions.

Profiles: ``full`` runs the notebooks with the values committed in their
parameters cells (the reference run); ``smoke`` runs every cell on a few
thousand images for a couple of epochs, to check that everything works.
"""

from __future__ import annotations

import ast
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from vae_helpers import io
from vae_helpers.course import execution
from vae_helpers.outdirs import claim, run_lock

STAGES = ("01_math", "02_build", "03_train", "04_analysis", "05_discussion")
KERNEL = execution.KERNEL
STATE_FILE = "pipeline.json"
RUN_DIR_PARAMETER = "run_dir"


@dataclass(frozen=True)
class Profile:
    """Parameter overrides and the time limit of each notebook (seconds)."""

    description: str
    overrides: dict = field(default_factory=dict)
    timeout: int = 3600


PROFILES = {
    "smoke": Profile(
        "every cell on 2,000 training and 500 test images, 2 epochs and 2 seeds per model",
        {"n_train": 2000, "n_test": 500, "epochs": 2, "bernoulli_epochs": 2,
         "iwae_k": 16, "fallback_epochs": 1, "mc_samples": 20000, "seeds": 2,
         "estimator_draws": 20},
        timeout=600),
    "full": Profile("the committed parameters: the homework's 100 epochs (the reference run)",
                    {}, timeout=3600),
}


class PipelineError(RuntimeError):
    """The pipeline cannot start, or one of its stages failed."""


def notebook_dir() -> Path:
    """The ``notebooks/`` folder of the checkout the package is installed from."""
    folder = Path(__file__).resolve().parents[2] / "notebooks"
    if not (folder / f"{STAGES[0]}.ipynb").is_file():
        raise PipelineError(f"the course notebooks are not in {folder}: the pipeline runs "
                            "from a checkout of the repository installed with `pip install -e .`")
    return folder


def parse_parameter(text: str) -> tuple[str, object]:
    """``key=value`` → ``(key, value)``; the value is a Python literal if it parses as one
    (``5``, ``0.001``, ``None``, ``[512, 256]``), else the string itself."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise PipelineError(f"parameter {text!r} is not of the form key=value (e.g. -p epochs=5)")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = raw.strip()
    return key, value


def declared_parameters(notebook: Path) -> dict:
    """The names and default values in a notebook's ``parameters`` cell."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise PipelineError(f"{notebook.name} has {len(cells)} cells tagged 'parameters'; "
                            "it needs exactly one")
    values = {}
    for node in ast.parse(cells[0].source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            raise PipelineError(f"{notebook.name}: the parameters cell may only assign "
                                f"literals to names (line {node.lineno})")
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def profile_parameters(notebook: Path, profile: str) -> dict:
    """The values ``profile`` gives the parameters ``notebook`` declares: what it changes
    of the committed ones (nothing for ``full``).

    Raises:
        PipelineError: an unknown profile, or a notebook without one ``parameters`` cell.
    """
    if profile not in PROFILES:
        raise PipelineError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    declared = declared_parameters(Path(notebook))
    return {k: v for k, v in PROFILES[profile].overrides.items() if k in declared}


def plan(out: Path, profile: str, overrides: dict | None = None,
         stages=None) -> list[tuple[str, dict]]:
    """The stages to run and the parameters each one gets.

    Raises:
        PipelineError: an unknown profile, or an override no notebook declares.
    """
    if profile not in PROFILES:
        raise PipelineError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    overrides = dict(overrides or {})
    stages = STAGES if stages is None else stages
    folder = notebook_dir()
    declared = {stage: declared_parameters(folder / f"{stage}.ipynb") for stage in stages}
    known = set().union(*declared.values())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise PipelineError(f"no notebook has a parameter named {', '.join(unknown)}; "
                            f"the parameters are: {', '.join(sorted(known))}")
    wanted = {**PROFILES[profile].overrides, **overrides, RUN_DIR_PARAMETER: _run_dir_value(out)}
    return [(stage, {k: v for k, v in wanted.items() if k in declared[stage]})
            for stage in stages]


def _run_dir_value(out: Path) -> str:
    """The run directory as the notebooks should see it: relative to the project's
    checkout when inside it (``notebook.resolve_run_dir`` resolves it back), so
    executed notebooks carry no machine-specific path; absolute otherwise."""
    from vae_helpers.course.notebook import project_root

    out = out.resolve()
    root = project_root(Path(__file__).resolve().parent)
    if root is not None and out.is_relative_to(root) and not os.environ.get("VAE_RUNS_ROOT"):
        return str(out.relative_to(root))
    return str(out)


def run_pipeline(out, profile: str = "smoke", parameters: dict | None = None,
                 force: bool = False, resume: bool = False, timeout: int | None = None,
                 stages=None, progress: bool = True, log=print) -> dict:
    """Execute the notebooks into ``out``; return the state written to ``pipeline.json``.

    Args:
        out: the run directory.
        profile: ``smoke`` or ``full``.
        parameters: overrides ``{name: value}`` for the notebooks' parameters.
        force: replace what ``out`` holds.
        resume: keep the stages that completed in an earlier run into ``out`` with the
            same profile and parameters, and run the rest.
        timeout: seconds allowed per notebook (default: the profile's).
        stages: the notebooks to run (default: all of ``STAGES``, in order).
        progress: papermill's per-cell progress bar.
        log: where the one-line progress messages go.

    Raises:
        PipelineError: ``out`` holds something and neither ``force`` nor ``resume``
            was given, or a stage failed (the message names the notebook and the cell).
        outdirs.RunLocked: another pipeline is running in ``out``.
    """
    if force and resume:
        raise PipelineError("--force and --resume contradict each other; choose one")
    out = Path(out)
    steps = plan(out, profile, parameters, stages)
    timeout = int(timeout or PROFILES[profile].timeout)
    if out.exists() and not out.is_dir():
        raise PipelineError(f"{out} exists and is not a directory; choose another --out")
    with run_lock(out):  # a second pipeline into the same directory is refused
        state = _claim(out, profile, steps, force, resume)
        return _run_stages(out, profile, steps, state, timeout, progress, log)


def _run_stages(out: Path, profile: str, steps, state: dict, timeout: int, progress: bool,
                log) -> dict:
    folder = notebook_dir()
    log(f"pipeline '{profile}' into {out}: {len(steps)} notebooks, at most {timeout} s each")
    for number, (stage, params) in enumerate(steps, 1):
        record = state["stages"][stage]
        head = f"[{number}/{len(steps)}] {stage}"
        if record["status"] == "done" and (out / f"{stage}.ipynb").exists():
            log(f"{head}: done in an earlier run, kept")
            continue
        log(f"{head}: running")
        record.update(status="running", seconds=None, error=None)
        io.write_json(out / STATE_FILE, state)
        started = time.perf_counter()
        error, record["peak_memory_mb"] = _execute(folder / f"{stage}.ipynb",
                                                   out / f"{stage}.ipynb", params, timeout,
                                                   progress)
        record["seconds"] = round(time.perf_counter() - started, 1)
        state["peak_memory_mb"] = max(state.get("peak_memory_mb", 0.0),
                                      record["peak_memory_mb"])
        _export_html(out / f"{stage}.ipynb")
        if error is not None:
            record.update(status="failed", error=error)
            io.write_json(out / STATE_FILE, state)
            raise PipelineError(f"{stage} failed {error}; the partly executed notebook is "
                                f"kept in {out / (stage + '.ipynb')} (rerun with --resume "
                                "after fixing it)")
        record["status"] = "done"
        io.write_json(out / STATE_FILE, state)
        log(f"{head}: done in {record['seconds']:.0f} s")
    state["seconds"] = round(sum(s["seconds"] or 0 for s in state["stages"].values()), 1)
    io.write_json(out / STATE_FILE, state)
    peak = f", peak memory {state['peak_memory_mb']:,.0f} MB" if "peak_memory_mb" in state else ""
    log(f"pipeline '{profile}' finished in {state['seconds']:.0f} s{peak}: {out}")
    return state


def _claim(out: Path, profile: str, steps, force: bool, resume: bool) -> dict:
    """The state to start from; refuses to overwrite ``out`` unless asked.

    Called with the lock of ``out`` held (so ``out`` exists).
    """
    fresh = {"profile": profile, "stages": {s: {"parameters": p, "status": "pending",
                                                "seconds": None, "error": None}
                                            for s, p in steps},
             "versions": _versions()}
    if resume:
        if not (out / STATE_FILE).exists():
            raise PipelineError(f"{out} holds no pipeline run to resume; start it without "
                                "--resume")
        old = io.read_json(out / STATE_FILE)
        changed = [s for s, p in steps if s not in old.get("stages", {})
                   or old["stages"][s].get("parameters") != p]
        if old.get("profile") != profile or changed:
            raise PipelineError(f"cannot resume {out}: it was run with profile "
                                f"{old.get('profile')!r} and other parameters "
                                f"({', '.join(changed) or 'profile'}); use the same ones, "
                                "or --force to start again")
        for stage, _ in steps:
            kept = old["stages"][stage]
            fresh["stages"][stage].update(status=kept.get("status", "pending"),
                                          seconds=kept.get("seconds"))
        return fresh
    claim(out, force=force, refuse=PipelineError(
        f"{out} already holds files; pass --resume to continue the run in it, --force to "
        "replace it, or choose another --out"))
    return fresh


def _versions() -> dict:
    import platform
    from importlib.metadata import version

    names = ("tensorflow", "tensorflow-probability", "papermill", "vae_helpers")
    return {"python": platform.python_version(), **{n: version(n) for n in names}}


def _execute(source: Path, target: Path, params: dict, timeout: int,
             progress: bool) -> tuple[str | None, float]:
    """Run one notebook in a child process.

    Returns:
        ``(error, peak_memory_mb)``: ``None`` on success, else where it failed; and the
        largest resident memory of the process tree (papermill and the kernel) seen.
    """
    env = {**os.environ, "VAE_PROGRESS": os.environ.get("VAE_PROGRESS", "text"),
           "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    outcome = execution.run_notebook(source, target, params, cwd=source.parent, env=env,
                                     limits=execution.Limits(timeout=timeout, grace=60),
                                     progress=progress, kernel_log=target.with_suffix(".log"))
    if outcome.status == "timeout":
        error = f"by running longer than its time limit of {timeout} s"
    elif outcome.status == "crashed":
        error = ("without reporting why (the executing process exited with code "
                 f"{outcome.exit_code})")
    else:
        error = outcome.message
    return error, outcome.peak_memory_mb


def _export_html(notebook: Path) -> None:
    if not notebook.exists():
        return
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    io.atomic_write_text(notebook.with_suffix(".html"), body)


# --------------------------------------------------------------------------- publishing
def clean_notebook(nb):
    """An executed notebook as it is committed: the injected-parameters cell and
    papermill's bookkeeping removed, no timestamps, minimal metadata, progress-bar
    traces collapsed to their last state, and stderr streams that hold nothing but
    progress bars (``VAE_PROGRESS=text`` writes one line per update) dropped."""
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    nb.metadata = {"kernelspec": {"name": KERNEL, "display_name": "Python 3 (ipykernel)",
                                  "language": "python"},
                   "language_info": {"name": "python"}}
    for cell in nb.cells:
        for key in ("papermill", "execution", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                output["text"] = _collapse_carriage_returns(output["text"])
        if "outputs" in cell:
            cell.outputs = [o for o in cell.outputs if not _only_progress_bars(o)]
    return nb


_PROGRESS_LINE = re.compile(r"^[^|\n]*\d+%\|[^|]*\|[^\n]*$")


def _only_progress_bars(output) -> bool:
    """A stderr stream whose every non-blank line is a text progress bar."""
    if output.get("output_type") != "stream" or output.get("name") != "stderr":
        return False
    lines = [line for line in output["text"].split("\n") if line.strip()]
    return bool(lines) and all(_PROGRESS_LINE.match(line) for line in lines)


def _collapse_carriage_returns(text: str) -> str:
    return "\n".join(line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
                     for line in text.split("\n"))


def publish(run_dir, dest=None) -> list[Path]:
    """Copy the executed notebooks of a ``full`` run made with the committed parameters
    into ``notebooks/`` (cleaned), so the repository shows the reference run's outputs.

    Raises:
        PipelineError: the run is not a complete full-profile run with the committed
            parameters, or a notebook's outputs contain an absolute path.
    """
    import nbformat

    run_dir = Path(run_dir)
    dest = Path(dest) if dest else notebook_dir()
    if not (run_dir / STATE_FILE).exists():
        raise PipelineError(f"{run_dir} is not a pipeline run (no {STATE_FILE})")
    state = io.read_json(run_dir / STATE_FILE)
    written = []
    for stage, record in state["stages"].items():
        source = dest / f"{stage}.ipynb"
        defaults = declared_parameters(source)
        if state["profile"] != "full" or record["status"] != "done":
            raise PipelineError(f"{stage} of {run_dir} is not a completed full-profile stage")
        differ = sorted(k for k, v in record["parameters"].items() if defaults.get(k) != v)
        if differ:
            raise PipelineError(f"{stage} ran with parameters other than the committed ones "
                                f"({', '.join(differ)}); publish a run made with "
                                "`make run` (profile full, no -p, --out runs/homework)")
        nb = clean_notebook(nbformat.read(run_dir / f"{stage}.ipynb", as_version=4))
        leaked = [p for p in (str(Path.home()), str(run_dir.resolve().parent), "/tmp/")
                  if p and p != "/" and p in nbformat.writes(nb)]
        if leaked:
            raise PipelineError(f"{stage}'s outputs contain the machine path {leaked[0]!r}; "
                                "print paths with notebook.display_path")
        nbformat.write(nb, source)
        written.append(source)
    return written
