"""Self-contained HTML pages: comparison and grade reports, and the summary of a batch.

A grade's report shows the points of each check (earned / worth), the total, and the
answers still to be graded by hand. Its checks come failures first: each failure that
no other explains, then, nested under it, the checks that failed because of it
("also failed, because ..."), then the checks that passed.

Every page is one file that opens offline: the CSS is inline and the figures are
PNGs embedded as base64 ``data:`` URLs. Everything that comes from a run's
records or a submission (names, values, messages) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import math

from vae_helpers.grading.recorded import FILE_PROBLEM, Records

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933;
 margin:0;background:#f5f7fa}
main{max-width:1180px;margin:0 auto;padding:28px 32px 60px}
h1{font-size:25px;margin:0 0 4px}h2{font-size:19px;margin:34px 0 10px;
 border-bottom:1px solid #d9e2ec;padding-bottom:4px}h3{font-size:15px;margin:0 0 8px}
.sub{color:#52606d;margin:0 0 14px}code{font:13px ui-monospace,Menlo,Consolas,monospace}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #d9e2ec}
th,td{padding:6px 10px;border-bottom:1px solid #e4e7eb;text-align:left;vertical-align:top}
th{background:#f0f4f8;font-weight:600}.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;border-radius:4px;padding:1px 8px;font-weight:700;font-size:12px;
 letter-spacing:.04em}
.pass{background:#e3f9e5;color:#0e5814}.fail{background:#ffe3e3;color:#8a1c1c}
.info{background:#e6f0ff;color:#1d3f8a}.muted{color:#7b8794}
.big{font-size:20px;padding:4px 14px;margin-left:10px;vertical-align:middle}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:14px 0}
.card{background:#fff;border:1px solid #d9e2ec;border-radius:6px;padding:10px 16px}
.card b{display:block;font-size:20px}
.figs{display:grid;grid-template-columns:1fr 1fr;gap:14px;background:#fff;
 border:1px solid #d9e2ec;padding:14px;margin-bottom:14px}
.figs img{max-width:100%;height:auto;image-rendering:pixelated}
.missing{display:flex;align-items:center;justify-content:center;min-height:120px;
 background:#fff5f5;color:#8a1c1c;border:1px dashed #e12d39}
tr.bad td{background:#fff5f5}
.alert{background:#ffe3e3;color:#8a1c1c;border:1px solid #e12d39;border-radius:6px;
 padding:10px 16px;font-weight:600}
tr.dep td{background:#fffafa}
tr.dep td:nth-child(2){padding-left:30px}.why{color:#7b8794;font-size:13px}
"""


def esc(value) -> str:
    """``value`` as HTML-escaped text."""
    return html.escape(str(value), quote=True)


def badge(passed: bool | None, text: str | None = None, extra: str = "") -> str:
    """A PASS (green), FAIL (red) or INFO (``passed is None``, blue) label."""
    kind = "info" if passed is None else ("pass" if passed else "fail")
    label = text or {"info": "INFO", "pass": "PASS", "fail": "FAIL"}[kind]
    return f'<span class="badge {kind} {extra}">{esc(label)}</span>'


