"""Tests of vae_helpers.course.pipeline on small stand-in notebooks (no TensorFlow in them).

Each run executes real notebooks with papermill in a real kernel, so these tests
take a few seconds each.
"""

from __future__ import annotations

import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from vae_helpers.__main__ import main
from vae_helpers.course import pipeline

pytestmark = pytest.mark.unit


def make_notebook(path, params: str, body: str):
    cells = [new_markdown_cell("# stand-in"),
             new_code_cell(params, metadata={"tags": ["parameters"]}),
             new_code_cell(body)]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)


@pytest.fixture
def notebooks(tmp_path, monkeypatch):
    """Two stand-in stages: the first writes a file into run_dir, the second reads it."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    make_notebook(folder / "01_one.ipynb", 'run_dir = "runs/x"\nepochs = 3\n',
                  "import pathlib\nrun = pathlib.Path(run_dir)\nrun.mkdir(exist_ok=True)\n"
                  "(run / 'one.txt').write_text(str(epochs))\nprint('epochs', epochs)")
    make_notebook(folder / "02_two.ipynb", 'run_dir = "runs/x"\nfail = False\n',
                  "import pathlib\nvalue = (pathlib.Path(run_dir) / 'one.txt').read_text()\n"
                  "if fail:\n    raise ValueError('asked to fail')\nprint('read', value)")
    monkeypatch.setattr(pipeline, "STAGES", ("01_one", "02_two"))
    monkeypatch.setattr(pipeline, "notebook_dir", lambda: folder)
    monkeypatch.setitem(pipeline.PROFILES, "smoke",
                        pipeline.Profile("test", {"epochs": 1}, timeout=120))
    return folder


def run(out, **kwargs):
    return pipeline.run_pipeline(out, stages=pipeline.STAGES, progress=False,
                                 log=lambda *_: None, **kwargs)


def outputs(path):
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))


@pytest.mark.parametrize("text, expected", [
    ("epochs=5", ("epochs", 5)), ("learning_rate=1e-3", ("learning_rate", 0.001)),
    ("n_train=None", ("n_train", None)), ("likelihood=bernoulli", ("likelihood", "bernoulli")),
    ("hidden_units=[512, 256]", ("hidden_units", [512, 256])), ("name= a b ", ("name", "a b")),
])
def test_parse_parameter(text, expected):
    assert pipeline.parse_parameter(text) == expected


@pytest.mark.parametrize("text", ["epochs", "=5", "two words=1", "1x=2"])
def test_parse_parameter_rejects_what_is_not_key_value(text):
    with pytest.raises(pipeline.PipelineError, match="key=value"):
        pipeline.parse_parameter(text)


def test_declared_parameters_needs_one_cell_of_literals(tmp_path):
    path = tmp_path / "n.ipynb"
    make_notebook(path, 'run_dir = "r"\nk = [1, 2]\n', "")
    assert pipeline.declared_parameters(path) == {"run_dir": "r", "k": [1, 2]}
    make_notebook(path, "k = 2 * 3\n", "")
    with pytest.raises(ValueError):
        pipeline.declared_parameters(path)
    make_notebook(path, "import os\n", "")
    with pytest.raises(pipeline.PipelineError, match="only assign literals"):
        pipeline.declared_parameters(path)
    nb = nbformat.read(path, as_version=4)
    nb.cells[2].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)
    with pytest.raises(pipeline.PipelineError, match="2 cells tagged 'parameters'"):
        pipeline.declared_parameters(path)


def test_plan_gives_each_notebook_only_the_parameters_it_declares(notebooks, tmp_path):
    steps = pipeline.plan(tmp_path / "out", "smoke", {"fail": True})
    assert steps == [("01_one", {"epochs": 1, "run_dir": str((tmp_path / "out").resolve())}),
                     ("02_two", {"fail": True, "run_dir": str((tmp_path / "out").resolve())})]
    with pytest.raises(pipeline.PipelineError, match="no notebook has a parameter named "
                                                     "epoch; the parameters are: epochs, fail"):
        pipeline.plan(tmp_path / "out", "smoke", {"epoch": 1, "run_dir": "x"})
    with pytest.raises(pipeline.PipelineError, match="unknown profile 'quick'"):
        pipeline.plan(tmp_path / "out", "quick")


def test_the_committed_notebooks_plan_for_both_profiles(tmp_path):
    for profile in pipeline.PROFILES:
        steps = pipeline.plan(tmp_path / "out", profile)
        assert [stage for stage, _ in steps] == list(pipeline.STAGES)
        assert all("run_dir" in params for _, params in steps)
    used = set().union(*(p for _, p in pipeline.plan(tmp_path / "o", "smoke")))
    assert set(pipeline.PROFILES["smoke"].overrides) <= used  # no override is silently unused


def test_profile_parameters_are_what_a_profile_changes_of_a_notebooks_parameters():
    """What nbval assigns after each parameters cell in make test (conftest.py)."""
    folder = pipeline.notebook_dir()
    assert pipeline.profile_parameters(folder / "03_train.ipynb", "smoke") == {
        "n_train": 2000, "n_test": 500, "epochs": 2, "bernoulli_epochs": 2, "iwae_k": 16}
    assert pipeline.profile_parameters(folder / "01_math.ipynb", "smoke") == {"mc_samples": 20000}
    assert all(pipeline.profile_parameters(folder / f"{stage}.ipynb", "full") == {}
               for stage in pipeline.STAGES)
    with pytest.raises(pipeline.PipelineError, match="unknown profile 'quick'"):
        pipeline.profile_parameters(folder / "01_math.ipynb", "quick")


def test_a_run_executes_every_stage_in_order_and_records_it(notebooks, tmp_path):
    out = tmp_path / "out"
    state = run(out, profile="smoke", parameters={"epochs": 7})
    assert (out / "one.txt").read_text() == "7"
    assert "read 7" in outputs(out / "02_two.ipynb")
    for stage in ("01_one", "02_two"):
        assert (out / f"{stage}.html").read_text().lstrip().lower().startswith("<!doctype html")
        assert state["stages"][stage]["status"] == "done"
    saved = json.loads((out / "pipeline.json").read_text())
    assert saved["stages"]["01_one"]["parameters"]["epochs"] == 7
    assert saved["profile"] == "smoke" and saved["versions"]["papermill"]


def test_a_failing_stage_stops_names_the_cell_and_keeps_the_notebook(notebooks, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(pipeline.PipelineError) as info:
        run(out, profile="smoke", parameters={"fail": True})
    message = str(info.value)
    assert message.startswith("02_two failed in cell ")
    assert "ValueError: asked to fail" in message and "kept in" in message
    nb = nbformat.read(out / "02_two.ipynb", as_version=4)
    assert any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
    assert json.loads((out / "pipeline.json").read_text())["stages"]["02_two"]["status"] == \
        "failed"


def test_existing_runs_are_never_overwritten_without_force(notebooks, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(pipeline.PipelineError, match="already holds files; pass --resume"):
        run(out, profile="smoke")
    assert (out / "precious.txt").read_text() == "keep me"
    run(out, profile="smoke", force=True)
    assert not (out / "precious.txt").exists() and (out / "02_two.ipynb").exists()


def test_resume_keeps_completed_stages_and_reruns_the_failed_one(notebooks, tmp_path):
    make_notebook(notebooks / "02_two.ipynb", 'run_dir = "runs/x"\n',
                  "import pathlib\nrun = pathlib.Path(run_dir)\n"
                  "print('found', (run / 'fixed.txt').read_text())")
    out = tmp_path / "out"
    with pytest.raises(pipeline.PipelineError, match="02_two failed .*FileNotFoundError"):
        run(out, profile="smoke")
    (out / "fixed.txt").write_text("the fix")
    first_mtime = (out / "01_one.ipynb").stat().st_mtime_ns
    state = run(out, profile="smoke", resume=True)
    assert (out / "01_one.ipynb").stat().st_mtime_ns == first_mtime  # not executed again
    assert "found the fix" in outputs(out / "02_two.ipynb")
    assert [s["status"] for s in state["stages"].values()] == ["done", "done"]
    assert state["stages"]["01_one"]["seconds"] is not None  # kept from the first run


def test_resume_with_other_parameters_is_refused(notebooks, tmp_path):
    out = tmp_path / "out"
    run(out, profile="smoke")
    with pytest.raises(pipeline.PipelineError, match="cannot resume .* other parameters"):
        run(out, profile="smoke", parameters={"epochs": 2}, resume=True)
    with pytest.raises(pipeline.PipelineError, match="holds no pipeline run to resume"):
        run(tmp_path / "empty", profile="smoke", resume=True)
    with pytest.raises(pipeline.PipelineError, match="contradict"):
        run(out, profile="smoke", resume=True, force=True)


def test_a_stage_over_its_time_limit_is_stopped(notebooks, tmp_path):
    make_notebook(notebooks / "02_two.ipynb", 'run_dir = "x"\n', "import time\ntime.sleep(600)")
    with pytest.raises(pipeline.PipelineError, match="02_two failed .*time"):
        run(tmp_path / "out", profile="smoke", timeout=5)


def test_the_command_line_reports_a_failure_in_one_line(notebooks, tmp_path, capsys):
    code = main(["pipeline", "--out", str(tmp_path / "out"), "-p", "fail=True", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: 02_two failed in cell") and err.count("\n") == 1
    assert main(["pipeline", "--out", str(tmp_path / "o2"), "-p", "nope"]) == 1
    assert "key=value" in capsys.readouterr().err


def test_clean_notebook_removes_what_belongs_to_one_execution():
    nb = new_notebook(cells=[
        new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
        new_code_cell("x = 2", metadata={"tags": ["injected-parameters"], "papermill": {}}),
        new_code_cell("print(x)", metadata={"papermill": {"duration": 1.0},
                                            "execution": {"iopub.status.idle": "2026"}},
                      outputs=[nbformat.v4.new_output("stream", name="stderr",
                                                      text="10%\r50%\r100%\nnext\n")]),
    ], metadata={"papermill": {"input_path": "/abs/path"}, "widgets": {},
                 "kernelspec": {"name": "x", "display_name": "X", "language": "python"}})
    clean = pipeline.clean_notebook(nb)
    assert [c.source for c in clean.cells] == ["x = 1", "print(x)"]
    assert set(clean.metadata) == {"kernelspec", "language_info"}
    assert clean.cells[1].metadata == {}
    assert clean.cells[1].outputs[0]["text"] == "100%\nnext\n"


def test_clean_notebook_drops_stderr_made_only_of_text_progress_bars():
    bars = ("epochs:  50%|#####     | 1/2 [00:01<00:01, 1.50s/epoch, elbo=-624.80]\n"
            "epochs: 100%|##########| 2/2 [00:01<00:00, 1.16epoch/s]\n")
    warning = "E0000 util.cc:131] oneDNN supports DT_INT64 only with AVX-512\n"
    outputs = [nbformat.v4.new_output("stream", name="stderr", text=bars),
               nbformat.v4.new_output("stream", name="stderr", text=bars + warning),
               nbformat.v4.new_output("stream", name="stdout", text=bars)]
    nb = new_notebook(cells=[new_code_cell("train()", outputs=outputs)])
    kept = pipeline.clean_notebook(nb).cells[0].outputs
    assert [(o["name"], o["text"]) for o in kept] == [("stderr", bars + warning),
                                                       ("stdout", bars)]


def test_publish_accepts_only_a_complete_full_run_with_the_committed_parameters(
        notebooks, tmp_path):
    out = tmp_path / "out"
    run(out, profile="smoke")
    with pytest.raises(pipeline.PipelineError, match="not a completed full-profile stage"):
        pipeline.publish(out, dest=notebooks)
    with pytest.raises(pipeline.PipelineError, match="not a pipeline run"):
        pipeline.publish(tmp_path, dest=notebooks)
    full = tmp_path / "full"
    run(full, profile="full")  # run_dir is not the committed "runs/x"
    with pytest.raises(pipeline.PipelineError, match="other than the committed ones .run_dir"):
        pipeline.publish(full, dest=notebooks)


def test_a_second_pipeline_into_the_same_directory_is_refused(notebooks, tmp_path):
    import subprocess
    import sys

    from vae_helpers.outdirs import RunLocked

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom vae_helpers.outdirs import run_lock\n"
         "with run_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)",
         str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
            run(out, profile="smoke", force=True)
        assert [p.name for p in out.iterdir()] == [".vae_helpers.lock"]  # nothing touched
    finally:
        holder.kill()
        holder.wait()
    run(out, profile="smoke")  # the lock died with its holder
    assert (out / "02_two.ipynb").exists()


def test_pipeline_json_records_the_peak_memory_of_the_notebook_processes(tmp_path,
                                                                       monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    # the kernel holds 400 MB of touched memory: its peak must show up
    make_notebook(folder / "01_big.ipynb", 'run_dir = "runs/x"\n',
                  "import numpy as np\nblock = np.ones(50_000_000)\nprint(block.sum())")
    monkeypatch.setattr(pipeline, "STAGES", ("01_big",))
    monkeypatch.setattr(pipeline, "notebook_dir", lambda: folder)
    lines = []
    state = pipeline.run_pipeline(tmp_path / "out", stages=pipeline.STAGES, progress=False,
                                  log=lines.append)
    stored = json.loads((tmp_path / "out" / "pipeline.json").read_text())
    assert stored["peak_memory_mb"] == state["peak_memory_mb"]
    assert stored["stages"]["01_big"]["peak_memory_mb"] >= 400
    assert f"peak memory {state['peak_memory_mb']:,.0f} MB" in lines[-1]
