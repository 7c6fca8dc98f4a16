"""The records of a run directory, read back and checked as untrusted input.

``load(directory)`` reads ``records.json`` and the files beside it (written by
``vae_helpers.course.record``, or by anything else: a graded notebook may write the
file directly) and returns a ``Records``: the records that are valid, and for
each one that is not a one-line reason. Every rule of ``record`` is applied
again, and the reading itself is guarded: files are read only if they are
regular files inside the directory (no symbolic links out of it), within their
size limits, PNGs must be PNGs, arrays are loaded without pickle, and all the
files together may hold at most ``MAX_TOTAL_BYTES``.
"""

from __future__ import annotations

import io as _io
import json
import os
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from vae_helpers.course import record
from vae_helpers.course.record import RecordError

MAX_TOTAL_BYTES = 32 * 2**20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILE_PROBLEM = ""
"""The key of ``Records.problems`` for a problem with ``records.json`` as a whole."""


@dataclass
class Records:
    """Valid records by name, and why the others are not valid.

    Figure entries carry their PNG as ``png`` (bytes), array entries their values as
    ``values`` (a numpy array).
    """

    directory: Path
    entries: dict = field(default_factory=dict)
    problems: dict = field(default_factory=dict)
    #: for each metric the grader computed itself (``grading.recompute``), what the run
    #: recorded under that name: ``(entry or None, problem or None)``
    claimed: dict = field(default_factory=dict)

    def kind(self, name: str) -> str | None:
        """The kind of a valid record (``metric``, ``figure``, ...), or ``None``."""
        return self.entries.get(name, {}).get("kind")

    def metric(self, name: str) -> float | int | None:
        """The value of a valid metric, or ``None``."""
        entry = self.entries.get(name)
        return entry["value"] if entry and entry["kind"] == "metric" else None

    def spec(self, name: str = record.SPEC_NAME) -> dict | None:
        """The model spec, or ``None``: that of the recorded homework weights
        (``record.weights_spec``: their shapes give the sizes, the student interface the
        rest), which a recorded spec cannot contradict; without weights, a recorded spec."""
        weights = self.entries.get(record.WEIGHTS_NAME)
        if weights and weights["kind"] == "weights":
            return record.weights_spec(weights["latent_dim"], weights["hidden_units"],
                                       weights["input_dim"])
        entry = self.entries.get(name)
        return entry["value"] if entry and entry["kind"] == "spec" else None

    def history(self, name: str = record.HISTORY_NAME) -> list | None:
        """The rows of the valid history, or ``None``."""
        entry = self.entries.get(name)
        return entry["rows"] if entry and entry["kind"] == "history" else None


def find(path) -> Path:
    """The directory holding ``records.json`` for ``path``: ``path`` itself, or the run
    directory of a grade's output (``path/work/run``)."""
    path = Path(path)
    graded = path / "work" / "run"
    if not (path / record.RECORDS_FILE).exists() and (graded / record.RECORDS_FILE).exists():
        return graded
    return path


def load(directory) -> Records:
    """Read and check the records of ``directory``; never raises for what the files hold."""
    directory = Path(directory)
    found = Records(directory)
    try:
        raw = read_inside(directory, directory / record.RECORDS_FILE,
                          record.MAX_RECORDS_FILE_BYTES)
    except FileNotFoundError:
        found.problems[FILE_PROBLEM] = f"no {record.RECORDS_FILE}: nothing was recorded"
        return found
    except (OSError, ValueError) as err:
        found.problems[FILE_PROBLEM] = f"{record.RECORDS_FILE} cannot be read: {err}"
        return found
    try:
        document = json.loads(raw.decode("utf-8"))
        entries = document["records"]
        if not isinstance(entries, dict):
            raise TypeError("'records' is not an object")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        found.problems[FILE_PROBLEM] = f"{record.RECORDS_FILE} is not a records file ({err})"
        return found
    if len(entries) > record.MAX_RECORDS:
        found.problems[FILE_PROBLEM] = (f"{record.RECORDS_FILE} holds {len(entries)} records, "
                                        f"more than the {record.MAX_RECORDS} allowed")
        return found
    budget = [MAX_TOTAL_BYTES]
    for name, entry in entries.items():
        try:
            record.check_name(name)
            found.entries[name] = _check_entry(directory, name, entry, budget)
        except (RecordError, OSError, ValueError, TypeError, KeyError,
                zipfile.BadZipFile) as err:
            found.problems[name] = _reason(name, err)
    return found


