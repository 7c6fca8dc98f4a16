"""The one place where TensorFlow and TensorFlow Probability are imported.

Every module of the package takes ``tf``, ``tfp`` and ``tfd`` from here, so the
logging set-up below happens exactly once and before TensorFlow loads.

TensorFlow's C++ start-up writes INFO lines ("oneDNN custom operations are on",
"Could not find cuda drivers", "All log messages before absl::InitializeLog()
...") straight to file descriptor 2 before its log-level setting is read, so
``TF_CPP_MIN_LOG_LEVEL`` alone does not silence them on a CPU-only machine.
While TensorFlow is imported, descriptor 2 is sent to a temporary file; lines
known to be start-up chatter are dropped and everything else is written back to
stderr, so a real error is never hidden. Setting ``VAE_HELPERS_VERBOSE_TF=1``
turns the filter off.

One Python warning is dropped as well: "N out of the last M calls to <function>
triggered tf.function retracing". The package compiles its training and
evaluation functions once per model, so a notebook that trains several models
traces them several times by design, and the warning's advice does not apply.
The filter sits on the ``tensorflow`` logger and drops that message only.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Start-up lines that carry no information for a user of this package.
_CHATTER = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IW]\d{4} [\d:. ]+\d+ (port|cudart_stub|cuda_\w+|gpu_\w+)\.cc:\d+\]"
    r"|E\d{4} [\d:. ]+\d+ cuda_\w+\.cc:\d+\] (Unable to register|failed call to cuInit)"
    r"|To enable the following instructions:.*rebuild TensorFlow"
    r")"
)


def _redirectable_stderr() -> int | None:
    """A duplicate of descriptor 2 to restore later, or None when filtering is off or impossible."""
    if "tensorflow" in sys.modules or os.environ.get("VAE_HELPERS_VERBOSE_TF") == "1":
        return None
    try:
        sys.stderr.flush()
        return os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable descriptor 2
        return None


def _import_quietly():
    saved = _redirectable_stderr()
    if saved is None:
        import tensorflow  # noqa: F401
        import tensorflow_probability  # noqa: F401
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow
            import tensorflow_probability  # noqa: F401

            # Device discovery logs a CUDA error on machines without a GPU.
            tensorflow.config.list_physical_devices()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [
                line
                for line in sink.read().decode("utf-8", "replace").splitlines()
                if line.strip() and not _CHATTER.match(line)
            ]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


class _NoRetracingWarning(logging.Filter):
    """Drops TensorFlow's "... triggered tf.function retracing" warning (see the module docs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


_import_quietly()
if os.environ.get("VAE_HELPERS_VERBOSE_TF") != "1":
    logging.getLogger("tensorflow").addFilter(_NoRetracingWarning())

import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

tfd = tfp.distributions
tfb = tfp.bijectors

__all__ = ["tf", "tfp", "tfd", "tfb"]
