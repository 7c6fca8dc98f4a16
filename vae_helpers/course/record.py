"""Recording a notebook's results under fixed names, for comparison and grading.

A notebook calls ``record.set_run_dir(RUN_DIR)`` once, then records what it
produced::

    record.metric("test_elbo", 141.7, n_test=10000)
    record.figure("samples_10x10", fig)          # the PNG, and the shapes of its images
    record.array("latent_means", codes)          # small arrays only
    record.model_spec(model)                     # a VAE, or a dict (see SPEC_KEYS)
    record.history(history)                      # per-epoch train/test ELBO (and σ²)
    record.weights(vae.weights())                # a homework VAE's named float32 arrays

(``save_weights`` and ``load_weights`` write and read such arrays as a plain file,
outside the records: the student module's training loop keeps its copy that way.)

Everything goes into ``<dir>/records.json`` plus files in ``<dir>/records/``
(``NAME.png``, ``NAME.npy``); ``<dir>`` is ``$VAE_RECORD_DIR`` when it is set
(the grader sets it, and it wins), else the directory given to ``set_run_dir``.
Each call reads, updates and atomically rewrites ``records.json``, so several
notebooks (one at a time) add to the same file, and recording a name again
replaces it.

Values are checked when they are recorded (``RecordError`` says what is wrong),
and again by ``vae_helpers.grading.recorded.load`` when the file is read, since a
notebook can also write the file directly: names are ``[a-z0-9_]``, at most 64
characters; numbers are finite; arrays are numeric, at most ``MAX_ARRAY_BYTES``;
figures are PNGs of at most ``MAX_FIGURE_BYTES``; at most ``MAX_RECORDS`` records.
The names the homework's notebooks record are listed in ``HOMEWORK_RECORDS``.
"""

from __future__ import annotations

import io as _io
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

from vae_helpers import io

RECORD_DIR_ENV = "VAE_RECORD_DIR"
RECORDS_FILE = "records.json"
FILES_DIR = "records"
FORMAT = "vae_helpers.records/1"
NAME_PATTERN = re.compile(r"[a-z0-9_]{1,64}")
MAX_RECORDS = 100
MAX_RECORDS_FILE_BYTES = 2 * 2**20
MAX_ARRAY_BYTES = 4 * 2**20
MAX_FIGURE_BYTES = 4 * 2**20
MAX_TEXT = 200
MAX_DETAILS = 20
MAX_HISTORY_ROWS = 10_000
MAX_IMAGES = 1000
SPEC_NAME = "model_spec"
HISTORY_NAME = "history"
WEIGHTS_NAME = "weights"
MAX_WEIGHTS_BYTES = 64 * 2**20

HOMEWORK_RECORDS = {
    "real_10x10": "figure: 100 test digits, a 10×10 grid of 28×28 images",
    "samples_10x10": "figure: 100 samples from the model (z ~ p(z), mean of p(x|z)), 10×10",
    "reconstructions_10x10": "figure: reconstructions of test digits, a 10×10 grid",
    "latent_scatter": "figure: the test set's latent means, coloured by digit label",
    "manifold_20x20": "figure: decoded codes on a 20×20 grid over the codes' range",
    "test_elbo": "metric: the test ELBO, nats per image",
    "iwae_log_likelihood": "metric: the IWAE log-likelihood bound, nats per image (detail k); "
                           "the grader computes it from the weights",
    WEIGHTS_NAME: "weights: the trained homework VAE's named float32 arrays (records/weights.npz)",
    HISTORY_NAME: "history: per-epoch train and test ELBO (the learning curves)",
    "latent_means": "array: the test set's latent means, [10000, 2]",
}
"""The names the course's notebooks record: the contract a homework notebook follows."""

SPEC_KEYS = {"latent_dim": int, "hidden_units": list, "hidden_activation": str,
             "output_activation": str, "likelihood": str, "prior": str,
             "num_parameters": int, "nonnegative_variances": bool}
