"""Comparing the records of two runs: metrics, model specs, figures, arrays, learning curves.

``python -m vae_helpers compare RUN_A RUN_B --out DIR`` calls ``compare_runs``,
which writes into ``DIR``

``report.html``
    one self-contained page (figures embedded, no external files) with the two
    runs side by side: a table of the metrics with both values and the
    difference B − A, the two model specs, every figure of either run beside its
    namesake, the learning curves of both overlaid when both recorded a history,
    the arrays' shapes, and any record that is not valid;
``report.json``
    the same comparison as data (without the images).

A run is a directory holding ``records.json`` (``vae_helpers.course.record``), such as
``runs/homework``, or the output directory of a grade. The grader uses
``comparison`` and ``learning_curves`` for its reports.
"""

from __future__ import annotations

import io as _io
import shutil
from pathlib import Path

from vae_helpers import io
from vae_helpers.course import record
from vae_helpers.grading import recorded
from vae_helpers.grading.recorded import FILE_PROBLEM, Records

KIND_ORDER = ("metric", "spec", "figure", "history", "array")


class CompareError(RuntimeError):
    """A run without records, or an output directory that would be overwritten."""


def comparison(a: Records, b: Records, rubric=None) -> dict:
    """The two runs' records side by side, as JSON-friendly data.

    Differences are B − A. With a rubric, metric rows carry its tolerance and spec
    rows the value it expects.
    """
    names = list(dict.fromkeys([*a.entries, *b.entries]))

    def of_kind(kind: str) -> list:
        return [n for n in names if kind in (a.kind(n), b.kind(n))]

    metrics = []
    for name in of_kind("metric"):
        va, vb = a.metric(name), b.metric(name)
        rule = (rubric.metrics.get(name) if rubric else None) or {}
        metrics.append({"name": name, "a": va, "b": vb,
                        "difference": None if va is None or vb is None else vb - va,
                        "tolerance": rule.get("tolerance"),
                        "details_a": _details(a, name), "details_b": _details(b, name)})
    spec_a, spec_b = a.spec() or {}, b.spec() or {}
    expected = dict(rubric.spec) if rubric else {}
    keys = list(dict.fromkeys([*record.SPEC_KEYS, *spec_a, *spec_b, *expected]))
    spec = [{"key": k, "a": spec_a.get(k), "b": spec_b.get(k), "expected": expected.get(k),
             "same": spec_a.get(k) == spec_b.get(k)}
            for k in keys if k in spec_a or k in spec_b or k in expected]
    arrays = [{"name": n, "a": _shape(a, n), "b": _shape(b, n)} for n in of_kind("array")]
    return {
        "metrics": metrics,
        "spec": spec if (spec_a or spec_b) else [],
        "figures": [{"name": n, "a": a.kind(n) == "figure", "b": b.kind(n) == "figure"}
                    for n in of_kind("figure")],
        "arrays": arrays,
        "history": {"a": a.history() is not None, "b": b.history() is not None},
        "problems": {"a": dict(a.problems), "b": dict(b.problems)},
    }


def _details(records: Records, name: str) -> dict:
    entry = records.entries.get(name) or {}
    return dict(entry.get("details") or {})


def _shape(records: Records, name: str) -> str | None:
    entry = records.entries.get(name)
    if not entry or entry["kind"] != "array":
        return None
    return f"{' × '.join(map(str, entry['shape'])) or 'scalar'} {entry['dtype']}"


def learning_curves(history_a, history_b, label_a: str, label_b: str) -> bytes | None:
    """A PNG of the train and test ELBO per epoch of both runs, overlaid; ``None`` unless
    both have a history."""
    if not history_a or not history_b:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for rows, label, color in ((history_a, label_a, "#4c72b0"), (history_b, label_b, "#dd8452")):
        for key, style in (("train_elbo", "--"), ("test_elbo", "-")):
            points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None
                      and r.get("epoch") is not None]
            if points:
                ax.plot(*zip(*points, strict=True), style, color=color, lw=1.6,
                        label=f"{label}: {key.split('_')[0]}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats / image)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, ncols=2)
    fig.tight_layout()
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def shown_path(path) -> str:
    """``path`` as a report shows it: relative to the working directory when inside it,
    else as ``notebook.display_path`` does (relative to the checkout, or absolute)."""
    from vae_helpers.course.notebook import display_path

    resolved, here = Path(path).resolve(), Path.cwd().resolve()
    if resolved.is_relative_to(here) and resolved != here:
        return str(resolved.relative_to(here))
    return display_path(resolved)


def load_run(path) -> Records:
    """The checked records of a run (a run directory or a grade's output directory).

    Raises:
        CompareError: the directory does not exist or holds no readable records.
    """
    path = Path(path)
    if not path.is_dir():
        raise CompareError(f"{path} is not a directory")
    found = recorded.load(recorded.find(path))
    if FILE_PROBLEM in found.problems:
        raise CompareError(f"{path}: {found.problems[FILE_PROBLEM]} (run its notebooks, which "
                           "record their results with vae_helpers.course.record)")
    return found


def claim_output(out: Path, force: bool) -> None:
    """Make ``out`` an empty directory; one that holds files is replaced only with ``force``.

    Raises:
        CompareError: ``out`` is a file, or holds files and ``force`` is false.
    """
    if out.exists() and not out.is_dir():
        raise CompareError(f"{out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise CompareError(f"{out} already holds files; pass --force to replace them, "
                               "or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def compare_runs(run_a, run_b, out, force: bool = False) -> dict:
    """Write ``report.html`` and ``report.json`` comparing two runs into ``out``; return
    the comparison.

    Raises:
        CompareError: a run without records, or ``out`` holds files and not ``force``.
    """
    from vae_helpers.grading import report

    a, b = load_run(run_a), load_run(run_b)
    labels = (shown_path(run_a), shown_path(run_b))
    if labels[0] == labels[1]:
        labels = ("A", "B")
    out = Path(out)
    claim_output(out, force)
    data = comparison(a, b)
    data["runs"] = {"a": labels[0], "b": labels[1]}
    curves = learning_curves(a.history(), b.history(), labels[0], labels[1])
    page = report.render_comparison(f"{labels[1]} compared with {labels[0]}", data, a, b,
                                    labels, curves, subtitle=f"differences are {labels[1]} − "
                                    f"{labels[0]}")
    io.atomic_write_text(out / "report.html", page)
    io.write_json(out / "report.json", data)
    return data
