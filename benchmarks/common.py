"""What the benchmark scripts share: the machine, its load, notes, their inputs and output.

``CpuMeter`` measures how much of the CPUs other processes used while a measurement
ran; ``machine_description`` names the machine and the library versions;
``load_average``, ``note``, ``fmt`` and ``percent`` format what the scripts print;
``load_mnist_or_say_why`` and ``json_unwritable`` (together ``inputs_or_say_why``)
check their inputs and output path before minutes of measuring; ``write_results``
prints the table and writes the JSON; ``load_student_module`` imports the homework's
solution (``notebooks/vae_homework.py``, not part of the package). The scripts run as
``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and they
``import common``.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the system has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes have used since boot (Linux ``/proc/stat``), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class CpuMeter:
    """How much of the CPUs other processes used while a measurement ran.

    ``others_cpu_share`` = (machine-wide busy CPU seconds - this process's CPU
    seconds) / (wall seconds x os.cpu_count()): 0 on an idle machine, 0.5 when other
    jobs kept one of two cores busy. Numbers measured at a high share are noisy.
    """

    def __init__(self):
        self.wall = time.perf_counter()
        self.own = own_cpu_seconds()
        self.busy = machine_busy_seconds()

    def stop(self) -> dict:
        wall = time.perf_counter() - self.wall
        own = own_cpu_seconds() - self.own
        busy = machine_busy_seconds()
        share = None
        if busy is not None and self.busy is not None and wall > 0:
            share = max(0.0, (busy - self.busy - own) / (wall * (os.cpu_count() or 1)))
        return {"wall_seconds": wall, "own_cpu_seconds": own, "others_cpu_share": share}


def own_cpu_seconds() -> float:
    """CPU seconds this process has used (user and system)."""
    t = os.times()
    return t.user + t.system


def machine_description(tf, tfp) -> dict:
    """The CPU, the cores usable, the platform and the versions that the numbers depend on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tensorflow_probability": tfp.__version__,
        "keras": getattr(tf.keras, "__version__", "unknown"),
        "numpy": np.__version__,
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def fmt(value, spec: str, missing: str = "n/a") -> str:
    """``format(value, spec)``, or ``missing`` for None."""
    return missing if value is None else format(value, spec)


def note(msg: str) -> None:
    """A progress line on stderr, shown at once."""
    print(msg, file=sys.stderr, flush=True)


def percent(share) -> str:
    """A share of the CPUs as a percentage (``n/a`` for None)."""
    return "n/a" if share is None else f"{100 * share:.0f}%"


def others(cpu: dict | None) -> str:
    """The CPU share others used during a ``CpuMeter`` measurement, as a percentage."""
    return percent(None if cpu is None else cpu.get("others_cpu_share"))


def load_mnist_or_say_why():
    """MNIST as ``vae_helpers.data.load_mnist`` returns it, or ``None`` after printing why
    it could not be loaded (where to put the file, which variable names it)."""
    from vae_helpers.data import DataError, load_mnist

    try:
        return load_mnist()
    except DataError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return None


def add_json_option(parser, default: Path) -> None:
    """The ``--json PATH`` option of a benchmark that writes its results to ``default``."""
    parser.add_argument("--json", type=Path, default=default, metavar="PATH",
                        help="where to write the results as JSON; its folder is created "
                             f"(default: benchmarks/results/{default.name})")


def json_unwritable(path: Path) -> str | None:
    """Why the results cannot be written to ``path`` (``None``: they can), found out
    before minutes of measuring rather than after."""
    from vae_helpers import io

    check = path.with_name(f".{path.name}.check")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        io.write_json(check, {})
        check.unlink()
    except OSError as err:
        return f"cannot write --json {path}: {err.strerror or err}"
    return None


def inputs_or_say_why(json_path: Path):
    """MNIST as ``load_mnist_or_say_why`` returns it once ``json_path`` is known to be
    writable; ``None`` after printing on stderr why one of them is not usable."""
    mnist = load_mnist_or_say_why()
    if mnist is None:
        return None
    problem = json_unwritable(json_path)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return None
    return mnist


def write_results(results: dict, table: str, path: Path) -> None:
    """Print ``table``, write ``results`` as JSON to ``path`` and say where."""
    from vae_helpers import io

    print(table)
    io.write_json(path, results)
    print(f"Results written to {path}")


def load_student_module():
    """``notebooks/vae_homework.py``, the homework's solution, imported from its file."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "notebooks" / "vae_homework.py"
    spec = importlib.util.spec_from_file_location("vae_homework", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def noise_note(cpus) -> list[str]:
    """A line warning that the numbers are noisy if other processes used > 10% of the CPUs
    during any of the measurements ``cpus`` (``CpuMeter.stop`` results or ``None``)."""
    shares = [c["others_cpu_share"] for c in cpus
              if c and c.get("others_cpu_share") is not None]
    if not shares or max(shares) <= 0.1:
        return []
    return [f"Note: other processes used up to {100 * max(shares):.0f}% of the CPUs during "
            "the measurements; the numbers are noisy (rerun on an idle machine)."]