"""The keys a model spec must have, with their types (more keys, of scalars, may follow)."""

_state: dict = {}


class RecordError(ValueError):
    """A record cannot be written: a bad name or value, or no record directory."""


def set_run_dir(path) -> Path:
    """Record into ``path`` from now on (``$VAE_RECORD_DIR`` still wins); returns the
    directory records actually go to."""
    _state["dir"] = Path(path)
    return record_dir()


def record_dir() -> Path:
    """Where records go: ``$VAE_RECORD_DIR``, else the directory given to ``set_run_dir``.

    Raises:
        RecordError: neither is set.
    """
    chosen = os.environ.get(RECORD_DIR_ENV) or _state.get("dir")
    if not chosen:
        raise RecordError("no record directory: call record.set_run_dir(RUN_DIR) first "
                          f"(or set ${RECORD_DIR_ENV})")
    return Path(chosen)


def metric(name: str, value, **details) -> None:
    """Record a finite number, with optional details (e.g. ``k=1000``): short strings,
    finite numbers, booleans or ``None``."""
    _store(name, {"kind": "metric", "value": check_number(name, value),
                  "details": check_details(name, details)})


def figure(name: str, fig, dpi: int = 100) -> Path:
    """Record a matplotlib figure as ``records/NAME.png``, with the shapes of the images
    its axes show (``images``: ``[rows, cols]`` or ``[rows, cols, channels]`` each).

    Returns the path of the PNG.
    """
    check_name(name)
    if not hasattr(fig, "savefig") or not hasattr(fig, "axes"):
        raise RecordError(f"{name}: record.figure needs a matplotlib Figure, "
                          f"got {type(fig).__name__}")
    images = [list(map(int, im.get_array().shape)) for ax in fig.axes for im in ax.get_images()
              if im.get_array() is not None]
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    data = buffer.getvalue()
    if len(data) > MAX_FIGURE_BYTES:
        raise RecordError(f"{name}: the PNG has {len(data):,} bytes, more than the "
                          f"{MAX_FIGURE_BYTES:,} allowed; lower dpi or the figure size")
    path = _write_file(name, ".png", data)
    _store(name, {"kind": "figure", "file": f"{FILES_DIR}/{name}.png",
                  "images": images[:MAX_IMAGES]})
    return path


def array(name: str, values) -> Path:
    """Record a small numeric array as ``records/NAME.npy`` (finite values, at most
    ``MAX_ARRAY_BYTES``). Returns the path."""
    import numpy as np

    check_name(name)
    try:
        values = np.asarray(getattr(values, "numpy", lambda: values)())
    except Exception as err:
        raise RecordError(f"{name}: not convertible to a numeric array ({err})") from None
    check_array(name, values)
    buffer = _io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    path = _write_file(name, ".npy", buffer.getvalue())
    _store(name, {"kind": "array", "file": f"{FILES_DIR}/{name}.npy",
                  "shape": list(values.shape), "dtype": str(values.dtype)})
    return path


def weight_shapes(latent_dim: int = 2, hidden_units: int = 512,
                  input_dim: int = 784) -> dict[str, tuple[int, ...]]:
    """The names and shapes of the homework VAE's arrays, as ``weights`` records them
    (``vae_helpers.model.homework_weight_shapes``, where the parametrization is given)."""
    from vae_helpers.model import homework_weight_shapes

    return homework_weight_shapes(latent_dim, hidden_units, input_dim)


def _weight_arrays(name: str, arrays) -> tuple[dict, bytes, tuple[int, int, int]]:
    """Named arrays as checked float32 arrays, their ``.npz`` bytes and their sizes."""
    import numpy as np

    if not isinstance(arrays, Mapping):
        raise RecordError(f"{name}: the weights must be a dict of named arrays (the VAE's "
                          f"weights()), got {type(arrays).__name__}")
    try:
        values = {str(k): np.asarray(getattr(v, "numpy", lambda v=v: v)(), np.float32)
                  for k, v in arrays.items()}
    except (TypeError, ValueError) as err:
        raise RecordError(f"{name}: {err}") from None
    sizes = check_weights(name, values)
    buffer = _io.BytesIO()
    np.savez(buffer, **values)
    if buffer.tell() > MAX_WEIGHTS_BYTES:
        raise RecordError(f"{name}: {buffer.tell():,} bytes of weights, at most "
                          f"{MAX_WEIGHTS_BYTES:,} allowed")
    return values, buffer.getvalue(), sizes


