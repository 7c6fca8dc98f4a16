"""The presets of ``quality.py``: models, training recipes, anchors and targets.

Each preset names a model (``build_model`` arguments), its training (``TrainingSettings``
fields; ``epochs=None`` comes from a time budget), the published numbers it is held
against (anchors, with their sources) and the targets it must meet.
"""

from __future__ import annotations

N_TRAIN, N_TEST = 60000, 10000
IWAE_K = 5000  # the k of the literature's test log-likelihoods and of the targets
BUDGET_SECONDS = 30 * 60  # best-50d: training time allowed on the 2-core machine

HOMEWORK_MODEL = dict(latent_dim=2, hidden_units=[512])

# The homework presets share one training recipe; only the likelihood differs.
# * batch 64: twice the updates of the homework's 128 in the same 100 epochs; the
#   2-D model is far from overfitting, so more (noisier) steps help, and the decay
#   below removes the noise at the end;
# * Adam at 1e-3 (the homework's rate) with a one-epoch linear warm-up, then a cosine
#   decay to 1e-5 over the run: the last epochs take small steps and settle in the
#   optimum instead of hovering around it at a constant step size;
# * a KL warm-up over the first 10 epochs (beta from 0 to 1): the encoder first
#   spreads the digits over the latent plane before the prior pulls them together.
HOMEWORK_TRAINING = dict(
    epochs=100, batch_size=64, learning_rate=1e-3, lr_schedule="cosine",
    final_learning_rate=1e-5, lr_warmup_epochs=1.0, kl_warmup_epochs=10.0,
)

# best-50d: 784-512-512-100 encoder, 50-512-512-784 decoder (1.4 M parameters).
# * epochs from a time budget: the machine's speed differs from day to day (an epoch
#   of this model took 5.2-6.0 s on the idle 2-core reference machine on one day and
#   about 10 s on another), so a fixed count either wastes the budget or overruns it.
#   Before training, `calibrate_epochs` times CALIBRATION_EPOCHS epochs of the same
#   model (the first compiles and is timed apart) and picks the most epochs that fit
#   in (1 - BUDGET_MARGIN) of the budget; the schedule below is then laid over them;
# * Adam 1e-3, one-epoch warm-up, cosine decay to 1e-5 over the run;
# * a KL warm-up of 20 epochs, against inactive latent units (units whose posterior
#   stays at the prior), which a 50-D VAE trained at beta = 1 from the start has many of;
# * weights from N(0, 0.05²) instead of the homework's 0.01: with two hidden layers
#   the homework's scale shrinks the signal about six-fold per layer at the start.
BUDGET_MARGIN = 0.1  # share of the budget kept free for the machine's noise
CALIBRATION_EPOCHS = 3  # one that compiles, two timed
BEST_50D_MODEL = dict(latent_dim=50, hidden_units=[512, 512], init_stddev=0.05)
BEST_50D_TRAINING = dict(
    epochs=None, batch_size=128, learning_rate=1e-3, lr_schedule="cosine",
    final_learning_rate=1e-5, lr_warmup_epochs=1.0, kl_warmup_epochs=20.0,
)  # epochs=None: from the time budget

PLAIN = ("plain", "a plain implementation of exactly this model, as quoted in the issue "
                  "that asked for this benchmark")
BURDA = ("Burda 2016", "Burda, Grosse & Salakhutdinov 2016, Importance Weighted Autoencoders, "
                       "Table 1: VAE, one stochastic layer of 50 units, trained 3,280 epochs "
                       "on dynamically binarized MNIST")

PRESETS = {
    "homework-bernoulli": dict(
        summary="homework VAE (P=2, 512 ReLU), Bernoulli likelihood",
        model=dict(**HOMEWORK_MODEL, likelihood="bernoulli"),
        training=HOMEWORK_TRAINING,
        anchors={"test_elbo": dict(value=-147.6, ref=PLAIN[0], source=PLAIN[1]),
                 "iwae": dict(value=-144.6, k=1000, ref=PLAIN[0], source=PLAIN[1])},
        targets={"test_elbo": -144.0, "iwae": -141.0},
    ),
    "best-50d": dict(
        summary="VAE with P=50, 2x512 ReLU, Bernoulli likelihood, <= 30 min of training",
        model=dict(**BEST_50D_MODEL, likelihood="bernoulli"),
        training=BEST_50D_TRAINING,
        anchors={"iwae": dict(value=-86.76, k=5000, ref=BURDA[0], source=BURDA[1])},
        targets={"iwae": -86.76},
        budget_seconds=BUDGET_SECONDS,
    ),
    "homework-gaussian": dict(
        summary="homework VAE (P=2, 512 ReLU), Gaussian likelihood with a learned variance",
        model=dict(**HOMEWORK_MODEL, likelihood="gaussian", covariance="scalar"),
        training=HOMEWORK_TRAINING,
        anchors={}, targets={},
    ),
    "homework-continuous-bernoulli": dict(
        summary="homework VAE (P=2, 512 ReLU), continuous Bernoulli likelihood",
        model=dict(**HOMEWORK_MODEL, likelihood="continuous_bernoulli"),
        training=HOMEWORK_TRAINING,
        anchors={}, targets={},
    ),
}
NO_ANCHOR = "none published"
