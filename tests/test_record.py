"""Tests of vae_helpers.course.record (writing records) and vae_helpers.grading.recorded
(reading them back as untrusted input)."""

from __future__ import annotations

import json
import os

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

from vae_helpers import plots
from vae_helpers.course import record
from vae_helpers.course.record import RecordError
from vae_helpers.grading import recorded

pytestmark = pytest.mark.unit

matplotlib.use("Agg")

SPEC = {"latent_dim": 2, "hidden_units": [512], "hidden_activation": "relu",
        "output_activation": "sigmoid", "likelihood": "gaussian", "prior": "normal",
        "num_parameters": 807701, "nonnegative_variances": True}


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A fresh record directory, with $VAE_RECORD_DIR unset (figures closed afterwards)."""
    monkeypatch.delenv(record.RECORD_DIR_ENV, raising=False)
    monkeypatch.setattr(record, "_state", {})
    record.set_run_dir(tmp_path / "run")
    yield tmp_path / "run"
    plt.close("all")


def test_every_kind_of_record_reads_back_as_written(run):
    record.metric("test_elbo", np.float32(141.5), k=1000, variant="dequantized")
    record.figure("samples_10x10", plots.plot_grid(np.random.rand(100, 784)))
    codes = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    record.array("latent_means", codes)
    record.model_spec(SPEC)
    record.history([{"epoch": 1, "train_elbo": 10.0, "test_elbo": None},
                    {"epoch": 2, "train_elbo": 12.5, "test_elbo": 11.0}])
    found = recorded.load(run)
    assert found.problems == {}
    assert found.metric("test_elbo") == 141.5
    assert found.entries["test_elbo"]["details"] == {"k": 1000, "variant": "dequantized"}
    assert found.entries["samples_10x10"]["images"] == [[289, 289]]  # 10·28 + 9 gaps of 1
    assert found.entries["samples_10x10"]["png"].startswith(recorded.PNG_SIGNATURE)
    assert (run / "records" / "samples_10x10.png").is_file()
    np.testing.assert_array_equal(found.entries["latent_means"]["values"], codes)
    assert found.spec() == SPEC
    assert found.history()[1] == {"epoch": 2, "train_elbo": 12.5, "test_elbo": 11.0}


def test_a_history_with_the_learned_variance_reads_back_and_a_bad_one_is_refused(run, tmp_path):
    from vae_helpers.training import HISTORY_FIELDS

    package_row = {key: float(i + 1) for i, key in enumerate(HISTORY_FIELDS)} | {"epoch": 1}
    student_row = {"epoch": 2, "train_elbo": 5.0, "test_elbo": None, "sigma2": 0.02,
                   "seconds": 3.0}
    record.history([package_row, student_row])
    assert recorded.load(run).history() == [package_row, student_row]
    with pytest.raises(RecordError, match="history.sigma2: a variance must be positive"):
        record.history([{**student_row, "sigma2": -0.5}])
    # the grader reads a record written by anyone: the same check
    write(tmp_path / "hostile", {"history": {"kind": "history",
                                             "rows": [{**student_row, "sigma2": 0.0}]}})
    problems = recorded.load(tmp_path / "hostile").problems
    assert problems == {"history": "history.sigma2: a variance must be positive, got 0.0"}


def test_the_environment_variable_wins_over_set_run_dir(run, tmp_path, monkeypatch):
    monkeypatch.setenv(record.RECORD_DIR_ENV, str(tmp_path / "graded"))
    assert record.set_run_dir(run) == tmp_path / "graded"
    record.metric("x", 1)
    assert (tmp_path / "graded" / "records.json").exists() and not run.exists()


def test_recording_without_a_directory_says_how_to_set_one(monkeypatch):
    monkeypatch.delenv(record.RECORD_DIR_ENV, raising=False)
    monkeypatch.setattr(record, "_state", {})
    with pytest.raises(RecordError, match=r"call record.set_run_dir\(RUN_DIR\)"):
        record.metric("x", 1.0)


def test_two_writers_one_after_the_other_share_the_file_and_names_are_replaced(run):
    record.metric("a", 1.0)
    record.metric("b", 2.0)
    record.metric("a", 3.0)
    record.figure("b", plots.plot_grid(np.zeros((4, 784)), 2, 2))  # a metric becomes a figure
    record.array("a", np.zeros(3))
    found = recorded.load(run)
    assert (found.kind("a"), found.kind("b")) == ("array", "figure")
    record.metric("b", 5.0)
    assert not (run / "records" / "b.png").exists()  # the old figure's file went with it


@pytest.mark.parametrize("value, message", [
    (float("nan"), "nan is not a finite number"), (float("inf"), "inf is not a finite number"),
    ("high", "expected a number, got str"), (True, "expected a number, got bool"),
    ([1.0], "expected a number, got list"), (None, "expected a number, got NoneType"),
])
def test_metrics_must_be_finite_numbers(run, value, message):
    with pytest.raises(RecordError, match=message):
        record.metric("test_elbo", value)
    assert not (run / "records.json").exists()


@pytest.mark.parametrize("name", ["Test", "a-b", "", "x" * 65, "../x", "a b", 3])
def test_names_are_short_lowercase_words(run, name):
    with pytest.raises(RecordError, match="is not allowed"):
        record.metric(name, 1.0)


def test_details_arrays_specs_and_histories_are_checked(run):
    with pytest.raises(RecordError, match="a text of 201 characters"):
        record.metric("m", 1.0, note="x" * 201)
    with pytest.raises(RecordError, match="more than|at most 4 dimensions and"):
        record.array("big", np.zeros(2**20 + 1))
    with pytest.raises(RecordError, match="must be numeric"):
        record.array("words", np.array(["a", "b"]))
    with pytest.raises(RecordError, match="NaN or infinite"):
        record.array("holes", np.array([1.0, np.nan]))
    with pytest.raises(RecordError, match="the spec lacks nonnegative_variances"):
        record.model_spec({k: v for k, v in SPEC.items() if k != "nonnegative_variances"})
    with pytest.raises(RecordError, match="latent_dim must be int, got '2'"):
        record.model_spec({**SPEC, "latent_dim": "2"})
    with pytest.raises(RecordError, match="hidden_units must be a list"):
        record.model_spec({**SPEC, "hidden_units": [512.0]})
    with pytest.raises(RecordError, match="every row is a dict with an 'epoch'"):
        record.history([{"train_elbo": 1.0}])
    with pytest.raises(RecordError, match="history.train_elbo: nan is not a finite number"):
        record.history([{"epoch": 1, "train_elbo": float("nan")}])
    with pytest.raises(RecordError, match="needs a matplotlib Figure"):
        record.figure("fig", np.zeros((28, 28)))
    assert not (run / "records.json").exists()


def test_at_most_max_records(run, monkeypatch):
    monkeypatch.setattr(record, "MAX_RECORDS", 3)
    for name in "abc":
        record.metric(name, 1.0)
    record.metric("a", 2.0)  # replacing is fine
    with pytest.raises(RecordError, match="already holds 3 records"):
        record.metric("d", 1.0)


def test_a_damaged_records_file_is_not_overwritten(run):
    run.mkdir(parents=True)
    (run / "records.json").write_text("{not json")
    with pytest.raises(RecordError, match="not a readable records file .* delete it"):
        record.metric("a", 1.0)
    assert (run / "records.json").read_text() == "{not json"


def test_the_spec_of_the_homework_vae():
    from vae_helpers.model import VAE

    spec = record.spec_of(VAE())
    assert {k: spec[k] for k in SPEC} == SPEC
    assert spec["nonnegative_variances"] is True


# --------------------------------------------------------------------------- reading back
def write(run, records: dict | str):
    run.mkdir(parents=True, exist_ok=True)
    text = records if isinstance(records, str) else json.dumps({"records": records})
    (run / "records.json").write_text(text)


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not a records file"),
    ('{"records": [1, 2]}', "'records' is not an object"),
    ('["a"]', "is not a records file"),
])
def test_a_records_file_that_is_not_one(tmp_path, content, message):
    write(tmp_path, content)
    assert message in recorded.load(tmp_path).problems[recorded.FILE_PROBLEM]


def test_a_missing_or_huge_records_file(tmp_path):
    assert "no records.json" in recorded.load(tmp_path).problems[""]
    write(tmp_path, json.dumps({"records": {}, "pad": "x" * record.MAX_RECORDS_FILE_BYTES}))
    assert "more than the 2,097,152 allowed" in recorded.load(tmp_path).problems[""]


def test_invalid_records_written_directly_are_reported_one_by_one(tmp_path):
    many = {f"m{i}": {"kind": "metric", "value": 1.0} for i in range(3)}
    write(tmp_path, {
        **many,
        "test_elbo": {"kind": "metric", "value": float("nan")},
        "iwae_log_likelihood": {"kind": "metric", "value": "156"},
        "model_spec": {"kind": "spec", "value": {**SPEC, "latent_dim": True}},
        "BAD": {"kind": "metric", "value": 1.0},
        "odd": {"kind": "sound", "value": 1.0},
        "samples_10x10": {"kind": "figure", "images": [[289, 289]]},
        "latent_means": {"kind": "array"},
        "history": {"kind": "history", "rows": [{"epoch": 1}] * (record.MAX_HISTORY_ROWS + 1)},
    })
    found = recorded.load(tmp_path)
    assert sorted(found.entries) == ["m0", "m1", "m2"]
    assert found.problems == {
        "test_elbo": "nan is not a finite number",
        "iwae_log_likelihood": "expected a number, got str",
        "model_spec": "latent_dim must be int, got True",
        "BAD": "record name 'BAD' is not allowed: use 1 to 64 lowercase letters, digits and "
               "underscores",
        "odd": "unknown kind 'sound' (metric, figure, array, spec, history, "
                 "weights)",
        "samples_10x10": "its file records/samples_10x10.png is missing",
        "latent_means": "its file records/latent_means.npy is missing",
        "history": "a history is a list of 1 to 10000 rows",
    }


def test_too_many_records_are_refused_as_a_whole(tmp_path):
    write(tmp_path, {f"m{i}": {"kind": "metric", "value": 1.0}
                     for i in range(record.MAX_RECORDS + 1)})
    assert "more than the 100 allowed" in recorded.load(tmp_path).problems[""]


def test_record_files_must_be_plain_small_files_inside_the_directory(tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(recorded.PNG_SIGNATURE + b"secret")
    run = tmp_path / "run"
    files = run / "records"
    files.mkdir(parents=True)
    (files / "linked.png").symlink_to(outside)
    (files / "fake.png").write_bytes(b"GIF89a")
    os.mkfifo(files / "pipe.png")
    (files / "huge.png").write_bytes(recorded.PNG_SIGNATURE + b"\0" * record.MAX_FIGURE_BYTES)
    np.save(files / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(files / "words.npy", np.array(["a"]))
    figure = {"kind": "figure", "images": []}
    write(run, {"linked": figure, "fake": figure, "pipe": figure, "huge": figure,
                "pickled": {"kind": "array"}, "words": {"kind": "array"},
                "shapes": {"kind": "figure", "images": [[289, 289, 3, 1]]}})
    problems = recorded.load(run).problems
    assert problems["linked"] == "linked.png is a symbolic link; records must be plain files"
    assert problems["fake"] == "records/fake.png is not a PNG image"
    assert problems["pipe"] == "pipe.png is not a regular file"
    assert problems["huge"].startswith("huge.png has 4,194,312 bytes, more than the")
    assert "allow_pickle=False" in problems["pickled"]
    assert problems["words"] == "arrays must be numeric, not of dtype <U1"
    assert problems["shapes"] == "'images' must list the shapes of the figure's images"


def test_a_records_folder_linked_elsewhere_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "grid.png").write_bytes(recorded.PNG_SIGNATURE)
    run = tmp_path / "run"
    run.mkdir()
    (run / "records").symlink_to(elsewhere)
    write(run, {"grid": {"kind": "figure", "images": []}})
    assert recorded.load(run).problems["grid"] == "grid.png lies outside run/"


def test_all_files_together_have_a_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(recorded, "MAX_TOTAL_BYTES", 150)
    files = tmp_path / "records"
    files.mkdir()
    for name in ("a", "b"):
        (files / f"{name}.png").write_bytes(recorded.PNG_SIGNATURE + b"\0" * 92)
    write(tmp_path, {"a": {"kind": "figure"}, "b": {"kind": "figure"}})
    found = recorded.load(tmp_path)
    assert list(found.entries) == ["a"] and "more than the 50 allowed" in found.problems["b"]


def test_find_accepts_a_run_or_a_grade_directory(tmp_path):
    graded = tmp_path / "grade" / "work" / "run"
    write(graded, {})
    assert recorded.find(tmp_path / "grade") == graded
    assert recorded.find(graded) == graded


def homework_arrays(latent_dim=2, hidden_units=8, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape).astype(np.float32)
            for name, shape in record.weight_shapes(latent_dim, hidden_units).items()}


def test_weights_are_named_float32_arrays_that_read_back_and_load(run, tmp_path):
    arrays = homework_arrays(latent_dim=3)
    path = record.weights({k: v.astype(np.float64) for k, v in arrays.items()})
    assert path == run / "records" / "weights.npz"
    back = record.read_weights(run)
    assert sorted(back) == sorted(arrays)
    for name, values in arrays.items():
        assert back[name].dtype == np.float32
        np.testing.assert_array_equal(back[name], values)
    found = recorded.load(run)
    assert found.problems == {}
    assert found.entries["weights"]["latent_dim"] == 3
    assert found.entries["weights"]["hidden_units"] == 8


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("likelihood/rho"), "missing likelihood/rho"),
    (lambda a: a.update(extra=np.zeros(2, np.float32)), "unknown extra"),
    (lambda a: a.update({"decoder/output/bias": np.zeros(10, np.float32)}),
     "decoder/output/bias has shape [10]; with D = 784, H = 8 and P = 2 it must be [784]"),
    (lambda a: a["encoder/hidden/bias"].__setitem__(0, np.nan),
     "encoder/hidden/bias holds NaN or infinite values"),
])
def test_weights_that_do_not_fit_the_homework_network_are_refused(run, change, message):
    arrays = homework_arrays()
    change(arrays)
    with pytest.raises(RecordError, match=message.replace("[", r"\[").replace("]", r"\]")):
        record.weights(arrays)
    with pytest.raises(RecordError, match="a dict of named arrays"):
        record.weights([1, 2])
    assert not (run / "records" / "weights.npz").exists()


def test_reading_weights_that_are_missing_or_damaged(run):
    with pytest.raises(RecordError, match="does not exist: train the model first"):
        record.read_weights(run)
    record.weights(homework_arrays())
    (run / "records" / "weights.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(RecordError, match="is not a weights file that record.weights wrote"):
        record.read_weights(run)
    assert "weights" in recorded.load(run).problems
