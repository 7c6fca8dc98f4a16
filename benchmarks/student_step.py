r"""How fast the homework's own training loop is, beside the package's ``fit()``.

Run ``python benchmarks/student_step.py --help`` for the options. One run trains
the homework network twice on the 60,000 MNIST training images at batch size 128,
for one warm-up epoch (it includes the XLA compilation) and then ``--epochs`` timed
epochs each:

1. ``vae_helpers.training.fit`` on a fresh ``vae_helpers.model.VAE()``: XLA-compiled
   chunks of many steps in one ``tf.while_loop``, the data and the noise inside;
2. ``train`` of the student module's solution (``notebooks/vae_homework.py``) on a
   fresh ``vae_homework.VAE()``: each epoch's images dequantized in one eager call,
   then a Python loop over their minibatches, one call of the compiled step
   (``make_train_step``, a ``tf.function(jit_compile=True)``) each.

Images per second come from each epoch's seconds, ``(60000 // 128) * 128`` images
per epoch; the headline is the median over the timed epochs, and the ratio
student / fit is compared with the target of at least 0.85. The two runs follow
each other, so a change in the machine's load between them shows in the ratio;
the "others" column says how much of the CPUs other processes used. Nothing is
asserted: the numbers are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import (
    CpuMeter,
    add_json_option,
    inputs_or_say_why,
    load_average,
    load_student_module,
    machine_description,
    noise_note,
    note,
    others,
    write_results,
)

from vae_helpers.argtypes import positive_int

BATCH = 128
TARGET_RATIO = 0.85
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "student_step.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure the training speed of the student module's solution "
                    "(notebooks/vae_homework.py: train and its compiled step) beside "
                    "vae_helpers.training.fit at batch size 128, in one run. Needs VAE_MNIST. "
                    "Nothing is asserted: a table is printed and JSON written.")
    parser.add_argument("--epochs", type=positive_int, default=3,
                        help="timed epochs of each, after one warm-up epoch that includes "
                             "the XLA compilation (default: 3)")
    add_json_option(parser, DEFAULT_JSON)
    return parser.parse_args(argv)


def summarize(seconds: list[float], n_train: int) -> dict:
    images = (n_train // BATCH) * BATCH
    rates = [images / s for s in seconds[1:]]
    return {"warmup_epoch_seconds": seconds[0], "timed_epoch_seconds": seconds[1:],
            "images_per_s_per_epoch": rates, "images_per_s": statistics.median(rates)}


def measure_fit(x_train, epochs: int) -> dict:
    from vae_helpers.model import VAE
    from vae_helpers.training import TrainingSettings, fit

    history = fit(VAE(seed=0), x_train, TrainingSettings(epochs=1 + epochs, batch_size=BATCH),
                  progress=False)
    result = summarize([float(s) for s in history.column("seconds")], len(x_train))
    result["final_train_elbo"] = float(history.last["train_elbo"])
    return result


def measure_student(module, x_train, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        rows = module.train(module.VAE(seed=0), x_train, epochs=1 + epochs, run_dir=run_dir,
                            batch_size=BATCH, progress=False)
    result = summarize([r["seconds"] for r in rows], len(x_train))
    result["final_train_elbo"] = rows[-1]["train_elbo"]
    return result


def render(results: dict) -> str:
    lines = [f"Training speed at batch {BATCH}, {results['settings']['epochs']} timed epochs "
             "each (median images/s; the first epoch compiles and is not counted)", ""]
    lines.append(f"{'loop':<34}{'images/s':>10}{'epoch s':>9}{'train ELBO':>12}{'others':>8}")
    for key, label in (("fit", "vae_helpers.training.fit"),
                       ("student", "vae_homework.train (solution)")):
        r = results[key]
        lines.append(f"{label:<34}{r['images_per_s']:>10,.0f}"
                     f"{statistics.median(r['timed_epoch_seconds']):>9.2f}"
                     f"{r['final_train_elbo']:>12.2f}{others(r['cpu']):>8}")
    ratio = results["ratio"]
    lines += ["", f"student / fit: {ratio:.2f} (target at least {TARGET_RATIO}: "
              f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})"]
    lines += noise_note([results["fit"]["cpu"], results["student"]["cpu"]])
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    load_before = load_average()
    from vae_helpers.backend import tf, tfp

    mnist = inputs_or_say_why(args.json)
    if mnist is None:
        return 1
    (x_train, _), _ = mnist
    module = load_student_module()
    measured = {}
    for key, run in (("fit", lambda: measure_fit(x_train, args.epochs)),
                     ("student", lambda: measure_student(module, x_train, args.epochs))):
        note(f"[{key}] 1 warm-up + {args.epochs} timed epochs at batch {BATCH} ...")
        meter = CpuMeter()
        measured[key] = run()
        measured[key]["cpu"] = meter.stop()
    results = {
        "benchmark": "student_step",
        "settings": {"epochs": args.epochs, "batch_size": BATCH,
                     "mnist": os.environ.get("VAE_MNIST")},
        "machine": machine_description(tf, tfp),
        "load_average_before": load_before,
        **measured,
        "ratio": measured["student"]["images_per_s"] / measured["fit"]["images_per_s"],
        "target_ratio": TARGET_RATIO,
        "load_average_after": load_average(),
        "script_seconds": time.perf_counter() - start,
    }
    write_results(results, render(results), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
