"""The command line: ``python -m vae_helpers COMMAND ...`` (``--help`` lists everything)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys

from vae_helpers.argtypes import (
    non_negative_int,
    positive_float,
    positive_int,
    positive_int_list,
    seed_int,
)


def _non_negative_float(text: str) -> float:
    """A finite number >= 0 (the schedule options of ``train``)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def _fraction(text: str) -> float:
    """A number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def _repository(text: str) -> str:
    """A GitHub repository as owner/name (``colab --repo``)."""
    from vae_helpers.course.colab import check_repository

    try:
        return check_repository(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _git_ref(text: str) -> str:
    """A git tag or branch name (``colab --ref``)."""
    from vae_helpers.course.colab import check_ref

    try:
        return check_ref(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _repo_path(text: str) -> str:
    """A folder of a repository (``colab --path``)."""
    from vae_helpers.course.colab import check_path

    try:
        return check_path(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that point at ``--help``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m vae_helpers",
                     description="Variational autoencoders on MNIST (TensorFlow Probability).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="train a VAE and write a run directory",
                       description="Train a VAE on MNIST and write config.json, history.csv, "
                                   "metrics.json and checkpoint/ into --out.")
    t.add_argument("--out", required=True, help="run directory to write (e.g. runs/homework)")
    t.add_argument("--epochs", type=positive_int, default=100, help="epochs (default 100)")
    t.add_argument("--batch-size", type=positive_int, default=128,
                   help="images per step (default 128)")
    t.add_argument("--learning-rate", type=positive_float, default=1e-3,
                   help="Adam step size (default 0.001)")
    t.add_argument("--lr-schedule", default="constant",
                   choices=["constant", "cosine", "exponential"],
                   help="learning rate over the run: constant, or a cosine or exponential "
                        "decay from --learning-rate to --final-learning-rate (default "
                        "constant)")
    t.add_argument("--lr-warmup-epochs", type=_non_negative_float, default=0.0,
                   help="epochs (may be fractional) over which the learning rate rises "
                        "linearly to --learning-rate before the schedule; 0 for none "
                        "(default 0.0)")
    t.add_argument("--final-learning-rate", type=_non_negative_float, default=None,
                   help="the learning rate a decaying --lr-schedule ends at: 0 for cosine "
                        "unless given, required for exponential")
    t.add_argument("--lr-decay-epochs", type=positive_float, default=None,
                   help="the epoch at which the decay ends, warm-up included; when not "
                        "given, --epochs (give it to be able to --resume to more epochs)")
    t.add_argument("--kl-warmup-epochs", type=_non_negative_float, default=0.0,
                   help="KL warm-up: epochs over which the weight of the KL term in the "
                        "training objective rises linearly to 1; the recorded ELBO is the "
                        "true one all the same; 0 for none (default 0.0)")
    t.add_argument("--kl-warmup-start", type=_fraction, default=0.0,
                   help="the KL weight at the first step of a KL warm-up (default 0.0)")
    t.add_argument("--latent-dim", type=positive_int, default=2, help="P (default 2)")
    t.add_argument("--hidden-units", type=positive_int_list, default=[512],
                   help="hidden layer widths, comma-separated (default 512)")
    t.add_argument("--likelihood", default="gaussian",
                   choices=["gaussian", "bernoulli", "continuous_bernoulli"],
                   help="p(x|z) (default gaussian, with learned variance)")
    t.add_argument("--covariance", default=None, choices=["scalar", "diagonal"],
                   help="gaussian likelihood only: one learned variance (scalar, used when "
                        "the option is not given) or one per pixel (diagonal)")
    t.add_argument("--prior", default="normal", choices=["normal", "laplace"],
                   help="p(z): the standard normal, or independent Laplace(0, --prior-scale) "
                        "coordinates (default normal)")
    t.add_argument("--prior-scale", type=positive_float, default=None,
                   help="laplace prior only: its scale tau (1 when the option is not given)")
    t.add_argument("--posterior", default="normal", choices=["normal", "laplace"],
                   help="q(z|x): a diagonal Gaussian or independent Laplace coordinates "
                        "(default normal)")
    t.add_argument("--seed", type=seed_int, default=0, help="random seed (default 0)")
    t.add_argument("--iwae-k", type=non_negative_int, default=5000,
                   help="importance samples for the test log-likelihood; 0 skips it "
                        "(default 5000)")
    t.add_argument("--n-train", type=positive_int, default=None,
                   help="use only the first N training images (quick runs)")
    t.add_argument("--n-test", type=positive_int, default=None,
                   help="use only the first N test images (quick runs)")
    t.add_argument("--data", default=None,
                   help="path of mnist.npz (default: $VAE_MNIST, then ~/.keras/datasets)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    t.add_argument("--force", action="store_true", help="replace a run already in --out")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("pipeline", help="run the course notebooks in order with papermill",
                       description="Execute notebooks/01_math ... in order into --out: the "
                                   "executed notebooks, their HTML exports, the figures, the "
                                   "training runs and metrics.json.")
    p.add_argument("--profile", default="smoke", choices=["smoke", "full"],
                   help="smoke: every cell on a little data, minutes; full: the committed "
                        "parameters, the homework's 100 epochs (default smoke)")
    p.add_argument("--out", required=True, help="run directory to write (e.g. runs/homework)")
    p.add_argument("-p", "--parameter", action="append", default=[], metavar="KEY=VALUE",
                   help="override a notebook parameter, e.g. -p epochs=20 (repeatable)")
    p.add_argument("--timeout", type=positive_int, default=None,
                   help="seconds allowed per notebook (default: 600 smoke, 3600 full)")
    p.add_argument("--resume", action="store_true",
                   help="keep the notebooks an earlier run into --out completed; run the rest")
    p.add_argument("--force", action="store_true", help="replace what --out holds")
    p.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")

    pub = sub.add_parser("publish", help="copy a reference run's notebooks into notebooks/",
                         description="Copy the executed notebooks of a full-profile pipeline run "
                                     "made with the committed parameters into notebooks/, "
                                     "cleaned of run-specific metadata.")
    pub.add_argument("run", help="the pipeline run directory (e.g. runs/homework)")
    _grading_commands(sub)
    return parser


def _grading_commands(sub) -> None:
    c = sub.add_parser("compare", help="compare the records of two runs side by side",
                       description="Write report.html (self-contained) and report.json into "
                                   "--out: the metrics of both runs with their difference "
                                   "(B - A), the model specs, the figures side by side and the "
                                   "learning curves overlaid.")
    c.add_argument("run_a", metavar="RUN_A",
                   help="a directory with records.json (a run such as runs/homework, or the "
                        "output of a grade)")
    c.add_argument("run_b", metavar="RUN_B", help="the run to compare with RUN_A")
    c.add_argument("--out", required=True, metavar="DIR",
                   help="directory for report.html and report.json")
    c.add_argument("--force", action="store_true", help="replace what --out holds")

    g = sub.add_parser("grade", help="grade homework submissions against a reference run",
                       description="Run a submission (a notebook, or a folder of notebooks run "
                                   "in name order) in a sandbox, check its records against the "
                                   "rubric and the reference run, and write report.html and "
                                   "grade.json into --out. Exit code 0 when every required "
                                   "check passes, 1 otherwise. With --batch, grade every "
                                   "notebook and folder of a directory into --out/NAME/, with "
                                   "summary.csv and summary.html (exit code 1 only if a "
                                   "submission could not be graded).")
    g.add_argument("submission", nargs="?", metavar="SUBMISSION",
                   help="a notebook (.ipynb), or a folder of notebooks run in name order")
    g.add_argument("--batch", metavar="DIR",
                   help="grade every .ipynb file and every folder in DIR, one student each")
    g.add_argument("--reference", required=True, metavar="RUN",
                   help="the reference run: a directory with records.json (e.g. runs/homework)")
    g.add_argument("--out", required=True, metavar="DIR",
                   help="where the grade goes (with --batch: one folder per student and the "
                        "summary)")
    g.add_argument("--rubric", metavar="PATH",
                   help="a rubric TOML file (default: the homework's, vae_helpers/rubric.toml)")
    g.add_argument("--data", metavar="PATH",
                   help="the MNIST file the submissions read (default: $VAE_MNIST)")
    g.add_argument("--jobs", type=positive_int, default=None, metavar="N",
                   help="with --batch: submissions graded at the same time by a local "
                        "process pool (default 1)")
    g.add_argument("--dask-scheduler", metavar="ADDRESS",
                   help="with --batch: run the grades on this dask.distributed scheduler "
                        "(e.g. tcp://10.0.0.5:8786) instead of locally")
    g.add_argument("--sandbox", choices=["require", "off"], default="require",
                   help="require: run submissions in bubblewrap, and refuse to grade where "
                        "it does not work (the default); off: grade without isolation, "
                        "with the grader's permissions (said so in every grade)")
    g.add_argument("--force", action="store_true",
                   help="replace what --out holds (with --batch: grade every submission again)")

    gs = sub.add_parser("gradescope", help="build the grader as a Gradescope autograder",
                        description="Write DIR/autograder/ and DIR/autograder.zip for "
                                    "Gradescope: setup.sh and run_autograder, the rubric, the "
                                    "reference run's records, the MNIST file and the project's "
                                    "source. Upload the zip as the assignment's autograder "
                                    "(base image Ubuntu 22.04 or later).")
    gs.add_argument("--reference", required=True, metavar="RUN",
                    help="the reference run: a directory with records.json (e.g. "
                         "runs/homework)")
    gs.add_argument("--out", required=True, metavar="DIR", help="where the autograder goes")
    gs.add_argument("--rubric", metavar="PATH",
                    help="a rubric TOML file (default: the homework's)")
    gs.add_argument("--data", metavar="PATH",
                    help="the MNIST file to ship: Gradescope has none (default: $VAE_MNIST)")
    gs.add_argument("--force", action="store_true", help="replace what --out holds")

    s = sub.add_parser("student", help="write student versions of the homework notebooks",
                       description="Copy notebooks and the student module with every "
                                   "solution region (# BEGIN SOLUTION ... # END SOLUTION, or "
                                   "a cell tagged solution) replaced by a stub that raises "
                                   "NotImplementedError with its hint, and the outputs "
                                   "cleared.")
    s.add_argument("notebooks", nargs="*", metavar="FILE",
                   help="the notebooks and .py modules (default: the five notebooks of "
                        "notebooks/ and vae_homework.py)")
    s.add_argument("--out", required=True, metavar="DIR", help="folder for the student versions")
    s.add_argument("--force", action="store_true", help="replace notebooks already in --out")

    co = sub.add_parser("colab", help="point the notebooks' Colab badges and installs at a tag",
                        description="Rewrite the Colab badge and the Colab install cell of "
                                    "every notebook in --notebooks: the badge opens "
                                    "PATH/NOTEBOOK.ipynb of --repo at --ref, the install "
                                    "cell installs vae_helpers from --repo at --ref. Nothing "
                                    "else changes; a notebook already pointing there is "
                                    "left as it is.")
    co.add_argument("--repo", required=True, type=_repository, metavar="OWNER/NAME",
                    help="the GitHub repository the course is published in")
    co.add_argument("--ref", required=True, type=_git_ref, metavar="TAG",
                    help="the tag (or branch) the notebooks and the package are taken from")
    co.add_argument("--notebooks", default=None, metavar="DIR",
                    help="the folder of the notebooks to rewrite (default: notebooks/, the "
                         "answer key; for the handouts, the --out of the student command)")
    co.add_argument("--path", default=None, type=_repo_path, metavar="PATH_IN_REPO",
                    help="where those notebooks are in the repository, the badges' folder "
                         "('.' for its top folder; default notebooks)")


def _train(args) -> int:
    from vae_helpers.runs import train_run
    from vae_helpers.training.settings import TrainingSettings

    if args.covariance is not None and args.likelihood != "gaussian":
        raise ValueError(f"--covariance applies to the gaussian likelihood only, "
                         f"not to --likelihood {args.likelihood}")
    if args.prior_scale is not None and args.prior != "laplace":
        raise ValueError(f"--prior-scale applies to the laplace prior only, "
                         f"not to --prior {args.prior}")
    flagged = [f.name for f in dataclasses.fields(TrainingSettings)
               if TrainingSettings.flag(f.name)]
    try:  # checked once, here, so that the message names the command line's options
        settings = TrainingSettings(**{name: getattr(args, name) for name in flagged})
    except ValueError as err:
        raise ValueError(TrainingSettings.with_flags(str(err))) from None
    metrics = train_run(
        args.out, settings, iwae_k=args.iwae_k, n_train=args.n_train, n_test=args.n_test,
        data_path=args.data, resume=args.resume, force=args.force,
        progress=not args.no_progress, command=args.command_line, latent_dim=args.latent_dim,
        hidden_units=args.hidden_units, likelihood=args.likelihood, prior=args.prior,
        prior_scale=args.prior_scale or 1.0, posterior=args.posterior,
        **({"covariance": args.covariance or "scalar"} if args.likelihood == "gaussian" else {}),
    )
    lines = [f"run written to {args.out}",
             f"  test ELBO            {metrics['test_elbo']:10.2f} nats",
             f"    reconstruction     {metrics['test_reconstruction']:10.2f} nats",
             f"    KL                 {metrics['test_kl']:10.2f} nats"]
    if metrics.get("iwae_log_likelihood") is not None:
        lines.append(f"  IWAE (k={metrics['iwae_k']})".ljust(23)
                     + f"{metrics['iwae_log_likelihood']:10.2f} nats")
    if "bits_per_dim_elbo" in metrics:
        lines.append(f"  bits/dim (ELBO)      {metrics['bits_per_dim_elbo']:10.3f}")
    lines.append(f"  data: {metrics['data_description']}")
    print("\n".join(lines))
    return 0


def _pipeline(args) -> int:
    from vae_helpers.course.pipeline import parse_parameter, run_pipeline

    overrides = dict(parse_parameter(text) for text in args.parameter)
    run_pipeline(args.out, args.profile, overrides, force=args.force, resume=args.resume,
                 timeout=args.timeout, progress=not args.no_progress)
    return 0


def _publish(args) -> int:
    from vae_helpers.course.notebook import display_path
    from vae_helpers.course.pipeline import publish

    for path in publish(args.run):
        print(f"published {display_path(path)}")
    return 0


def _compare(args) -> int:
    from vae_helpers.grading.compare import compare_runs

    data = compare_runs(args.run_a, args.run_b, args.out, force=args.force)
    for row in data["metrics"]:
        if row["difference"] is not None:
            print(f"  {row['name']:<24}{row['a']:10.2f}{row['b']:10.2f}{row['difference']:+10.2f}")
    print(f"report written to {args.out}/report.html")
    return 0


def _grade(args) -> int:
    from vae_helpers.grading import rubric as rubric_lib
    from vae_helpers.grading import sandbox as sandbox_lib

    if (args.submission is None) == (args.batch is None):
        _usage_error("grade", "give either a SUBMISSION or --batch DIR")
    if args.batch is None and (args.jobs is not None or args.dask_scheduler):
        _usage_error("grade", "--jobs and --dask-scheduler go with --batch")
    rubric = rubric_lib.load(args.rubric)
    if args.batch is not None:
        from vae_helpers.grading.batch import grade_batch

        rows = grade_batch(args.batch, args.reference, args.out, rubric=rubric, data=args.data,
                           jobs=args.jobs or 1, scheduler=args.dask_scheduler,
                           sandbox=args.sandbox, force=args.force)
        counts = {s: sum(r["status"] == s for r in rows) for s in ("PASS", "FAIL", "ERROR")}
        print(f"{len(rows)} graded: {counts['PASS']} passed, {counts['FAIL']} failed"
              + (f", {counts['ERROR']} not graded" if counts["ERROR"] else "")
              + f"; summary in {args.out}/summary.html")
        return 1 if counts["ERROR"] else 0
    from vae_helpers.grading.grader import grade

    box = sandbox_lib.probe(args.sandbox)
    if box.warning():
        print(box.warning(), file=sys.stderr)
    result = grade(args.submission, args.reference, args.out, rubric=rubric, data=args.data,
                   sandbox=box, force=args.force, log=print)
    summary = result["summary"]
    verdict = "PASS" if summary["passed"] else "FAIL"
    print(f"{verdict}: {summary['required_passed']} of {summary['required']} required checks "
          f"passed, {summary['score']:g} of {summary['max_score']:g} points"
          + (f"; failed: {', '.join(summary['failed'])}" if summary["failed"] else ""))
    if summary["manual"]:
        print(f"graded by hand, still open: {len(summary['manual'])} answers, "
              f"{summary['manual_max']:g} points")
    print(f"report written to {args.out}/report.html")
    return 0 if summary["passed"] else 1


def _gradescope(args) -> int:
    from vae_helpers.grading import gradescope
    from vae_helpers.grading import rubric as rubric_lib

    zipped = gradescope.build(args.reference, args.out, rubric=rubric_lib.load(args.rubric),
                              data=args.data, force=args.force)
    print(f"autograder written to {args.out}/autograder/ and {zipped}: upload the zip to "
          "Gradescope; it ships the MNIST file, the reference's records and the rubric")
    return 0


def _student(args) -> int:
    from vae_helpers.course.notebook import display_path
    from vae_helpers.course.pipeline import notebook_dir
    from vae_helpers.course.student import HANDOUTS, STUDENT_MODULE, write_student_versions

    notebooks = args.notebooks or [*(notebook_dir() / f"{name}.ipynb" for name in HANDOUTS),
                                   notebook_dir() / STUDENT_MODULE]
    written = write_student_versions(notebooks, args.out, force=args.force)
    for path, stubs in written:
        print(f"wrote {display_path(path)} ({stubs} stub{'s' * (stubs != 1)})")
    if any(path.suffix == ".ipynb" for path, _ in written):
        print(f"their Colab badges and install cells still point at the answer key: "
              f"python -m vae_helpers colab --repo OWNER/NAME --ref TAG --notebooks "
              f"{args.out} --path PATH_IN_REPO points them at the published handouts")
    return 0


def _colab(args) -> int:
    from vae_helpers.course import notebook
    from vae_helpers.course.colab import rewrite_folder
    from vae_helpers.course.pipeline import notebook_dir

    folder = args.notebooks or notebook_dir()
    path = args.path or notebook.NOTEBOOK_PATH
    changes = rewrite_folder(folder, args.repo, args.ref, path)
    if args.path is None and any(change.handout for change in changes):
        print(f"warning: {folder} holds handouts, and without --path their badges open "
              f"{path}/, the answer key's folder: give --path the handouts' folder in "
              f"{args.repo}", file=sys.stderr)
    for change in changes:
        what = [f"{n} {kind}{'s' * (n != 1)}" for n, kind in
                ((change.badges, "badge"), (change.installs, "install cell")) if n]
        found = change.found_badges + change.found_installs
        print(f"{notebook.display_path(change.path)}: "
              + (f"pointed {' and '.join(what)} at {args.repo}@{args.ref}" if what
                 else "already up to date" if found else "no Colab badge or install cell"))
    changed = sum(change.changed for change in changes)
    print(f"{changed} of {len(changes)} notebooks changed; the badges open "
          f"{notebook.colab_url('NOTEBOOK.ipynb', args.ref, args.repo, path)}")
    return 0


def _usage_error(command: str, message: str):
    parser = build_parser()._subparsers._group_actions[0].choices[command]
    parser.error(message)


def _resume_hint(args) -> str:
    if args.command in ("grade", "compare", "student", "gradescope", "colab"):
        return ("what was complete is kept" + (": run the same command again to grade the "
                                               "rest" if getattr(args, "batch", None) else ""))
    out = getattr(args, "out", None)
    if out:
        from vae_helpers.backend import tf

        latest = tf.train.latest_checkpoint(f"{out}/checkpoint")
        if latest:
            return f"the last completed epoch is checkpointed ({latest}): rerun with --resume"
    return "no epoch was completed, so there is nothing to resume"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = " ".join(["python -m vae_helpers", *argv])
    commands = {"train": _train, "pipeline": _pipeline, "publish": _publish,
                "compare": _compare, "grade": _grade, "student": _student,
                "gradescope": _gradescope, "colab": _colab}
    if args.command in ("compare", "grade", "student", "gradescope", "colab"):  # no TensorFlow
        return _run_light(commands[args.command], args)
    from vae_helpers.course.pipeline import PipelineError
    from vae_helpers.data import DataError
    from vae_helpers.outdirs import RunLocked
    from vae_helpers.runs import RunError
    from vae_helpers.training import CheckpointError, TrainingDiverged

    try:
        return commands[args.command](args)
    except (DataError, RunError, RunLocked, TrainingDiverged, CheckpointError, PipelineError,
            OSError, ValueError) as err:  # OSError includes train.RunWriteError (disk full, ...)
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; {_resume_hint(args)}", file=sys.stderr)
        return 130


def _run_light(command, args) -> int:
    """The grading commands, with their own errors as one line (they never import TF)."""
    from vae_helpers.course.pipeline import PipelineError
    from vae_helpers.grading.batch import BatchError
    from vae_helpers.grading.compare import CompareError
    from vae_helpers.grading.grader import GradingError
    from vae_helpers.grading.gradescope import AutograderError
    from vae_helpers.grading.sandbox import SandboxError
    from vae_helpers.outdirs import RunLocked

    try:
        return command(args)
    # ValueError includes RubricError, StudentError and ColabError
    except (AutograderError, BatchError, CompareError, GradingError, RunLocked, PipelineError,
            SandboxError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; {_resume_hint(args)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
