"""Progress bars for long work: training epochs, IWAE estimates, pipeline stages.

``VAE_PROGRESS`` chooses how they are drawn:

``auto`` (default)
    tqdm's automatic choice: a widget in Jupyter, a text bar in a terminal;
``text``
    a plain text bar on stderr that redraws at most every 10 seconds. The
    pipeline sets it for the notebooks it executes, so the saved notebooks
    record a short trace instead of a widget that cannot be shown offline;
``off``
    no bars at all (as ``progress=False``).
"""

from __future__ import annotations

import os
import sys

ENV = "VAE_PROGRESS"
MODES = ("auto", "text", "off")


def progress_mode() -> str:
    """The mode named by ``$VAE_PROGRESS`` (``auto`` when unset)."""
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV}={os.environ[ENV]!r} is not one of {', '.join(MODES)}")
    return mode


def progress_bar(total: int, desc: str, unit: str, initial: int = 0):
    """A tqdm bar drawn as ``$VAE_PROGRESS`` asks, or ``None`` when it is ``off``."""
    mode = progress_mode()
    if mode == "off":
        return None
    if mode == "text":
        from tqdm.std import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
                    mininterval=10.0, ncols=100, ascii=True)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
