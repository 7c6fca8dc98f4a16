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
COMPUTABLE = ("test_elbo", "iwae_log_likelihood")
#: the metrics whose recorded value can be compared with the grader's, within Monte Carlo
#: noise (``checks``: ``reported.NAME``)
REPORTABLE = ("test_elbo",)
TABLES = {"records", "grids", "spec", "metrics", "checks", "parameters", "parameters_none",
          "limits"}
LIMITS = {"time_limit": 3600, "memory_mb": 4096, "disk_mb": 2048, "output_mb": 16,
          "file_mb": 512, "submission_mb": 50, "processes": 128}
WHOLE_LIMITS = ("processes",)
"""Limits that must be whole numbers."""


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
            "recompute": bool, "reported": bool, "n_se": float, "tolerance_source": str}``;
            ``recompute``: the grader computes the metric itself from the recorded
            weights (``grading.recompute``) instead of reading it; ``reported``: the
            submission must record it too, within ``n_se`` Monte Carlo standard errors of
            the grader's value; ``tolerance_source``: how the tolerance was set.
        informational_checks: other checks that do not count towards passing.
        parameters: papermill parameters for the notebooks that declare them.
        limits: ``time_limit`` (s), ``memory_mb``, ``disk_mb``, ``output_mb``,
            ``file_mb``, ``submission_mb``, ``processes`` (at once, a whole number).
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
        keys = ("tolerance", "same_details", "recompute", "reported", "n_se",
                "tolerance_source")
        extra = sorted(set(spec) - set(keys))
        if extra:
            _fail(path, f"metrics.{name}", f"unknown key {extra[0]} ({', '.join(keys)})")
        for key in ("recompute", "reported"):
            if not isinstance(spec.get(key, False), bool):
                _fail(path, f"metrics.{name}", f"{key} must be true or false")
        if spec.get("recompute") and name not in COMPUTABLE:
            _fail(path, f"metrics.{name}", f"the grader can compute {', '.join(COMPUTABLE)} "
                  f"from the weights, not {name}")
        if spec.get("reported") and not (spec.get("recompute") and name in REPORTABLE):
            _fail(path, f"metrics.{name}", "reported = true needs recompute = true, and is "
                  f"possible for {', '.join(REPORTABLE)}")
        n_se = spec.get("n_se", 5.0)
        if isinstance(n_se, bool) or not isinstance(n_se, (int, float)) or not n_se > 0:
            _fail(path, f"metrics.{name}", f"n_se must be a positive number, got {n_se!r}")
        if not isinstance(spec.get("tolerance_source", ""), str):
            _fail(path, f"metrics.{name}", "tolerance_source must be a string")
        metrics[name] = {"tolerance": float(tolerance), "same_details": list(
            _names(path, f"metrics.{name}", "same_details", spec.get("same_details", []))),
            "recompute": bool(spec.get("recompute", False)),
            "reported": bool(spec.get("reported", False)), "n_se": float(n_se),
            "tolerance_source": spec.get("tolerance_source", "")}
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
        if key in WHOLE_LIMITS and not isinstance(value, int):
            _fail(path, "limits", f"{key} must be a whole number, got {value!r}")
        limits[key] = value
    for key in tables["spec"]:
        if not record.NAME_PATTERN.fullmatch(key):
            _fail(path, "spec", f"{key!r} is not a spec key ([a-z0-9_])")
    return Rubric(required=required, informational=informational, grids=grids,
                  spec=dict(tables["spec"]), metrics=metrics,
                  informational_checks=_names(path, "checks", "informational",
                                              tables["checks"].get("informational", [])),
                  parameters=parameters, limits=limits, path=str(path), sha256=sha256, raw=raw)
