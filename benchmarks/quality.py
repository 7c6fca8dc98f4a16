r"""How good the package's VAEs get on MNIST: train a preset, evaluate it, compare with anchors.

Run ``python benchmarks/quality.py --preset NAME`` (``--help`` lists the options). One
run trains the preset with ``vae_helpers.runs.train_run`` into a run directory
(``--out``), evaluates it on the test set and prints a table: the preset, the data
variant, the epochs, the training seconds, the test ELBO, the IWAE-k estimate of the
test log-likelihood with its k, bits/dim where the data are dequantized, and for each
number its published or measured anchor and its target, with "met" or "NOT met" and
by how much. Everything printed is also written as JSON (``--json``).

The data
    Training images are transformed afresh every step (dynamic binarization for the
    Bernoulli likelihood, fresh dequantization noise for the densities); the test set
    is transformed once with the fixed ``evaluate.TEST_SEED``, so every run is
    evaluated on the same 10,000 images. All numbers are nats per image (bits per
    dimension where named), on the full test set unless ``--n-test`` says otherwise.

The presets
    ``homework-bernoulli``
        The homework network (P = 2, one hidden layer of 512 ReLU units in each
        network, weights from N(0, 0.01²)) with the Bernoulli likelihood, 100 epochs.
        Anchor: a plain implementation of exactly this model reaches about -147.6 test
        ELBO and -144.6 IWAE (k = 1000) (the issue that asked for this benchmark).
        Targets: test ELBO >= -144 and IWAE-5000 >= -141, through training alone
        (same model).
    ``best-50d``
        50 latent dimensions, two hidden layers of 512 ReLU units, Bernoulli
        likelihood, as many epochs as fit in 30 minutes of training on 2 CPU cores:
        a few epochs of the same model are timed first (``calibrate_epochs``) and the
        run gets the most epochs that fit in 90% of the budget (``--budget-minutes``).
        Anchor and target: Burda, Grosse & Salakhutdinov (2016), "Importance
        Weighted Autoencoders", Table 1: the VAE with one stochastic layer of 50
        units, trained for 3,280 epochs on dynamically binarized MNIST, has a test
        log-likelihood of -86.76 nats estimated with k = 5000.
    ``homework-gaussian``, ``homework-continuous-bernoulli``
        The homework network with its Gaussian likelihood (learned scalar variance)
        or the continuous Bernoulli, on dequantized pixels, 100 epochs, trained like
        ``homework-bernoulli``. There is no published anchor for these exact models;
        they are reported side by side (test ELBO, IWAE-5000, bits/dim).

Options that shrink a run (``--epochs``, ``--n-train``, ``--n-test``, ``--iwae-k``,
another ``--budget-minutes``) are for checking the script: the table then still says
met / NOT met, but marks the verdicts as not comparable with the targets and says why.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from common import (
    CpuMeter,
    fmt,
    json_unwritable,
    machine_description,
    percent,
    write_results,
)
from quality_presets import (
    BUDGET_MARGIN,
    BUDGET_SECONDS,
    CALIBRATION_EPOCHS,
    IWAE_K,
    N_TEST,
    N_TRAIN,
    NO_ANCHOR,
    PRESETS,
)

from vae_helpers.argtypes import non_negative_int, positive_float, positive_int, seed_int

RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------- arguments
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Train a preset VAE on MNIST, evaluate it on the test set (ELBO, IWAE-k, "
            "bits/dim where defined) and compare it with its anchor and target. Needs "
            "VAE_MNIST (the path of mnist.npz) unless MNIST is in the Keras cache. The "
            "full presets take about 10 (homework) to 45 minutes (best-50d: up to 27 "
            "minutes of training, then about 15 of evaluation on a slow 2-core machine); "
            "shrink a run with --epochs/--n-train/--n-test/--iwae-k to check the script."
        ),
    )
    parser.add_argument("--preset", required=True, choices=list(PRESETS),
                        help="what to train (see the module docs or benchmarks/README.md)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="train this many epochs instead of the preset's (for "
                             "best-50d: instead of as many as fit in its time budget)")
    parser.add_argument("--budget-minutes", type=positive_float, default=None, metavar="M",
                        help="best-50d only: minutes of training the epochs are chosen "
                             f"for (default: {BUDGET_SECONDS // 60})")
    parser.add_argument("--n-train", type=positive_int, default=None,
                        help="train on the first N training images only (default: all)")
    parser.add_argument("--n-test", type=positive_int, default=None,
                        help="evaluate on the first N test images only (default: all)")
    parser.add_argument("--iwae-k", type=non_negative_int, default=IWAE_K,
                        help="importance samples of the IWAE estimate; 0 skips it "
                             f"(default: {IWAE_K})")
    parser.add_argument("--seed", type=seed_int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="the run directory (default: benchmarks/results/quality/PRESET, "
                             "with -custom appended when the training is shrunk)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="where to write the results as JSON (default: "
                             "benchmarks/results/quality-PRESET.json, -custom as for --out)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint (a run "
                             "already complete is evaluated again only if --iwae-k or "
                             "--n-test changed)")
    parser.add_argument("--force", action="store_true",
                        help="replace a run already in --out")
    parser.add_argument("--data", default=None,
                        help="path of mnist.npz (default: $VAE_MNIST, then ~/.keras/datasets)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- settings
def run_settings(preset: dict, args) -> dict:
    """The preset's training settings with the command line's overrides.

    Another ``--epochs`` scales the warm-ups with it, so that the run has the preset's
    schedule, compressed or stretched (the decay spans the run in any case). A preset
    whose epochs come from its time budget (``epochs`` None) keeps its warm-ups as they
    are: ``main`` fills in the epochs.
    """
    training = dict(preset["training"])
    if training["epochs"] is None:
        if args.epochs is not None:
            training["epochs"] = args.epochs
        return training
    if args.epochs is not None and args.epochs != training["epochs"]:
        scale = args.epochs / training["epochs"]
        for name in ("lr_warmup_epochs", "kl_warmup_epochs"):
            if training.get(name):
                training[name] = training[name] * scale
        training["epochs"] = args.epochs
    return training


def not_comparable(preset: dict, training: dict, args) -> list[str]:
    """Why this run's numbers cannot be held against the preset's targets (empty: they can)."""
    reasons = []
    planned = preset["training"]["epochs"]
    if planned is None and args.epochs is not None:
        reasons.append(f"{args.epochs} epoch(s) given, not as many as fit in the time budget")
    elif planned is not None and training["epochs"] != planned:
        reasons.append(f"{training['epochs']} epoch(s), not the preset's {planned}")
    budget = preset.get("budget_seconds")
    if budget and args.budget_minutes is not None and args.budget_minutes * 60 != budget:
        reasons.append(f"epochs chosen for {args.budget_minutes:g} minutes of training, "
                       f"the target is {budget / 60:g}")
    if args.n_train is not None and args.n_train < N_TRAIN:
        reasons.append(f"trained on {args.n_train} of the {N_TRAIN:,} training images")
    if args.n_test is not None and args.n_test < N_TEST:
        reasons.append(f"evaluated on {args.n_test} of the {N_TEST:,} test images")
    if "iwae" in preset["targets"] and args.iwae_k != IWAE_K:
        reasons.append(f"IWAE with k={args.iwae_k}, the target is for k={IWAE_K}")
    return reasons


def calibrate_epochs(preset: dict, training: dict, budget_seconds: float, seed: int,
                     data_path=None, n_train: int | None = None,
                     n_test: int | None = None) -> dict:
    """The most epochs of ``preset`` that train within ``budget_seconds`` on this machine.

    Trains a fresh copy of the preset's model for ``CALIBRATION_EPOCHS`` epochs on the
    run's data, exactly as the run will (same batch size, schedule and per-epoch test
    ELBO), without a checkpoint. The first epoch includes the XLA compilation; the mean
    of the others is the epoch time. The run's first epoch compiles too, so

        epochs = floor(((1 - BUDGET_MARGIN) * budget - (first - epoch)) / epoch).

    Returns the epochs with the measurements behind them (seconds, margin, budget).
    """
    from vae_helpers import data as data_lib
    from vae_helpers.runs import build_model
    from vae_helpers.training import TrainingSettings, fit

    (x_train, _), (x_test, _) = data_lib.load_mnist(data_path)
    x_train = x_train[:n_train] if n_train else x_train
    x_test = x_test[:n_test] if n_test else x_test
    model = build_model(seed=seed, **preset["model"])
    schedule = {k: v for k, v in training.items() if k not in ("epochs", "batch_size",
                                                                  "learning_rate")}
    schedule["lr_decay_epochs"] = CALIBRATION_EPOCHS + 1.0  # any horizon: the cost is the same
    started = time.perf_counter()
    settings = TrainingSettings(epochs=CALIBRATION_EPOCHS, batch_size=training["batch_size"],
                                learning_rate=training["learning_rate"], seed=seed, **schedule)
    history = fit(model, x_train, settings, x_test=x_test, progress=False)
    seconds = [float(row["seconds"]) for row in history.rows]
    epoch = sum(seconds[1:]) / len(seconds[1:])
    usable = (1 - BUDGET_MARGIN) * budget_seconds - (seconds[0] - epoch)
    return {"epochs": max(1, math.floor(usable / epoch)), "budget_seconds": budget_seconds,
            "margin": BUDGET_MARGIN, "epoch_seconds": epoch, "first_epoch_seconds": seconds[0],
            "calibration_seconds": time.perf_counter() - started}


def budget_epochs(preset: dict, training: dict, args, out: Path) -> tuple[int, dict | None]:
    """The epochs of a budgeted preset: those of the run being resumed, or calibrated."""
    from vae_helpers import io
    from vae_helpers.training import completed_epochs

    config = out / "config.json"
    if args.resume and config.exists() and completed_epochs(out / "checkpoint") > 0:
        try:
            epochs = int(io.read_json(config)["training"]["epochs"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"cannot read the epochs of the run to resume from {config} "
                             f"({err}); pass --epochs N to say them") from err
        print(f"--resume: the run in {out} keeps its {epochs} epochs", file=sys.stderr)
        return epochs, None
    if not (args.resume or args.force) and (
            completed_epochs(out / "checkpoint") > 0 or (out / "metrics.json").exists()):
        # refused here, not after the calibration, as train_run would refuse it
        raise ValueError(f"{out} already holds a run; pass --resume to continue it, --force "
                         "to replace it, or choose another --out")
    budget = (args.budget_minutes * 60 if args.budget_minutes is not None
              else preset["budget_seconds"])
    print(f"timing {CALIBRATION_EPOCHS} epochs to fit the training into {budget / 60:g} "
          "minutes ...", file=sys.stderr)
    calibration = calibrate_epochs(preset, training, budget, args.seed, args.data,
                                   args.n_train, args.n_test)
    print(f"an epoch takes {calibration['epoch_seconds']:.1f} s (the first, which compiles, "
          f"{calibration['first_epoch_seconds']:.1f} s): {calibration['epochs']} epochs fit "
          f"in {100 * (1 - BUDGET_MARGIN):.0f}% of the budget", file=sys.stderr)
    return calibration["epochs"], calibration


def default_paths(args, shrunk: bool) -> tuple[Path, Path]:
    suffix = "-custom" if shrunk else ""
    out = args.out or RESULTS / "quality" / f"{args.preset}{suffix}"
    json_path = args.json or RESULTS / f"quality-{args.preset}{suffix}.json"
    return Path(out), Path(json_path)


# --------------------------------------------------------------------------- verdicts
def verdict(value, target, higher_is_better: bool = True) -> dict | None:
    """``met`` and the margin (positive: by how much it is met; negative: missed)."""
    if value is None or target is None:
        return None
    margin = value - target if higher_is_better else target - value
    return {"target": target, "met": margin >= 0, "margin": margin}


def verdict_text(v: dict | None, unit: str, fmt: str = ".2f") -> str:
    if v is None:
        return "-"
    if v["met"]:
        return f"met, by {format(v['margin'], fmt)} {unit}"
    return f"NOT met, short by {format(-v['margin'], fmt)} {unit}"


def evaluate_targets(preset: dict, metrics: dict) -> dict:
    targets = preset["targets"]
    out = {
        "test_elbo": verdict(metrics.get("test_elbo"), targets.get("test_elbo")),
        "iwae": verdict(metrics.get("iwae_log_likelihood"), targets.get("iwae")),
    }
    budget = preset.get("budget_seconds")
    if budget:
        out["train_seconds"] = verdict(metrics.get("train_seconds"), budget,
                                       higher_is_better=False)
    return out


# --------------------------------------------------------------------------- report
def _anchor_text(anchor: dict | None) -> str:
    if anchor is None:
        return "-"
    k = f", k={anchor['k']}" if anchor.get("k") else ""
    return f"{anchor['value']:.2f}{k} [{anchor['ref']}]"


def schedule_text(training: dict) -> str:
    parts = [f"batch {training['batch_size']}", f"Adam {training['learning_rate']:g}"]
    if training.get("lr_schedule", "constant") != "constant":
        parts[-1] += (f" {training['lr_schedule']} to {training.get('final_learning_rate') or 0:g}"
                      f" over the run")
    if training.get("lr_warmup_epochs"):
        parts.append(f"learning-rate warm-up {training['lr_warmup_epochs']:g} epochs")
    if training.get("kl_warmup_epochs"):
        parts.append(f"KL warm-up {training['kl_warmup_epochs']:g} epochs from beta "
                     f"{training.get('kl_warmup_start', 0.0):g}")
    return ", ".join(parts)


def render(results: dict) -> str:
    m = results["metrics"]
    preset = PRESETS[results["preset"]]
    training = results["training"]
    anchors = preset["anchors"]
    verdicts = results["verdicts"]
    k = m.get("iwae_k")
    minutes = m["train_seconds"] / 60
    lines = [
        f"Quality of preset {results['preset']}: {preset['summary']}",
        "",
        f"run     : {results['out']}",
        f"data    : {m['data_description']}; training: a fresh transform every step; test: "
        f"{m['n_test']:,} images, one fixed transform (seed {m['test_transform_seed']})",
        f"training: {m['epochs']} epoch{'' if m['epochs'] == 1 else 's'}, "
        f"{schedule_text(training)}, "
        f"{results['num_parameters']:,} parameters",
    ]
    cal = results.get("calibration")
    if cal:
        lines.append(
            f"epochs  : from the {cal['budget_seconds'] / 60:g}-minute budget: {cal['epochs']} "
            f"epochs of {cal['epoch_seconds']:.1f} s (the first {cal['first_epoch_seconds']:.1f}"
            f" s) fill {100 * (1 - cal['margin']):.0f}% of it (timed over "
            f"{CALIBRATION_EPOCHS} epochs before the run, {cal['calibration_seconds']:.0f} s)")
    lines += [
        f"time    : training {m['train_seconds']:.0f} s ({minutes:.1f} min), whole run "
        f"{results['run_wall_seconds']:.0f} s; machine {results['machine']['cpu_model']}, "
        f"{results['machine']['cpu_count']} CPUs; others used "
        f"{percent(results['others_cpu_share'])} of them meanwhile",
        "",
    ]
    rows = [("metric", "result", "anchor", "target", "verdict")]
    rows.append(("test ELBO (nats)", fmt(m.get("test_elbo"), ".2f"),
                 _anchor_text(anchors.get("test_elbo")) if anchors else NO_ANCHOR,
                 f">= {preset['targets']['test_elbo']:.2f}"
                 if "test_elbo" in preset["targets"] else "-",
                 verdict_text(verdicts.get("test_elbo"), "nats")))
    iwae_name = f"IWAE k={k} (nats)" if k else "IWAE (skipped)"
    rows.append((iwae_name, fmt(m.get("iwae_log_likelihood"), ".2f"),
                 _anchor_text(anchors.get("iwae")) if anchors else NO_ANCHOR,
                 f">= {preset['targets']['iwae']:.2f} at k={IWAE_K}"
                 if "iwae" in preset["targets"] else "-",
                 verdict_text(verdicts.get("iwae"), "nats")))
    if "bits_per_dim_elbo" in m:
        rows.append(("bits/dim from ELBO", fmt(m.get("bits_per_dim_elbo"), ".4f"), "-", "-",
                     "-"))
        rows.append((f"bits/dim from IWAE k={k}", fmt(m.get("bits_per_dim_iwae"), ".4f"),
                     "-", "-", "-"))
    else:
        rows.append(("bits/dim", "n/a", "-", "-",
                     "not defined: binarized data are not 8-bit pixels"))
    if "train_seconds" in verdicts:
        rows.append(("training seconds", f"{m['train_seconds']:.0f}", "-",
                     f"<= {preset['budget_seconds']:.0f}",
                     verdict_text(verdicts["train_seconds"], "s", ".0f")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for n, row in enumerate(rows):
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)] + [row[-1]]
        lines.append(" | ".join(cells).rstrip())
        if n == 0:
            lines.append("-" * (sum(widths) + 3 * len(widths) + 24))
    sources = {a["ref"]: a["source"] for a in anchors.values()}
    lines.append("")
    lines += [f"[{ref}] {source}" for ref, source in sources.items()] or [
        f"anchor: {NO_ANCHOR} for this model and data; compare the homework presets "
        "with each other"]
    if results["not_comparable"]:
        lines += ["", "NOT COMPARABLE with the targets and anchors: "
                  + "; ".join(results["not_comparable"]) + "."]
    share = results["others_cpu_share"]
    if share is not None and share > 0.1:
        lines.append(f"Note: other processes used {100 * share:.0f}% of the CPUs during the "
                     "run, so its seconds are longer than on an idle machine.")
    lines += ["", "README row:", readme_row(results)]
    return "\n".join(lines)


def readme_row(results: dict) -> str:
    """The run as a row of the results table in benchmarks/README.md."""
    m = results["metrics"]
    preset = PRESETS[results["preset"]]
    anchors = preset["anchors"]
    k = m.get("iwae_k")
    bits = (f"{m['bits_per_dim_elbo']:.3f} / {fmt(m.get('bits_per_dim_iwae'), '.3f')}"
            if "bits_per_dim_elbo" in m else "n/a")
    anchor = "; ".join(f"{LABELS[name]} {_anchor_text(a)}"
                       for name, a in anchors.items()) or NO_ANCHOR
    verdicts = "; ".join(
        f"{LABELS[name]} " + (verdict_text(v, "s", ".0f") if name == "train_seconds"
                              else verdict_text(v, "nats"))
        for name, v in results["verdicts"].items() if v is not None) or "-"
    if results["not_comparable"]:
        verdicts += " (not comparable: " + "; ".join(results["not_comparable"]) + ")"
    data = DATA_COLUMN.get(m["data_variant"], m["data_variant"])
    return (f"| {results['preset']} | {data} | {m['epochs']} | "
            f"{m['train_seconds']:.0f} | {m['test_elbo']:.2f} | "
            f"{fmt(m.get('iwae_log_likelihood'), '.2f')} (k={k}) | {bits} | {anchor} | "
            f"{verdicts} |")


LABELS = {"test_elbo": "ELBO", "iwae": "IWAE", "train_seconds": "training time"}
DATA_COLUMN = {
    "binarized": "dynamically binarized; fixed test binarization",
    "dequantized": "dequantized (x+u)/256; fixed test noise",
}


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    preset = PRESETS[args.preset]
    training = run_settings(preset, args)
    budgeted = preset["training"]["epochs"] is None
    if args.budget_minutes is not None and not budgeted:
        print(f"error: --budget-minutes applies to best-50d only; {args.preset} trains a "
              f"fixed {preset['training']['epochs']} epochs (use --epochs to change them)",
              file=sys.stderr)
        return 2
    if args.budget_minutes is not None and args.epochs is not None:
        print("error: give either --epochs (a fixed count) or --budget-minutes (as many "
              "epochs as fit in that time), not both", file=sys.stderr)
        return 2
    reasons = not_comparable(preset, training, args)
    shrunk = (args.epochs is not None and args.epochs != preset["training"]["epochs"]
              or args.n_train is not None
              or budgeted and args.budget_minutes is not None
              and args.budget_minutes * 60 != preset["budget_seconds"])
    out, json_path = default_paths(args, shrunk)

    from vae_helpers.backend import tf, tfp
    from vae_helpers.data import DataError
    from vae_helpers.outdirs import RunLocked
    from vae_helpers.runs import RunError, train_run
    from vae_helpers.training import CheckpointError, TrainingDiverged

    problem = json_unwritable(json_path)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1

    command = " ".join(["python benchmarks/quality.py", *(argv if argv is not None
                                                          else sys.argv[1:])])
    meter = CpuMeter()
    calibration = None
    try:
        if training["epochs"] is None:
            training["epochs"], calibration = budget_epochs(preset, training, args, out)
        metrics = train_run(out, seed=args.seed, iwae_k=args.iwae_k, n_train=args.n_train,
                            n_test=args.n_test, data_path=args.data, resume=args.resume,
                            force=args.force, progress=not args.no_progress,
                            command=command, **training, **preset["model"])
    except (DataError, RunError, RunLocked, TrainingDiverged, CheckpointError, ValueError,
            OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; rerun with --resume to continue from the last completed "
              f"epoch in {out}", file=sys.stderr)
        return 130
    cpu = meter.stop()

    results = {
        "benchmark": "quality",
        "preset": args.preset,
        "summary": preset["summary"],
        "out": str(out),
        "model": preset["model"],
        "training": training,
        "calibration": calibration,
        "num_parameters": metrics["num_parameters"],
        "seed": args.seed,
        "n_train": args.n_train or N_TRAIN,
        "metrics": metrics,
        "anchors": preset["anchors"],
        "targets": {**preset["targets"], "iwae_k": IWAE_K,
                    **({"train_seconds": preset["budget_seconds"]}
                       if preset.get("budget_seconds") else {})},
        "verdicts": evaluate_targets(preset, metrics),
        "not_comparable": reasons,
        "others_cpu_share": cpu["others_cpu_share"],
        "run_wall_seconds": time.perf_counter() - started,
        "machine": machine_description(tf, tfp),
        "mnist": os.environ.get("VAE_MNIST"),
    }
    write_results(results, render(results), json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