def weights(arrays, name: str = WEIGHTS_NAME) -> Path:
    """Record a trained homework VAE's weights: ``records/NAME.npz``, named float32 arrays.

    ``arrays`` maps the names of ``weight_shapes`` to arrays or ``tf.Variable``s; the
    shapes must fit one network (the sizes are read from the arrays), every value
    must be finite. The file holds plain arrays only (``allow_pickle=False``): the
    grader loads it without running any of the notebook's code. Returns the path.
    """
    check_name(name)
    _, data, (latent, hidden, input_dim) = _weight_arrays(name, arrays)
    path = _write_file(name, ".npz", data)
    _store(name, {"kind": "weights", "file": f"{FILES_DIR}/{name}.npz",
                  "latent_dim": latent, "hidden_units": hidden, "input_dim": input_dim})
    return path


def save_weights(arrays, path) -> Path:
    """Write named homework weights to the file ``path`` (``.npz``), checked as ``weights``
    checks them, without recording them: a training loop's copy in its own folder,
    which ``load_weights`` reads back in another notebook. Returns the path."""
    _, data, _ = _weight_arrays(Path(path).name, arrays)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return io.atomic_write_bytes(Path(path), data)


def load_weights(path) -> dict:
    """The named arrays of a weights file (``save_weights``, or a recorded ``weights``),
    checked as when they were written.

    Raises:
        RecordError: no file there, or a file that is not what ``save_weights`` writes.
    """
    import zipfile

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path} does not exist: train the model first (its training "
                          "loop saves the weights after every epoch)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
        check_weights(path.name, arrays)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise RecordError(f"{path} is not a weights file that record.weights wrote "
                          f"({err})") from None
    return arrays


def read_weights(run_dir=None, name: str = WEIGHTS_NAME) -> dict:
    """The arrays ``weights`` recorded (from ``$VAE_RECORD_DIR`` when set, else ``run_dir``),
    checked as when they were written.

    Raises:
        RecordError: no weights there, or a file that is not what ``weights`` writes.
    """
    base = Path(os.environ[RECORD_DIR_ENV]) if os.environ.get(RECORD_DIR_ENV) else (
        Path(run_dir) if run_dir is not None else record_dir())
    return load_weights(base / FILES_DIR / f"{check_name(name)}.npz")


def model_spec(model_or_dict, name: str = SPEC_NAME) -> dict:
    """Record the architecture of a model (a ``vae_helpers`` VAE) or a dict with the
    ``SPEC_KEYS``; returns the spec recorded."""
    if isinstance(model_or_dict, Mapping):
        spec = dict(model_or_dict)
    elif callable(getattr(model_or_dict, "spec", None)):
        spec = spec_of(model_or_dict)
    else:
        raise RecordError(f"{name}: record.model_spec needs a VAE or a dict with the keys "
                          f"{', '.join(SPEC_KEYS)}; got {type(model_or_dict).__name__}")
    spec = check_spec(name, spec)
    _store(name, {"kind": "spec", "value": spec})
    return spec


def spec_of(model) -> dict:
    """The spec of a ``vae_helpers.model.VAE``: its ``spec()`` with ``nonnegative_variances``,
    true when both variances are a softplus plus a floor >= 0 (the encoder's
    ``variance_floor``, the Gaussian likelihood's ``min_variance``)."""
    spec = {k: v for k, v in model.spec().items() if isinstance(v, (str, int, float, bool, list))}
    floors = [getattr(model.posterior, "variance_floor", None)]
    if spec.get("likelihood") == "gaussian":
        floors.append(getattr(model.likelihood, "min_variance", None))
    spec["nonnegative_variances"] = all(f is not None and f >= 0 for f in floors)
    return spec


def weights_spec(latent_dim: int, hidden_units: int, input_dim: int = 784) -> dict:
    """The spec of the homework weights' model: the sizes read from the arrays, and what
    the student interface fixes (one hidden ReLU layer per network, a sigmoid mean, a
    Gaussian likelihood with a learned scalar variance, the N(0, I) prior, variances made
    non-negative by softplus plus a floor), as ``model.from_homework_weights`` loads them."""
    p, h, d = int(latent_dim), int(hidden_units), int(input_dim)
    return {"latent_dim": p, "hidden_units": [h], "hidden_activation": "relu",
            "output_activation": "sigmoid", "likelihood": "gaussian", "prior": "normal",
            "num_parameters": sum(math.prod(shape) for shape in weight_shapes(p, h, d).values()),
            "nonnegative_variances": True}


def history(rows, name: str = HISTORY_NAME) -> None:
    """Record a training history: a ``training.History`` or its rows (dicts with ``epoch``
    and numbers such as ``train_elbo`` and ``test_elbo``, as in ``history.csv``)."""
    rows = check_history(name, list(getattr(rows, "rows", rows)))
    _store(name, {"kind": "history", "rows": rows})


# --------------------------------------------------------------------------- checks
def check_name(name) -> str:
    """``name`` if it is a valid record (or detail) name, else ``RecordError``."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise RecordError(f"record name {name!r} is not allowed: use 1 to 64 lowercase "
                          "letters, digits and underscores")
    return name


def check_number(name: str, value) -> float | int:
    """A finite int or float (numpy scalars and 0-d tensors too); bools are refused."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise RecordError(f"{name}: {value} is not a finite number")
    return value


def _scalar(name: str, value):
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise RecordError(f"{name}: a text of {len(value)} characters; at most {MAX_TEXT}")
        return value
    return check_number(name, value)


def check_details(name: str, details) -> dict:
    """A metric's details, checked: at most ``MAX_DETAILS`` names with scalar values."""
    if not isinstance(details, Mapping) or len(details) > MAX_DETAILS:
        raise RecordError(f"{name}: details must be at most {MAX_DETAILS} key=value pairs")
    return {check_name(k): _scalar(f"{name}.{k}", v) for k, v in details.items()}


def check_spec(name: str, spec) -> dict:
    """A model spec, checked: the ``SPEC_KEYS`` with their types, other keys scalars."""
    if not isinstance(spec, Mapping):
        raise RecordError(f"{name}: a spec is a dict, got {type(spec).__name__}")
    missing = [k for k in SPEC_KEYS if k not in spec]
    if missing:
        raise RecordError(f"{name}: the spec lacks {', '.join(missing)}")
    if len(spec) > 40:
        raise RecordError(f"{name}: a spec has at most 40 keys, this one {len(spec)}")
    out = {}
    for key, value in spec.items():
        check_name(key)
        want = SPEC_KEYS.get(key)
        if want is list:
            if not isinstance(value, (list, tuple)) or len(value) > 32 or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
                raise RecordError(f"{name}: {key} must be a list of at most 32 non-negative "
                                  f"integers, got {_short(value)}")
            out[key] = list(value)
            continue
        if want is not None and (not isinstance(value, want)
                                 or (want is int and isinstance(value, bool))):
            raise RecordError(f"{name}: {key} must be {want.__name__}, got {_short(value)}")
        out[key] = _scalar(f"{name}.{key}", value)
    return out


def check_history(name: str, rows) -> list:
    """A history, checked: rows of an ``epoch`` and numbers (or ``None``).

    The keys are free (``train_elbo``, ``test_elbo``, ``seconds``, ...); ``sigma2``, the
    learned likelihood variance after the epoch, must be positive when given.
    """
    if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_HISTORY_ROWS:
        raise RecordError(f"{name}: a history is a list of 1 to {MAX_HISTORY_ROWS} rows")
    out = []
    for row in rows:
        if not isinstance(row, Mapping) or "epoch" not in row or len(row) > MAX_DETAILS:
            raise RecordError(f"{name}: every row is a dict with an 'epoch' and at most "
                              f"{MAX_DETAILS} numbers, got {_short(row)}")
        checked = {check_name(k): None if v is None else check_number(f"{name}.{k}", v)
                   for k, v in row.items()}
        if checked.get("sigma2") is not None and not checked["sigma2"] > 0:
            raise RecordError(f"{name}.sigma2: a variance must be positive, got "
                              f"{checked['sigma2']!r}")
        out.append(checked)
    return out


def check_array(name: str, values) -> None:
    """A numeric (bool, integer or floating) array of finite values, at most 4-D and
    ``MAX_ARRAY_BYTES``."""
    import numpy as np

    if values.dtype.kind not in "biuf":
        raise RecordError(f"{name}: arrays must be numeric, not of dtype {values.dtype}")
    if values.ndim > 4 or values.nbytes > MAX_ARRAY_BYTES:
        raise RecordError(f"{name}: an array of shape {values.shape} ({values.nbytes:,} bytes); "
                          f"at most 4 dimensions and {MAX_ARRAY_BYTES:,} bytes")
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise RecordError(f"{name}: the array holds NaN or infinite values")


def check_weights(name: str, arrays) -> tuple[int, int, int]:
    """``(latent_dim, hidden_units, input_dim)`` of named homework weights, after checking
    the names and shapes (``vae_helpers.model.sizes_of_weights``) and that every array is
    finite float32.

    Raises:
        RecordError: the first problem found.
    """
    import numpy as np

    from vae_helpers.model import sizes_of_weights

    try:
        sizes = sizes_of_weights(arrays)
    except ValueError as err:
        raise RecordError(f"{name}: {err}") from None
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    wrong = sorted(k for k, v in arrays.items() if v.dtype != np.float32)
    if wrong:
        raise RecordError(f"{name}: {', '.join(wrong)} must be float32")
    bad = sorted(k for k, v in arrays.items() if not np.all(np.isfinite(v)))
    if bad:
        raise RecordError(f"{name}: {', '.join(bad)} holds NaN or infinite values")
    return sizes


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- storage
def _write_file(name: str, suffix: str, data: bytes) -> Path:
    folder = record_dir() / FILES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return io.atomic_write_bytes(folder / f"{name}{suffix}", data)


def _store(name: str, entry: dict) -> None:
    """Add or replace one record in ``records.json`` (read, update, atomic rewrite)."""
    check_name(name)
    folder = record_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RECORDS_FILE
    records = {}
    if path.exists():
        try:
            document = io.read_json(path)
            records = dict(document["records"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise RecordError(f"{path} is not a readable records file ({err}); delete it "
                              "to start the records afresh") from None
    if name not in records and len(records) >= MAX_RECORDS:
        raise RecordError(f"{name}: {path} already holds {MAX_RECORDS} records, the most "
                          "allowed")
    old = records.get(name, {})
    suffixes = {"figure": "png", "array": "npy", "weights": "npz"}
    if old.get("kind") in suffixes and old.get("kind") != entry["kind"]:
        (folder / FILES_DIR / f"{name}.{suffixes[old['kind']]}").unlink(missing_ok=True)
    records[name] = entry
    text = json.dumps({"format": FORMAT, "records": records}, indent=1) + "\n"
    if len(text) > MAX_RECORDS_FILE_BYTES:
        raise RecordError(f"{name}: {RECORDS_FILE} would grow beyond "
                          f"{MAX_RECORDS_FILE_BYTES:,} bytes")
    io.atomic_write_text(path, text)
