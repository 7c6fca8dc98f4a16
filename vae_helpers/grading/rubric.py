"""Grading rubrics: which records, grids, spec values and metric tolerances a homework needs,
what each check is worth, which checks depend on which, and what is graded by hand.

A rubric is a TOML file; the homework's ships as ``vae_helpers/grading/rubric.toml`` and
documents every table. ``load(path=None)`` reads one (the shipped default when
``path`` is ``None``), checks it and returns a ``Rubric``; a mistake in the file
is a ``RubricError`` naming the table and key.

Points (``[points]``): a key is a check's exact name (``"metric.test_elbo"``) or a
family pattern (``"grid.*"``: every check whose name starts with ``grid.``); an exact
name wins over its family. A check that does not count (an informational record or
check) is worth 0 points whatever its family says, and naming one exactly with points
above 0 is an error. When ``[points]`` is given, every counting check the rubric's own
tables produce (``execution``, ``record.NAME``, ``grid.NAME``, ``spec.KEY``,
``metric.NAME``) must have points, or loading fails; checks made elsewhere (run on
grading-time inputs, say) are named in ``[points]`` too, and a grade that produces a
counting check without points lists it as ``unscored``. Without ``[points]`` every
counting check is worth 1 point, so the score is the number of counting checks passed.

Dependencies (``[depends]``): a key (exact name or family pattern, exact first) lists
the checks it needs, in the order in which a failure is blamed; in a family's list,
``*`` stands for the name the family matched (``"grid.*" = ["record.*"]``: ``grid.X``
needs ``record.X``).

Manual items (``[manual.ID]``): the prose answers graded by hand, with their
``notebook``, a short ``title`` and ``points``; a grade lists them as still open.
"""

from __future__ import annotations

import hashlib
import math
import re
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
TABLES = {"records", "grids", "spec", "metrics", "checks", "points", "depends", "manual",
          "parameters", "parameters_none", "limits", "hidden"}
#: a check's name (``execution``, ``grid.real_10x10``, ``hidden.1a``) and a family pattern
CHECK_NAME = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)?")
FAMILY = re.compile(r"[a-z0-9_]+\.\*")
#: the tasks of the student module the hidden tests can run (``grading.hidden``)
HIDDEN_TASKS = ("1a", "1b", "1c", "1d", "2a", "4a")
HIDDEN_TIME_LIMIT = 600
#: the check ``grading.static`` makes of every submission
STATIC_CHECK = "static.no_premade_vae"
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
        points: check name or family pattern -> points (``{}``: 1 per counting check).
        depends: check name or family pattern -> the checks it needs, in blame order.
        manual: the items graded by hand: ``{"id", "notebook", "title", "points"}``.
        parameters: papermill parameters for the notebooks that declare them.
        limits: ``time_limit`` (s), ``memory_mb``, ``disk_mb``, ``output_mb``,
            ``file_mb``, ``submission_mb``, ``processes`` (at once, a whole number).
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
    points: dict = field(default_factory=dict)
    depends: dict = field(default_factory=dict)
    manual: tuple = ()
    hidden: dict = field(default_factory=lambda: {"tasks": (), "time_limit": HIDDEN_TIME_LIMIT,
                                                  "forbidden": {}})
    path: str = ""
    sha256: str = ""
    raw: dict = field(default_factory=dict, repr=False)


    def max_points(self, name: str, required: bool = True):
        """What check ``name`` is worth: 0 if it does not count, 1 without ``[points]``,
        else its exact entry, else its family's; ``None`` when nothing gives it points."""
        if not required:
            return 0
        if not self.points:
            return 1
        if name in self.points:
            return self.points[name]
        return self.points.get(_family(name))

    def prerequisites(self, name: str) -> tuple:
        """The checks ``name`` depends on, in the order in which a failure is blamed."""
        if name in self.depends:
            return self.depends[name]
        needs = self.depends.get(_family(name), ())
        member = name.partition(".")[2]
        return tuple(n.replace("*", member) for n in needs)

    def own_checks(self) -> list[tuple[str, bool]]:
        """``(name, counts)`` of the checks the rubric's own tables produce, in the order
        ``checks.run_checks`` gives them."""
        found = [("execution", "execution" not in self.informational_checks)]
        found += [(f"record.{n}", n in self.required)
                  for n in dict.fromkeys([*self.required, *self.informational])]
        found += [(f"{kind}.{n}", True) for kind, names in
                  (("grid", self.grids), ("spec", self.spec), ("metric", self.metrics))
                  for n in names]
        found += [(f"reported.{n}", True) for n, rule in self.metrics.items()
                  if rule.get("reported")]
        found += [(STATIC_CHECK, True)]
        found += [(f"hidden.{task}", True) for task in self.hidden["tasks"]]
        return [(n, counts and n not in self.informational_checks) for n, counts in found]

    def columns(self) -> list[str]:
        """The checks worth points, in a stable order: the rubric's own checks, then the
        other checks ``[points]`` names exactly (the gradebook's columns)."""
        own = [n for n, counts in self.own_checks() if counts and self.max_points(n)]
        others = [n for n in self.points if not n.endswith(".*") and n not in own
                  and n not in self.informational_checks and self.points[n]]
        return own + others

    @property
    def manual_max(self):
        """The points of the items graded by hand."""
        return total(m["points"] for m in self.manual)


