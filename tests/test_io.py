"""Tests of vae_helpers.io: atomic writers and their readers."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from vae_helpers import io
from vae_helpers.backend import tf

pytestmark = pytest.mark.unit


def strict_json(text: str):
    """Parse JSON, refusing the non-standard NaN / Infinity tokens."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


# --- round trips -----------------------------------------------------------------------------


def test_json_round_trip_with_numpy_and_tf_values(tmp_path):
    path = tmp_path / "m.json"
    obj = {
        "f32": np.float32(0.5), "f64": np.float64(-387.46441650390625), "i64": np.int64(3),
        "u8": np.uint8(255), "bool": np.bool_(True), "zero_d": np.array(2.25),
        "tf": tf.constant(1.5), "tf_int": tf.constant(7),
        "nan": float("nan"), "np_nan": np.float32("nan"),
        "nested": {"list": [1, np.int32(2), (3.0, np.float64(0.1))], 4: "int key"},
        "path": Path("runs/homework"), "none": None, "text": "ü",
    }
    assert io.write_json(path, obj) == path
    back = strict_json(path.read_text(encoding="utf-8"))
    assert back == {
        "f32": 0.5, "f64": -387.46441650390625, "i64": 3, "u8": 255, "bool": True,
        "zero_d": 2.25, "tf": 1.5, "tf_int": 7, "nan": None, "np_nan": None,
        "nested": {"list": [1, 2, [3.0, 0.1]], "4": "int key"},
        "path": "runs/homework", "none": None, "text": "ü",
    }
    assert type(back["i64"]) is int and type(back["f32"]) is float
    assert io.read_json(path) == back


def test_json_infinities_are_valid_json(tmp_path):
    path = io.write_json(tmp_path / "inf.json", {"a": float("inf"), "b": np.float64("-inf")})
    back = strict_json(path.read_text())
    assert set(back) == {"a", "b"}  # whatever the encoding, the file stays valid JSON


def test_csv_round_trip_numbers_come_back_as_numbers(tmp_path):
    path = tmp_path / "h.csv"
    rows = [
        {"epoch": 1, "elbo": -387.46441650390625, "tiny": 1e-300, "sum": 0.1 + 0.2,
         "f32": np.float32(0.25), "i64": np.int64(-4), "name": "a,b \"quoted\""},
        {"epoch": 2, "elbo": -150.0, "tiny": 5e-324, "sum": 2.0,
         "f32": np.float32(-1.5), "i64": np.int64(10**12), "name": "plain"},
    ]
    assert io.write_csv(path, rows) == path
    back = io.read_csv(path)
    assert back == [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
                    for r in rows]
    for row in back:
        assert type(row["epoch"]) is int and type(row["i64"]) is int
        assert type(row["elbo"]) is float and type(row["sum"]) is float
        assert type(row["name"]) is str
    assert path.read_text().splitlines()[0] == "epoch,elbo,tiny,sum,f32,i64,name"


def test_csv_non_finite_values(tmp_path):
    path = io.write_csv(tmp_path / "h.csv", [{"a": float("inf"), "b": float("-inf")}])
    back = io.read_csv(path)
    assert back[0]["a"] == math.inf and back[0]["b"] == -math.inf


def test_csv_gaps_come_back_as_none(tmp_path):
    path = io.write_csv(tmp_path / "h.csv", [{"a": 1, "b": None}, {"a": 2, "b": float("nan")}])
    assert io.read_csv(path) == [{"a": 1, "b": None}, {"a": 2, "b": None}]


def test_csv_header_holds_a_key_first_seen_in_a_later_row(tmp_path):
    # a run resumed from rows written before a column existed
    path = io.write_csv(tmp_path / "h.csv", [{"epoch": 1, "seconds": 2.0},
                                             {"epoch": 2, "sigma2": 0.5, "seconds": 3.0}])
    assert path.read_text().splitlines()[0] == "epoch,seconds,sigma2"
    assert io.read_csv(path) == [{"epoch": 1, "seconds": 2.0, "sigma2": None},
                                 {"epoch": 2, "seconds": 3.0, "sigma2": 0.5}]


def test_written_files_get_the_mode_the_umask_gives_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = io.write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_csv_without_rows_is_an_empty_file(tmp_path):
    path = io.write_csv(tmp_path / "empty.csv", [])
    assert path.read_text() == ""
    assert io.read_csv(path) == []


def test_write_replaces_the_previous_content(tmp_path):
    path = tmp_path / "x.json"
    io.write_json(path, {"v": 1})
    io.write_json(path, {"v": 2})
    assert io.read_json(path) == {"v": 2}
    io.atomic_write_text(path, "short")
    assert path.read_text() == "short"
    assert leftovers(tmp_path, {"x.json"}) == []


# --- failures keep the previous file ---------------------------------------------------------


@pytest.fixture
def previous(tmp_path) -> Path:
    path = tmp_path / "metrics.json"
    io.write_json(path, {"version": "previous"})
    return path


def assert_previous_intact(path: Path) -> None:
    assert io.read_json(path) == {"version": "previous"}
    assert leftovers(path.parent, {path.name}) == [], "temporary file left behind"


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()],
                         ids=["OSError", "KeyboardInterrupt"])
def test_failed_rename_keeps_previous_file(previous, monkeypatch, error):
    def failing_replace(src, dst):
        assert Path(src).exists() and Path(src).parent == previous.parent
        raise error
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(type(error)):
        io.write_json(previous, {"version": "new", "pad": "x" * 10000})
    assert_previous_intact(previous)


def test_failed_fsync_keeps_previous_file(previous, monkeypatch):
    def failing_fsync(fd):
        raise OSError("I/O error")
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="I/O error"):
        io.write_csv(previous, [{"a": 1}])
    assert_previous_intact(previous)


def test_failed_write_keeps_previous_file(previous):
    with pytest.raises(TypeError):
        io.atomic_write_bytes(previous, "text is not bytes")  # fails inside f.write
    assert_previous_intact(previous)


def test_unserializable_payload_keeps_previous_file(previous):
    with pytest.raises(TypeError):
        io.write_json(previous, {"version": "new", "bad": object()})
    assert_previous_intact(previous)


def test_failing_rows_keep_previous_file(previous):
    def rows():
        yield {"a": 1}
        raise RuntimeError("row generator failed")
    with pytest.raises(RuntimeError, match="row generator failed"):
        io.write_csv(previous, rows())
    assert_previous_intact(previous)


def test_missing_directory_is_an_error_not_a_partial_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        io.write_json(tmp_path / "missing" / "x.json", {"a": 1})
    assert leftovers(tmp_path, set()) == []


def test_a_temporary_file_that_cannot_be_removed_does_not_hide_the_error(previous, monkeypatch):
    """A directory that became unwritable mid-write: the rename fails, and so does removing
    the temporary file; the caller sees the first error, the one that says what failed."""
    def failing_replace(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    def failing_unlink(self, missing_ok=False):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(os, "replace", failing_replace)
    monkeypatch.setattr(Path, "unlink", failing_unlink)
    with pytest.raises(PermissionError) as info:
        io.write_json(previous, {"version": "new"})
    assert info.value.filename == str(previous)
    monkeypatch.undo()
    assert io.read_json(previous) == {"version": "previous"}
