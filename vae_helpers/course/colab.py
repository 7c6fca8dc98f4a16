"""Point the notebooks' Colab badges and install cells at a repository and a tag.

A course notebook opens with an "Open in Colab" badge in its first markdown cell and a
code cell that, on Colab only (``"google.colab" in sys.modules``), installs the package
with pip. ``python -m vae_helpers colab --repo OWNER/NAME --ref TAG`` rewrites both in
every notebook of a folder (``rewrite_folder``):

* each badge opens the notebook itself, ``PATH/NOTEBOOK.ipynb`` of ``OWNER/NAME`` at
  ``TAG`` (``notebook.colab_url``);
* each install cell installs ``vae_helpers @ git+https://github.com/OWNER/NAME@TAG``
  (``notebook.install_spec``), so the package a notebook runs on is the one it was
  published with.

Only those sources change: outputs, metadata and every other cell are kept, and a
notebook already pointing where asked is left as it is (the command is idempotent).
The default folder is ``notebooks/`` (the answer key, path ``notebooks``); for the
handouts, run it on the folder ``python -m vae_helpers student`` wrote, with ``--path``
naming where the handouts live in the published repository.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vae_helpers.course import notebook
from vae_helpers.course.student import DRIVE_TAG

# the badge as markdown writes it; the address is whatever it points at now
BADGE = re.compile(r"\[!\[Open In Colab\]\(" + re.escape(notebook.COLAB_BADGE_IMAGE)
                   + r"\)\]\((?P<url>[^)\s]*)\)")
# the install cell's requirement: a quoted "vae_helpers @ git+https://github.com/..."
INSTALL = re.compile(r"""(?P<quote>["'])vae_helpers @ git\+https://github\.com/[^"'\s]*"""
                     r"""(?P=quote)""")
COLAB_GUARD = "google.colab"

OWNER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$")
NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
# a git ref name (git check-ref-format) limited to what stays one piece in a URL and in
# pip's "@ref": letters, digits, ".", "_", "-" and "/" between components
REF = re.compile(r"^[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*$")
PATH = re.compile(r"^[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*$")


class ColabError(ValueError):
    """A folder without notebooks, or a notebook that cannot be read or written."""


def check_repository(text: str) -> str:
    """``text`` if it names a GitHub repository as ``owner/name``, else ``ValueError``."""
    owner, slash, name = text.partition("/")
    if not (slash and OWNER.match(owner) and NAME.match(name) and name not in (".", "..")
            and not name.endswith(".git")):
        raise ValueError(f"expected a GitHub repository as OWNER/NAME (e.g. "
                         f"my-school/vae-course), got {text!r}")
    return text


def check_ref(text: str) -> str:
    """``text`` if it is a git ref name (a tag or a branch), else ``ValueError``."""
    parts = text.split("/")
    if not (REF.match(text) and ".." not in text and not text.endswith(".")
            and not any(p.startswith(".") or p.endswith(".lock") for p in parts)
            and not text.startswith("-")):
        raise ValueError(f"expected a git tag or branch name (letters, digits, '.', '_', "
                         f"'-', components separated by '/'), got {text!r}")
    return text


def check_path(text: str) -> str:
    """``text`` (a folder of the repository, relative, ``.`` for its top) normalised, or
    ``ValueError``."""
    folder = text.strip("/") if text not in ("", ".", "/") else "."
    if folder != "." and not (PATH.match(folder)
                              and not any(p in (".", "..") for p in folder.split("/"))):
        raise ValueError(f"expected a folder of the repository such as handouts or "
                         f"course/handouts ('.' for its top folder), got {text!r}")
    return folder


@dataclass
class Change:
    """What ``rewrite_folder`` did to one notebook."""

    path: Path
    badges: int  # badges pointed elsewhere
    installs: int  # install cells pointed elsewhere
    found_badges: int
    found_installs: int
    handout: bool = False  # a student version (it has the Drive cell of the handouts)

    @property
    def changed(self) -> bool:
        return bool(self.badges or self.installs)


def rewrite_notebook(nb, name: str, repository: str, ref: str, path: str
                     ) -> tuple[int, int, int, int]:
    """Point the badges and the install cells of the notebook node ``nb`` (its file name
    ``name``) at ``repository`` at ``ref``, in place; returns the counts of badges and
    install cells changed, and of those found."""
    url = notebook.colab_url(name, ref=ref, repository=repository, path=path)
    spec = notebook.install_spec(ref=ref, repository=repository)
    badges = installs = found_badges = found_installs = 0
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            matches = list(BADGE.finditer(cell.source))
            found_badges += len(matches)
            badges += sum(m["url"] != url for m in matches)
            cell.source = BADGE.sub(lambda _: notebook.colab_badge(url), cell.source)
        elif cell.cell_type == "code" and COLAB_GUARD in cell.source:
            matches = list(INSTALL.finditer(cell.source))
            found_installs += bool(matches)
            changed = [m for m in matches if m.group(0)[1:-1] != spec]
            installs += bool(changed)
            cell.source = INSTALL.sub(lambda m: f"{m['quote']}{spec}{m['quote']}",
                                      cell.source)
    return badges, installs, found_badges, found_installs


def rewrite_folder(folder, repository: str, ref: str, path: str = notebook.NOTEBOOK_PATH
                   ) -> list[Change]:
    """Point every notebook of ``folder`` (its ``*.ipynb`` files, in name order) at
    ``repository`` at ``ref``, the badges at ``path/NOTEBOOK.ipynb``; a notebook is written
    again only when something changed.

    Raises:
        ValueError: a bad repository, ref or path.
        ColabError: ``folder`` is not a folder or holds no notebook, or a notebook
            cannot be read or written.
    """
    import nbformat

    from vae_helpers import io

    repository, ref, path = check_repository(repository), check_ref(ref), check_path(path)
    folder = Path(folder)
    if not folder.is_dir():
        raise ColabError(f"{folder} is not a folder; give the folder of the notebooks "
                         "with --notebooks")
    paths = sorted(folder.glob("*.ipynb"))
    if not paths:
        raise ColabError(f"{folder} holds no notebook (*.ipynb); give the folder of the "
                         "notebooks with --notebooks")
    pending = []
    for source in paths:  # everything is read and rewritten before anything is written
        try:
            nb = nbformat.read(source, as_version=4)
        except (OSError, UnicodeDecodeError, ValueError, AttributeError, TypeError) as err:
            raise ColabError(f"{source} is not a readable notebook ({err})") from None
        counts = rewrite_notebook(nb, source.name, repository, ref, path)
        change = Change(source, *counts, handout=any(
            DRIVE_TAG in cell.metadata.get("tags", []) for cell in nb.cells))
        pending.append((change, nbformat.writes(nb) + "\n" if change.changed else None))
    for change, text in pending:
        if text is not None:
            try:
                io.atomic_write_text(change.path, text)
            except OSError as err:
                raise ColabError(f"{change.path} cannot be written ({err})") from None
    return [change for change, _ in pending]