def page(title: str, body: str) -> str:
    """A whole HTML document with the inline style sheet."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")


def png(data: bytes, alt: str) -> str:
    """An ``<img>`` with the PNG embedded as a base64 ``data:`` URL."""
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{encoded}">'


def number(value, digits: int = 2, signed: bool = False) -> str:
    """A number with ``digits`` decimals (a sign with ``signed``), ``—`` for ``None``."""
    if value is None:
        return '<span class="muted">—</span>'
    if isinstance(value, float) and not math.isfinite(value):
        return esc(value)
    return esc(f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}")


def table(headers, rows, classes=None) -> str:
    """An HTML table; cells (and headers) given as 1-tuples are right-aligned numbers."""
    head = "".join(f"<th class=num>{h[0]}</th>" if isinstance(h, tuple) else f"<th>{h}</th>"
                   for h in headers)
    body = "".join(f'<tr class="{(classes or {}).get(i, "")}">' + "".join(
        f"<td{' class=num' if isinstance(c, tuple) else ''}>"
        f"{c[0] if isinstance(c, tuple) else c}</td>" for c in row) + "</tr>"
        for i, row in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_comparison(title: str, data: dict, a: Records, b: Records, labels, curves=None,
                      checks=None, grade: dict | None = None, subtitle: str = "",
                      regenerated: dict | None = None) -> str:
    """The report page: optional grade header and checks, then the comparison of ``a``
    (left, labelled ``labels[0]``) with ``b`` (right); ``regenerated`` (PNG bytes by
    figure name, drawn by the grader from ``b``'s weights) adds a third column."""
    la, lb = (esc(x) for x in labels)
    parts = [f"<h1>{esc(title)}"]
    if grade is not None:
        parts.append(badge(grade["summary"]["passed"], extra="big"))
    parts.append(f'</h1><p class="sub">{esc(subtitle)}</p>' if subtitle else "</h1>")
    if grade is not None:
        parts.append(_grade_header(grade))
    if checks is not None:
        parts.append(_checks(checks))
    if grade is not None and grade["summary"].get("manual"):
        parts.append(_manual(grade["summary"]))
    parts.append(_metrics(data, la, lb))
    parts.append(_spec(data, la, lb))
    parts.append(_figures(data, a, b, la, lb, regenerated or {}))
    if curves:
        parts.append("<h2>Learning curves</h2>"
                     f'<div class="figs" style="grid-template-columns:1fr">'
                     f"{png(curves, 'learning curves')}</div>")
    if data["arrays"]:
        parts.append("<h2>Arrays</h2>" + table(
            ["name", la, lb], [[f"<code>{esc(r['name'])}</code>", esc(r["a"] or "—"),
                                esc(r["b"] or "—")] for r in data["arrays"]]))
    problems = [(label, name, why) for label, side in ((la, "a"), (lb, "b"))
                for name, why in data["problems"][side].items()]
    if problems:
        parts.append("<h2>Records that are not valid</h2>" + table(
            ["run", "record", "problem"],
            [[label, f"<code>{esc(name or 'records.json')}</code>", esc(why)]
             for label, name, why in problems]))
    return page(title, "".join(parts))


def _grade_header(grade: dict) -> str:
    verdict = grade["summary"]
    box = grade["sandbox"]
    isolated = box.get("isolated", box["kind"] == "bwrap")
    cards = [("points", f"{verdict['score']:g} / {verdict['max_score']:g}"),
             ("checks passed", f"{verdict['required_passed']} / {verdict['required']}")]
    if verdict.get("manual"):
        cards.append(("graded by hand", f"{verdict['manual_max']:g} points open"))
    cards += [("time", f"{grade['timings']['total_seconds']:.0f} s"),
              ("sandbox", box["kind"] if isolated else "OFF")]
    html_cards = "".join(f'<div class="card">{esc(k)}<b>{esc(v)}</b></div>' for k, v in cards)
    rows = [[f"<code>{esc(n['notebook'])}</code>", badge(n["status"] == "ok", n["status"]),
             (number(n.get("seconds"), 1),), (number(n.get("peak_memory_mb"), 0),),
             esc("; ".join(n.get("cell_errors") or []) or n.get("message") or "")]
            for n in grade["notebooks"]]
    notes = ""
    if not isolated:  # hard to miss: nothing kept this submission from the grader's files
        ran = esc("the submission ran with the grader's permissions")
        notes = (f'<p class="alert">Not isolated: {esc(box.get("note") or "no sandbox")}; '
                 f"{ran}</p>")
    elif box.get("note"):
        notes = f'<p class="sub">{esc(box["note"])}</p>'
    unscored = ""
    if verdict.get("unscored"):
        unscored = (f'<p class="sub">The rubric gives no points to '
                    f'{", ".join(f"<code>{esc(n)}</code>" for n in verdict["unscored"])}: '
                    "they are not in the total.</p>")
    return (f'<div class="cards">{html_cards}</div>{notes}{unscored}<h2>Notebooks</h2>'
            + table(["notebook", "status", ("seconds",), ("peak MB",), "what happened"], rows))


def _points(check) -> str:
    if check.max_points is None:
        return '<span class="muted">no points</span>'
    return f"{check.points:g} / {check.max_points:g}"


def _checks(checks) -> str:
    """The checks: each root failure with the failures it caused under it, then the rest."""
    from vae_helpers.grading.checks import root_cause

    failed = [c for c in checks if not c.passed]
    ordered = []
    for root in (c for c in failed if root_cause(c, checks) == c.name):
        ordered.append((root, None))
        ordered += [(d, d.caused_by) for d in failed
                    if d is not root and root_cause(d, checks) == root.name]
    placed = {c.name for c, _ in ordered}
    ordered += [(c, None) for c in checks if c.name not in placed]
    rows, classes = [], {}
    for i, (c, because) in enumerate(ordered):
        reason = esc(c.reason)
        if because:
            reason = (f'<span class="why">also failed, because <code>{esc(because)}</code> '
                      f"failed:</span> {reason}")
            classes[i] = "dep"
        elif not c.passed and c.required:
            classes[i] = "bad"
        rows.append([badge(c.passed), f"<code>{esc(c.name)}</code>",
                     "required" if c.required else '<span class="muted">informational</span>',
                     (_points(c),), reason])
    return "<h2>Checks</h2>" + table(["", "check", "counts", ("points",), "reason"], rows,
                                     classes)


def _manual(summary: dict) -> str:
    rows = [[f"<code>{esc(m['id'])}</code>", f"<code>{esc(m['notebook'])}</code>",
             esc(m["title"]), (f"— / {m['points']:g}",)] for m in summary["manual"]]
    return (f"<h2>Graded by hand: {summary['manual_max']:g} points still open</h2>"
            + table(["item", "notebook", "answer", ("points",)], rows))


def _metrics(data: dict, la: str, lb: str) -> str:
    if not data["metrics"]:
        return ""
    rows, bad = [], {}
    for i, m in enumerate(data["metrics"]):
        tol = m.get("tolerance")
        details = "; ".join(f"{esc(k)} = {esc(v)}" for k, v in
                            sorted({**m["details_a"], **m["details_b"]}.items()))
        if m["details_a"] != m["details_b"]:
            details = (f"{la}: {esc(m['details_a'])}<br>{lb}: {esc(m['details_b'])}")
        if tol is not None and (m["difference"] is None or abs(m["difference"]) > tol):
            bad[i] = "bad"
        rows.append([f"<code>{esc(m['name'])}</code>", (number(m["a"]),), (number(m["b"]),),
                     (number(m["difference"], signed=True),),
                     (f"±{tol:g}" if tol is not None else '<span class="muted">—</span>',),
                     details])
    return "<h2>Metrics</h2>" + table(["metric", (la,), (lb,), ("difference",), ("tolerance",),
                                       "details"], rows, bad)


def _spec(data: dict, la: str, lb: str) -> str:
    if not data["spec"]:
        return ""
    with_expected = any(r["expected"] is not None for r in data["spec"])
    rows, bad = [], {}
    for i, r in enumerate(data["spec"]):
        cells = [f"<code>{esc(r['key'])}</code>", esc(_value(r["a"])), esc(_value(r["b"]))]
        if with_expected:
            cells.append(esc(_value(r["expected"])))
            if r["expected"] is not None and r["b"] != r["expected"]:
                bad[i] = "bad"
        elif not r["same"]:
            bad[i] = "bad"
        rows.append(cells)
    headers = ["key", la, lb] + (["the homework asks"] if with_expected else [])
    return "<h2>Model spec</h2>" + table(headers, rows, bad)


def _value(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _figures(data: dict, a: Records, b: Records, la: str, lb: str,
             regenerated: dict) -> str:
    if not data["figures"]:
        return ""
    parts = ["<h2>Figures</h2>"]
    if regenerated:
        parts.append('<p class="sub">The third column is drawn by the grader from the '
                     "submission's recorded weights: what its own figure should show.</p>")
    for row in data["figures"]:
        name = row["name"]
        cells = []
        for label, records, present in ((la, a, row["a"]), (lb, b, row["b"])):
            if present:
                body = png(records.entries[name]["png"], f"{name} ({label})")
            else:
                why = records.problems.get(name) or records.problems.get(FILE_PROBLEM) \
                    or "not recorded"
                body = f'<div class="missing">{esc(why)}</div>'
            cells.append(f"<div><h3><code>{esc(name)}</code> · {label}</h3>{body}</div>")
        style = ""
        if regenerated:
            style = ' style="grid-template-columns:1fr 1fr 1fr"'
            again = regenerated.get(name)
            body = (png(again, f"{name} (regenerated)") if again else
                    '<div class="missing muted">not drawn from the weights</div>')
            cells.append(f"<div><h3><code>{esc(name)}</code> · regenerated from its weights"
                         f"</h3>{body}</div>")
        parts.append(f'<div class="figs"{style}>{"".join(cells)}</div>')
    return "".join(parts)


def _score(row: dict) -> str:
    if row.get("score") in (None, ""):
        return "—"
    return f"{row['score']:g} / {row['max_score']:g}"


def render_summary(title: str, rows: list[dict]) -> str:
    """The batch summary: one row per student with the verdict, the points, the required
    checks passed, the failed checks (the first four), the reason of the first, and a link
    to the student's report."""
    passed = sum(r["status"] == "PASS" for r in rows)
    cards = [("students", len(rows)), ("passed", passed),
             ("failed", sum(r["status"] == "FAIL" for r in rows)),
             ("not graded", sum(r["status"] == "ERROR" for r in rows))]
    html_cards = "".join(f'<div class="card">{esc(k)}<b>{esc(v)}</b></div>' for k, v in cards)
    body_rows = []
    for r in rows:
        link = (f'<a href="{esc(r["report"])}">report</a>' if r.get("report")
                else '<span class="muted">—</span>')
        ok = {"PASS": True, "FAIL": False}.get(r["status"])
        failed = [f for f in (r["failed"] or "").split("; ") if f]
        shown = ", ".join(f"<code>{esc(f)}</code>" for f in failed[:4]) + (
            f" and {len(failed) - 4} more" if len(failed) > 4 else "")
        body_rows.append([esc(r["student"]), badge(ok if ok is not None else False, r["status"]),
                          (esc(_score(r)),), esc(r.get("checks") or ""), shown or "—",
                          esc(r.get("reason") or ""),
                          (number(r.get("seconds"), 0),), link])
    bad = {i: "bad" for i, r in enumerate(rows) if r["status"] != "PASS"}
    return page(title, f"<h1>{esc(title)}</h1><div class=\"cards\">{html_cards}</div>" + table(
        ["student", "verdict", ("points",), "checks passed", "failed checks", "first reason",
         ("seconds",), ""],
        body_rows, bad))
