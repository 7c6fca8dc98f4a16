"""Tests of vae_helpers.grading.compare and its report: two runs' records side by side."""

from __future__ import annotations

import base64
import json
import re

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

from vae_helpers import plots
from vae_helpers.__main__ import main
from vae_helpers.course import record
from vae_helpers.grading import compare, recorded

pytestmark = pytest.mark.unit

matplotlib.use("Agg")

SPEC = {"latent_dim": 2, "hidden_units": [512], "hidden_activation": "relu",
        "output_activation": "sigmoid", "likelihood": "gaussian", "prior": "normal",
        "num_parameters": 807701, "nonnegative_variances": True}


def make_run(folder, monkeypatch, elbo=141.0, latent_dim=2, history=True, figures=("a", "b"),
             note="dequantized"):
    monkeypatch.delenv(record.RECORD_DIR_ENV, raising=False)
    record.set_run_dir(folder)
    record.metric("test_elbo", elbo, note=note)
    record.metric("iwae_log_likelihood", elbo + 15, k=1000)
    record.model_spec({**SPEC, "latent_dim": latent_dim})
    for index, name in enumerate(figures):
        fig = plots.plot_grid(np.full((100, 784), index / 2))
        record.figure(name, fig)
        plt.close(fig)
    record.array("latent_means", np.zeros((10, latent_dim), np.float32))
    if history:
        record.history([{"epoch": e, "train_elbo": elbo - 10 / e, "test_elbo": elbo - 12 / e}
                        for e in range(1, 6)])
    return folder


@pytest.fixture
def runs(tmp_path, monkeypatch):
    a = make_run(tmp_path / "a", monkeypatch)
    b = make_run(tmp_path / "b", monkeypatch, elbo=139.5, latent_dim=3, figures=("b", "c"),
                 note="<script>alert(1)</script>")
    return a, b


def test_comparison_puts_the_runs_side_by_side(runs):
    a, b = (recorded.load(r) for r in runs)
    data = compare.comparison(a, b)
    elbo = next(m for m in data["metrics"] if m["name"] == "test_elbo")
    assert (elbo["a"], elbo["b"], elbo["difference"]) == (141.0, 139.5, -1.5)
    assert elbo["tolerance"] is None
    latent = next(r for r in data["spec"] if r["key"] == "latent_dim")
    assert (latent["a"], latent["b"], latent["same"]) == (2, 3, False)
    assert [(f["name"], f["a"], f["b"]) for f in data["figures"]] == [
        ("a", True, False), ("b", True, True), ("c", False, True)]
    assert data["arrays"] == [{"name": "latent_means", "a": "10 × 2 float32",
                               "b": "10 × 3 float32"}]
    assert data["history"] == {"a": True, "b": True}


def test_learning_curves_overlay_both_histories_or_nothing(runs):
    a, b = (recorded.load(r) for r in runs)
    png = compare.learning_curves(a.history(), b.history(), "a", "b")
    assert png.startswith(recorded.PNG_SIGNATURE)
    assert compare.learning_curves(a.history(), None, "a", "b") is None


def test_compare_writes_a_self_contained_report(runs, tmp_path):
    out = tmp_path / "report"
    compare.compare_runs(*runs, out)
    page = (out / "report.html").read_text()
    data = json.loads((out / "report.json").read_text())
    assert data["metrics"][0]["difference"] == -1.5
    # self-contained: every image is embedded, nothing is loaded from elsewhere
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert len(sources) == 2 + 2 + 1  # figures a and b of run A, b and c of run B, the curves
    for source in sources:
        assert base64.b64decode(source.split(",", 1)[1]).startswith(recorded.PNG_SIGNATURE)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "-1.50" in page and "141.00" in page and "139.50" in page
    assert page.count('class="missing"') == 2  # a has no c, b has no a
    assert "Learning curves" in page


def test_compare_never_overwrites_without_force(runs, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(compare.CompareError, match="already holds files; pass --force"):
        compare.compare_runs(*runs, out)
    assert (out / "keep.txt").read_text() == "mine"
    compare.compare_runs(*runs, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]


def test_the_command_line(runs, tmp_path, capsys):
    assert main(["compare", str(runs[0]), str(runs[1]), "--out", str(tmp_path / "r")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["test_elbo", "141.00", "139.50", "-1.50"]
    assert lines[-1] == f"report written to {tmp_path / 'r'}/report.html"
    assert main(["compare", str(runs[0]), str(tmp_path), "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}: no records.json") and err.count("\n") == 1
    with pytest.raises(SystemExit) as info:
        main(["compare", str(runs[0]), "--out", str(tmp_path / "t")])
    assert info.value.code == 2
