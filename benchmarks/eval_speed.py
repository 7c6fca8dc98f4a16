r"""How fast ``vae_helpers.evaluate.iwae_log_likelihood`` evaluates the homework VAE.

Run ``python benchmarks/eval_speed.py --help`` for the options. One run measures:

1. **The model.** ``--run DIR`` loads a trained run (``vae_helpers.runs.load_model``).
   Without it a fresh ``VAE()`` (the homework network: 784-512-4 encoder, 2-512-784
   decoder, Gaussian likelihood with a learned scalar variance) is trained by
   ``fit()`` for ``--train-epochs`` epochs on the 60,000 training images first. The
   speed depends on the model: the factored first decoder layer (see
   ``vae_helpers.evaluate``) pays off when the posteriors are narrow, as they are
   after training; an untrained model (``--train-epochs 0``) has wide posteriors,
   takes the plain decoder, and is the slow worst case.

2. **IWAE throughput.** The first ``--n-test`` test images are prepared once
   (``prepare_eval_data``, the fixed dequantization) and the bound with ``--k``
   samples per image is computed with the default batch and chunk sizes and
   ``progress=False``. One call on the first batch compiles the function (its time
   is reported as the first call); the timed call then covers all the images.
   images/s = images / seconds of the timed call.

3. **The target**: k = 5000 over the 10,000 test images within 180 s. For other
   ``--k`` or ``--n-test`` the time is scaled linearly to 5000 × 10,000 samples and
   the verdict is marked as projected.

4. **The plain decoder** on the first ``--plain-images`` images: the same code with
   the factored first layer turned off (``FACTOR_MIN_CHUNK`` set out of reach), same
   samples, timed right before the factored code is timed again on the same images.
   The ratio of the two is the speed-up the factoring brings, and the largest
   per-image difference between the two estimates checks that they agree.

5. **Memory**: the process's peak resident set size (``resource.getrusage``,
   ``ru_maxrss``) at the end, which covers the data, the model, the optional
   training and the evaluation, against the 3 GB limit.

6. **The machine**, as in ``train_speed.py``: CPU model, CPU count, versions, the
   load average before and after, and for each measurement the share of the CPUs
   other processes used meanwhile.

Nothing is asserted about time: the targets are printed beside the numbers.
Everything printed is also written as JSON (default
``benchmarks/results/eval_speed.json``). The MNIST file is found by
``vae_helpers.data.load_mnist`` (set ``VAE_MNIST`` to the path of ``mnist.npz``).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from common import (
    CpuMeter,
    add_json_option,
    inputs_or_say_why,
    load_average,
    machine_description,
    noise_note,
    note,
    others,
    write_results,
)

from vae_helpers.argtypes import non_negative_int, positive_int, seed_int

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "eval_speed.json"
TARGET_K = 5000
TARGET_IMAGES = 10_000
TARGET_SECONDS = 180.0
MEMORY_LIMIT_MB = 3 * 1024
N_TEST = 10_000


# --------------------------------------------------------------------------- arguments
def _n_test(text: str) -> int:
    value = positive_int(text)
    if value > N_TEST:
        raise argparse.ArgumentTypeError(f"expected at most {N_TEST} test images, got {text!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Time the IWAE estimate of the test log-likelihood (vae_helpers.evaluate."
            "iwae_log_likelihood) of the homework VAE on the MNIST test images, compare "
            "it with the 3-minute target for k=5000 over 10,000 images and with the plain "
            "decoder, and report the peak memory. Needs VAE_MNIST (the path of mnist.npz) "
            "unless MNIST is in the Keras cache. Nothing is asserted: the numbers are "
            "printed as a table and written as JSON."
        ),
    )
    parser.add_argument("--k", type=positive_int, default=TARGET_K,
                        help=f"importance samples per image (default: {TARGET_K})")
    parser.add_argument("--n-test", type=_n_test, default=N_TEST, metavar="N",
                        help=f"the first N test images (default: all {N_TEST})")
    parser.add_argument("--run", type=Path, default=None, metavar="DIR",
                        help="evaluate the trained model of this run directory (written by "
                             "`python -m vae_helpers train --out DIR`) instead of training "
                             "a fresh one")
    parser.add_argument("--train-epochs", type=non_negative_int, default=3, metavar="N",
                        help="without --run: train a fresh homework VAE for N epochs first; "
                             "0 evaluates the untrained model, the slow worst case "
                             "(default: 3)")
    parser.add_argument("--plain-images", type=non_negative_int, default=200, metavar="N",
                        help="images for the comparison with the plain (unfactored) decoder; "
                             "0 skips it (default: 200)")
    parser.add_argument("--seed", type=seed_int, default=0,
                        help="seed of the importance samples (default: 0)")
    add_json_option(parser, DEFAULT_JSON)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- measurements
def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (Linux reports KB)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def get_model(args, x_train):
    """The model to evaluate and a description of where it came from."""
    from vae_helpers.model import VAE
    from vae_helpers.runs import load_model
    from vae_helpers.training import TrainingSettings, fit

    if args.run is not None:
        return load_model(args.run), {"source": f"run {args.run}", "train_seconds": None}
    model = VAE(seed=0)
    seconds = None
    if args.train_epochs:
        note(f"[model] training a fresh VAE() for {args.train_epochs} epochs ...")
        t0 = time.perf_counter()
        fit(model, x_train, TrainingSettings(epochs=args.train_epochs, seed=0), progress=False)
        seconds = time.perf_counter() - t0
    plural = "" if args.train_epochs == 1 else "s"
    source = (f"fresh VAE() trained for {args.train_epochs} epoch{plural}" if args.train_epochs
              else "fresh VAE(), untrained")
    return model, {"source": source, "train_seconds": seconds}


def time_iwae(evaluate, model, x, k: int, seed: int, warm_up: bool = False) -> dict:
    """Seconds and images/s of one iwae_log_likelihood call over all of ``x``.

    With ``warm_up``, one untimed call on the first batch compiles the function for
    this shape first (if it is not compiled yet).
    """
    if warm_up:
        batch = max(1, min(evaluate.SAMPLES_PER_CALL // k, int(x.shape[0])))
        evaluate.iwae_log_likelihood(model, x[:batch], k=k, seed=seed)
    meter = CpuMeter()
    t0 = time.perf_counter()
    values = evaluate.iwae_log_likelihood(model, x, k=k, seed=seed, per_example=True)
    seconds = time.perf_counter() - t0
    n = int(x.shape[0])
    return {"images": n, "k": k, "seconds": seconds, "images_per_s": n / seconds,
            "samples_per_s": n * k / seconds, "mean_nats": float(np.mean(values)),
            "values": values, "cpu": meter.stop()}


def measure(args, evaluate, model, x) -> dict:
    n, k = int(x.shape[0]), args.k
    batch = max(1, min(evaluate.SAMPLES_PER_CALL // k, n))
    chunk = min(k, evaluate.DEFAULT_CHUNK)
    note(f"[iwae] first call ({batch} images, compiles) ...")
    t0 = time.perf_counter()
    evaluate.iwae_log_likelihood(model, x[:batch], k=k, seed=args.seed)
    first = {"images": batch, "seconds": time.perf_counter() - t0}
    note(f"[iwae] timed call: {n} images, k={k} ...")
    main = time_iwae(evaluate, model, x, k, args.seed)
    values = main.pop("values")
    samples = TARGET_K * TARGET_IMAGES
    projected = main["seconds"] * samples / (n * k)
    target = {"seconds": TARGET_SECONDS, "k": TARGET_K, "images": TARGET_IMAGES,
              "projected": (n, k) != (TARGET_IMAGES, TARGET_K),
              "seconds_for_target_work": projected, "met": projected <= TARGET_SECONDS}

    plain = None
    m = min(args.plain_images, n)
    if m:
        note(f"[plain] the same on {m} images with the plain decoder ...")
        saved = evaluate.FACTOR_MIN_CHUNK
        evaluate.FACTOR_MIN_CHUNK = 2**62  # out of reach: every chunk takes the plain decoder
        try:
            plain = time_iwae(evaluate, model, x[:m], k, args.seed, warm_up=True)
        finally:
            evaluate.FACTOR_MIN_CHUNK = saved
        plain_values = plain.pop("values")
        # the factored code again on the same images, right after, for a fair ratio
        same = time_iwae(evaluate, model, x[:m], k, args.seed, warm_up=True)
        same.pop("values")
        plain["factored_same_images"] = same
        plain["speedup_of_factored"] = same["images_per_s"] / plain["images_per_s"]
        plain["max_abs_difference_nats"] = float(np.max(np.abs(plain_values - values[:m])))
    return {"batch_size": batch, "chunk": chunk, "first_call": first, "iwae": main,
            "target": target, "plain_decoder": plain}


# --------------------------------------------------------------------------- report
def render(results: dict) -> str:
    m, s, r = results["machine"], results["settings"], results["iwae"]
    model, target, mem = results["model"], results["target"], results["memory"]
    lines = [
        "IWAE evaluation speed of vae_helpers.evaluate.iwae_log_likelihood "
        "(homework VAE, MNIST test set, float32, CPU)",
        "",
        f"Machine : {m['cpu_model']}, os.cpu_count()={m['cpu_count']} "
        f"(usable {m['usable_cpus']})",
        f"Software: Python {m['python']}, TensorFlow {m['tensorflow']}, "
        f"TFP {m['tensorflow_probability']}, Keras {m['keras']}, NumPy {m['numpy']}",
        f"Load avg: before {results['load_average_before']}, "
        f"after {results['load_average_after']} (1/5/15 min)",
        f"Model   : {model['source']}; {model['num_parameters']:,} parameters, "
        f"latent {model['latent_dim']}, posterior sd median {model['posterior_sd_median']:.3f}",
        f"Settings: k={s['k']}, {s['n_test']} test images, batch {results['batch_size']} "
        f"images per call, chunk {results['chunk']} samples, seed {s['seed']}",
        "others  : share of all CPUs used by other processes meanwhile (0% = idle machine)",
        "",
    ]
    header = (f"{'measurement':<26} | {'images':>6} | {'seconds':>8} | {'images/s':>8} | "
              f"{'samples/s':>10} | {'mean nats':>9} | {'others':>6}")
    lines += [header, "-" * len(header)]
    rows = [("IWAE (factored decoder)", r)]
    plain = results["plain_decoder"]
    if plain is not None:
        rows += [("  same, first images only", plain["factored_same_images"]),
                 ("IWAE (plain decoder)", plain)]
    for name, row in rows:
        lines.append(
            f"{name:<26} | {row['images']:>6} | {row['seconds']:>8.1f} | "
            f"{row['images_per_s']:>8.1f} | {row['samples_per_s']:>10,.0f} | "
            f"{row['mean_nats']:>9.3f} | {others(row.get('cpu')):>6}")
    first = results["first_call"]
    lines += ["", f"First call ({first['images']} images, includes the XLA compilation): "
                  f"{first['seconds']:.1f} s"]
    if plain is not None:
        lines.append(f"Factored over plain decoder on the same {plain['images']} images: "
                     f"{plain['speedup_of_factored']:.1f}x faster; largest per-image "
                     f"difference {plain['max_abs_difference_nats']:.2e} nats")
    verdict = "met" if target["met"] else "NOT met"
    what = (f"projected from {r['images']} images x k={r['k']}" if target["projected"]
            else "measured")
    lines.append(f"Target k={target['k']} over {target['images']:,} images within "
                 f"{target['seconds']:.0f} s: {target['seconds_for_target_work']:.0f} s "
                 f"({what}): {verdict}")
    mem_verdict = "met" if mem["met"] else "NOT met"
    lines.append(f"Peak resident memory of the process: {mem['peak_rss_mb']:,.0f} MB "
                 f"(limit {mem['limit_mb']:,} MB: {mem_verdict})")
    cpus = [r.get("cpu")]
    if plain is not None:
        cpus += [plain.get("cpu"), plain["factored_same_images"].get("cpu")]
    lines += noise_note(cpus)
    lines.append(f"Total script time: {results['script_seconds']:.0f} s")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    load_before = load_average()

    from vae_helpers import evaluate
    from vae_helpers.backend import tf, tfp
    from vae_helpers.runs import RunError

    mnist = inputs_or_say_why(args.json)
    if mnist is None:
        return 1
    (x_train, _), (x_test, _) = mnist
    try:
        model, origin = get_model(args, x_train)
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    del x_train

    x = evaluate.prepare_eval_data(x_test[:args.n_test], model.likelihood.data_variant)
    sd = model.infer(x[:1000]).stddev().numpy()
    measured = measure(args, evaluate, model, x)
    peak = peak_rss_mb()
    results = {
        "benchmark": "eval_speed",
        "settings": {"k": args.k, "n_test": args.n_test, "run": None if args.run is None
                     else str(args.run), "train_epochs": None if args.run else args.train_epochs,
                     "plain_images": args.plain_images, "seed": args.seed,
                     "mnist": os.environ.get("VAE_MNIST")},
        "machine": machine_description(tf, tfp),
        "load_average_before": load_before,
        "model": {**origin, "num_parameters": model.num_parameters,
                  "latent_dim": model.latent_dim, "hidden_units": list(model.hidden_units),
                  "posterior_sd_median": float(statistics.median(sd.ravel().tolist()))},
        **measured,
        "memory": {"peak_rss_mb": peak, "limit_mb": MEMORY_LIMIT_MB,
                   "met": peak <= MEMORY_LIMIT_MB},
    }
    results["load_average_after"] = load_average()
    results["script_seconds"] = time.perf_counter() - t_start
    write_results(results, render(results), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
