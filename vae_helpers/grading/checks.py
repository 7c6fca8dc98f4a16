"""The checks of a graded homework: each a named pass or fail with a one-line reason.

``run_checks(rubric, reference, submission, execution)`` compares the records
of a submission with the rubric and the reference run's records, and returns,
in this order:

``execution``
    every notebook ran to the end: no cell raised, no time or memory limit was
    hit, no output was dropped (``execution`` is the list of problems found);
``record.NAME``
    the record exists, is valid and of the kind the rubric needs (one per required
    and informational record, and one for each other record that is invalid);
``grid.NAME``
    the figure shows an n×n grid of 28×28 images: one image whose two sides are n
    tiles of 28 pixels with the same gap of 0-4 pixels between tiles
    (``plots.tile_images`` makes 10·28 + 9·1 = 289), or n·n images of 28×28;
``spec.KEY``
    the recorded model spec has the value the rubric states;
``metric.NAME``
    the metric is within the rubric's tolerance of the reference's value (and was
    computed with the same details, e.g. IWAE's ``k``, where the rubric asks); for a
    metric the rubric marks ``recompute``, the value is the grader's own
    (``grading.recompute``), whatever the submission recorded;
``reported.NAME``
    for a metric the rubric marks ``reported``: the value the submission recorded
    agrees with the grader's recomputation from the recorded weights within the
    rubric's ``n_se`` Monte Carlo standard errors ("reported 142.4, recomputed 98.1").

Checks count towards passing unless the rubric lists them as informational.

``score(rubric, checks)`` gives each check its ``max_points`` (the rubric's
``[points]``; 0 for a check that does not count, ``None`` when the rubric gives it
none), its ``points`` (all of them when it passed, 0 when it failed) and, when it
failed, its ``caused_by``: the first of its prerequisites (the rubric's ``[depends]``,
in the order listed there) that the grade holds and that failed too. ``run_checks``
scores what it returns; checks added afterwards are scored by ``summary(checks,
rubric)``, which scores them all again, adds up the points and lists the items still to
be graded by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vae_helpers.course import record
from vae_helpers.grading.recorded import FILE_PROBLEM, Records
from vae_helpers.grading.rubric import Rubric, total

TILE = 28
MAX_GAP = 4


@dataclass
class Check:
    """One check: its name, whether it counts, whether it passed, and why; once scored
    (``score``), what it earned and was worth, and the failed check it depends on."""

    name: str
    required: bool
    passed: bool
    reason: str
    points: int | float | None = None
    max_points: int | float | None = None
    caused_by: str | None = None

    def to_dict(self) -> dict:
        """The check as it is written to ``grade.json``."""
        return asdict(self)


def run_checks(rubric: Rubric, reference: Records, submission: Records,
               execution: list[str]) -> list[Check]:
    """All checks of ``submission`` (see the module's documentation)."""
    found = [("execution", not execution, "; ".join(execution[:3])
              + (f" (and {len(execution) - 3} more)" if len(execution) > 3 else "")
              if execution else "every notebook ran to the end")]
    kinds = {**{n: "figure" for n in rubric.grids}, **{n: "metric" for n in rubric.metrics},
             **({record.SPEC_NAME: "spec"} if rubric.spec else {}),
             record.WEIGHTS_NAME: "weights"}
    listed = list(dict.fromkeys([*rubric.required, *rubric.informational]))
    for name in listed:
        found.append((f"record.{name}", *_record(submission, name, kinds.get(name),
                                                 rubric.metrics.get(name))))
    for name, problem in submission.problems.items():
        if name not in listed and name != FILE_PROBLEM:
            found.append((f"record.{name}", False, problem))
    for name, n in rubric.grids.items():
        found.append((f"grid.{name}", *_grid(submission, name, n)))
    spec = submission.spec()
    for key, want in rubric.spec.items():
        found.append((f"spec.{key}", *_spec(spec, key, want)))
    for name, rule in rubric.metrics.items():
        found.append((f"metric.{name}", *_metric(reference, submission, name, rule)))
    for name, rule in rubric.metrics.items():
        if rule.get("reported") and name in submission.claimed:
            found.append((f"reported.{name}", *_reported(submission, name, rule)))
    optional = {f"record.{n}" for n in rubric.informational} | set(rubric.informational_checks)
    optional |= {f"record.{n}" for n in submission.problems if n not in listed}
    required = {f"record.{n}" for n in rubric.required}
    return score(rubric, [Check(name, name in required or name not in optional, passed, reason)
                          for name, passed, reason in found])


def score(rubric: Rubric, checks: list[Check]) -> list[Check]:
    """Set the points, the maximum and ``caused_by`` of every check (in place); returns
    ``checks``."""
    by_name = {c.name: c for c in checks}
    for check in checks:
        check.max_points = rubric.max_points(check.name, check.required)
        check.points = None if check.max_points is None else (
            check.max_points if check.passed else 0)
        check.caused_by = None if check.passed else next(
            (n for n in rubric.prerequisites(check.name)
             if n != check.name and n in by_name and not by_name[n].passed), None)
    return checks


def root_cause(check: Check, checks: list[Check]) -> str:
    """The name of the first failure in ``check``'s chain of ``caused_by`` (its own name
    when it has none)."""
    by_name, seen, name = {c.name: c for c in checks}, set(), check.name
    while by_name.get(name) is not None and by_name[name].caused_by and name not in seen:
        seen.add(name)
        name = by_name[name].caused_by
    return name


def summary(checks: list[Check], rubric: Rubric) -> dict:
    """The verdict, the counts and the points of ``checks`` (scored first, with ``score``).

    ``passed`` when every required check passed; ``required_passed`` of ``required``;
    ``failed``: every failed check's name; ``score`` of ``max_score``: the points earned
    and possible (the checks the rubric gives points to); ``unscored``: counting checks
    the rubric gives no points (a rubric to fix); ``manual``: the items graded by hand
    (``id``, ``notebook``, ``title``, ``points``: their maximum) and ``manual_max``.
    """
    score(rubric, checks)
    required = [c for c in checks if c.required]
    passed = sum(c.passed for c in required)
    scored = [c for c in checks if c.max_points is not None]
    return {"passed": passed == len(required), "required_passed": passed,
            "required": len(required), "failed": [c.name for c in checks if not c.passed],
            "score": total(c.points for c in scored),
            "max_score": total(c.max_points for c in scored),
            "unscored": [c.name for c in checks if c.max_points is None],
            "manual": [dict(m) for m in rubric.manual], "manual_max": rubric.manual_max}


def _missing(records: Records, name: str) -> str:
    if name in records.problems:
        return records.problems[name]
    if FILE_PROBLEM in records.problems:
        return records.problems[FILE_PROBLEM]
    return "not recorded"


def _record(records: Records, name: str, kind: str | None,
            rule: dict | None = None) -> tuple[bool, str]:
    entry = records.entries.get(name)
    if rule and rule.get("reported") and name in records.claimed:
        entry, problem = records.claimed[name]  # what the submission itself recorded
        if entry is None:
            return False, problem or records.problems.get(FILE_PROBLEM) or "not recorded"
    if entry is None:
        return False, _missing(records, name)
    if kind is not None and entry["kind"] != kind:
        return False, f"recorded as {_a(entry['kind'])}; it should be {_a(kind)}"
    return True, f"{_a('valid ' + entry['kind'])}"


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def tiles(size: int, n: int) -> int | None:
    """The gap if ``size`` pixels are ``n`` tiles of 28 with equal gaps of 0-4, else None."""
    if n == 1:
        return 0 if size == TILE else None
    spare = size - n * TILE
    if spare < 0 or spare % (n - 1):
        return None
    gap = spare // (n - 1)
    return gap if gap <= MAX_GAP else None


def _grid(records: Records, name: str, n: int) -> tuple[bool, str]:
    entry = records.entries.get(name)
    if entry is None:
        return False, f"no figure {name} to check ({_missing(records, name)})"
    if entry["kind"] != "figure":
        return False, f"{name} is not a figure"
    shapes = [tuple(s[:2]) for s in entry["images"]]
    for rows, cols in shapes:
        gap = tiles(rows, n)
        if gap is not None and tiles(cols, n) == gap:
            return True, (f"an image of {rows}×{cols} pixels: {n}×{n} tiles of "
                          f"{TILE}×{TILE} with a gap of {gap}")
    if sum(shape == (TILE, TILE) for shape in shapes) == n * n:
        return True, f"{n * n} images of {TILE}×{TILE}"
    if not shapes:
        return False, "the figure shows no image (draw the grid with imshow)"
    seen = ", ".join(f"{r}×{c}" for r, c in shapes[:4]) + (" ..." if len(shapes) > 4 else "")
    return False, (f"no {n}×{n} grid of {TILE}×{TILE} images: the figure shows "
                   f"{len(shapes)} image{'s' if len(shapes) > 1 else ''} of {seen} pixels")


def _spec(spec: dict | None, key: str, want) -> tuple[bool, str]:
    if spec is None:
        return False, f"no valid {record.WEIGHTS_NAME} (or {record.SPEC_NAME}) recorded"
    if key not in spec:
        return False, f"the spec does not state {key}"
    have = spec[key]
    if have == want and type(have) is type(want):
        return True, f"{key} = {have!r}"
    return False, f"{key} = {have!r}; the homework asks for {want!r}"


def _reported(records: Records, name: str, rule: dict) -> tuple[bool, str]:
    from vae_helpers.grading.recompute import standard_error

    claim, problem = records.claimed[name]
    if claim is None or claim["kind"] != "metric":
        return False, f"no {name} recorded to compare ({problem or 'not recorded'})"
    computed = records.entries.get(name)
    if computed is None or computed["details"].get("computed_by") != "grader":
        return False, (f"reported {claim['value']:.2f}, but nothing to compare it with "
                       f"({_missing(records, name)})")
    reported, value = claim["value"], computed["value"]
    se = standard_error(computed)
    allowed = rule["n_se"] * se if se is not None else 0.0
    said = (f"reported {reported:.2f}, recomputed {value:.2f} from the recorded weights "
            f"(± {allowed:.2f}, {rule['n_se']:g} standard errors of the noise of z)")
    if abs(reported - value) <= allowed:
        return True, said
    if reported * value < 0 and abs(reported + value) <= allowed:
        return False, said + ": the sign is flipped (record the ELBO, not the loss −ELBO)"
    return False, said + ": the recorded value is not what these weights give"


def _metric(reference: Records, submission: Records, name: str, rule: dict) -> tuple[bool, str]:
    ref = reference.entries.get(name)
    if ref is None or ref["kind"] != "metric":
        return False, f"the reference run has no metric {name} to compare with"
    got = submission.entries.get(name)
    if got is None:
        return False, f"no metric {name} to compare ({_missing(submission, name)})"
    if got["kind"] != "metric":
        return False, f"{name} is not a metric"
    for detail in rule["same_details"]:
        mine, theirs = got["details"].get(detail), ref["details"].get(detail)
        if mine != theirs:
            return False, (f"{detail} = {mine!r} but the reference used {detail} = {theirs!r}: "
                           "the values are not comparable")
    value, expected, tolerance = got["value"], ref["value"], rule["tolerance"]
    difference = value - expected
    verdict = abs(difference) <= tolerance
    source = (" (recomputed by the grader from the recorded weights)"
              if got["details"].get("computed_by") == "grader" else "")
    return verdict, (f"{value:.2f}{source} vs the reference's {expected:.2f}: a difference of "
                     f"{difference:+.2f}, {'within' if verdict else 'beyond'} ±{tolerance:g}")
