"""The notebooks as students see them: each committed notebook and each handout opened in
JupyterLab, in headless Chromium, with every markdown cell rendered and its LaTeX typeset.

A JupyterLab server of the pinned ``jupyterlab`` is started on a free port with a token,
rooted at a temporary folder holding a copy of ``notebooks/`` and the handouts that
``python -m vae_helpers student`` writes; Chromium opens each notebook through
chromedriver (``selenium``) in a workspace of its own, with the notebook's windowing off
so that every cell is in the page. Once the page has settled (every cell there, each
markdown cell rendered, the same state over consecutive polls) a notebook fails on:

* a MathJax error: a formula TeX rejects (``\\frac{1}`` without its second argument, an
  environment closed by another) is typeset as an ``merror`` node with the message in its
  ``data-mjx-error``; an undefined command (``\\foo``) as its own name in red;
* TeX left as text: a ``$``, ``\\(`` or ``\\[`` or a TeX command in the rendered prose,
  outside code, where the markdown parser did not find a formula (``$\\frac{1}{$``: a
  brace left open hides the closing ``$``) and the student reads the source;
* a markdown cell that did not render (no rendered output for a non-empty source);
* an error in the browser's console (a SEVERE entry): a script that failed, an image or
  a file the page could not load from the server.

The failure names the notebook, the cell (its index and first line) and the error text.
``test_a_broken_formula_and_a_missing_image_are_caught`` opens a notebook made broken on
purpose and checks that each fault is reported, and that a good cell is not.

A screenshot of each notebook, 1280 pixels wide and as tall as the notebook (up to
``MAX_HEIGHT``), goes to ``render/`` under pytest's basetemp; ``render/docs/`` holds the
top of a few of them, downscaled, as ``docs/render/`` holds them for the README.

Slow tier (``make test-full``): Chromium and chromedriver come from ``make render-deps``
(Debian's ``chromium`` and ``chromium-driver``); without them, or without ``selenium``
or ``jupyterlab``, the tests are skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("0*.ipynb"))
WIDTH = 1280
MAX_HEIGHT = 16000  # pixels of a screenshot; a longer notebook is cut there
START_TIMEOUT = 120  # seconds for the server to answer
RENDER_TIMEOUT = 180  # seconds for a notebook to settle (two busy cores, MathJax's fonts)
POLL = 0.5  # seconds between two looks at the page
SETTLED_POLLS = 4  # looks in a row with nothing changed
DOCS_SHOTS = {"01_math": "notebook_01_math.png",
              "handout/05_discussion": "handout_05_discussion.png"}
DOCS_CROP, DOCS_WIDTH = 1500, 800  # the docs' copies: the top 1500 px, scaled to 800 wide

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
HOST = "127.0.0.1"


def missing_tools() -> str | None:
    """Why the render check cannot run here, or None."""
    for module in ("selenium", "jupyterlab", "PIL"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not importable: make install (requirements.txt pins it)"
    if not any(shutil.which(name) for name in CHROMIUM_NAMES):
        return "no Chromium (chromium) on PATH: make render-deps installs it"
    if not shutil.which("chromedriver"):
        return "no chromedriver on PATH: make render-deps installs chromium-driver"
    return None


# --- the page: what JupyterLab shows of one notebook ----------------------------------------

# Run in the page: the state of the open notebook's cells. A cell's problems are strings;
# text nodes inside code, preformatted text and typeset math are not prose.
PAGE_STATE = r"""
const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
if (!panel) { return null; }
const cells = Array.from(panel.querySelectorAll('.jp-Notebook .jp-Cell'));
const TEX = /\$|\\[(\[]|\\[A-Za-z]+/;
const notProse = 'code, pre, mjx-container, script, style, .jp-InternalAnchorLink';
return {
  typeset: panel.querySelectorAll('mjx-container').length,
  cells: cells.map((cell) => {
    const markdown = cell.classList.contains('jp-MarkdownCell');
    const state = {markdown: markdown, rendered: cell.classList.contains('jp-mod-rendered'),
                   text: 0, problems: []};
    if (!markdown) { return state; }
    const out = cell.querySelector('.jp-RenderedMarkdown');
    state.text = out ? out.textContent.trim().length : 0;
    if (!out) { return state; }
    for (const node of out.querySelectorAll('mjx-merror')) {
      state.problems.push('MathJax error: ' + (node.getAttribute('data-mjx-error')
                          || node.textContent));
    }
    for (const node of out.querySelectorAll('mjx-assistive-mml mtext[mathcolor="red"]')) {
      state.problems.push('undefined TeX command: ' + node.textContent);
    }
    for (const node of out.querySelectorAll('.MathJax_Error, .mjx-error, merror')) {
      if (!node.closest('mjx-container')) {
        state.problems.push('MathJax error: ' + node.textContent);
      }
    }
    const walker = document.createTreeWalker(out, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (node.parentElement.closest(notProse)) { continue; }
      const match = TEX.exec(node.textContent);
      if (match) {
        const at = Math.max(0, match.index - 30);
        state.problems.push('TeX left as text: ...' + node.textContent.slice(at, at + 80).trim()
                            + '...');
      }
    }
    return state;
  }),
};
"""

# Run in the page: the height of the open notebook's content, for a screenshot of all of it.
CONTENT_HEIGHT = r"""
const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
const scroller = panel && panel.querySelector('.jp-WindowedPanel-outer');
if (!scroller) { return null; }
return [scroller.scrollHeight, scroller.clientHeight, window.innerHeight];
"""


@dataclass
class Rendered:
    """What one notebook looked like: its problems, one line each, and its screenshot."""

    name: str
    problems: list[str]
    screenshot: Path


def cell_label(cell, index: int) -> str:
    first = next((line.strip() for line in cell.source.splitlines() if line.strip()), "")
    return f"cell {index} ({cell.cell_type}, {first[:60]!r})"


def external(message: str) -> bool:
    """A console entry about a resource outside the server: the notebooks' Colab badge is an
    image on colab.research.google.com, which a machine without a network cannot load;
    students online see it, and nothing of the course depends on it."""
    hosts = re.findall(r"https?://([^/\s:\"']+)", message)
    return bool(hosts) and hosts[0] not in (HOST, "localhost")


class Lab:
    """A JupyterLab server rooted at ``root`` and a headless Chromium driven by chromedriver."""

    def __init__(self, root: Path, work: Path):
        self.root, self.work = root, work
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.server = None
        self.driver = None
        self.opened = 0

    # the server

    def start(self) -> None:
        settings = self.work / "settings"
        write_settings(settings)
        env = {**os.environ, "JUPYTER_CONFIG_DIR": str(self.work / "config"),
               "JUPYTER_RUNTIME_DIR": str(self.work / "runtime"),
               "JUPYTER_PLATFORM_DIRS": "1"}
        env.pop("JUPYTER_TOKEN", None)
        self.log = (self.work / "server.log").open("w")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
             f"--ip={HOST}", f"--port={self.port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
             f"--LabApp.user_settings_dir={settings}",
             f"--LabApp.workspaces_dir={self.work / 'workspaces'}"],
            cwd=self.root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.server.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({self.server.returncode}):\n"
                                   + self.server_log())
            try:
                self.api("GET", "status")
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not answer in {START_TIMEOUT} s:\n"
                                       + self.server_log()) from None
                time.sleep(POLL)

    def server_log(self) -> str:
        return (self.work / "server.log").read_text(errors="replace")[-3000:]

    def api(self, method: str, path: str):
        request = urllib.request.Request(f"{self.base}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def stop_kernels(self) -> None:
        """Opening a notebook starts its kernel; the render check runs no cell."""
        for session in self.api("GET", "sessions"):
            self.api("DELETE", f"sessions/{session['id']}")

    # the browser

    def open_browser(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        options = Options()
        binary = next(shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n))
        options.binary_location = binary
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                         f"--user-data-dir={self.work / 'chromium'}",
                         f"--window-size={WIDTH},1000"):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(shutil.which("chromedriver"),
                          log_output=str(self.work / "chromedriver.log"))
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.set_page_load_timeout(RENDER_TIMEOUT)

    def render(self, path: str, shots: Path) -> Rendered:
        """Open ``path`` (relative to the root) in a fresh workspace, wait until it has
        settled, and return its problems and a screenshot."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        driver, name = self.driver, path.removesuffix(".ipynb")
        cells = nbformat.read(self.root / path, as_version=4).cells
        self.opened += 1
        driver.set_window_size(WIDTH, 1000)
        driver.get_log("browser")  # what earlier pages logged
        driver.get(f"{self.base}/lab/workspaces/render{self.opened}/tree/{path}"
                   f"?token={self.token}")
        seen = []

        def settled(_):
            state = driver.execute_script(PAGE_STATE)
            seen.append(state)
            if not state or len(state["cells"]) != len(cells):
                return False
            if any(c["markdown"] and not c["rendered"] for c in state["cells"]):
                return False
            return len(seen) >= SETTLED_POLLS and all(s == state for s in seen[-SETTLED_POLLS:])

        try:
            WebDriverWait(driver, RENDER_TIMEOUT, poll_frequency=POLL).until(settled)
        except TimeoutException:
            state = seen[-1] if seen else None
            found = "no notebook panel" if not state else (
                f"{len(state['cells'])} of {len(cells)} cells, "
                f"{sum(c['markdown'] and not c['rendered'] for c in state['cells'])} markdown "
                "cells not rendered")
            pytest.fail(f"{name}: the notebook did not settle in {RENDER_TIMEOUT} s ({found})")
        state = seen[-1]
        problems = []
        for index, (cell, shown) in enumerate(zip(cells, state["cells"], strict=True)):
            label = cell_label(cell, index)
            if cell.cell_type == "markdown" and cell.source.strip() and not shown["text"]:
                problems.append(f"{name}: {label}: the markdown cell rendered nothing")
            problems += [f"{name}: {label}: {problem}" for problem in shown["problems"]]
        for entry in driver.get_log("browser"):
            if entry["level"] == "SEVERE" and not external(entry["message"]):
                problems.append(f"{name}: browser console: {entry['message']}")
        screenshot = shots / f"{name.replace('/', '_')}.png"
        self.screenshot(screenshot)
        self.stop_kernels()
        # Leaving JupyterLab asks the page's leave-confirmation, which Chromium blocks with
        # a SEVERE console entry (no user gesture): the check's navigation, not the notebook.
        driver.get("about:blank")
        driver.get_log("browser")
        return Rendered(name, problems, screenshot)

    def screenshot(self, path: Path) -> None:
        """The whole notebook: the window made as tall as its content (up to MAX_HEIGHT)."""
        from selenium.webdriver.support.ui import WebDriverWait

        driver = self.driver
        content, view, window = driver.execute_script(CONTENT_HEIGHT)
        height = min(MAX_HEIGHT, window + content - view)
        driver.set_window_size(WIDTH, height + driver.get_window_size()["height"] - window)
        WebDriverWait(driver, 30, poll_frequency=POLL).until(
            lambda d: d.execute_script(CONTENT_HEIGHT)[2] >= height - 2)
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(path))

    def close(self) -> None:
        if self.driver is not None:
            self.driver.quit()
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(timeout=30)
        if self.server is not None:
            self.log.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def write_settings(folder: Path) -> None:
    """JupyterLab's user settings for the check: every cell in the page (no windowing), and
    no news or update check (a request to the internet)."""
    settings = {
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                        "checkForUpdates": False},
    }
    for plugin, values in settings.items():
        path = folder / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def docs_copy(screenshot: Path, out: Path) -> None:
    """The top of a screenshot, downscaled, as the README shows it (docs/render/)."""
    from PIL import Image

    with Image.open(screenshot) as image:
        top = image.convert("RGB").crop((0, 0, image.width, min(image.height, DOCS_CROP)))
    small = top.resize((DOCS_WIDTH, round(top.height * DOCS_WIDTH / top.width)),
                       Image.Resampling.LANCZOS).quantize(colors=128)
    buffer = io.BytesIO()
    small.save(buffer, format="PNG", optimize=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buffer.getvalue())


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The server, rooted at a copy of ``notebooks/`` and at the handouts, and the browser."""
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    from vae_helpers.course import student

    root = tmp_path_factory.mktemp("render-root")
    (root / "notebooks").mkdir()
    for name in [*(f"{n}.ipynb" for n in NOTEBOOKS), student.STUDENT_MODULE]:
        shutil.copy2(ROOT / "notebooks" / name, root / "notebooks" / name)
    made = subprocess.run([sys.executable, "-m", "vae_helpers", "student", "--out",
                           str(root / "handout")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert made.returncode == 0, made.stdout + made.stderr
    lab = Lab(root, tmp_path_factory.mktemp("render-lab"))
    try:
        lab.start()
        lab.open_browser()
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """``render/`` under pytest's basetemp: a screenshot per notebook."""
    folder = tmp_path_factory.getbasetemp() / "render"
    folder.mkdir(exist_ok=True)
    return folder


