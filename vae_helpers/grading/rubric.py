"""Grading rubrics: which records, grids, spec values and metric tolerances a homework needs.

A rubric is a TOML file; the homework's ships as ``vae_helpers/rubric.toml`` and
documents every table. ``load(path=None)`` reads one (the shipped default when
``path`` is ``None``), checks it and returns a ``Rubric``; a mistake in the file
is a ``RubricError`` naming the table and key.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from vae_helpers.course import record

DEFAULT = Path(__file__).with_name("rubric.toml")
#: the metrics the grader can compute from recorded weights (``grading.recompute``)
COMPUTABLE = ("iwae_log_likelihood",)
TABLES = {"records", "grids", "spec", "metrics", "checks", "parameters", "parameters_none",
          "limits", "hidden"}
#: the tasks of the student module the hidden tests can run (``grading.hidden``)
HIDDEN_TASKS = ("1a", "1b", "1c", "1d", "2a", "4a")
HIDDEN_TIME_LIMIT = 600
LIMITS = {"time_limit": 3600, "memory_mb": 4096, "disk_mb": 2048, "output_mb": 16,
          "file_mb": 512, "submission_mb": 50}


class RubricError(ValueError):
    """A rubric file that cannot be used; the message names the table and key."""


@dataclass(frozen=True)
class Rubric:
    """A checked rubric.

    Attributes:
        required, informational: record names (checks ``record.NAME``).
        grids: figure name -> n (an n×n grid of 28×28 images).
        spec: key -> the value the recorded model spec must have.
        metrics: metric name -> ``{"tolerance": float, "same_details": [...],
            "recompute": bool}``; ``recompute``: the grader computes the metric itself
            from the recorded weights (``grading.recompute``) instead of reading it.
        informational_checks: other checks that do not count towards passing.
        parameters: papermill parameters for the notebooks that declare them.
        limits: ``time_limit`` (s), ``memory_mb``, ``disk_mb``, ``output_mb``,
            ``file_mb``, ``submission_mb``.
        hidden: the hidden tests (``grading.hidden``): ``{"tasks": (...), "time_limit":
            seconds, "forbidden": {task: {"calls": (...), "why": str}}}``; no tasks without
            a ``[hidden]`` table.
        path: where it was read from; sha256: of its text (grades record it).
    """

    required: tuple
    informational: tuple
    grids: dict
    spec: dict
    metrics: dict
    informational_checks: tuple
    parameters: dict
    limits: dict
    hidden: dict = field(default_factory=lambda: {"tasks": (), "time_limit": HIDDEN_TIME_LIMIT,
                                                  "forbidden": {}})
    path: str = ""
    sha256: str = ""
    raw: dict = field(default_factory=dict, repr=False)


def load(path=None) -> Rubric:
    """Read and check a rubric (the shipped ``rubric.toml`` when ``path`` is ``None``).

    Raises:
        RubricError: the file is missing, not TOML, or has a wrong table or value.
    """
    path = Path(path) if path is not None else DEFAULT
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RubricError(f"cannot read the rubric {path}: {getattr(err, 'strerror', err)}") \
            from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RubricError(f"the rubric {path} is not valid TOML: {err}") from None
    return _check(raw, path, hashlib.sha256(text.encode()).hexdigest())


def _fail(path: Path, where: str, what: str):
    raise RubricError(f"rubric {path}: [{where}] {what}")


def _names(path: Path, table: str, key: str, value) -> tuple:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        _fail(path, table, f"{key} must be a list of names")
    for name in value:
        if not record.NAME_PATTERN.fullmatch(name) and table != "checks":
            _fail(path, table, f"{key}: {name!r} is not a record name ([a-z0-9_])")
    return tuple(value)


def _check(raw: dict, path: Path, sha256: str) -> Rubric:
    unknown = sorted(set(raw) - TABLES)
    if unknown:
        _fail(path, unknown[0],
              f"is not a rubric table; the tables are {', '.join(sorted(TABLES))}")
    tables = {name: raw.get(name, {}) for name in TABLES}
    for name, table in tables.items():
        if not isinstance(table, dict):
            _fail(path, name, "must be a table")
    records_table = tables["records"]
    required = _names(path, "records", "required", records_table.get("required", []))
    informational = _names(path, "records", "informational",
                           records_table.get("informational", []))
    grids = {}
    for name, n in tables["grids"].items():
        if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 100):
            _fail(path, "grids", f"{name} must be an integer from 1 to 100, got {n!r}")
        grids[name] = n
    metrics = {}
    for name, spec in tables["metrics"].items():
        if not isinstance(spec, dict):
            _fail(path, f"metrics.{name}", "must be a table with a tolerance")
        tolerance = spec.get("tolerance")
        if (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
                or not math.isfinite(tolerance) or tolerance < 0):
            _fail(path, f"metrics.{name}", f"tolerance must be a number >= 0, got {tolerance!r}")
        extra = sorted(set(spec) - {"tolerance", "same_details", "recompute"})
        if extra:
            _fail(path, f"metrics.{name}",
                  f"unknown key {extra[0]} (tolerance, same_details, recompute)")
        if not isinstance(spec.get("recompute", False), bool):
            _fail(path, f"metrics.{name}", "recompute must be true or false")
        if spec.get("recompute") and name not in COMPUTABLE:
            _fail(path, f"metrics.{name}", f"the grader can compute {', '.join(COMPUTABLE)} "
                  f"from the weights, not {name}")
        metrics[name] = {"tolerance": float(tolerance), "same_details": list(
            _names(path, f"metrics.{name}", "same_details", spec.get("same_details", []))),
            "recompute": bool(spec.get("recompute", False))}
    parameters = dict(tables["parameters"])
    for name in parameters:
        if not name.isidentifier():
            _fail(path, "parameters", f"{name!r} is not a parameter name")
    nones = tables["parameters_none"]
    if set(nones) - {"names"}:
        _fail(path, "parameters_none", "has one key, names")
    for name in _names(path, "parameters_none", "names", nones.get("names", [])):
        parameters[name] = None
    limits = dict(LIMITS)
    for key, value in tables["limits"].items():
        if key not in LIMITS:
            _fail(path, "limits", f"unknown key {key} ({', '.join(LIMITS)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            _fail(path, "limits", f"{key} must be a positive number, got {value!r}")
        limits[key] = value
    for key in tables["spec"]:
        if not record.NAME_PATTERN.fullmatch(key):
            _fail(path, "spec", f"{key!r} is not a spec key ([a-z0-9_])")
    return Rubric(required=required, informational=informational, grids=grids,
                  spec=dict(tables["spec"]), metrics=metrics,
                  informational_checks=_names(path, "checks", "informational",
                                              tables["checks"].get("informational", [])),
                  parameters=parameters, limits=limits, hidden=_hidden(path, tables["hidden"]),
                  path=str(path), sha256=sha256, raw=raw)


def _hidden(path: Path, table: dict) -> dict:
    """The checked ``[hidden]`` table."""
    extra = sorted(set(table) - {"tasks", "time_limit", "forbidden"})
    if extra:
        _fail(path, "hidden", f"unknown key {extra[0]} (tasks, time_limit, forbidden)")
    tasks = _names(path, "hidden", "tasks", table.get("tasks", []))
    for task in tasks:
        if task not in HIDDEN_TASKS:
            _fail(path, "hidden", f"tasks: {task!r} is not a task the hidden tests run "
                  f"({', '.join(HIDDEN_TASKS)})")
    limit = table.get("time_limit", HIDDEN_TIME_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
        _fail(path, "hidden", f"time_limit must be a positive number, got {limit!r}")
    forbidden = {}
    rules = table.get("forbidden", {})
    if not isinstance(rules, dict):
        _fail(path, "hidden.forbidden", "must be a table of tasks")
    for task, rule in rules.items():
        where = f"hidden.forbidden.{task}"
        if task not in HIDDEN_TASKS:
            _fail(path, where, f"is not a task ({', '.join(HIDDEN_TASKS)})")
        if not isinstance(rule, dict) or set(rule) - {"calls", "why"}:
            _fail(path, where, "must be a table with the keys calls and why")
        calls = rule.get("calls", [])
        if not isinstance(calls, list) or not all(isinstance(c, str) and c.isidentifier()
                                                  for c in calls):
            _fail(path, where, "calls must be a list of function or method names")
        if not isinstance(rule.get("why", ""), str):
            _fail(path, where, "why must be a string")
        forbidden[task] = {"calls": tuple(calls), "why": rule.get("why", "")}
    return {"tasks": tasks, "time_limit": float(limit), "forbidden": forbidden}