def _reason(name: str, err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    text = text.removeprefix(f"{name}: ")
    return text[:300]


def _check_entry(directory: Path, name: str, entry, budget: list) -> dict:
    if not isinstance(entry, dict):
        raise RecordError(f"a record is an object, got {type(entry).__name__}")
    kind = entry.get("kind")
    if kind == "metric":
        return {"kind": kind, "value": record.check_number(name, entry.get("value")),
                "details": record.check_details(name, entry.get("details") or {})}
    if kind == "spec":
        return {"kind": kind, "value": record.check_spec(name, entry.get("value"))}
    if kind == "history":
        return {"kind": kind, "rows": record.check_history(name, entry.get("rows"))}
    if kind == "figure":
        images = entry.get("images", [])
        if not (isinstance(images, list) and len(images) <= record.MAX_IMAGES and all(
                isinstance(s, list) and 2 <= len(s) <= 3
                and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 100_000
                        for n in s) for s in images)):
            raise RecordError("'images' must list the shapes of the figure's images")
        png = _read_file(directory, name, ".png", record.MAX_FIGURE_BYTES, budget)
        if not png.startswith(PNG_SIGNATURE):
            raise RecordError(f"records/{name}.png is not a PNG image")
        return {"kind": kind, "images": images, "png": png}
    if kind == "array":
        import numpy as np

        data = _read_file(directory, name, ".npy", record.MAX_ARRAY_BYTES + 4096, budget)
        values = np.load(_io.BytesIO(data), allow_pickle=False)
        record.check_array(name, values)
        return {"kind": kind, "shape": list(values.shape), "dtype": str(values.dtype),
                "values": values}
    if kind == "weights":
        import numpy as np

        data = _read_file(directory, name, ".npz", record.MAX_WEIGHTS_BYTES + 4096, budget)
        with np.load(_io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
        latent, hidden, input_dim = record.check_weights(name, arrays)
        return {"kind": kind, "arrays": arrays, "latent_dim": latent,
                "hidden_units": hidden, "input_dim": input_dim}
    raise RecordError(f"unknown kind {str(kind)[:40]!r} (metric, figure, array, spec, history, "
                      "weights)")


def _read_file(directory: Path, name: str, suffix: str, limit: int, budget: list) -> bytes:
    relative = f"{record.FILES_DIR}/{name}{suffix}"
    try:
        data = read_inside(directory, directory / relative, min(limit, budget[0]))
    except FileNotFoundError:
        raise RecordError(f"its file {relative} is missing") from None
    budget[0] -= len(data)
    return data


def read_inside(root: Path, path: Path, limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file inside ``root`` of at most ``limit``
    bytes; ``FileNotFoundError`` if it is missing, ``ValueError`` for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as err:
        if path.is_symlink():
            raise ValueError(f"{path.name} is a symbolic link; records must be plain files") \
                from None
        raise ValueError(f"{path.name} cannot be opened ({err.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path.name} is not a regular file")
        if not Path(os.path.realpath(path)).is_relative_to(Path(root).resolve()):
            raise ValueError(f"{path.name} lies outside {Path(root).name}/")
        if info.st_size > limit:
            raise ValueError(f"{path.name} has {info.st_size:,} bytes, more than the "
                             f"{limit:,} allowed")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ValueError(f"{path.name} has more than the {limit:,} bytes allowed")
        return data
    finally:
        os.close(fd)