def check(lab, shots, path: str) -> None:
    rendered = lab.render(path, shots)
    key = rendered.name.removeprefix("notebooks/")
    if key in DOCS_SHOTS:
        docs_copy(rendered.screenshot, shots / "docs" / DOCS_SHOTS[key])
    if rendered.problems:
        pytest.fail("\n".join(rendered.problems), pytrace=False)


# --- tests -----------------------------------------------------------------------------------


def test_the_committed_notebooks_are_the_handouts_notebooks():
    from vae_helpers.course import student

    assert NOTEBOOKS == list(student.HANDOUTS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_a_committed_notebook_renders(lab, shots, name):
    check(lab, shots, f"notebooks/{name}.ipynb")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_a_handout_renders(lab, shots, name):
    check(lab, shots, f"handout/{name}.ipynb")


def test_a_broken_formula_and_a_missing_image_are_caught(lab, shots):
    """Each fault of a notebook broken on purpose is reported at its cell; the good cell,
    with inline and display math and a literal dollar in code, is not."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    cells = [
        new_markdown_cell("# Good\n\nInline $\\alpha + \\beta$, display\n"
                          "$$\\frac{1}{2} \\sum_i x_i$$\nand `$HOME` in code."),
        new_markdown_cell("An open brace: $\\frac{1}{$ here"),
        new_markdown_cell("A missing argument: $\\frac{1}$"),
        new_markdown_cell("An undefined command: $\\foo x$"),
        new_markdown_cell("A mismatched environment: $$\\begin{align} x \\end{aligned}$$"),
        new_markdown_cell("A missing figure: ![figure](no_such_figure.png)"),
        new_code_cell("x = 1"),
    ]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, lab.root / "broken.ipynb")
    problems = lab.render("broken.ipynb", shots / "self-check").problems
    report = "\n".join(problems)

    def at(index: int) -> list[str]:
        return [p for p in problems if p.startswith(f"broken: cell {index} (")]

    assert at(0) == [], report
    assert any("TeX left as text" in p and "\\frac{1}{$ here" in p for p in at(1)), report
    assert any("MathJax error: Missing argument for \\frac" in p for p in at(2)), report
    assert any("undefined TeX command: \\foo" in p for p in at(3)), report
    assert any("MathJax error: \\begin{align} ended with \\end{aligned}" in p
               for p in at(4)), report
    console = [p for p in problems if p.startswith("broken: browser console:")]
    assert any("no_such_figure.png" in p and "404" in p for p in console), report
    assert len(problems) == 4 + len(console), report