def total(values):
    """A sum of points: an int when every term is one, else rounded to 4 decimals."""
    values = list(values)
    found = sum(values)
    return found if all(isinstance(v, int) for v in values) else round(float(found), 4)


def _family(name: str) -> str:
    return name.partition(".")[0] + ".*"


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
    informational_checks = _names(path, "checks", "informational",
                                  tables["checks"].get("informational", []))
    found = Rubric(required=required, informational=informational, grids=grids,
                   spec=dict(tables["spec"]), metrics=metrics,
                   informational_checks=informational_checks, parameters=parameters,
                   limits=limits, points=_points(path, tables["points"]),
                   depends=_depends(path, tables["depends"]),
                   manual=_manual(path, tables["manual"]),
                   hidden=_hidden(path, tables["hidden"]), path=str(path), sha256=sha256,
                   raw=raw)
    if found.points:
        counting = {n for n, counts in found.own_checks() if counts}
        for name, counts in found.own_checks():
            if counts and found.max_points(name) is None:
                _fail(path, "points", f"no points for the check {name}: give it, or its "
                      f'family "{_family(name)}"')
        for name, value in found.points.items():
            optional = name in informational_checks or (
                name.startswith("record.") and name[7:] in informational
                and name not in counting)
            if value and optional:
                _fail(path, "points", f"{name} is informational (it does not count), so it "
                      f"is worth 0 points, not {value!r}")
    return found


def _number(path: Path, where: str, what: str, value, positive: bool = False):
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0 or (positive and value == 0)):
        _fail(path, where, f"{what} must be a number {'> 0' if positive else '>= 0'}, "
              f"got {value!r}")
    return value


def _points(path: Path, table: dict) -> dict:
    points = {}
    for name, value in table.items():
        if not (CHECK_NAME.fullmatch(name) or FAMILY.fullmatch(name)):
            _fail(path, "points", f"{name!r} is neither a check name (execution, grid.NAME) "
                  'nor a family pattern ("grid.*")')
        points[name] = _number(path, "points", name, value)
    return points


def _depends(path: Path, table: dict) -> dict:
    depends = {}
    for name, needs in table.items():
        family = bool(FAMILY.fullmatch(name))
        if not (family or CHECK_NAME.fullmatch(name)):
            _fail(path, "depends", f"{name!r} is neither a check name nor a family pattern")
        if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
            _fail(path, "depends", f"{name} must be a list of check names")
        for need in needs:
            if not (CHECK_NAME.fullmatch(need) or (family and FAMILY.fullmatch(need))):
                _fail(path, "depends", f"{name}: {need!r} is not a check name"
                      + ("" if family else " (a pattern such as \"record.*\" only in a "
                         "family's list)"))
            if need == name:
                _fail(path, "depends", f"{name} cannot depend on itself")
        depends[name] = tuple(needs)
    return depends


def _manual(path: Path, table: dict) -> tuple:
    items = []
    for key, item in table.items():
        where = f"manual.{key}"
        if not record.NAME_PATTERN.fullmatch(key):
            _fail(path, "manual", f"{key!r} is not an item id ([a-z0-9_])")
        if not isinstance(item, dict):
            _fail(path, where, "must be a table with notebook, title and points")
        extra = sorted(set(item) - {"notebook", "title", "points"})
        if extra:
            _fail(path, where, f"unknown key {extra[0]} (notebook, title, points)")
        for text in ("notebook", "title"):
            if not isinstance(item.get(text), str) or not item[text].strip():
                _fail(path, where, f"{text} must be a non-empty string")
        items.append({"id": key, "notebook": item["notebook"], "title": item["title"],
                      "points": _number(path, where, "points", item.get("points"),
                                        positive=True)})
    return tuple(items)


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
